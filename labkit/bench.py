"""Honest measurement: time, peak memory and FLOPs, labkit side by side with its PyTorch reference.

* :func:`time_fn` -- warm-up calls, then ``repeats`` timed calls; median and inter-quartile range.
  On CUDA each call is bracketed by CUDA events and synchronised; on the CPU it uses ``time.perf_counter``.
* :func:`peak_memory` -- the most memory ``fn`` holds at once above what was held before it ran. CUDA: the
  caching allocator's peak counter. CPU: the torch profiler's allocation and free events, replayed in order.
* :func:`count_flops` -- floating-point operations counted by ``torch.utils.flop_counter.FlopCounterMode``
  (2 per multiply-add).
* :func:`compare` -- labkit and reference in the same process, with interleaved repeats; ``ratio`` is
  labkit time / reference time (above 1: labkit is slower).
* :func:`register` / :func:`run` / :func:`main` -- the benchmark registry behind
  ``python -m labkit.bench [names] [--device D] [--profile P] [--json PATH] [--list]``, which merges its
  results into ``benchmarks/results/<device_slug>.json``. Benchmarks live in ``labkit/benchmarks/<topic>.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib
import json
import os
import pkgutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from labkit.config import Profile, get_profile
from labkit.device import describe_device, device_slug, resolve_device

# The CPU memory measurement starts torch's profiler, whose Kineto backend otherwise prints a log line
# each time it starts and stops; keep notebook outputs clean unless the reader asked for its logs.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

__all__ = [
    "Timing",
    "Comparison",
    "time_fn",
    "cpu_threads",
    "peak_memory",
    "count_flops",
    "compare",
    "register",
    "registered",
    "run",
    "main",
    "results_path",
    "load_results",
    "save_results",
    "format_seconds",
    "format_bytes",
    "progress_bar",
    "PROGRESS_ENV",
]

PROGRESS_ENV = "LABKIT_PROGRESS"


# ----------------------------------------------------------------------------------------------------------
# formatting and progress
# ----------------------------------------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """``0.00123`` -> ``'1.23 ms'``: a duration with a readable unit."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_bytes(n_bytes: float | None) -> str:
    """``3_145_728`` -> ``'3 MiB'``: a size in binary units (``'n/a'`` for ``None``)."""
    if n_bytes is None:
        return "n/a"
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 enabled: bool = True, **kwargs: Any):
    """A ``tqdm.auto`` bar (notebook widget or terminal); off when ``enabled`` is false or ``$LABKIT_PROGRESS=0``."""
    from tqdm.auto import tqdm

    disabled = (not enabled) or os.environ.get(PROGRESS_ENV, "1").strip().lower() in {"0", "false", "no", "off"}
    return tqdm(iterable, total=total, desc=desc, disable=disabled, dynamic_ncols=True, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Repeated wall-clock times of one function: ``median_s`` and inter-quartile range ``iqr_s`` (seconds)."""

    median_s: float
    iqr_s: float
    times_s: tuple[float, ...]

    @classmethod
    def from_times(cls, times_s: Sequence[float]) -> "Timing":
        """Summarise raw times: median and the spread between the 25th and 75th percentiles."""
        times = tuple(float(t) for t in times_s)
        if not times:
            raise ValueError("need at least one time to summarise, got none")
        if len(times) == 1:
            return cls(times[0], 0.0, times)
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        return cls(statistics.median(times), q3 - q1, times)

    @property
    def repeats(self) -> int:
        return len(self.times_s)

    def __str__(self) -> str:
        return f"{format_seconds(self.median_s)} ± {format_seconds(self.iqr_s / 2)} (median ± IQR/2, n={self.repeats})"


def _check_callable(fn: Any, what: str = "fn") -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable (a function of no arguments), got {type(fn).__name__}")


def _check_counts(warmup: int | None, repeats: int | None) -> tuple[int, int]:
    """Fill ``None`` from the current profile and validate: warm-up >= 0, repeats >= 1."""
    if warmup is None or repeats is None:
        profile = get_profile()
        warmup = profile.bench_warmup if warmup is None else warmup
        repeats = profile.bench_repeats if repeats is None else repeats
    for name, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    return warmup, repeats


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds taken by one call of ``fn``; on CUDA measured between two events and synchronised."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    _synchronize(device)
    begin = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - begin


class _NoGC:
    """Keep Python's cyclic garbage collector out of the timed region (as ``timeit`` does)."""

    def __enter__(self) -> None:
        gc.collect()
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: Any) -> None:
        if self.was_enabled:
            gc.enable()


