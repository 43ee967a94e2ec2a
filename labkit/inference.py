"""Static graphs and the roofline: what ``torch.compile`` captures and what it buys, and where inference time goes.

003 §2.2.2 / §9.2: "a static graph builds the computation graph at compile time, a dynamic graph at run time;
static graphs speed up inference but need more compile time". In PyTorch 2 the two meet: the model is written
eagerly (dynamic), and ``torch.compile`` captures its Python bytecode into FX graphs (TorchDynamo), guarded by
the shapes and values it assumed, and hands them to a backend (Inductor: fused C++/Triton kernels). This module
measures that trade-off -- compile time against the speed-up, and the number of calls it takes to pay off --
and gives the roofline arithmetic (Williams et al. 2009) that explains why decoding one token at a time is
memory-bound: every weight is read once per step and used for ``2 * batch`` FLOPs.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from labkit.bench import Comparison, Timing, compare, time_fn
from labkit.device import resolve_device
from labkit.transformer import TransformerConfig

__all__ = [
    "inductor_available",
    "GraphRecorder",
    "explain",
    "CompileReport",
    "measure_compile",
    "break_even_calls",
    "linear_cost",
    "decode_step_cost",
    "attainable_flops",
    "ridge_point",
    "measure_matmul_flops",
    "measure_bandwidth",
]


# ---------------------------------------------------------------------------------------------------------------
# what dynamo captures


def inductor_available(device: str | torch.device | None = None) -> tuple[bool, str]:
    """Whether the Inductor backend can generate code here, and why not: a C++ compiler on the CPU, Triton on
    CUDA. (Returns ``(ok, reason)``; it does not try a compile.)"""
    dev = resolve_device(device)
    if dev.type == "cuda":
        from labkit.device import triton_available

        return (True, "Triton is installed") if triton_available() else (False, "Triton is not installed")
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if compiler is None:
        return False, "no C++ compiler (g++, c++ or clang++) on PATH: Inductor cannot build CPU kernels"
    return True, f"C++ compiler {compiler}"


class GraphRecorder:
    """A ``torch.compile`` backend that keeps every FX graph dynamo hands it and runs it unchanged (eagerly).

    ``torch.compile(fn, backend=recorder)``: each first call, each graph break and each recompilation (a guard
    that failed, e.g. a new input shape) adds one entry to ``graphs`` with the example inputs' shapes;
    ``symbolic`` says whether dynamo traced it with symbolic sizes (one graph for every size).
    """

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []
        self.input_shapes: list[list[tuple[int, ...]]] = []
        self.symbolic: list[bool] = []

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        self.graphs.append(graph_module)
        self.input_shapes.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        self.symbolic.append(any(isinstance(t, torch.SymInt) for t in example_inputs))  # compiled for any size
        return graph_module.forward

    @property
    def n_compiles(self) -> int:
        return len(self.graphs)

    def op_counts(self) -> list[int]:
        """Operations (``call_function`` / ``call_method`` / ``call_module`` nodes) in each captured graph."""
        kinds = {"call_function", "call_method", "call_module"}
        return [sum(node.op in kinds for node in g.graph.nodes) for g in self.graphs]


def explain(fn: Callable, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``torch._dynamo.explain``: how many graphs dynamo captured from ``fn(*args)``, how many graph breaks, and
    why (a short reason per break, with the user-code line where it happened)."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    import torch._dynamo

    torch._dynamo.reset()
    result = torch._dynamo.explain(fn)(*args, **kwargs)
    reasons = []
    for reason in result.break_reasons:
        text = reason.reason.strip().splitlines()[0]
        where = reason.user_stack[-1] if reason.user_stack else None
        if where is not None:
            text += f"  [{os.path.basename(where.filename)}:{where.lineno} {where.line.strip() if where.line else ''}]"
        reasons.append(text)
    return {"graph_count": result.graph_count, "graph_break_count": result.graph_break_count,
            "break_reasons": reasons, "op_count": result.op_count}


# ---------------------------------------------------------------------------------------------------------------
# compile time against speed-up


def break_even_calls(compile_s: float, eager_s: float, compiled_s: float) -> float:
    """Calls after which compiling has paid for itself: ``compile_s / (eager_s - compiled_s)``; ``inf`` when the
    compiled function is not faster."""
    saving = eager_s - compiled_s
    return compile_s / saving if saving > 0 else math.inf


@dataclass
class CompileReport:
    """One ``torch.compile`` measured: ``first_call_s`` (compile + first run), ``compile_s`` (that minus one
    compiled run), eager and compiled per-call times (interleaved), and the backend really used (``note`` says
    why, when it is not the one asked for)."""

    backend: str
    first_call_s: float
    compile_s: float
    comparison: Comparison
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def eager(self) -> Timing:
        return self.comparison.reference

    @property
    def compiled(self) -> Timing:
        return self.comparison.labkit

    @property
    def speedup(self) -> float:
        """Eager time / compiled time (above 1: compiling helped)."""
        return self.eager.median_s / self.compiled.median_s

    @property
    def break_even_calls(self) -> float:
        return break_even_calls(self.compile_s, self.eager.median_s, self.compiled.median_s)

    def __str__(self) -> str:
        calls = "never" if math.isinf(self.break_even_calls) else f"after {self.break_even_calls:,.0f} calls"
        note = f" ({self.note})" if self.note else ""
        return (f"{self.backend}{note}: compile {self.compile_s:.2f} s, eager {self.eager.median_s * 1e3:.3g} ms, "
                f"compiled {self.compiled.median_s * 1e3:.3g} ms, speed-up {self.speedup:.2f}x, pays off {calls}")


def measure_compile(fn: Callable, args: Sequence[Any], *, backend: str = "inductor", fallback: str | None = "aot_eager",
                    mode: str | None = None, dynamic: bool | None = None, fullgraph: bool = False,
                    warmup: int = 2, repeats: int = 5, device: str | torch.device | None = None,
                    name: str = "compile") -> CompileReport:
    """Compile ``fn`` with ``torch.compile``, time the first call (compilation included), then time eager and
    compiled calls interleaved (:func:`labkit.bench.compare`, labkit = compiled, reference = eager).

    If ``backend`` cannot compile here (no C++ compiler, a backend error), the error is caught and ``fallback``
    is used instead, and the report's ``note`` says so; with ``fallback=None`` the error propagates.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple or list of arguments, got {type(args).__name__}")
    import torch._dynamo

    dev = resolve_device(device)
    note = ""
    if backend == "inductor":
        ok, reason = inductor_available(dev)
        if not ok:
            if fallback is None:
                raise RuntimeError(f"the inductor backend cannot run here: {reason}")
            backend, note = fallback, f"inductor unavailable: {reason}"
    with torch.no_grad():
        eager_once = time_fn(lambda: fn(*args), warmup=1, repeats=1, device=dev).median_s
        while True:
            torch._dynamo.reset()
            options = {"mode": mode} if mode is not None else {}
            compiled = torch.compile(fn, backend=backend, dynamic=dynamic, fullgraph=fullgraph, **options)
            try:
                first_call_s = time_fn(lambda: compiled(*args), warmup=0, repeats=1, device=dev).median_s
                break
            except Exception as err:  # noqa: BLE001 - reported in the note, or re-raised
                if fallback is None or backend == fallback:
                    raise
                note = f"{backend} failed ({type(err).__name__}: {str(err).splitlines()[0][:120]}); used {fallback}"
                backend = fallback
        comparison = compare(lambda: compiled(*args), lambda: fn(*args), name=name, warmup=warmup, repeats=repeats,
                             device=dev, memory=False, mode="compiled vs eager")
    compile_s = max(first_call_s - comparison.labkit.median_s, 0.0)
    params = {"backend": backend, "eager_first_call_s": eager_once, "mode": mode, "dynamic": dynamic}
    return CompileReport(backend, first_call_s, compile_s, comparison, note, params)


