"""Run a function on N processes: from a notebook or a script (spawned workers), or under ``torchrun``.

* :class:`Cluster` -- start ``world_size`` worker processes once, each joined to one process group
  (gloo on CPU, NCCL when every rank has its own GPU) over a free local port; ``cluster.run(fn, *args)`` calls
  ``fn(*args)`` on every rank and returns the list of results, rank by rank. Reusing a cluster for several runs
  pays the process start-up (importing torch) once.
* :func:`launch` -- ``Cluster`` for a single call: start, run, always clean up.
* :func:`init_from_env` -- what a script calls first: under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT`` set) it joins that group; inside a launched worker the group already exists.

Workers come from a fork server that imported torch once (``spawn`` where there is none), so the first cluster
of a session pays the start-up and later ones start in a fraction of a second. They import ``fn`` by reference
(pickled as ``module.name``), so ``fn`` must live in an importable module (``labkit.parallel.*``), not in a
notebook cell; a script that launches must guard its entry point with ``if __name__ == "__main__":``. A rank that raises never leaves the others hanging: its
traceback reaches the parent, the other ranks are stopped, and :class:`WorkerError` names the failing rank;
collectives inside the group time out after ``timeout`` seconds in every case.
"""

from __future__ import annotations

import datetime as _dt
import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist

__all__ = ["Cluster", "WorkerError", "launch", "free_port", "choose_backend", "init_from_env", "is_torchrun",
           "rank_device", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV"]

TIMEOUT_ENV = "LABKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
_READY, _RESULT, _ERROR = "ready", "result", "error"


class WorkerError(RuntimeError):
    """A rank raised (or died); ``rank`` is the first rank that failed, the message carries its traceback."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_backend(world_size: int, backend: str | None = None) -> str:
    """``backend`` if given, else NCCL when CUDA offers one GPU per rank, else gloo."""
    if backend is not None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo', 'nccl' or None, got {backend!r}")
        if backend == "nccl" and torch.cuda.device_count() < world_size:
            raise ValueError(f"backend 'nccl' needs one GPU per rank: {world_size} ranks, "
                             f"{torch.cuda.device_count()} GPUs")
        return backend
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def rank_device() -> torch.device:
    """The device of this rank's tensors: its own GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _timeout_s(timeout: float | None) -> float:
    value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)) if timeout is None else float(timeout)
    if not value > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {value}")
    return value


def is_torchrun() -> bool:
    """True when the environment of ``torchrun`` (or any ``env://`` launcher) is set."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(backend: str | None = None, timeout: float | None = None) -> tuple[int, int]:
    """Join the process group described by ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (``torchrun``),
    unless one already exists (a launched worker). Returns ``(rank, world_size)``."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not is_torchrun():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        raise RuntimeError(f"no process group and no torchrun environment (missing {', '.join(missing)}): "
                           "run under torchrun or through labkit.parallel.launch")
    world_size = int(os.environ["WORLD_SIZE"])
    backend = choose_backend(world_size, backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    dist.init_process_group(backend, init_method="env://", rank=int(os.environ["RANK"]), world_size=world_size,
                            timeout=_dt.timedelta(seconds=_timeout_s(timeout)))
    return dist.get_rank(), dist.get_world_size()


# ----------------------------------------------------------------------------------------------------------
# the worker process
# ----------------------------------------------------------------------------------------------------------


def _worker(rank: int, world_size: int, backend: str, host: str, port: int, timeout_s: float, threads: int,
            tasks: Any, results: Any) -> None:
    """One rank: join the group, then run ``(fn, args, kwargs)`` tasks until ``None`` arrives."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=host,
                      MASTER_PORT=str(port), **{TIMEOUT_ENV: str(timeout_s)})
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=world_size,
                                timeout=_dt.timedelta(seconds=timeout_s))
        results.put((rank, _READY, None))
        while True:
            task = tasks.get()
            if task is None:
                break
            fn, args, kwargs = task
            value = fn(*args, **kwargs)
            results.put((rank, _RESULT, pickle.dumps(value)))  # plain pickle: tensors as bytes, not shared memory
    except BaseException:  # noqa: BLE001 - reported to the parent, then this rank stops
        results.put((rank, _ERROR, traceback.format_exc()))
        exit_code = 1
    else:
        dist.destroy_process_group()
        exit_code = 0
    # Deliver every message, then leave at once: a normal interpreter exit can wait for seconds on the
    # communication threads, and leaving before destroying the group (on error) closes this rank's sockets only
    # after its traceback is on its way, so the parent hears it before the other ranks' "connection closed".
    results.close()
    results.join_thread()
    os._exit(exit_code)


def _context() -> Any:
    """Processes come from a fork server that has imported torch once (per parent process), so that every later
    worker starts in milliseconds instead of importing torch again; ``spawn`` where there is no fork server."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    # torch._dynamo: what the first optimizer step imports (about 900 modules, seconds on a loaded laptop)
    context.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "labkit.parallel.workers"])
    return context


