"""Mixed precision from scratch: an autocast, a dynamic loss scaler, and fp32 master weights.

The recipe of Micikevicius et al. 2018 ("Mixed Precision Training", §3), which the source paper (Mei et al. 2024,
arXiv:2405.11704) credits with faster convergence and a smaller memory footprint:

1. **Autocast** (:class:`autocast`): matmul-like ops run in fp16/bf16 (tensor cores; half the bytes), while ops
   whose result depends on many terms or on a wide range (softmax, norms, losses, reductions, exp/log) run in
   fp32. Parameters stay fp32; autograd casts gradients back through every cast.
2. **Loss scaling** (:class:`GradScaler`): fp16 flushes gradients below ``2^-24`` to zero. Back-propagating
   ``S·L`` gives ``S·∇L`` (every backward op is linear in its incoming gradient), lifting small gradients into
   range; unscaling divides by ``S`` in fp32. Dynamic scaling halves ``S`` when a gradient overflows (the step is
   skipped) and doubles it after ``growth_interval`` clean steps.
3. **Master weights** (:class:`MasterWeightTrainer`): an update ``lr·g`` smaller than half the fp16 spacing of a
   weight ``w`` rounds away (``w + Δ = w``); keeping an fp32 copy of the weights for the optimizer and copying
   them down to the fp16 model after each step keeps those updates.

From scratch: nothing here calls ``torch.autocast``/``torch.amp`` or ``torch.amp.GradScaler`` (or its fused
``_amp_*`` kernels); they are the references in the tests and benchmarks.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import threading
import warnings
from enum import Enum
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.overrides import TorchFunctionMode

__all__ = [
    "LOW_PRECISION_OPS",
    "FP32_OPS",
    "TORCH_CPU_FP32_OPS",
    "KNOWN_OPS",
    "autocast",
    "is_autocast_enabled",
    "get_autocast_dtype",
    "update_scale",
    "GradScaler",
    "MasterWeightTrainer",
]

# ----------------------------------------------------------------------------------------------------------
# the op lists: which ops run in the low dtype, which in fp32, and why
# ----------------------------------------------------------------------------------------------------------

_MATMUL = "a matmul: tensor cores run it in fp16/bf16 and accumulate in fp32; half the bytes to move"
_CONV = "a convolution is a matmul in disguise (same reason)"

LOW_PRECISION_OPS: dict[str, str] = {
    "linear": _MATMUL,
    "matmul": _MATMUL,
    "mm": _MATMUL,
    "bmm": _MATMUL,
    "addmm": _MATMUL,
    "baddbmm": _MATMUL,
    "addbmm": _MATMUL,
    "einsum": _MATMUL + " (torch lowers einsum to bmm)",
    "conv1d": _CONV,
    "conv2d": _CONV,
    "conv3d": _CONV,
    "conv_transpose1d": _CONV,
    "conv_transpose2d": _CONV,
    "scaled_dot_product_attention": "two matmuls around a softmax that fused kernels keep in fp32 internally",
}
"""Matmul-like ops: their float inputs (fp32/fp16/bf16, not fp64) are cast to the autocast dtype."""

_LOSS = "a loss sums or averages many per-token terms and takes logs: accumulation error and range"
_REDUCTION = "a reduction accumulates many terms: in fp16/bf16 small terms stop counting (see formats.naive_sum)"
_NORM = "mean and variance of many numbers, then 1/sqrt(var + eps): accumulation error and tiny variances"

FP32_OPS: dict[str, str] = {
    "softmax": "exp overflows fp16 for logits above ~11; the row sum needs precision",
    "log_softmax": "exp and log over a row: range (exp) and cancellation (log of a sum)",
    "cross_entropy": _LOSS,
    "nll_loss": _LOSS,
    "mse_loss": _LOSS + " (squares overflow fp16 above 256)",
    "l1_loss": _LOSS,
    "smooth_l1_loss": _LOSS,
    "binary_cross_entropy_with_logits": _LOSS,
    "kl_div": _LOSS,
    "layer_norm": _NORM,
    "group_norm": _NORM,
    "sum": _REDUCTION,
    "mean": _REDUCTION + "; labkit's from-scratch layer_norm is built from mean and pow",
    "cumsum": _REDUCTION,
    "prod": _REDUCTION + "; products overflow or underflow quickly",
    "norm": _REDUCTION + "; squares overflow fp16",
    "vector_norm": _REDUCTION + "; squares overflow fp16",
    "logsumexp": "exp over a row (range) and a sum (precision)",
    "exp": "exp(x) overflows fp16 for x > 11.1 and underflows below -17",
    "log": "log near 1 loses the digits the input did not have",
    "pow": "x^p multiplies the relative error of x by p and overflows fp16 quickly",
    "rsqrt": "1/sqrt of a small variance amplifies its error (the heart of layer norm)",
}
"""Precision-sensitive ops: their fp16/bf16 inputs are cast up to fp32 (fp32 and fp64 inputs are left alone).
The list follows torch's CUDA autocast policy (plus ``mean``); labkit applies it on every device."""