def _timed_runs(fns: Sequence[Callable[[], Any]], warmup: int, repeats: int, device: torch.device) -> list[list[float]]:
    """Warm every function up, then time them interleaved: repeat r runs fns in turn (order alternating)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    _synchronize(device)
    times: list[list[float]] = [[] for _ in fns]
    with _NoGC():
        for r in range(repeats):
            order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
            for i in order:
                times[i].append(_time_once(fns[i], device))
    return times


@contextlib.contextmanager
def cpu_threads(n: int = 1) -> Iterator[None]:
    """Run the CPU work inside on ``n`` threads, then restore the previous count.

    Small CPU kernels run faster on one thread, and their timings are far steadier when other processes
    compete for the cores; measurements quoted in the book say how many threads they used.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_fn(fn: Callable[[], Any], *, warmup: int | None = None, repeats: int | None = None,
            device: str | torch.device | None = None) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (``None``: the current profile's
    ``bench_warmup`` / ``bench_repeats``). ``device`` says where the work runs (default: the default device)."""
    _check_callable(fn)
    warmup, repeats = _check_counts(warmup, repeats)
    (times,) = _timed_runs([fn], warmup, repeats, resolve_device(device))
    return Timing.from_times(times)


# ----------------------------------------------------------------------------------------------------------
# memory and FLOPs
# ----------------------------------------------------------------------------------------------------------


def _cpu_peak_from_profiler(fn: Callable[[], Any]) -> int:
    """Run ``fn`` under the profiler and replay its CPU allocation (+) and free (-) events in time order;
    the peak is the largest running total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda item: item[0])
    running = peak = 0
    for _, n_bytes in events:
        running += n_bytes
        peak = max(peak, running)
    return peak


def peak_memory(fn: Callable[[], Any], device: str | torch.device | None = None, *, warmup: int = 1) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before it started.

    CUDA: ``reset_peak_memory_stats`` then ``max_memory_allocated - memory_allocated(before)``. CPU: the running
    total of the torch profiler's memory events (``profile_memory=True``), a measurement, not an estimate.
    ``warmup`` calls run first so that one-time allocations (workspaces, caches) are not counted.
    """
    _check_callable(fn)
    _check_counts(warmup, 1)
    dev = resolve_device(device)
    for _ in range(warmup):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        gc.collect()
        baseline = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return max(0, torch.cuda.max_memory_allocated(dev) - baseline)
    if dev.type == "cpu":
        return _cpu_peak_from_profiler(fn)
    raise ValueError(f"peak_memory measures 'cpu' and 'cuda' devices, got {dev.type!r}")


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (2 per multiply-add), from ``FlopCounterMode``.

    Counts the operators PyTorch knows a formula for (matmuls, convolutions, attention); elementwise work is 0.
    """
    _check_callable(fn)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------------