# ---------------------------------------------------------------------------------------------------------------
# arithmetic intensity and the roofline


def _positive(name: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def linear_cost(n_tokens: int, d_in: int, d_out: int, bytes_per_value: int = 4) -> dict[str, float]:
    """A linear layer on n tokens: ``flops = 2 n d_in d_out``; ``bytes = (d_in d_out + n d_in + n d_out) * b``
    (weights, inputs and outputs each moved once); ``intensity = flops / bytes`` -> ``2 n / b`` while the
    weights dominate (n << d), ``2 d_in d_out / ((d_in + d_out) b)`` for large n."""
    n, d_i, d_o, b = (_positive(k, v) for k, v in
                      (("n_tokens", n_tokens), ("d_in", d_in), ("d_out", d_out), ("bytes_per_value", bytes_per_value)))
    flops = 2 * n * d_i * d_o
    moved = (d_i * d_o + n * d_i + n * d_o) * b
    return {"flops": flops, "bytes": moved, "intensity": flops / moved}


def decode_step_cost(config: TransformerConfig, batch_size: int, context_len: int,
                     bytes_per_value: int = 4) -> dict[str, float]:
    """FLOPs and bytes of one decode step of the GPT: one new token per sequence attending to ``S = context_len``
    cached tokens and itself.

    FLOPs (matmuls, 2 per multiply-add): ``B [L (8 d^2 + 4 d d_ff + 4 (S + 1) d) + 2 d V]``. Bytes: the weights
    once, ``[L (4 d^2 + 2 d d_ff) + V d] b``, plus the keys and values read, ``B 2 L (S + 1) d b``. At B = 1 and
    short contexts the intensity is about ``2 / b`` FLOP per byte: each weight (b bytes) serves one multiply-add.
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    batch = _positive("batch_size", batch_size)
    context = float(context_len) if isinstance(context_len, numbers.Integral) and context_len >= 0 else None
    if context is None:
        raise ValueError(f"context_len must be a non-negative int, got {context_len!r}")
    b = _positive("bytes_per_value", bytes_per_value)
    d, d_ff, n_layers, vocab = config.d_model, config.d_ff, config.n_layers, config.vocab_size
    weight_values = n_layers * (4 * d * d + 2 * d * d_ff) + vocab * d
    keys = context + 1
    flops = batch * (n_layers * (8 * d * d + 4 * d * d_ff + 4 * keys * d) + 2 * d * vocab)
    weight_bytes = weight_values * b
    cache_bytes = batch * 2 * n_layers * keys * d * b
    moved = weight_bytes + cache_bytes
    return {"flops": flops, "weight_bytes": weight_bytes, "cache_bytes": cache_bytes, "bytes": moved,
            "intensity": flops / moved}


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline: ``min(peak_flops, intensity * bandwidth)`` FLOP/s for a kernel of the given intensity."""
    peak = _positive("peak_flops", peak_flops)
    return min(peak, _positive("intensity", intensity) * _positive("bandwidth", bandwidth))


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where the roofline bends: below it a kernel is memory-bound."""
    return _positive("peak_flops", peak_flops) / _positive("bandwidth", bandwidth)


def measure_matmul_flops(n: int = 1024, *, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                         warmup: int = 1, repeats: int = 5) -> float:
    """Achieved FLOP/s of one (n x n) @ (n x n) product (``2 n^3`` FLOPs): a practical peak for the roofline."""
    if not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    dev = resolve_device(device)
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    seconds = time_fn(lambda: a @ b, warmup=warmup, repeats=repeats, device=dev).median_s
    return 2 * n**3 / seconds


def measure_bandwidth(n_bytes: int = 64 * 2**20, *, device: str | torch.device | None = None, warmup: int = 1,
                      repeats: int = 5) -> float:
    """Achieved memory bandwidth (bytes/s) of copying ``n_bytes`` (read + write = ``2 n_bytes`` moved); choose
    ``n_bytes`` well above the last-level cache to measure main memory."""
    if not isinstance(n_bytes, numbers.Integral) or n_bytes < 1024:
        raise ValueError(f"n_bytes must be an int >= 1024, got {n_bytes!r}")
    dev = resolve_device(device)
    source = torch.ones(int(n_bytes) // 4, dtype=torch.float32, device=dev)
    target = torch.empty_like(source)
    seconds = time_fn(lambda: target.copy_(source), warmup=warmup, repeats=repeats, device=dev).median_s
    return 2 * source.numel() * 4 / seconds