TORCH_CPU_FP32_OPS = frozenset({"cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
                                "binary_cross_entropy_with_logits", "kl_div", "prod"})
"""The ops of :data:`FP32_OPS` that torch's *CPU* autocast also runs in fp32. The rest (softmax, norms, sums,
exp, ...) torch's CPU autocast leaves in their input dtype: bf16 has fp32's exponent range, so they cannot
overflow, only lose precision. ``autocast("cpu", fp32_ops=TORCH_CPU_FP32_OPS)`` reproduces torch's CPU policy."""


def _op_functions() -> dict[str, tuple[Callable, ...]]:
    """The Python-level functions and Tensor methods through which each op reaches ``__torch_function__``."""
    T = torch.Tensor
    return {
        "linear": (F.linear,),
        "matmul": (torch.matmul, T.matmul, T.__matmul__, T.__rmatmul__),
        "mm": (torch.mm, T.mm),
        "bmm": (torch.bmm, T.bmm),
        "addmm": (torch.addmm, T.addmm),
        "baddbmm": (torch.baddbmm, T.baddbmm),
        "addbmm": (torch.addbmm, T.addbmm),
        "einsum": (torch.einsum,),
        "conv1d": (F.conv1d,),
        "conv2d": (F.conv2d,),
        "conv3d": (F.conv3d,),
        "conv_transpose1d": (F.conv_transpose1d,),
        "conv_transpose2d": (F.conv_transpose2d,),
        "scaled_dot_product_attention": (F.scaled_dot_product_attention,),
        "softmax": (torch.softmax, T.softmax, F.softmax),
        "log_softmax": (torch.log_softmax, T.log_softmax, F.log_softmax),
        "cross_entropy": (F.cross_entropy,),
        "nll_loss": (F.nll_loss,),
        "mse_loss": (F.mse_loss,),
        "l1_loss": (F.l1_loss,),
        "smooth_l1_loss": (F.smooth_l1_loss,),
        "binary_cross_entropy_with_logits": (F.binary_cross_entropy_with_logits,),
        "kl_div": (F.kl_div,),
        "layer_norm": (F.layer_norm, torch.layer_norm),
        "group_norm": (F.group_norm, torch.group_norm),
        "sum": (torch.sum, T.sum),
        "mean": (torch.mean, T.mean),
        "cumsum": (torch.cumsum, T.cumsum),
        "prod": (torch.prod, T.prod),
        "norm": (torch.norm, T.norm),
        "vector_norm": (torch.linalg.vector_norm,),
        "logsumexp": (torch.logsumexp, T.logsumexp),
        "exp": (torch.exp, T.exp),
        "log": (torch.log, T.log),
        "pow": (torch.pow, T.pow, T.__pow__, T.__rpow__),
        "rsqrt": (torch.rsqrt, T.rsqrt),
    }


_OP_NAME: dict[Callable, str] = {fn: name for name, fns in _op_functions().items() for fn in fns}
KNOWN_OPS = frozenset(_op_functions())

# ----------------------------------------------------------------------------------------------------------
# autocast
# ----------------------------------------------------------------------------------------------------------

_LOW_DTYPES = (torch.float16, torch.bfloat16)
_DEVICE_TYPES = ("cpu", "cuda")
_DEFAULT_DTYPE = {"cpu": torch.bfloat16, "cuda": torch.float16}


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.innermost: dict[str, "autocast"] = {}  # device type -> the context that governs it now
        self.depth = 0  # open labkit autocast contexts (any device)
        self.cache: dict[tuple[int, torch.dtype], tuple[Tensor, int, Tensor]] = {}