def _check_fn(fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in name:
        raise ValueError(f"fn must be a module-level function of an importable module (spawned workers import it "
                         f"by name), got {module}.{name}: move it into a module such as labkit.parallel.*")


class Cluster:
    """``world_size`` worker processes joined in one process group, reused across :meth:`run` calls.

    Use as a context manager (``with Cluster(2) as cluster: cluster.run(fn, x)``); :meth:`close` stops every
    worker (politely, then by force) and is idempotent. After a rank fails the cluster is closed.
    """

    def __init__(self, world_size: int, *, backend: str | None = None, timeout: float | None = None,
                 threads_per_rank: int = 1, host: str = "127.0.0.1", start_timeout: float = 120.0):
        if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        if not isinstance(threads_per_rank, int) or threads_per_rank < 1:
            raise ValueError(f"threads_per_rank must be an int >= 1, got {threads_per_rank!r}")
        self.world_size = world_size
        self.backend = choose_backend(world_size, backend)
        self.timeout_s = _timeout_s(timeout)
        for attempt in range(3):
            try:
                self._start(host, threads_per_rank, max(start_timeout, self.timeout_s))
                break
            except WorkerError as error:  # another program took the free port between our check and our bind
                if attempt == 2 or not any(s in str(error) for s in ("EADDRINUSE", "ddress already in use")):
                    raise

    def _start(self, host: str, threads_per_rank: int, start_timeout: float) -> None:
        """Start the workers on a fresh free port and wait until every one has joined the group."""
        self.port = free_port(host)
        context = _context()
        self._results = context.Queue()
        self._tasks = [context.Queue() for _ in range(self.world_size)]
        self._processes = [context.Process(target=_worker, name=f"labkit-rank{rank}", daemon=True,
                                           args=(rank, self.world_size, self.backend, host, self.port, self.timeout_s,
                                                 threads_per_rank, self._tasks[rank], self._results))
                           for rank in range(self.world_size)]
        self.closed = False
        try:
            for process in self._processes:
                process.start()
            self._collect(_READY, start_timeout, "starting")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _dead_rank(self) -> tuple[int, int] | None:
        for rank, process in enumerate(self._processes):
            if process.exitcode is not None:
                return rank, process.exitcode
        return None

    def _collect(self, kind: str, timeout_s: float, what: str) -> list[Any]:
        """Wait for one ``kind`` message from every rank; any error, death or the deadline closes the cluster."""
        deadline = time.monotonic() + timeout_s
        received: dict[int, Any] = {}
        while len(received) < self.world_size:
            try:
                rank, status, payload = self._results.get(timeout=0.05)
            except queue.Empty:
                dead = self._dead_rank()
                if dead is not None:
                    try:  # the dying rank may have left its traceback in the queue just before exiting
                        rank, status, payload = self._results.get(timeout=0.5)
                    except queue.Empty:
                        self.close()
                        raise WorkerError(f"rank {dead[0]} exited with code {dead[1]} while {what}, without "
                                          "reporting an error", dead[0]) from None
                elif time.monotonic() > deadline:
                    waiting = sorted(set(range(self.world_size)) - set(received))
                    self.close()
                    raise TimeoutError(f"ranks {waiting} did not finish {what} within {timeout_s:.0f} s; "
                                       "all workers were stopped") from None
                else:
                    continue
            if status == _ERROR:
                self.close()
                raise WorkerError(f"rank {rank} of {self.world_size} failed while {what}; the other ranks were "
                                  f"stopped. Its traceback:\n{payload}", rank)
            received[rank] = payload
        return [received[rank] for rank in range(self.world_size)]

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """Call ``fn(*args, **kwargs)`` on every rank; the list of return values, indexed by rank."""
        if self.closed:
            raise RuntimeError("this cluster is closed (a rank failed or close() was called): start a new one")
        _check_fn(fn)
        for task_queue in self._tasks:
            task_queue.put((fn, args, kwargs))
        name = f"{fn.__module__}.{fn.__qualname__}"
        try:
            payloads = self._collect(_RESULT, self.timeout_s if timeout is None else _timeout_s(timeout),
                                     f"running {name}")
        except KeyboardInterrupt:  # an interrupted notebook cell: the workers are mid-task, stop them
            self.close()
            raise
        return [pickle.loads(payload) for payload in payloads]

    def close(self, grace_s: float = 3.0) -> None:
        """Ask every worker to stop, then terminate and kill those still alive. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for process, task_queue in zip(self._processes, self._tasks):
            if process.is_alive():
                try:
                    task_queue.put(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + grace_s
        for process in self._processes:
            if process.pid is not None:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for q in (self._results, *self._tasks):
            q.close()
            q.cancel_join_thread()


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None,
           timeout: float | None = None, threads_per_rank: int = 1, **kwargs: Any) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` fresh processes joined in one group; results by rank.

    Raises :class:`WorkerError` (a rank raised) or ``TimeoutError`` (``timeout`` seconds passed); the processes
    are stopped in every case.
    """
    _check_fn(fn)  # before paying for the start-up
    with Cluster(world_size, backend=backend, timeout=timeout, threads_per_rank=threads_per_rank) as cluster:
        return cluster.run(fn, *args, **kwargs)
