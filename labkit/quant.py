"""Quantization from scratch: uniform affine quantizers, integer linears, PTQ, QAT and SmoothQuant.

A ``b``-bit uniform affine quantizer maps a real ``x`` to an integer ``q`` and back (Jacob et al. 2018, §2)::

    q = clamp(round(x / Δ) + z, q_min, q_max)          x̂ = Δ · (q − z)

with step (scale) ``Δ`` and zero point ``z`` chosen from a range ``[lo, hi]``: asymmetric ``Δ = (hi − lo) /
(q_max − q_min)``, ``z = q_min − round(lo / Δ)``; symmetric ``z = 0``, ``Δ = max(|lo|, |hi|) / q_max``. Integers are
signed, ``q_min = −2^(b−1)``, ``q_max = 2^(b−1) − 1``, for both (so every format fits an ``int8`` tensor). Inside the
range the error ``x̂ − x`` is uniform on ``[−Δ/2, Δ/2]``: variance ``Δ²/12``; outside it grows with the distance
(clipping). The range is one per tensor, per output channel (row) or per group of ``group_size`` consecutive
inputs of a row; it is calibrated by min-max, a percentile of ``|x|``, or a search for the clipping ratio of least
squared error.

The source paper (Mei et al. 2024, arXiv:2405.11704) and the article (003 §2.2.2) say quantization "greatly
reduces model size and inference delay while keeping accuracy"; the chapter measures how true that is.

Modules: :class:`Int8DynamicLinear` (W8A8: int8 per-channel weights, int8 per-token activations, an integer
matmul with int32 accumulation through ``torch._int_mm`` where the build has it, else an exact emulation that says
so), :class:`WeightOnlyLinear` (int8/int4 group-wise weights, dequantized to float for the matmul; a Triton
kernel on CUDA), :class:`FakeQuantLinear` (QAT with the straight-through estimator). :func:`quantize_model` swaps
a model's linears; :func:`smooth_scales` is SmoothQuant's per-channel migration (Xiao et al. 2023, §4).

From scratch: nothing here calls ``torch.ao.quantization``, ``torch.quantize_per_*`` or torchao; they are the
references in the tests, benchmarks and notebook.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GRANULARITIES", "CALIBRATIONS", "quant_range", "rounding_noise_variance", "calibrate_range", "compute_qparams",
    "quantize", "dequantize", "fake_quantize", "QuantizedTensor", "quantize_tensor", "pack_int4", "unpack_int4",
    "int8_matmul", "int8_matmul_backend", "quantize_per_token", "Int8DynamicLinear", "WeightOnlyLinear",
    "FakeQuantLinear", "QuantConfig", "QuantReport", "quantize_model", "prepare_qat", "convert_qat",
    "linear_weight_bytes", "model_bytes", "activation_absmax", "smooth_scales", "inject_outlier_channels",
]

GRANULARITIES = ("tensor", "channel", "group")
CALIBRATIONS = ("minmax", "percentile", "mse")
_EPS = torch.finfo(torch.float32).eps
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_bits(bits: Any) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    return bits


def _check_float(x: Any, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a floating-point tensor (float32/float64/float16/bfloat16), got {x.dtype}")
    return x


def _check_finite(x: Tensor, name: str = "x") -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains inf or nan: a quantizer's range must be finite (clean or clip it first)")


def _check_granularity(granularity: Any, group_size: Any, in_features: int) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group":
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if in_features % group_size:
            raise ValueError(f"group_size {group_size} must divide the input dimension {in_features}")


# ----------------------------------------------------------------------------------------------------------
# the quantizer: range -> (scale, zero point) -> integers -> values
# ----------------------------------------------------------------------------------------------------------


def quant_range(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits`` bits: ``(−2^(b−1), 2^(b−1) − 1)``."""
    _check_bits(bits)
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def rounding_noise_variance(scale: Tensor | float) -> Tensor | float:
    """Variance of round-to-nearest error inside the range: e ~ U[−Δ/2, Δ/2] gives E[e²] = Δ²/12."""
    return scale * scale / 12


