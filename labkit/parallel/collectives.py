"""All-reduce from point-to-point messages, and the alpha-beta model of what it costs.

Ring all-reduce over p ranks (Patarasuk & Yuan 2009): split the tensor into p chunks. Reduce-scatter: in step
s = 0..p-2, rank r sends chunk (r - s) mod p to rank r+1 and adds the chunk (r - s - 1) mod p it receives from
rank r-1; afterwards rank r holds the full sum of chunk (r + 1) mod p. All-gather: p-1 more steps pass the
finished chunks around the ring. Each rank sends 2(p-1) messages of N/p elements: 2(p-1)/p * N bytes in all,
nearly independent of p. Time (alpha = latency per message, beta = seconds per byte):

    T_ring  = 2(p-1) alpha + 2(p-1)/p * N beta
    T_naive = 2(p-1) (alpha + N beta)       (all to rank 0, which sums and sends the result back, one at a time)

Everything here uses only ``isend``/``irecv`` (batched with ``batch_isend_irecv``, which NCCL needs so that a
send and a receive are posted together); ``dist.all_reduce`` is the reference in the tests.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ring_all_reduce", "naive_all_reduce", "ring_chunk_schedule", "simulate_ring_reduce_scatter",
           "ring_bytes_per_rank", "ring_all_reduce_time", "naive_all_reduce_time", "fit_alpha_beta",
           "bus_bandwidth", "measure_all_reduce", "ALGORITHMS"]

_OPS = ("sum", "mean")


def _check_tensor(tensor: Tensor, op: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")
    if op == "mean" and not tensor.is_floating_point():
        raise TypeError(f"op 'mean' needs a floating-point tensor, got {tensor.dtype}")


def _exchange(send: Tensor | None, to_rank: int, recv: Tensor | None, from_rank: int, group=None) -> None:
    """Post one send and one receive together and wait for both (empty chunks are skipped on both sides)."""
    ops = []
    if send is not None and send.numel() > 0:
        ops.append(dist.P2POp(dist.isend, send, to_rank, group))
    if recv is not None and recv.numel() > 0:
        ops.append(dist.P2POp(dist.irecv, recv, from_rank, group))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()


def ring_chunk_schedule(rank: int, world_size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The chunk indices ``(sent, received)`` of ``rank`` at each step: reduce-scatter steps, then all-gather steps."""
    p = world_size
    reduce_scatter = [((rank - s) % p, (rank - s - 1) % p) for s in range(p - 1)]
    all_gather = [((rank + 1 - s) % p, (rank - s) % p) for s in range(p - 1)]
    return reduce_scatter, all_gather


def ring_all_reduce(tensor: Tensor, op: str = "sum", group=None) -> Tensor:
    """In-place all-reduce of ``tensor`` over ``group`` by a ring: reduce-scatter then all-gather (isend/irecv).

    Any shape, size (sizes not divisible by p give uneven chunks) and dtype the backend can send. Returns ``tensor``.
    """
    _check_tensor(tensor, op)
    rank, p = dist.get_rank(group), dist.get_world_size(group)
    if p > 1 and tensor.numel() > 0:
        to_global = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
        right, left = to_global((rank + 1) % p), to_global((rank - 1) % p)
        flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
        chunks = list(torch.tensor_split(flat, p))
        reduce_scatter, all_gather = ring_chunk_schedule(rank, p)
        buffer = torch.empty_like(chunks[0])
        for sent, received in reduce_scatter:
            incoming = buffer[: chunks[received].numel()]
            _exchange(chunks[sent], right, incoming, left, group)
            chunks[received] += incoming
        for sent, received in all_gather:
            _exchange(chunks[sent], right, chunks[received], left, group)
        if flat.data_ptr() != tensor.data_ptr() or not tensor.is_contiguous():
            tensor.copy_(flat.view_as(tensor))
    if op == "mean":
        tensor.div_(p)
    return tensor


def naive_all_reduce(tensor: Tensor, op: str = "sum", root: int = 0, group=None) -> Tensor:
    """In-place all-reduce through one root: everyone sends to ``root``, which sums and sends the result back."""
    _check_tensor(tensor, op)
    rank, p = dist.get_rank(group), dist.get_world_size(group)
    if not 0 <= root < p:
        raise ValueError(f"root must be a rank in [0, {p}), got {root}")
    to_global = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
    if p > 1 and tensor.numel() > 0:
        flat = tensor.contiguous()
        if rank == root:
            incoming = torch.empty_like(flat)
            for other in range(p):
                if other != root:
                    dist.recv(incoming, to_global(other), group)
                    flat += incoming
            for other in range(p):
                if other != root:
                    dist.send(flat, to_global(other), group)
        else:
            dist.send(flat, to_global(root), group)
            dist.recv(flat, to_global(root), group)
        if flat.data_ptr() != tensor.data_ptr():
            tensor.copy_(flat)
    if op == "mean":
        tensor.div_(p)
    return tensor


def _torch_all_reduce(tensor: Tensor) -> Tensor:
    dist.all_reduce(tensor)
    return tensor


ALGORITHMS = {"ring": ring_all_reduce, "naive": naive_all_reduce, "torch": _torch_all_reduce}
"""The all-reduce variants :func:`measure_all_reduce` can time, by name (``'torch'`` = ``dist.all_reduce``)."""