# side-by-side comparison
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """labkit against its reference, measured in one process. ``ratio`` = labkit time / reference time."""

    name: str
    labkit: Timing
    reference: Timing
    labkit_peak_bytes: int | None = None
    reference_peak_bytes: int | None = None
    mode: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.labkit.median_s / self.reference.median_s if self.reference.median_s > 0 else float("inf")

    @property
    def memory_ratio(self) -> float | None:
        if self.labkit_peak_bytes is None or not self.reference_peak_bytes:
            return None
        return self.labkit_peak_bytes / self.reference_peak_bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of the measurement (times in seconds, memory in bytes)."""
        return {
            "name": self.name,
            "mode": self.mode,
            "params": dict(self.params),
            "labkit_s": self.labkit.median_s,
            "labkit_iqr_s": self.labkit.iqr_s,
            "reference_s": self.reference.median_s,
            "reference_iqr_s": self.reference.iqr_s,
            "ratio": self.ratio,
            "repeats": self.labkit.repeats,
            "memory": {
                "labkit_peak_bytes": self.labkit_peak_bytes,
                "reference_peak_bytes": self.reference_peak_bytes,
                "ratio": self.memory_ratio,
            },
        }

    def __str__(self) -> str:
        mode = f" ({self.mode})" if self.mode else ""
        text = (f"{self.name}{mode}: labkit {format_seconds(self.labkit.median_s)} vs reference "
                f"{format_seconds(self.reference.median_s)}, ratio {self.ratio:.2f}")
        if self.labkit_peak_bytes is not None:
            text += (f"; peak memory {format_bytes(self.labkit_peak_bytes)} vs "
                     f"{format_bytes(self.reference_peak_bytes)}")
        return text


def compare(labkit_fn: Callable[[], Any], reference_fn: Callable[[], Any], *, name: str,
            warmup: int | None = None, repeats: int | None = None, device: str | torch.device | None = None,
            memory: bool = True, mode: str = "", params: dict[str, Any] | None = None) -> Comparison:
    """Time ``labkit_fn`` and ``reference_fn`` with the same warm-up and interleaved repeats (so drifts in
    clock speed or load hit both), and measure their peak memory when ``memory`` is true."""
    _check_callable(labkit_fn, "labkit_fn")
    _check_callable(reference_fn, "reference_fn")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    warmup, repeats = _check_counts(warmup, repeats)
    dev = resolve_device(device)
    labkit_times, reference_times = _timed_runs([labkit_fn, reference_fn], warmup, repeats, dev)
    labkit_peak = reference_peak = None
    if memory and dev.type in ("cpu", "cuda"):
        labkit_peak = peak_memory(labkit_fn, dev, warmup=0)
        reference_peak = peak_memory(reference_fn, dev, warmup=0)
    return Comparison(name, Timing.from_times(labkit_times), Timing.from_times(reference_times),
                      labkit_peak, reference_peak, mode, dict(params or {}))


# ----------------------------------------------------------------------------------------------------------
# registry, results file and command line
# ----------------------------------------------------------------------------------------------------------

Benchmark = Callable[[torch.device, Profile], Any]
_REGISTRY: dict[str, Benchmark] = {}


def register(name: str) -> Callable[[Benchmark], Benchmark]:
    """Decorator: add ``f(device, profile) -> Comparison | list[Comparison] | dict[str, Comparison]`` under ``name``."""
    if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
        raise ValueError(f"benchmark name must be a non-empty str without spaces, got {name!r}")

    def decorator(fn: Benchmark) -> Benchmark:
        _check_callable(fn, "benchmark")
        existing = _REGISTRY.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"benchmark {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        _REGISTRY[name] = fn
        return fn

    return decorator


def _discover() -> None:
    """Import every module of ``labkit.benchmarks`` so that their ``@register`` calls run."""
    import labkit.benchmarks as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def registered() -> dict[str, Benchmark]:
    """Every registered benchmark, by name (after importing ``labkit/benchmarks/*``)."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def _select(names: Iterable[str] | None) -> list[str]:
    """Registered names matching ``names``: exact names, or topic prefixes such as ``'transformer'``."""
    available = registered()
    if names is None:
        return list(available)
    if isinstance(names, str):
        names = [names]
    chosen: list[str] = []
    for wanted in names:
        matches = [n for n in available if n == wanted or n.startswith(wanted.rstrip(".") + ".")]
        if not matches:
            raise ValueError(f"unknown benchmark {wanted!r}: expected one of {list(available)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def _as_comparisons(name: str, result: Any) -> list[Comparison]:
    if isinstance(result, Comparison):
        return [result]
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (list, tuple)) and all(isinstance(item, Comparison) for item in result):
        return list(result)
    raise TypeError(f"benchmark {name!r} must return a Comparison, a list or a dict of them, "
                    f"got {type(result).__name__}")


def _resolve_profile(profile: str | Profile | None) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def run(names: Iterable[str] | None = None, device: str | torch.device | None = None,
        profile: str | Profile | None = None, *, progress: bool = True,
        errors: dict[str, BaseException] | None = None) -> dict[str, list[Comparison]]:
    """Run the named benchmarks (all when ``None``) and return their comparisons by benchmark name.

    A benchmark that raises is skipped when ``errors`` is a dict (the exception is stored there), else re-raised.
    """
    dev = resolve_device(device)
    prof = _resolve_profile(profile)
    selected = _select(names)
    results: dict[str, list[Comparison]] = {}
    bar = progress_bar(selected, desc="benchmarks", enabled=progress, unit="bench")
    for name in bar:
        bar.set_postfix_str(name)
        try:
            results[name] = _as_comparisons(name, _REGISTRY[name](dev, prof))
        except Exception as err:  # noqa: BLE001 - reported to the caller
            if errors is None:
                raise
            errors[name] = err
    return results


def results_path(device: str | torch.device | None = None) -> Path:
    """``benchmarks/results/<device_slug>.json`` in the repository (else under the current directory)."""
    repo = Path(__file__).resolve().parent.parent
    root = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return root / "benchmarks" / "results" / f"{device_slug(device)}.json"


def load_results(path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """The results file as a dict ``{"device": ..., "entries": {name: entry}}`` (empty entries when absent)."""
    target = Path(path) if path is not None else results_path(device)
    if not target.exists():
        return {"entries": {}}
    with open(target, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise ValueError(f"{target} is not a labkit results file: expected an object with an 'entries' object")
    return data


def save_results(results: dict[str, list[Comparison]], path: str | os.PathLike | None = None, *,
                 device: str | torch.device | None = None, profile: str | Profile | None = None) -> Path:
    """Merge ``results`` into the JSON results file (entries replaced by name, others kept); atomic write."""
    dev = resolve_device(device)
    prof = _resolve_profile(profile)
    target = Path(path) if path is not None else results_path(dev)
    data = load_results(target)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    header = {"device": describe_device(dev), "device_slug": device_slug(dev), "torch": torch.__version__}
    data.update(header)
    for benchmark, comparisons in results.items():
        for comparison in comparisons:
            entry = comparison.to_dict()
            entry.update(benchmark=benchmark, profile=prof.name, timestamp=stamp, **header)
            data["entries"][comparison.name] = entry
    data["entries"] = dict(sorted(data["entries"].items()))
    from labkit.cache import atomic_write

    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(target, lambda handle: handle.write(text))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labkit.bench [names] [--device D] [--profile P] [--json PATH] [--list] [--no-progress]``."""
    parser = argparse.ArgumentParser(prog="python -m labkit.bench",
                                     description="Run labkit-vs-PyTorch benchmarks and merge the results into "
                                                 "benchmarks/results/<device>.json.")
    parser.add_argument("names", nargs="*", help="benchmark names or topic prefixes (default: all)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best present)")
    parser.add_argument("--profile", default=None, help="smoke, cpu or gpu (default: $LABKIT_PROFILE or by device)")
    parser.add_argument("--json", dest="json_path", default=None, help="results file (default: benchmarks/results/<device>.json)")
    parser.add_argument("--list", action="store_true", help="list the registered benchmarks and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.list:
        for name, fn in registered().items():
            summary = (fn.__doc__ or "").strip().splitlines()
            print(f"{name}\t{summary[0] if summary else ''}")
        return 0
    try:
        device = resolve_device(args.device)
        profile = get_profile(args.profile)
        _select(args.names or None)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    errors: dict[str, BaseException] = {}
    results = run(args.names or None, device, profile, progress=not args.no_progress, errors=errors)
    for comparisons in results.values():
        for comparison in comparisons:
            print(comparison)
    if results:
        path = save_results(results, args.json_path, device=device, profile=profile)
        print(f"results merged into {path}")
    for name, err in errors.items():
        print(f"benchmark {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    # Run the imported module's main so that benchmarks register into the same registry as labkit.bench.
    from labkit.bench import main as _main

    sys.exit(_main())