_state = _ThreadState()


def _check_op_names(name: str, ops: Iterable[str] | None, default: Iterable[str]) -> frozenset[str]:
    if ops is None:
        return frozenset(default)
    if isinstance(ops, str):
        raise TypeError(f"{name} must be a collection of op names, got the str {ops!r}")
    ops = frozenset(ops)
    unknown = sorted(ops - KNOWN_OPS)
    if unknown:
        raise ValueError(f"{name} has unknown ops {unknown}; expected names from {sorted(KNOWN_OPS)}")
    return ops


class autocast:
    """Run matmul-like ops in a low-precision dtype and precision-sensitive ops in fp32, inside a ``with`` block.

    ``autocast(device_type="cpu"|"cuda", dtype=None, enabled=True, cache_enabled=True)`` has ``torch.autocast``'s
    arguments (``dtype`` defaults to bf16 on CPU and fp16 on CUDA). Built on a ``TorchFunctionMode``: each call of
    an op named in ``low_precision_ops`` (default :data:`LOW_PRECISION_OPS`) gets its fp32/fp16/bf16 tensor
    arguments on ``device_type`` cast to ``dtype``; each op in ``fp32_ops`` (default :data:`FP32_OPS`) gets its
    fp16/bf16 arguments cast to fp32. float64 tensors, integer tensors and other devices are never touched. Every
    other op runs as called, and torch's type promotion decides mixed inputs (``bf16 + fp32 -> fp32``), as under
    torch's autocast. Casts are differentiable, so gradients reach fp32 parameters in fp32.

    Nesting: the innermost context for a device type governs it (``enabled=False`` inside switches autocast off).
    ``cache_enabled``: a leaf tensor that requires grad (a parameter) is cast once per outermost context and the
    cast reused (re-cast if the parameter changes in place). Also usable as a decorator.
    Differences from torch: torch's CPU autocast keeps softmax/norms/sums in the input dtype (see
    :data:`TORCH_CPU_FP32_OPS`); torch intercepts aten ops, this intercepts the Python-level functions listed in
    ``_op_functions`` (so e.g. ``F.gelu`` is "the rest").
    """

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype | None = None, enabled: bool = True,
                 cache_enabled: bool = True, *, low_precision_ops: Iterable[str] | None = None,
                 fp32_ops: Iterable[str] | None = None) -> None:
        if not isinstance(device_type, str) or device_type not in _DEVICE_TYPES:
            raise ValueError(f"device_type must be one of {_DEVICE_TYPES}, got {device_type!r}")
        if dtype is None:
            dtype = _DEFAULT_DTYPE[device_type]
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {type(dtype).__name__}")
        if dtype not in _LOW_DTYPES:
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        for name, flag in (("enabled", enabled), ("cache_enabled", cache_enabled)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.device_type, self.dtype, self.enabled, self.cache_enabled = device_type, dtype, enabled, cache_enabled
        self.low_precision_ops = _check_op_names("low_precision_ops", low_precision_ops, LOW_PRECISION_OPS)
        self.fp32_ops = _check_op_names("fp32_ops", fp32_ops, FP32_OPS)
        both = sorted(self.low_precision_ops & self.fp32_ops)
        if both:
            raise ValueError(f"ops {both} are in both low_precision_ops and fp32_ops: pick one list for each")
        self._entries: list[tuple[_AutocastMode, autocast | None]] = []

    def __enter__(self) -> "autocast":
        mode = _AutocastMode(self)
        self._entries.append((mode, _state.innermost.get(self.device_type)))
        _state.innermost[self.device_type] = self
        _state.depth += 1
        mode.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        mode, previous = self._entries.pop()
        mode.__exit__(*exc_info)
        if previous is None:
            _state.innermost.pop(self.device_type, None)
        else:
            _state.innermost[self.device_type] = previous
        _state.depth -= 1
        if _state.depth == 0:
            _state.cache.clear()  # as torch: the cast cache lives as long as the outermost context

    def __call__(self, fn: Callable) -> Callable:
        """Use as a decorator: ``fn`` runs inside a fresh context with these settings."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with autocast(self.device_type, self.dtype, self.enabled, self.cache_enabled,
                          low_precision_ops=self.low_precision_ops, fp32_ops=self.fp32_ops):
                return fn(*args, **kwargs)

        return wrapper

    # ---- casting ----------------------------------------------------------------------------------------------

    def _cast(self, value: Any, dtype: torch.dtype, sources: tuple[torch.dtype, ...]) -> Any:
        """``value`` with every tensor on this device whose dtype is in ``sources`` cast to ``dtype`` (recursing
        into lists and tuples, e.g. ``torch.einsum``'s operands)."""
        if isinstance(value, Tensor):
            if value.dtype not in sources or value.dtype == dtype or value.device.type != self.device_type:
                return value
            return self._cached_cast(value, dtype)
        if type(value) in (list, tuple):
            return type(value)(self._cast(item, dtype, sources) for item in value)
        return value

    def _cached_cast(self, tensor: Tensor, dtype: torch.dtype) -> Tensor:
        if not (self.cache_enabled and tensor.is_leaf and tensor.requires_grad and torch.is_grad_enabled()):
            return tensor.to(dtype)
        key = (id(tensor), dtype)
        hit = _state.cache.get(key)
        if hit is not None and hit[0] is tensor and hit[1] == tensor._version:
            return hit[2]
        cast = tensor.to(dtype)
        _state.cache[key] = (tensor, tensor._version, cast)
        return cast

    def _convert(self, op: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if op in self.low_precision_ops:
            dtype, sources = self.dtype, (torch.float32, torch.float16, torch.bfloat16)
        elif op in self.fp32_ops:
            dtype, sources = torch.float32, _LOW_DTYPES
        else:
            return args, kwargs
        return (self._cast(args, dtype, sources),
                {key: self._cast(value, dtype, sources) for key, value in kwargs.items()})


class _AutocastMode(TorchFunctionMode):
    """Sees every torch function call while active; casts the arguments of the listed ops."""

    def __init__(self, context: autocast) -> None:
        super().__init__()
        self.context = context

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        try:
            op = _OP_NAME.get(func)
        except TypeError:  # an unhashable callable: not one of ours
            op = None
        context = self.context
        if op is not None and context.enabled and _state.innermost.get(context.device_type) is context:
            args, kwargs = context._convert(op, args, kwargs)
        return func(*args, **kwargs)


def is_autocast_enabled(device_type: str = "cpu") -> bool:
    """Whether a labkit :class:`autocast` context governs ``device_type`` now (the innermost one is enabled)."""
    if device_type not in _DEVICE_TYPES:
        raise ValueError(f"device_type must be one of {_DEVICE_TYPES}, got {device_type!r}")
    context = _state.innermost.get(device_type)
    return context is not None and context.enabled


def get_autocast_dtype(device_type: str = "cpu") -> torch.dtype:
    """The low dtype of the innermost labkit autocast on ``device_type`` (the default dtype when there is none)."""
    if device_type not in _DEVICE_TYPES:
        raise ValueError(f"device_type must be one of {_DEVICE_TYPES}, got {device_type!r}")
    context = _state.innermost.get(device_type)
    return context.dtype if context is not None else _DEFAULT_DTYPE[device_type]


# ----------------------------------------------------------------------------------------------------------
# dynamic loss scaling
# ----------------------------------------------------------------------------------------------------------


def _float32(value: float) -> float:
    """``value`` rounded to float32 (the scale is stored as a float32 tensor), inf when it overflows."""
    return torch.tensor(value, dtype=torch.float64).float().item()


def update_scale(scale: float, growth_tracker: int, found_inf: bool, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> tuple[float, int]:
    """The dynamic loss-scale rule: ``(new_scale, new_growth_tracker)``.

    Overflow found: ``S ← S·backoff_factor``, tracker ← 0 (the step was skipped). Else the tracker counts clean
    steps; at ``growth_interval`` of them ``S ← S·growth_factor`` (kept only if finite in float32) and the tracker
    restarts at 0. Products are rounded to float32 once, as torch's ``_amp_update_scale_`` does.
    """
    if found_inf:
        return _float32(scale * backoff_factor), 0
    successful = growth_tracker + 1
    if successful == growth_interval:
        grown = _float32(scale * growth_factor)
        return (grown if math.isfinite(grown) else scale), 0
    return scale, successful


class OptState(Enum):
    """Where an optimizer is in one iteration: nothing done, gradients unscaled, or stepped."""

    READY = 0
    UNSCALED = 1
    STEPPED = 2


def _fresh_optimizer_state() -> dict[str, Any]:
    return {"stage": OptState.READY, "found_inf_per_device": {}}


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _growth_factor(value: Any) -> float:
    if _positive_number("growth_factor", value) <= 1.0:
        raise ValueError(f"growth_factor must be > 1.0, got {value}")
    return float(value)


def _backoff_factor(value: Any) -> float:
    if not _positive_number("backoff_factor", value) < 1.0:
        raise ValueError(f"backoff_factor must be in (0, 1), got {value}")
    return float(value)


def _growth_interval(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"growth_interval must be a positive int, got {value!r}")
    return int(value)


class GradScaler:
    """Dynamic loss scaling with ``torch.amp.GradScaler``'s interface and behaviour (Micikevicius et al. 2018, §3.2).

    ``scale(loss)`` returns ``S·loss``; its backward gives ``S·∇L``. ``unscale_(optimizer)`` multiplies the
    optimizer's gradients by ``1/S`` (computed in float64, stored float32) and records per device whether any
    *scaled* gradient was inf/NaN. ``step(optimizer)`` unscales if needed and calls ``optimizer.step()`` only when
    nothing overflowed. ``update()`` applies :func:`update_scale` to the overflows of all optimizers of the
    iteration (or sets ``new_scale``). ``enabled=False`` makes every method a no-op and ``step`` a plain step.
    Same errors as torch on misuse (unscale_ twice, unscale_ after step, step twice, fp16 gradients); bad
    constructor arguments raise ``ValueError`` (torch: ``AssertionError``). The scale lives on the device of the
    first scaled output; deciding to skip reads the overflow flag on the host (one sync a step, as torch).
    """

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True) -> None:
        if not isinstance(device, str):
            raise TypeError(f"device must be a device type str such as 'cuda' or 'cpu', got {type(device).__name__}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        self._device = device
        self._enabled = enabled
        if device == "cuda" and enabled and not torch.cuda.is_available():
            warnings.warn("labkit GradScaler is enabled, but CUDA is not available.  Disabling.", stacklevel=2)
            self._enabled = False
        self._init_scale = _positive_number("init_scale", init_scale)
        self._growth_factor = _growth_factor(growth_factor)
        self._backoff_factor = _backoff_factor(backoff_factor)
        self._growth_interval = _growth_interval(growth_interval)
        self._init_growth_tracker = 0
        self._scale: Tensor | None = None  # created by the first scale(), on the outputs' device
        self._growth_tracker: Tensor | None = None
        self._per_optimizer_states: dict[int, dict[str, Any]] = {}

    # ---- scaling -----------------------------------------------------------------------------------------------

    def _lazy_init(self, device: torch.device) -> None:
        self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=device)
        self._growth_tracker = torch.full((), self._init_growth_tracker, dtype=torch.int32, device=device)

    def _require_scale(self, funcname: str) -> Tensor:
        if self._scale is None:
            raise RuntimeError(f"Attempted {funcname} but the scale is not set: call scaler.scale(loss or outputs) "
                               "earlier in the iteration")
        return self._scale

    def scale(self, outputs: Tensor | Iterable[Tensor]) -> Tensor | Iterable[Tensor]:
        """``S·outputs`` for a tensor, or for each tensor of a (nested) list/tuple/iterable; unchanged if disabled."""
        if not self._enabled:
            return outputs
        per_device: dict[torch.device, Tensor] = {}

        def apply(value: Any) -> Any:
            if isinstance(value, Tensor):
                if self._scale is None:
                    self._lazy_init(value.device)
                if value.device not in per_device:
                    per_device[value.device] = self._scale.to(value.device)
                return value * per_device[value.device]
            if isinstance(value, (list, tuple)):
                return type(value)(apply(item) for item in value)
            if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
                return map(apply, value)
            raise ValueError(f"outputs must be a Tensor or an iterable of Tensors, got {type(value).__name__}")

        return apply(outputs)

    def _state_of(self, optimizer: Optimizer) -> dict[str, Any]:
        return self._per_optimizer_states.setdefault(id(optimizer), _fresh_optimizer_state())

    @staticmethod
    def _unscale_grads_(optimizer: Optimizer, inv_scale: Tensor, allow_fp16: bool) -> dict[torch.device, Tensor]:
        """Check every gradient for inf/NaN (before unscaling, as torch), then multiply it by ``inv_scale`` in
        place. Returns a float32 flag (0 or 1) per device."""
        found_inf: dict[torch.device, Tensor] = {}
        inv_scales: dict[torch.device, Tensor] = {}
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    if not allow_fp16 and param.grad.dtype == torch.float16:
                        raise ValueError("Attempting to unscale FP16 gradients.")
                    grad = param.grad
                    if grad.is_sparse:  # unscale the stored values (coalesced: duplicates summed first)
                        if grad.dtype == torch.float16:
                            param.grad = grad = grad.coalesce()
                        grad = grad._values()
                    device = grad.device
                    if device not in found_inf:
                        found_inf[device] = torch.zeros((), dtype=torch.float32, device=device)
                        inv_scales[device] = inv_scale.to(device)
                    nonfinite = torch.logical_not(torch.isfinite(grad)).any()
                    torch.maximum(found_inf[device], nonfinite.float(), out=found_inf[device])
                    grad.mul_(inv_scales[device])
        return found_inf

    def unscale_(self, optimizer: Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the scale, in place, and record overflows.

        Optional before :meth:`step` (e.g. to clip unscaled gradients); at most once per optimizer per iteration.
        """
        if not self._enabled:
            return
        scale = self._require_scale("unscale_")
        state = self._state_of(optimizer)
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        inv_scale = scale.double().reciprocal().float()  # 1/S in float64, as torch does
        state["found_inf_per_device"] = self._unscale_grads_(optimizer, inv_scale, allow_fp16=False)
        state["stage"] = OptState.UNSCALED

    def step(self, optimizer: Optimizer, *args: Any, **kwargs: Any) -> Any:
        """``unscale_(optimizer)`` if not done yet, then ``optimizer.step(*args, **kwargs)`` unless an inf/NaN was
        found (the step is skipped: parameters stay as they were). Returns what ``optimizer.step`` returned."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._require_scale("step")
        state = self._state_of(optimizer)
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        if not state["found_inf_per_device"]:
            raise RuntimeError("No inf checks were recorded for this optimizer: none of its parameters has a "
                               "gradient")
        result = None
        if not sum(flag.item() for flag in state["found_inf_per_device"].values()):
            result = optimizer.step(*args, **kwargs)
        state["stage"] = OptState.STEPPED
        return result

    def found_inf(self, optimizer: Optimizer) -> bool:
        """Whether this iteration's gradients of ``optimizer`` held an inf/NaN (after ``unscale_``/``step``)."""
        state = self._per_optimizer_states.get(id(optimizer))
        return bool(state) and any(flag.item() for flag in state["found_inf_per_device"].values())

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """Set the scale for the next iteration by :func:`update_scale` from this iteration's overflows (any
        optimizer), or to ``new_scale``; then forget the per-optimizer states."""
        if not self._enabled:
            return
        scale = self._require_scale("update")
        if new_scale is not None:
            if isinstance(new_scale, Tensor):
                if new_scale.numel() != 1 or new_scale.requires_grad:
                    raise ValueError("new_scale must be a float or a 1-element tensor with requires_grad=False, "
                                     f"got shape {tuple(new_scale.shape)}, requires_grad={new_scale.requires_grad}")
                scale.copy_(new_scale.reshape(()))
            elif isinstance(new_scale, numbers.Real) and not isinstance(new_scale, bool):
                scale.fill_(float(new_scale))
            else:
                raise TypeError(f"new_scale must be a float or a tensor, got {type(new_scale).__name__}")
        else:
            flags = [flag for state in self._per_optimizer_states.values()
                     for flag in state["found_inf_per_device"].values()]
            if not flags:
                raise RuntimeError("No inf checks were recorded prior to update(): call scaler.step(optimizer) "
                                   "(or unscale_) first")
            found = sum(flag.item() for flag in flags) > 0
            value, tracker = update_scale(scale.item(), int(self._growth_tracker.item()), found,
                                          self._growth_factor, self._backoff_factor, self._growth_interval)
            scale.fill_(value)
            self._growth_tracker.fill_(tracker)
        self._per_optimizer_states = {}

    # ---- accessors and state -----------------------------------------------------------------------------------

    def get_scale(self) -> float:
        """The current scale as a Python float (``init_scale`` before the first :meth:`scale`; 1.0 if disabled)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else self._scale.item()

    def _get_growth_tracker(self) -> int:
        if not self._enabled:
            return 0
        return self._init_growth_tracker if self._growth_tracker is None else int(self._growth_tracker.item())

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = _growth_factor(new_factor)

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = _backoff_factor(new_factor)

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = _growth_interval(new_interval)

    def is_enabled(self) -> bool:
        return self._enabled

    def state_dict(self) -> dict[str, Any]:
        """``{"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}`` as torch (empty
        when disabled); loads into ``torch.amp.GradScaler`` and back."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a no-op when disabled)."""
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        missing = sorted({"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
                         - set(state_dict))
        if missing:
            raise ValueError(f"state_dict is missing keys {missing}")
        self._init_scale = _positive_number("scale", state_dict["scale"])
        self._growth_factor = _growth_factor(state_dict["growth_factor"])
        self._backoff_factor = _backoff_factor(state_dict["backoff_factor"])
        self._growth_interval = _growth_interval(state_dict["growth_interval"])
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._scale is not None:
            self._scale.fill_(self._init_scale)
        if self._growth_tracker is not None:
            self._growth_tracker.fill_(self._init_growth_tracker)


# ----------------------------------------------------------------------------------------------------------
# fp32 master weights
# ----------------------------------------------------------------------------------------------------------


class MasterWeightTrainer:
    """The classic recipe (Micikevicius et al. 2018, §3.1): a low-precision working copy of the model runs the
    forward and backward passes; the optimizer updates fp32 master weights.

    ``model`` (fp32) holds the master weights and ``optimizer`` must own exactly its parameters. The trainer keeps
    ``self.model``, a copy in ``dtype``. One :meth:`step`: forward/backward of ``scaler.scale(loss_fn(self.model))``
    in ``dtype``; gradients copied up to fp32 (``g_master = float(g_low)``); ``scaler.step(optimizer)`` unscales
    them (÷S), skips on overflow, updates ``w_master``; ``scaler.update()``; weights copied down
    (``w_low = round(w_master)``). Without a scaler the step is unscaled. An update below half the ``dtype``
    spacing of a weight, lost in a pure low-precision update, still accumulates in the master copy.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer, *, dtype: torch.dtype = torch.float16,
                 scaler: GradScaler | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if scaler is not None and not isinstance(scaler, GradScaler):
            raise TypeError(f"scaler must be a labkit.amp.GradScaler or None, got {type(scaler).__name__}")
        self.master_params = [p for p in model.parameters() if p.requires_grad]
        for p in self.master_params:
            if p.dtype != torch.float32:
                raise TypeError(f"the master model must be float32, got a parameter of dtype {p.dtype}")
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if optimized != {id(p) for p in self.master_params}:
            raise ValueError("optimizer must own exactly the trainable parameters of model (the fp32 master "
                             f"weights): it has {len(optimized)} tensors, the model {len(self.master_params)}")
        self.master_model, self.optimizer, self.dtype, self.scaler = model, optimizer, dtype, scaler
        self.model = copy.deepcopy(model).to(dtype)
        self.model_params = [p for p in self.model.parameters() if p.requires_grad]
        self.skipped_steps = 0

    def step(self, loss_fn: Callable[[nn.Module], Tensor]) -> Tensor:
        """One training step; ``loss_fn(low_precision_model)`` returns a scalar loss. Returns the loss (fp32)."""
        self.model.zero_grad(set_to_none=True)
        loss = loss_fn(self.model)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        scaled.backward()
        self.copy_grads_to_master()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.skipped_steps += int(self.scaler.found_inf(self.optimizer))
            self.scaler.update()
        else:
            self.optimizer.step()
        self.copy_master_to_model()
        return loss.detach().float()

    @torch.no_grad()
    def copy_grads_to_master(self) -> None:
        """``master.grad = float32(model.grad)`` for every parameter (None stays None)."""
        for master, low in zip(self.master_params, self.model_params):
            master.grad = None if low.grad is None else low.grad.to(torch.float32, copy=True)

    @torch.no_grad()
    def copy_master_to_model(self) -> None:
        """``model.weight = round_to_dtype(master.weight)`` for every parameter."""
        for master, low in zip(self.master_params, self.model_params):
            low.copy_(master)