def simulate_ring_reduce_scatter(data: Tensor, steps: int | None = None) -> Tensor:
    """The buffers of a ring reduce-scatter after ``steps`` steps, simulated in one process.

    ``data`` has shape (p, p, n): rank r's chunk c is ``data[r, c]``. In step s every rank r sends chunk
    (r - s) mod p to rank r+1, which adds it to its own copy. ``steps=None`` runs all p-1 steps, after which
    ``result[r, (r + 1) % p]`` is the sum over ranks of chunk (r + 1) % p.
    """
    if not isinstance(data, Tensor) or data.dim() != 3 or data.shape[0] != data.shape[1]:
        raise ValueError(f"data must be a tensor of shape (p, p, n), got {getattr(data, 'shape', type(data))}")
    p = data.shape[0]
    steps = p - 1 if steps is None else steps
    if not 0 <= steps <= p - 1:
        raise ValueError(f"steps must be in [0, {p - 1}] for p = {p}, got {steps}")
    state = data.clone()
    for s in range(steps):
        sent = [state[r, (r - s) % p].clone() for r in range(p)]  # every rank sends at once
        for r in range(p):
            state[(r + 1) % p, (r - s) % p] += sent[r]
    return state


# ----------------------------------------------------------------------------------------------------------
# the alpha-beta cost model
# ----------------------------------------------------------------------------------------------------------


def _check_model_args(n_bytes: float, world_size: int) -> None:
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")


def ring_bytes_per_rank(n_bytes: float, world_size: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``n_bytes``: 2(p-1)/p * N."""
    _check_model_args(n_bytes, world_size)
    return 2 * (world_size - 1) / world_size * n_bytes


def ring_all_reduce_time(n_bytes: float, world_size: int, alpha: float, beta: float) -> float:
    """alpha-beta time of a ring all-reduce: 2(p-1) alpha + 2(p-1)/p * N beta (seconds)."""
    _check_model_args(n_bytes, world_size)
    return 2 * (world_size - 1) * alpha + ring_bytes_per_rank(n_bytes, world_size) * beta


def naive_all_reduce_time(n_bytes: float, world_size: int, alpha: float, beta: float) -> float:
    """alpha-beta time of the all-to-one all-reduce: the root receives p-1 and sends p-1 full messages in turn."""
    _check_model_args(n_bytes, world_size)
    return 2 * (world_size - 1) * (alpha + n_bytes * beta)


def fit_alpha_beta(n_bytes: Sequence[float], times_s: Sequence[float], world_size: int,
                   algorithm: str = "ring") -> tuple[float, float]:
    """Least-squares ``(alpha, beta)`` of the model ``T = a(p) alpha + b(p, N) beta`` to measured times."""
    if len(n_bytes) != len(times_s) or len(n_bytes) < 2:
        raise ValueError(f"need at least two (size, time) pairs of equal length, got {len(n_bytes)} and {len(times_s)}")
    model = {"ring": ring_all_reduce_time, "naive": naive_all_reduce_time}
    if algorithm not in model:
        raise ValueError(f"algorithm must be one of {sorted(model)}, got {algorithm!r}")
    f = model[algorithm]
    design = torch.tensor([[f(n, world_size, 1.0, 0.0), f(n, world_size, 0.0, 1.0)] for n in n_bytes],
                          dtype=torch.float64)
    target = torch.tensor(list(times_s), dtype=torch.float64).unsqueeze(1)
    weights = 1.0 / target  # fit relative errors: small messages matter as much as large ones
    solution = torch.linalg.lstsq(design * weights, target * weights).solution.squeeze(1)
    return float(solution[0]), float(solution[1])


def bus_bandwidth(n_bytes: float, time_s: float, world_size: int) -> float:
    """NCCL-tests' bus bandwidth of an all-reduce (bytes/s): (N / t) * 2(p-1)/p, comparable across p."""
    if time_s <= 0:
        raise ValueError(f"time_s must be > 0, got {time_s}")
    return ring_bytes_per_rank(n_bytes, world_size) / time_s


def measure_all_reduce(sizes: Sequence[int], algorithms: Sequence[str] = ("ring", "naive", "torch"),
                       repeats: int = 5, dtype: torch.dtype = torch.float32) -> dict[str, list[float]]:
    """Worker function: seconds of each all-reduce algorithm at each size (elements), timed between barriers, the
    fastest of ``repeats`` (the cost of the algorithm itself; slower repeats measure other processes competing
    for the cores). Run it on every rank (``cluster.run(measure_all_reduce, sizes)``)."""
    from labkit.parallel.launch import rank_device

    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithms {unknown}: expected some of {sorted(ALGORITHMS)}")
    device = rank_device()
    times: dict[str, list[float]] = {name: [] for name in algorithms}
    for size in sizes:
        tensor = torch.ones(int(size), dtype=dtype, device=device)
        for name in algorithms:
            samples = []
            for i in range(repeats + 1):  # the first call warms up
                dist.barrier()
                start = time.perf_counter()
                ALGORITHMS[name](tensor)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i:
                    samples.append(time.perf_counter() - start)
            times[name].append(min(samples))
    return times
