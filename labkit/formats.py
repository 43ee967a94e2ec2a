"""Floating-point formats bit by bit: fp32, fp16, bf16 and the two fp8 formats, decoded, rounded and summed.

A binary float with ``E`` exponent bits, ``M`` mantissa bits and bias ``b`` stores a sign ``s``, an exponent field
``e`` and a mantissa field ``m``; its value is

* normal (``0 < e < e_max``): ``(-1)^s · 2^(e-b) · (1 + m/2^M)``;
* subnormal (``e = 0``): ``(-1)^s · 2^(1-b) · (m/2^M)`` (this includes ±0);
* special (``e`` all ones): ±inf (``m = 0``) or NaN (``m ≠ 0``) in the IEEE formats (fp32, fp16, bf16, e5m2);
  fp8 e4m3 ("e4m3fn": finite, NaN) has no infinity and spends only ``s.1111.111`` on NaN, so its largest
  value is ``2^8 · 1.75 = 448`` (Micikevicius et al. 2022, "FP8 Formats for Deep Learning", §3).

Rounding is round-to-nearest, ties to even (RNE). The machine epsilon ``2^-M`` bounds the relative rounding error
of normal numbers by ``2^-(M+1)``. Mixed precision training (Micikevicius et al. 2018, "Mixed Precision Training",
§3) keeps weights in fp32 and accumulates matmuls in fp32 because fp16's 10 mantissa bits lose small updates and
its 5 exponent bits flush small gradients to zero; bf16 keeps fp32's 8 exponent bits and gives up mantissa.
The source paper (Mei et al. 2024, arXiv:2405.11704) credits mixed precision with faster convergence and a smaller
memory footprint; this module is the number-format half of checking that claim.

Accumulation: :func:`naive_sum` adds one number at a time in a low-precision accumulator (each addition rounds);
:func:`kahan_sum` carries the rounding error of each addition in a compensation term (Kahan 1965, "Further
remarks on reducing truncation errors"), so its error no longer grows with the number of terms.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "FloatFormat",
    "FP32",
    "FP16",
    "BF16",
    "FP8_E4M3",
    "FP8_E5M2",
    "FORMATS",
    "get_format",
    "split_bits",
    "decode_bits",
    "decode_tensor",
    "encode_float",
    "round_to_format",
    "representable_values",
    "spacing",
    "range_fractions",
    "naive_sum",
    "kahan_sum",
]

NAN_ENCODINGS = ("ieee", "all_ones")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits`` (stored fraction bits).

    ``bias`` defaults to ``2^(E-1) - 1``. ``nan_encoding``: ``"ieee"`` (exponent all ones: inf when the mantissa
    is 0, else NaN) or ``"all_ones"`` (only exponent and mantissa all ones is NaN; the rest of the top binade holds
    finite numbers; needs ``has_inf=False``), the "fn" formats such as fp8 e4m3fn.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int | None = None
    has_inf: bool = True
    nan_encoding: str = "ieee"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        for field_name, low in (("exponent_bits", 2), ("mantissa_bits", 1)):
            value = getattr(self, field_name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not low <= value <= 23:
                raise ValueError(f"{field_name} must be an int in [{low}, 23], got {value!r}")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exponent_bits - 1) - 1)
        elif not isinstance(self.bias, numbers.Integral) or isinstance(self.bias, bool):
            raise TypeError(f"bias must be an int or None, got {type(self.bias).__name__}")
        if self.nan_encoding not in NAN_ENCODINGS:
            raise ValueError(f"nan_encoding must be one of {NAN_ENCODINGS}, got {self.nan_encoding!r}")
        if self.nan_encoding == "all_ones" and self.has_inf:
            raise ValueError("nan_encoding='all_ones' leaves no pattern for infinity: pass has_inf=False")
        if self.nan_encoding == "ieee" and not self.has_inf:
            raise ValueError("nan_encoding='ieee' reserves the all-ones exponent for inf and NaN: pass has_inf=True")

    # ---- layout ----------------------------------------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Total width: ``1 + E + M``."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def max_exponent(self) -> int:
        """Largest unbiased exponent of a finite number: ``2^E - 2 - b`` (IEEE), ``2^E - 1 - b`` ("fn")."""
        top_field = 2 ** self.exponent_bits - (2 if self.nan_encoding == "ieee" else 1)
        return top_field - self.bias

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number (and of every subnormal's scale): ``1 - b``."""
        return 1 - self.bias

    # ---- range and precision (the fields of torch.finfo) -----------------------------------------------------

    @property
    def max_normal(self) -> float:
        """Largest finite value: ``2^e_max · (2 - 2^-M)``; "fn" formats lose the top mantissa to NaN:
        ``2^e_max · (2 - 2^(1-M))`` (448 for e4m3fn)."""
        top_mantissa = 2 ** self.mantissa_bits - (1 if self.nan_encoding == "ieee" else 2)
        return math.ldexp(1 + top_mantissa / 2 ** self.mantissa_bits, self.max_exponent)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value ``2^(1-b)`` (``torch.finfo.tiny``)."""
        return math.ldexp(1.0, self.min_exponent)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value ``2^(1-b-M)``; anything below half of it rounds to zero."""
        return math.ldexp(1.0, self.min_exponent - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon ``2^-M``: the gap between 1 and the next representable number."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> int:
        """Decimal digits the mantissa always carries: ``floor(M · log10 2)`` (``torch.finfo`` ``resolution`` is
        ``10^-decimal_digits``)."""
        return int(math.floor(self.mantissa_bits * math.log10(2)))

    @property
    def resolution(self) -> float:
        """``10^-decimal_digits``, as ``torch.finfo(dtype).resolution``."""
        return 10.0 ** -self.decimal_digits

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype with this layout (``None`` when torch has none)."""
        return getattr(torch, _TORCH_DTYPE_NAMES.get(self.name, ""), None)

    @property
    def nan_bits(self) -> int:
        """The NaN this module encodes: a quiet NaN (top mantissa bit set) in IEEE formats, all ones in "fn"."""
        exponent_field = (2 ** self.exponent_bits - 1) << self.mantissa_bits
        if self.nan_encoding == "ieee":
            return exponent_field | (1 << (self.mantissa_bits - 1))
        return exponent_field | (2 ** self.mantissa_bits - 1)

    def __str__(self) -> str:
        return (f"{self.name} (1 sign, {self.exponent_bits} exponent, {self.mantissa_bits} mantissa bits, "
                f"bias {self.bias})")


FP32 = FloatFormat("fp32", 8, 23)
FP16 = FloatFormat("fp16", 5, 10)
BF16 = FloatFormat("bf16", 8, 7)
FP8_E4M3 = FloatFormat("fp8_e4m3", 4, 3, has_inf=False, nan_encoding="all_ones")  # OCP "e4m3fn"
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2)
FORMATS: dict[str, FloatFormat] = {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2)}
_TORCH_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp8_e4m3": "float8_e4m3fn",
                      "fp8_e5m2": "float8_e5m2"}
_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
            "e4m3": "fp8_e4m3", "e4m3fn": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3", "e5m2": "fp8_e5m2",
            "float8_e5m2": "fp8_e5m2"}


def get_format(fmt: FloatFormat | str | torch.dtype) -> FloatFormat:
    """A :class:`FloatFormat` from itself, a name (``"fp16"``, ``"bfloat16"``, ``"e4m3"``...) or a torch dtype."""
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, torch.dtype):
        key = str(fmt).removeprefix("torch.")
    elif isinstance(fmt, str):
        key = fmt.lower()
    else:
        raise TypeError(f"fmt must be a FloatFormat, a format name or a torch.dtype, got {type(fmt).__name__}")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown float format {fmt!r}: expected one of {sorted(FORMATS)} (or their torch dtypes)")
    return FORMATS[key]


# ----------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------


def _check_bits(bits: object, fmt: FloatFormat) -> int:
    if not isinstance(bits, numbers.Integral) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 0 <= bits < 2 ** fmt.bits:
        raise ValueError(f"bits must be in [0, 2^{fmt.bits}) for {fmt.name}, got {bits}")
    return int(bits)


def split_bits(bits: int, fmt: FloatFormat | str | torch.dtype) -> tuple[int, int, int]:
    """``(sign, exponent field, mantissa field)`` of an unsigned bit pattern, e.g. fp16 ``0x3C00 -> (0, 15, 0)``."""
    fmt = get_format(fmt)
    bits = _check_bits(bits, fmt)
    mantissa = bits & (2 ** fmt.mantissa_bits - 1)
    exponent = (bits >> fmt.mantissa_bits) & (2 ** fmt.exponent_bits - 1)
    return bits >> (fmt.bits - 1), exponent, mantissa


def decode_bits(bits: int, fmt: FloatFormat | str | torch.dtype) -> float:
    """The value of one bit pattern (an unsigned int below ``2^bits``), exactly, as a Python float.

    normal: ``(-1)^s · 2^(e-b) · (1 + m/2^M)``; subnormal (``e = 0``): ``(-1)^s · 2^(1-b) · m/2^M``;
    exponent all ones: inf/NaN (IEEE), or a normal number unless the mantissa is all ones (NaN) in "fn" formats.
    """
    fmt = get_format(fmt)
    sign, exponent, mantissa = split_bits(bits, fmt)
    top_exponent, top_mantissa = 2 ** fmt.exponent_bits - 1, 2 ** fmt.mantissa_bits - 1
    if exponent == top_exponent and fmt.nan_encoding == "ieee":
        magnitude = math.inf if mantissa == 0 else math.nan
    elif exponent == top_exponent and mantissa == top_mantissa:  # "fn": the one NaN per sign
        magnitude = math.nan
    elif exponent == 0:
        magnitude = math.ldexp(mantissa / 2 ** fmt.mantissa_bits, fmt.min_exponent)
    else:
        magnitude = math.ldexp(1 + mantissa / 2 ** fmt.mantissa_bits, exponent - fmt.bias)
    return -magnitude if sign else magnitude


def decode_tensor(bits: Tensor, fmt: FloatFormat | str | torch.dtype) -> Tensor:
    """:func:`decode_bits` for a whole integer tensor of bit patterns at once; returns float64 (exact).

    ``decode_tensor(torch.arange(2**16), "fp16")`` is every fp16 value, in bit-pattern order.
    """
    fmt = get_format(fmt)
    if not isinstance(bits, Tensor):
        raise TypeError(f"bits must be an integer torch.Tensor, got {type(bits).__name__}")
    if bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool:
        raise TypeError(f"bits must be an integer tensor, got dtype {bits.dtype}")
    bits = bits.long()
    if bits.numel() and (int(bits.min()) < 0 or int(bits.max()) >= 2 ** fmt.bits):
        raise ValueError(f"bits must be in [0, 2^{fmt.bits}) for {fmt.name}, got values in "
                         f"[{int(bits.min())}, {int(bits.max())}]")
    M = fmt.mantissa_bits
    sign = bits >> (fmt.bits - 1)
    exponent = (bits >> M) & (2 ** fmt.exponent_bits - 1)
    mantissa = (bits & (2 ** M - 1)).double()
    subnormal = torch.ldexp(mantissa, torch.tensor(fmt.min_exponent - M))  # 2^(1-b) · m/2^M
    normal = torch.ldexp(mantissa + 2 ** M, exponent - fmt.bias - M)  # 2^(e-b) · (1 + m/2^M)
    magnitude = torch.where(exponent == 0, subnormal, normal)
    top = exponent == 2 ** fmt.exponent_bits - 1
    if fmt.nan_encoding == "ieee":
        magnitude = torch.where(top, torch.where(mantissa == 0, math.inf, math.nan), magnitude)
    else:
        magnitude = torch.where(top & (mantissa == 2 ** M - 1), math.nan, magnitude)
    return torch.where(sign == 1, -magnitude, magnitude)


def representable_values(fmt: FloatFormat | str | torch.dtype, *, include_negative: bool = True) -> Tensor:
    """Every finite value of a format of at most 16 bits, sorted and without duplicates (``-0 == 0``), float64."""
    fmt = get_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"representable_values lists formats of at most 16 bits (65536 values), got {fmt.name} "
                         f"with {fmt.bits} bits")
    values = decode_tensor(torch.arange(2 ** fmt.bits), fmt)
    values = values[torch.isfinite(values)]
    if not include_negative:
        values = values[values >= 0]
    return torch.unique(values)  # sorted; -0.0 and 0.0 compare equal and merge


# ----------------------------------------------------------------------------------------------------------
# rounding and encoding
# ----------------------------------------------------------------------------------------------------------


def _ulp(magnitude: Tensor, fmt: FloatFormat) -> Tensor:
    """``2^(max(floor(log2 m), 1-b) - M)`` for float64 magnitudes ``m >= 0`` (``2^(1-b-M)`` at 0)."""
    _, frexp_exponent = torch.frexp(magnitude)  # m = f · 2^k with f in [0.5, 1): floor(log2 m) = k - 1
    exponent = torch.where(magnitude == 0, fmt.min_exponent, (frexp_exponent - 1).clamp_min(fmt.min_exponent))
    return torch.ldexp(torch.ones_like(magnitude), exponent - fmt.mantissa_bits)


def round_to_format(x: Tensor, fmt: FloatFormat | str | torch.dtype, saturate: bool = False) -> Tensor:
    """Round every element of ``x`` to the nearest value of ``fmt`` (ties to even), simulating a cast.

    With ``q = 2^(max(floor(log2|x|), 1-b) - M)`` the spacing of ``fmt`` around ``x`` (fixed ``2^(1-b-M)`` in the
    subnormal range), the result is ``q · round_half_even(|x| / q)`` with the sign of ``x``. A result above
    ``max_normal`` overflows to ±inf (IEEE formats) or NaN (fp8 e4m3fn), or to ±max_normal when ``saturate``
    (±inf inputs too). NaN stays NaN. Computed in float64, exact for float32 inputs; returns float32 (float64
    for a float64 ``x``). Note: torch's own cast to ``float8_e4m3fn`` saturates (``saturate=True`` matches it);
    its cast to ``float8_e5m2`` overflows to inf (``saturate=False`` matches it).
    """
    fmt = get_format(fmt)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if not isinstance(saturate, bool):
        raise TypeError(f"saturate must be a bool, got {type(saturate).__name__}")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    value = x.double()
    magnitude = value.abs()
    quantum = _ulp(magnitude, fmt)
    rounded = torch.round(magnitude / quantum) * quantum  # torch.round rounds half to even
    overflow = rounded > fmt.max_normal  # also catches inf inputs
    if saturate:
        rounded = torch.where(overflow, fmt.max_normal, rounded)
    else:
        rounded = torch.where(overflow, math.inf if fmt.has_inf else math.nan, rounded)
    rounded = torch.where(torch.isnan(value), math.nan, rounded)
    return torch.copysign(rounded, value).to(out_dtype)


def encode_float(x: float, fmt: FloatFormat | str | torch.dtype, saturate: bool = False) -> int:
    """The bit pattern (an unsigned int) of ``x`` rounded to ``fmt`` (RNE, overflow as in :func:`round_to_format`).

    Inverse of :func:`decode_bits` on every non-NaN pattern; NaN encodes as ``fmt.nan_bits``.
    """
    fmt = get_format(fmt)
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"x must be a real number, got {type(x).__name__}")
    value = float(round_to_format(torch.tensor([float(x)], dtype=torch.float64), fmt, saturate)[0])
    if math.isnan(value):
        return fmt.nan_bits
    sign = 1 if math.copysign(1.0, value) < 0 else 0
    magnitude = abs(value)
    M = fmt.mantissa_bits
    if math.isinf(magnitude):
        exponent_field, mantissa = 2 ** fmt.exponent_bits - 1, 0
    elif magnitude < fmt.min_normal:  # subnormal or zero: |x| = 2^(1-b) · m/2^M
        exponent_field, mantissa = 0, int(math.ldexp(magnitude, M - fmt.min_exponent))
    else:  # |x| = 2^(e-b) · (1 + m/2^M)
        exponent = math.frexp(magnitude)[1] - 1
        exponent_field = exponent + fmt.bias
        mantissa = int(math.ldexp(magnitude, M - exponent)) - 2 ** M
    return (sign << (fmt.bits - 1)) | (exponent_field << M) | mantissa


def spacing(x: Tensor | float, fmt: FloatFormat | str | torch.dtype) -> Tensor | float:
    """The unit in the last place (ulp) of ``fmt`` at ``x``: ``2^(max(floor(log2|x|), 1-b) - M)``.

    For a representable ``x > 0`` below ``max_normal`` this is the gap to the next larger value; subnormals share
    the constant gap ``2^(1-b-M)``; ``spacing(0) = min_subnormal``. Values beyond ``max_normal`` give inf, NaN and
    inf give NaN. An update ``|Δ| < spacing(w)/2`` added to ``w`` in ``fmt`` leaves ``w`` unchanged.
    """
    fmt = get_format(fmt)
    scalar = not isinstance(x, Tensor)
    if scalar:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"x must be a real number or a tensor, got {type(x).__name__}")
        x = torch.tensor(float(x), dtype=torch.float64)
    elif not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    magnitude = x.double().abs()
    gap = _ulp(magnitude, fmt)
    gap = torch.where(magnitude > fmt.max_normal, math.inf, gap)
    gap = torch.where(torch.isfinite(magnitude), gap, math.nan)
    return float(gap) if scalar else gap


def range_fractions(x: Tensor, fmt: FloatFormat | str | torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """Where the entries of ``scale · x`` land when rounded to ``fmt``, as fractions of ``x.numel()``.

    Keys: ``"zero"`` (exact zeros in ``x``), ``"underflow"`` (nonzero, rounds to 0), ``"subnormal"`` (rounds to a
    nonzero subnormal: precision lost), ``"normal"``, ``"overflow"`` (rounds to inf/NaN), ``"nonfinite"`` (inf or
    NaN already in ``x``); they sum to 1. A loss scale ``S`` moves every gradient up by ``log2 S`` binades.
    """
    fmt = get_format(fmt)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.numel() == 0:
        raise ValueError("x must have at least one element")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    value = x.detach().double().flatten()
    finite = torch.isfinite(value)
    rounded = round_to_format(value * scale, fmt).abs()  # float64 in, float64 out
    counts = {
        "zero": finite & (value == 0),
        "underflow": finite & (value != 0) & (rounded == 0),
        "subnormal": finite & (rounded > 0) & (rounded < fmt.min_normal),
        "normal": finite & (rounded >= fmt.min_normal) & torch.isfinite(rounded),
        "overflow": finite & ~torch.isfinite(rounded),
        "nonfinite": ~finite,
    }
    return {key: int(mask.sum()) / value.numel() for key, mask in counts.items()}


# ----------------------------------------------------------------------------------------------------------
# accumulation
# ----------------------------------------------------------------------------------------------------------


def _sum_terms(x: Tensor, accumulate_dtype: torch.dtype) -> list[Tensor]:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not isinstance(accumulate_dtype, torch.dtype) or not accumulate_dtype.is_floating_point:
        raise TypeError(f"accumulate_dtype must be a floating torch.dtype, got {accumulate_dtype!r}")
    if x.dim() == 0 or x.size(-1) == 0:
        raise ValueError(f"x must have at least one element along its last dim, got shape {tuple(x.shape)}")
    return list(x.detach().to(accumulate_dtype).unbind(-1))


def naive_sum(x: Tensor, accumulate_dtype: torch.dtype) -> Tensor:
    """``s ← round(s + x_i)`` for ``i = 1..n`` in ``accumulate_dtype``: the sum over the last dim, one term at a time.

    Every term is first rounded to ``accumulate_dtype``; each addition then rounds once (torch computes a + b of
    fp16/bf16 in fp32 and rounds, which equals one correct rounding). The error can grow like ``n · eps · |s|``;
    once ``|x_i| < spacing(s)/2`` the sum stops growing ("stagnation"). Sequential on purpose (a Python loop over
    the last dim, vectorised over leading dims): a parallel or pairwise sum would round differently.
    """
    terms = _sum_terms(x, accumulate_dtype)
    total = torch.zeros_like(terms[0])
    for term in terms:
        total = total + term
    return total


def kahan_sum(x: Tensor, accumulate_dtype: torch.dtype) -> Tensor:
    """Compensated summation (Kahan 1965) over the last dim in ``accumulate_dtype``, one term at a time.

    ``y = x_i − c; t = s + y; c = (t − s) − y; s = t``: ``c`` recovers the low-order bits that ``s + y`` rounded
    away and subtracts them from the next term, so the error stays about ``2 · eps · Σ|x_i|``, independent of
    ``n``. Terms are rounded to ``accumulate_dtype`` first, as in :func:`naive_sum`.
    """
    terms = _sum_terms(x, accumulate_dtype)
    total = torch.zeros_like(terms[0])
    compensation = torch.zeros_like(terms[0])
    for term in terms:
        corrected = term - compensation
        new_total = total + corrected
        compensation = (new_total - total) - corrected
        total = new_total
    return total