def _grouped(x: Tensor, granularity: str, group_size: int | None) -> Tensor:
    """View a 2-D ``x`` (rows, cols) as (rows', groups, group) so that one range is one last-dim slice:
    tensor (1, 1, N), channel (rows, 1, cols), group (rows, cols/g, g)."""
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D (out_features, in_features) tensor, got shape {tuple(x.shape)}")
    _check_granularity(granularity, group_size, x.size(1))
    if granularity == "tensor":
        return x.reshape(1, 1, -1)
    if granularity == "channel":
        return x.unsqueeze(1)
    return x.reshape(x.size(0), x.size(1) // group_size, group_size)


def compute_qparams(lo: Tensor, hi: Tensor, bits: int, symmetric: bool = True) -> tuple[Tensor, Tensor]:
    """Scale and zero point of a range (Jacob et al. 2018, §2.1). The range is widened to contain 0 (so that 0 is
    exact); a zero-width range gets the smallest positive scale (``finfo(float32).eps``) as torch's observers do.
    Asymmetric: ``Δ = (hi − lo)/(q_max − q_min)``, ``z = q_min − round(lo/Δ)``; symmetric: ``Δ = max|·|/q_max``, z = 0."""
    qmin, qmax = quant_range(bits)
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp_min(eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(eps)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """``q = clamp(round(x/Δ) + z, q_min, q_max)`` as int8 (``round`` is torch's: halves to even). ``scale`` and
    ``zero_point`` broadcast against ``x``. NaN has no integer: it raises; ±inf saturate to q_max/q_min."""
    _check_float(x)
    if bool(torch.isnan(x).any()):
        raise ValueError("x contains nan, which no integer represents")
    qmin, qmax = quant_range(bits)
    q = torch.round(x.float() / scale) + zero_point
    return q.clamp(qmin, qmax).to(torch.int8)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``x̂ = Δ·(q − z)``, in ``dtype``."""
    return ((q.float() - zero_point) * scale).to(dtype)


def calibrate_range(x: Tensor, method: str = "minmax", *, bits: int = 8, symmetric: bool = True,
                    percentile: float = 99.9, grid: int = 20) -> tuple[Tensor, Tensor]:
    """The range ``(lo, hi)`` of each last-dim slice of ``x`` (shape (..., n) -> (..., 1)).

    * ``minmax``: the extremes (no clipping; the step grows with the largest value);
    * ``percentile``: the ``percentile``-th percentile of ``|x|`` (symmetric) or of each tail (asymmetric);
    * ``mse``: the min-max range shrunk by the ratio in ``linspace(1/grid, 1, grid)`` whose quantize-dequantize
      has the least squared error: the clipping-versus-rounding trade-off, searched.
    """
    _check_float(x)
    if method not in CALIBRATIONS:
        raise ValueError(f"method must be one of {CALIBRATIONS}, got {method!r}")
    _check_finite(x)
    x = x.float()
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
        n = x.size(-1)
        k = max(1, min(n, math.ceil(percentile / 100 * n)))
        if symmetric:
            hi = x.abs().kthvalue(k, dim=-1, keepdim=True).values
            lo = -hi
        else:
            hi = x.kthvalue(k, dim=-1, keepdim=True).values
            lo = x.kthvalue(max(1, n + 1 - k), dim=-1, keepdim=True).values
    elif method == "mse":
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for ratio in torch.linspace(1.0 / grid, 1.0, grid).tolist():
            scale, zp = compute_qparams(lo * ratio, hi * ratio, bits, symmetric)
            err = (dequantize(quantize(x, scale, zp, bits), scale, zp) - x).pow(2).sum(-1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo * ratio, best_lo), torch.where(better, hi * ratio, best_hi)
        lo, hi = best_lo, best_hi
    return lo, hi


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """``x̂ = Δ·(clamp(round(x/Δ) + z) − z)`` in ``x``'s dtype, differentiable by the clipped straight-through
    estimator: ``∂x̂/∂x = 1`` where ``round(x/Δ) + z`` lies in ``[q_min, q_max]``, else 0 (Bengio et al. 2013)."""
    _check_float(x)
    return _FakeQuantizeSTE.apply(x, scale, zero_point, bits)


class _FakeQuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
        qmin, qmax = quant_range(bits)
        unclamped = torch.round(x / scale) + zero_point
        ctx.save_for_backward((unclamped >= qmin) & (unclamped <= qmax))
        return ((unclamped.clamp(qmin, qmax) - zero_point) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None, None]:
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None


# ----------------------------------------------------------------------------------------------------------
# a quantized weight matrix and the packed int4 format
# ----------------------------------------------------------------------------------------------------------


def pack_int4(q: Tensor) -> Tensor:
    """Two 4-bit integers a byte: ``q`` (..., 2n) int8 in [−8, 7] -> (..., n) uint8, element 2j in the low
    nibble and 2j+1 in the high one, each stored offset by 8 (``q + 8`` in 0..15)."""
    if q.dtype != torch.int8 or q.size(-1) % 2:
        raise ValueError(f"q must be int8 with an even last dimension, got {q.dtype} of shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got [{int(q.min())}, {int(q.max())}]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """The inverse of :func:`pack_int4`: (..., n) uint8 -> (..., 2n) int8 in [−8, 7]."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8, got {packed.dtype}")
    values = torch.empty(*packed.shape[:-1], 2 * packed.size(-1), dtype=torch.int8, device=packed.device)
    values[..., 0::2] = packed & 0xF
    values[..., 1::2] = packed >> 4
    return values.sub_(8)


@dataclass
class QuantizedTensor:
    """A weight matrix (out, in) as integers plus one (scale, zero point) per range: ``data`` is int8 (out, in),
    or uint8 (out, in/2) when ``bits == 4`` (packed); ``scale``/``zero_point`` are (out or 1, groups)."""

    data: Tensor
    scale: Tensor
    zero_point: Tensor
    bits: int
    shape: tuple[int, int]
    granularity: str
    group_size: int | None
    symmetric: bool

    @property
    def packed(self) -> bool:
        return self.data.dtype == torch.uint8

    def int_values(self) -> Tensor:
        """The integers, unpacked, int8 (out, in)."""
        return unpack_int4(self.data) if self.packed else self.data

    def _broadcast(self, t: Tensor) -> Tensor:
        """(rows, groups) -> (out, in), each value repeated over its range."""
        out_features, in_features = self.shape
        return t.repeat_interleave(in_features // t.size(1), dim=1).expand(out_features, in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``Δ·(q − z)`` as a float (out, in) matrix: the integers viewed as (rows, groups, group) times each
        group's scale (no broadcast copy of the scales)."""
        out_features, in_features = self.shape
        groups = self.scale.size(1)
        q = self.int_values().reshape(self.scale.size(0), groups, -1).to(dtype)
        if not self.symmetric:
            q = q - self.zero_point.unsqueeze(-1).to(dtype)
        return (q * self.scale.unsqueeze(-1).to(dtype)).reshape(out_features, in_features)

    @property
    def nbytes(self) -> int:
        """Bytes stored: the integers (4-bit packed, else one byte each), fp32 scales, int32 zero points unless
        symmetric (then z = 0 need not be stored)."""
        n = self.data.numel() * self.data.element_size() + self.scale.numel() * 4
        return n + (0 if self.symmetric else self.zero_point.numel() * 4)

    @property
    def ideal_nbytes(self) -> float:
        """Bytes with ``bits`` bits an integer (what a packed format of that width would store)."""
        return self.nbytes - self.data.numel() * self.data.element_size() + self.shape[0] * self.shape[1] * self.bits / 8


def quantize_tensor(weight: Tensor, bits: int = 8, granularity: str = "channel", group_size: int | None = 128, *,
                    symmetric: bool = True, method: str = "minmax", percentile: float = 99.9) -> QuantizedTensor:
    """Quantize a (out, in) weight with one range per tensor, output channel or group of ``group_size`` inputs,
    calibrated by ``method`` (:func:`calibrate_range`); 4-bit weights are packed two a byte."""
    _check_float(weight, "weight")
    _check_bits(bits)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    _check_finite(weight, "weight")
    grouped = _grouped(weight.detach().float(), granularity, group_size)
    lo, hi = calibrate_range(grouped, method, bits=bits, symmetric=symmetric, percentile=percentile)
    scale, zero_point = compute_qparams(lo, hi, bits, symmetric)
    q = quantize(grouped, scale, zero_point, bits).reshape(weight.shape)
    data = pack_int4(q) if bits == 4 and weight.size(1) % 2 == 0 else q
    return QuantizedTensor(data, scale.squeeze(-1), zero_point.squeeze(-1), bits, tuple(weight.shape), granularity,
                           group_size if granularity == "group" else None, symmetric)


# ----------------------------------------------------------------------------------------------------------
# integer matmul
# ----------------------------------------------------------------------------------------------------------

_INT_MM_WORKS: dict[str, bool] = {}


def _int_mm_available(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` (int8 × int8 -> int32) runs on this device type in this build (tried once)."""
    if device.type not in _INT_MM_WORKS:
        try:
            a = torch.ones(32, 32, dtype=torch.int8, device=device)
            _INT_MM_WORKS[device.type] = bool((torch._int_mm(a, a) == 32).all())
        except (RuntimeError, AttributeError, NotImplementedError):
            _INT_MM_WORKS[device.type] = False
    return _INT_MM_WORKS[device.type]


def int8_matmul_backend(device: str | torch.device = "cpu") -> str:
    """Which integer matmul :func:`int8_matmul` uses on ``device``: ``"torch._int_mm"`` (a real int8 kernel with
    int32 accumulation: oneDNN/fbgemm on x86 CPUs, cuBLASLt on CUDA) or ``"emulated"`` (the same integers
    multiplied in float64, exact for |sums| < 2^53, not faster than float)."""
    return "torch._int_mm" if _int_mm_available(torch.device(device)) else "emulated"


def int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for int8 ``a`` (M, K) and ``b`` (K, N), accumulated in int32 (exact): ``torch._int_mm`` where
    available (CUDA needs M > 16, so short inputs are padded with zero rows), else an exact float64 emulation."""
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2 or a.size(1) != b.size(0):
        raise ValueError(f"int8_matmul needs int8 (M, K) and (K, N), got {a.dtype} {tuple(a.shape)} and "
                         f"{b.dtype} {tuple(b.shape)}")
    if _int_mm_available(a.device):
        if a.device.type == "cuda" and (a.size(0) <= 16 or a.size(1) % 8 or b.size(1) % 8):
            if a.size(1) % 8 == 0 and b.size(1) % 8 == 0:
                rows = a.size(0)
                padded = torch.cat([a, a.new_zeros(17 - rows if rows <= 16 else 0, a.size(1))])
                return torch._int_mm(padded, b)[:rows]
        else:
            return torch._int_mm(a, b)
    return (a.double() @ b.double()).to(torch.int32)


def quantize_per_token(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric quantization of each row (token) of ``x`` (M, K): ``Δ_m = max_k |x_mk| / q_max``;
    returns (int8 (M, K), scales (M, 1))."""
    scale, zero = compute_qparams(x.amin(-1, keepdim=True).float(), x.amax(-1, keepdim=True).float(), bits)
    return quantize(x, scale, zero, bits), scale


# ----------------------------------------------------------------------------------------------------------
# modules that compute in low precision
# ----------------------------------------------------------------------------------------------------------


def _check_linear(linear: Any) -> nn.Linear:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
    _check_float(linear.weight, "linear.weight")
    return linear


class Int8DynamicLinear(nn.Module):
    """W8A8 linear: ``y = (Δ_x Δ_w) ⊙ (q_x q_wᵀ) + b`` with per-channel symmetric int8 weights, activations
    quantized to int8 on the fly (per token, or per tensor; or with a fixed calibrated scale), and the product of
    integers accumulated in int32 (:func:`int8_matmul`). NaN inputs are not checked on this hot path (their
    integers are undefined). ``input_scale`` (optional, per input channel) divides the
    input first: SmoothQuant's migration (in deployment folded into the previous layer norm)."""

    def __init__(self, weight: QuantizedTensor, bias: Tensor | None, activation: str = "token",
                 static_scale: float | None = None, input_scale: Tensor | None = None):
        super().__init__()
        if weight.bits != 8 or weight.granularity == "group" or not weight.symmetric or weight.packed:
            raise ValueError("Int8DynamicLinear needs an 8-bit symmetric per-tensor or per-channel weight")
        if activation not in ("token", "tensor", "static"):
            raise ValueError(f"activation must be 'token', 'tensor' or 'static', got {activation!r}")
        if activation == "static" and static_scale is None:
            raise ValueError("activation='static' needs static_scale (calibrate it with quantize_model)")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.activation = activation
        self.register_buffer("weight_int8", weight.data.contiguous())
        self.register_buffer("weight_scale", weight.scale.reshape(1, -1).expand(1, self.out_features).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("static_scale", None if static_scale is None else torch.tensor(float(static_scale)))
        self.register_buffer("input_scale", None if input_scale is None else input_scale.detach().float().clone())
        self.backend = int8_matmul_backend(self.weight_int8.device)

    @classmethod
    def from_float(cls, linear: nn.Linear, *, activation: str = "token", static_scale: float | None = None,
                   input_scale: Tensor | None = None, method: str = "minmax", percentile: float = 99.9,
                   granularity: str = "channel") -> "Int8DynamicLinear":
        linear = _check_linear(linear)
        weight = linear.weight.detach()
        if input_scale is not None:  # W' = W·diag(s) keeps (X/s) W'ᵀ = X Wᵀ
            weight = weight * input_scale.to(weight)
        qweight = quantize_tensor(weight, 8, granularity, None, method=method, percentile=percentile)
        return cls(qweight, linear.bias, activation, static_scale, input_scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.size(-1) != self.in_features:
            raise ValueError(f"input must have {self.in_features} features in its last dim, got {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features).float()
        if self.input_scale is not None:
            rows = rows / self.input_scale
        # symmetric int8 activations: Δ_x = max|x| / 127 per token (or per tensor, or calibrated); the same
        # arithmetic as quantize_per_token, inlined because at batch 1 each extra op costs as much as the matmul
        if self.activation == "token":
            scale_x = rows.abs().amax(-1, keepdim=True).clamp_min_(_EPS).div_(127)
        elif self.activation == "tensor":
            scale_x = rows.abs().amax().clamp_min_(_EPS).div_(127)
        else:
            scale_x = self.static_scale
        q_x = (rows / scale_x).round_().clamp_(-128, 127).to(torch.int8)
        acc = int8_matmul(q_x, self.weight_int8.t())  # int32 accumulation
        y = acc.float().mul_(scale_x * self.weight_scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def weight_nbytes(self) -> int:
        return self.weight_int8.numel() + self.weight_scale.numel() * 4

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}, "
                f"matmul={self.backend}, smoothed={self.input_scale is not None}")


class WeightOnlyLinear(nn.Module):
    """Weight-only linear: ``b``-bit integer weights (int4 packed two a byte) with per-tensor, per-channel or
    group-wise scales; ``y = x · dequant(W)ᵀ + b``, the matmul in ``x``'s float dtype. On CUDA with Triton (and
    4 or 8 bits, symmetric) the dequantize-and-matmul runs fused in :mod:`labkit.kernels.quant_matmul_triton`, which
    reads the small integers from memory instead of the float matrix (the batch-1 bottleneck). On the CPU the weight
    is dequantized each call: smaller to store, not faster."""

    def __init__(self, weight: QuantizedTensor, bias: Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.bits, self.granularity, self.group_size = weight.bits, weight.granularity, weight.group_size
        self.symmetric = weight.symmetric
        self.register_buffer("qdata", weight.data)
        self.register_buffer("scale", weight.scale.float())
        self.register_buffer("zero_point", weight.zero_point)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.use_kernel = True

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int = 4, granularity: str = "group", group_size: int | None = 128, *,
                   symmetric: bool = True, method: str = "minmax", percentile: float = 99.9) -> "WeightOnlyLinear":
        linear = _check_linear(linear)
        if granularity == "group" and group_size is not None and linear.in_features % group_size:
            group_size = math.gcd(group_size, linear.in_features)  # documented in QuantConfig: the largest divisor
        qweight = quantize_tensor(linear.weight, bits, granularity, group_size, symmetric=symmetric, method=method,
                                  percentile=percentile)
        return cls(qweight, linear.bias)

    def quantized_weight(self) -> QuantizedTensor:
        return QuantizedTensor(self.qdata, self.scale, self.zero_point, self.bits,
                               (self.out_features, self.in_features), self.granularity, self.group_size, self.symmetric)

    def forward(self, x: Tensor) -> Tensor:
        if x.size(-1) != self.in_features:
            raise ValueError(f"input must have {self.in_features} features in its last dim, got {tuple(x.shape)}")
        if self.use_kernel and x.is_cuda and self.bits in (4, 8) and self.symmetric:
            from labkit.kernels import quant_matmul_triton

            if quant_matmul_triton.supports(x, self.qdata, self.scale, self.bits):
                y = quant_matmul_triton.weight_only_matmul(x.reshape(-1, self.in_features), self.qdata, self.scale,
                                                           self.bits)
                y = y.reshape(*x.shape[:-1], self.out_features)
                return y if self.bias is None else y + self.bias.to(y.dtype)
        weight = self.quantized_weight().dequantize(x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def weight_nbytes(self) -> int:
        return self.quantized_weight().nbytes

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.granularity == "group" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"granularity={self.granularity}{group}, symmetric={self.symmetric}")


class FakeQuantLinear(nn.Linear):
    """A float linear whose forward uses fake-quantized weights (and optionally per-token fake-quantized inputs):
    the network sees the quantization error while training, and the straight-through estimator
    (:func:`fake_quantize`) lets gradients reach the float weights (quantization-aware training). The scales are
    recomputed from the current weights every step (min-max)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 4,
                 granularity: str = "group", group_size: int | None = 128, symmetric: bool = True,
                 activation_bits: int | None = None):
        super().__init__(in_features, out_features, bias)
        _check_bits(bits)
        if activation_bits is not None:
            _check_bits(activation_bits)
        if granularity == "group" and group_size is not None and in_features % group_size:
            group_size = math.gcd(group_size, in_features)
        _check_granularity(granularity, group_size, in_features)
        self.bits, self.granularity, self.group_size = bits, granularity, group_size
        self.symmetric, self.activation_bits = symmetric, activation_bits

    @classmethod
    def from_float(cls, linear: nn.Linear, **kwargs: Any) -> "FakeQuantLinear":
        linear = _check_linear(linear)
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        module.to(linear.weight.device, linear.weight.dtype)
        with torch.no_grad():
            module.weight.copy_(linear.weight)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def fake_quantized_weight(self) -> Tensor:
        grouped = _grouped(self.weight, self.granularity, self.group_size)
        lo, hi = grouped.detach().amin(-1, keepdim=True), grouped.detach().amax(-1, keepdim=True)
        scale, zero_point = compute_qparams(lo, hi, self.bits, self.symmetric)
        return fake_quantize(grouped, scale, zero_point, self.bits).reshape(self.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation_bits is not None:
            lo, hi = x.detach().amin(-1, keepdim=True), x.detach().amax(-1, keepdim=True)
            scale, zero_point = compute_qparams(lo.float(), hi.float(), self.activation_bits)
            x = fake_quantize(x, scale, zero_point, self.activation_bits)
        return F.linear(x, self.fake_quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bits={self.bits}, granularity={self.granularity}"


# ----------------------------------------------------------------------------------------------------------
# whole models: post-training quantization and quantization-aware training
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantConfig:
    """How :func:`quantize_model` quantizes a model's linears.

    ``weight_bits`` 2..8; ``activation``: ``None`` (weight-only, :class:`WeightOnlyLinear`), or with 8-bit weights
    ``"token"`` (dynamic per token), ``"tensor"`` (dynamic per tensor) or ``"static"`` (a per-tensor scale
    calibrated on ``calibration_batches``), all :class:`Int8DynamicLinear`. ``granularity`` "tensor" | "channel" |
    "group" (a ``group_size`` that does not divide a layer's input falls back to their gcd); ``method`` "minmax" |
    "percentile" | "mse"; ``skip``: names (or name suffixes) of linears kept in float; ``smooth_alpha``: SmoothQuant
    migration strength (needs calibration batches)."""

    weight_bits: int = 8
    activation: str | None = "token"
    granularity: str = "channel"
    group_size: int | None = 128
    symmetric: bool = True
    method: str = "minmax"
    percentile: float = 99.9
    skip: tuple[str, ...] = ()
    smooth_alpha: float | None = None

    def __post_init__(self) -> None:
        _check_bits(self.weight_bits)
        if self.activation not in (None, "token", "tensor", "static"):
            raise ValueError(f"activation must be None, 'token', 'tensor' or 'static', got {self.activation!r}")
        if self.activation is not None and (self.weight_bits != 8 or self.granularity == "group" or not self.symmetric):
            raise ValueError("quantized activations (W8A8) need weight_bits=8, symmetric, per-tensor or per-channel "
                             f"weights; got weight_bits={self.weight_bits}, granularity={self.granularity!r}, "
                             f"symmetric={self.symmetric}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.method not in CALIBRATIONS:
            raise ValueError(f"method must be one of {CALIBRATIONS}, got {self.method!r}")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise ValueError(f"smooth_alpha must be in [0, 1], got {self.smooth_alpha!r}")

    def describe(self) -> str:
        weights = f"W{self.weight_bits} {self.granularity}"
        if self.granularity == "group":
            weights += f"{self.group_size}"
        acts = "weight-only" if self.activation is None else f"A8 {self.activation}"
        smooth = f", SmoothQuant α={self.smooth_alpha}" if self.smooth_alpha is not None else ""
        return f"{weights}, {acts}, {self.method}{smooth}"


@dataclass
class QuantReport:
    """What :func:`quantize_model` did: bytes of the linears' weights (and of the whole model) before and after,
    which linears it quantized and which it kept in float."""

    config: QuantConfig
    linear_bytes_before: int
    linear_bytes_after: int
    model_bytes_before: int
    model_bytes_after: int
    quantized: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def linear_compression(self) -> float:
        return self.linear_bytes_before / max(1, self.linear_bytes_after)

    @property
    def model_compression(self) -> float:
        return self.model_bytes_before / max(1, self.model_bytes_after)

    def __str__(self) -> str:
        return (f"{self.config.describe()}: {len(self.quantized)} linears quantized, {len(self.kept)} kept in float; "
                f"quantized linears {self.linear_bytes_before / 1e6:.3f} MB -> {self.linear_bytes_after / 1e6:.3f} MB "
                f"({self.linear_compression:.2f}x), model {self.model_bytes_before / 1e6:.3f} MB -> "
                f"{self.model_bytes_after / 1e6:.3f} MB ({self.model_compression:.2f}x)")


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes of a (float or quantized) linear's weight and its scales (not the bias)."""
    if isinstance(module, (Int8DynamicLinear, WeightOnlyLinear)):
        return module.weight_nbytes()
    if isinstance(module, nn.Linear):
        return module.weight.numel() * module.weight.element_size()
    raise TypeError(f"expected a linear module, got {type(module).__name__}")


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each shared tensor counted once (tied embeddings)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _linears(model: nn.Module, skip: Sequence[str]) -> tuple[list[str], list[str]]:
    chosen, kept = [], []
    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            (kept if any(name == s or name.endswith("." + s) for s in skip) else chosen).append(name)
    return chosen, kept


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _run_batches(model: nn.Module, batches: Iterable[Any]) -> None:
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                model(*batch)
            elif isinstance(batch, dict):
                model(**batch)
            else:
                model(batch)


def activation_absmax(model: nn.Module, batches: Iterable[Any], names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Per-input-channel ``max |x_j|`` of the input of every ``nn.Linear`` (or of ``names``) over ``batches``
    (each a tensor, a tuple of positional arguments, or a dict of keyword arguments for ``model``)."""
    wanted = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] if names is None else list(names)
    stats: dict[str, Tensor] = {}
    hooks = []
    for name in wanted:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, name: str = name) -> None:
            current = inputs[0].detach().reshape(-1, inputs[0].size(-1)).abs().amax(0).float()
            stats[name] = current if name not in stats else torch.maximum(stats[name], current)
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        _run_batches(model, batches)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def smooth_scales(act_absmax: Tensor, weight: Tensor, alpha: float = 0.5) -> Tensor:
    """SmoothQuant's per-input-channel factor (Xiao et al. 2023, §4): ``s_j = max|X_j|^α / max_i |W_ij|^(1−α)``.
    With ``X' = X/s`` and ``W' = W·diag(s)``, ``X'W'ᵀ = XWᵀ`` while channel j's activation range becomes
    ``max|X_j|^(1−α)·max|W_j|^(1−α)`` and its weight range ``max|X_j|^α·max|W_j|^α``: α moves the difficulty from
    activations to weights. Zero channels get s = 1."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    w_absmax = weight.detach().abs().amax(0).float()
    if act_absmax.shape != w_absmax.shape:
        raise ValueError(f"act_absmax must have one value per input channel {tuple(w_absmax.shape)}, "
                         f"got {tuple(act_absmax.shape)}")
    s = act_absmax.float().pow(alpha) / w_absmax.pow(1 - alpha)
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


def quantize_model(model: nn.Module, config: QuantConfig = QuantConfig(),
                   calibration_batches: Iterable[Any] | None = None) -> tuple[nn.Module, QuantReport]:
    """Post-training quantization: a copy of ``model`` with every ``nn.Linear`` (except those named in
    ``config.skip``) swapped for :class:`Int8DynamicLinear` (``config.activation`` set) or
    :class:`WeightOnlyLinear`, and a :class:`QuantReport` of the sizes. ``calibration_batches`` (inputs for
    ``model``) are needed for static activation scales and for SmoothQuant; the model itself is not changed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    needs_data = config.activation == "static" or config.smooth_alpha is not None
    batches = list(calibration_batches) if calibration_batches is not None else None
    if needs_data and not batches:
        raise ValueError("static activation scales and SmoothQuant need calibration_batches")
    chosen, kept = _linears(model, config.skip)
    absmax = activation_absmax(model, batches, chosen) if needs_data else {}
    quantized = copy.deepcopy(model)
    linear_before = linear_after = 0
    for name in chosen:
        linear = quantized.get_submodule(name)
        linear_before += linear_weight_bytes(linear)
        if config.activation is None:
            new = WeightOnlyLinear.from_float(linear, config.weight_bits, config.granularity, config.group_size,
                                              symmetric=config.symmetric, method=config.method,
                                              percentile=config.percentile)
        else:
            smooth = None
            if config.smooth_alpha is not None:
                smooth = smooth_scales(absmax[name], linear.weight, config.smooth_alpha)
            static = None
            if config.activation == "static":
                seen = absmax[name] / (1 if smooth is None else smooth)
                static = float(seen.max().clamp_min(torch.finfo(torch.float32).eps)) / 127
            new = Int8DynamicLinear.from_float(linear, activation=config.activation, static_scale=static,
                                               input_scale=smooth, method=config.method,
                                               percentile=config.percentile, granularity=config.granularity)
        _set_module(quantized, name, new)
        linear_after += linear_weight_bytes(new)
    report = QuantReport(config, linear_before, linear_after, model_bytes(model), model_bytes(quantized), chosen, kept)
    return quantized.eval(), report


def prepare_qat(model: nn.Module, bits: int = 4, granularity: str = "group", group_size: int | None = 128, *,
                symmetric: bool = True, activation_bits: int | None = None, skip: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` with each ``nn.Linear`` (not in ``skip``) swapped for a :class:`FakeQuantLinear`: train it
    as usual (quantization-aware training), then :func:`convert_qat` to real integer weights."""
    chosen, _ = _linears(model, skip)
    prepared = copy.deepcopy(model)
    for name in chosen:
        _set_module(prepared, name, FakeQuantLinear.from_float(
            prepared.get_submodule(name), bits=bits, granularity=granularity, group_size=group_size,
            symmetric=symmetric, activation_bits=activation_bits))
    return prepared


def convert_qat(model: nn.Module) -> nn.Module:
    """A copy of a QAT-trained model with each :class:`FakeQuantLinear` replaced by the :class:`WeightOnlyLinear`
    holding the integers its forward was simulating (same scales, so the outputs agree)."""
    converted = copy.deepcopy(model)
    for name, module in list(converted.named_modules()):
        if isinstance(module, FakeQuantLinear):
            plain = nn.Linear(module.in_features, module.out_features, module.bias is not None)
            plain.load_state_dict(module.state_dict())
            _set_module(converted, name, WeightOnlyLinear.from_float(
                plain, module.bits, module.granularity, module.group_size, symmetric=module.symmetric))
    return converted.eval()


def inject_outlier_channels(model: nn.Module, channels: Sequence[int] = (0,), factor: float = 30.0) -> nn.Module:
    """A copy of a pre-norm labkit Transformer whose activations have outlier channels and whose function is
    unchanged: in every layer, the layer norms' weight and bias of ``channels`` are multiplied by ``factor`` and the
    matching input columns of the linears they feed (q, k, v projections; the FFN's first linear) divided by it.
    Large language models grow such channels by themselves (Dettmers et al. 2022); this small model does not, so
    the chapter makes them to study what they do to int8 activations."""
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    changed = copy.deepcopy(model)
    layers = [m for m in changed.modules() if hasattr(m, "norm1") and hasattr(m, "self_attn") and hasattr(m, "ffn")]
    if not layers or not all(getattr(layer, "norm_first", True) for layer in layers):
        raise ValueError("inject_outlier_channels needs a model of pre-norm labkit EncoderLayers")
    index = torch.as_tensor(list(channels), dtype=torch.long)
    with torch.no_grad():
        for layer in layers:
            attention = layer.self_attn
            for norm, linears in ((layer.norm1, (attention.q_proj, attention.k_proj, attention.v_proj)),
                                  (layer.norm2, (layer.ffn.up,))):
                norm.weight[index] *= factor
                if norm.bias is not None:
                    norm.bias[index] *= factor
                for linear in linears:
                    linear.weight[:, index] /= factor
    return changed
