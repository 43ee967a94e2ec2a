"""Chapter "Mixed precision" exercises, checked against labkit's number formats and its autocast and scaler.

* ``amp.decode_fp16`` -- the value of a 16-bit fp16 pattern: sign, exponent, mantissa, subnormals, infinities
  (:func:`labkit.formats.decode_bits`).
* ``amp.update_scale`` -- the dynamic loss-scale rule: back off on overflow, grow after ``growth_interval`` clean
  steps (:func:`labkit.amp.update_scale`, Micikevicius et al. 2018, §3.2).
* ``amp.autocast_dtype`` -- which ops run in bf16, which stay in fp32, which keep their input dtype under labkit's
  autocast (:class:`labkit.amp.autocast`).
* ``amp.round_to_e4m3`` -- rounding fp32 to the fp8 e4m3fn format, ties to even, saturating at ±448
  (:func:`labkit.formats.round_to_format`, Micikevicius et al. 2022).

Every reference runs labkit's own code, so a reader's function is compared with what the chapter measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn

__all__ = ["AUTOCAST_EXERCISE_OPS", "AUTOCAST_EXERCISE_DTYPES"]

# ----------------------------------------------------------------------------------------------------------
# decoding an fp16 bit pattern
# ----------------------------------------------------------------------------------------------------------


def _decode_fp16_reference(bits: int) -> float:
    from labkit.formats import FP16, decode_bits

    return decode_bits(bits, FP16)


def _is_fp16_nan(bits: int) -> bool:
    return (bits >> 10) & 0x1F == 0x1F and bits & 0x3FF != 0


def _decode_fp16_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((0x3C00,), "0x3C00 = 1.0"), Case((0xC000,), "0xC000 = -2.0: the sign bit"),
             Case((0x3555,), "0x3555 ≈ 1/3: a mantissa with many bits"),
             Case((0x0000,), "0x0000 = +0"), Case((0x8000,), "0x8000 = -0"),
             Case((0x0001,), "0x0001: the smallest subnormal 2^-24"),
             Case((0x03FF,), "0x03FF: the largest subnormal (no implicit 1)"),
             Case((0x0400,), "0x0400: the smallest normal 2^-14"),
             Case((0x7BFF,), "0x7BFF: the largest finite value"),
             Case((0x7C00,), "0x7C00 = +inf"), Case((0xFC00,), "0xFC00 = -inf"),
             Case((0x8201,), "0x8201: a negative subnormal")]
    while n_random > 0:
        bits = _randint(generator, 0, 2**16 - 1)
        if not _is_fp16_nan(bits):  # NaN != NaN, so NaN patterns cannot be compared as numbers
            cases.append(Case((bits,), f"random 0x{bits:04X}"))
            n_random -= 1
    return cases


# ----------------------------------------------------------------------------------------------------------
# the dynamic loss-scale rule
# ----------------------------------------------------------------------------------------------------------


def _update_scale_reference(scale: float, growth_tracker: int, found_inf: bool, growth_factor: float,
                            backoff_factor: float, growth_interval: int) -> tuple[float, int]:
    from labkit.amp import update_scale

    return update_scale(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval)


def _update_scale_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((65536.0, 0, True, 2.0, 0.5, 2000), "overflow: halve the scale, reset the count"),
             Case((65536.0, 1500, True, 2.0, 0.5, 2000), "overflow late in an interval: the count restarts"),
             Case((65536.0, 0, False, 2.0, 0.5, 2000), "first clean step: count 1"),
             Case((65536.0, 1998, False, 2.0, 0.5, 2000), "clean step 1999 of 2000: not yet"),
             Case((65536.0, 1999, False, 2.0, 0.5, 2000), "clean step 2000 of 2000: double, count back to 0"),
             Case((1.0, 0, False, 2.0, 0.5, 1), "growth_interval 1: grow every clean step"),
             Case((1000.0, 3, True, 1.7, 0.3, 4), "other factors: backoff 0.3"),
             Case((1000.0, 3, False, 1.7, 0.3, 4), "other factors: growth 1.7"),
             Case((2.0**127, 4, False, 2.0, 0.5, 5), "growth would overflow float32: keep the scale"),
             Case((2.0**-20, 0, True, 2.0, 0.5, 2000), "a tiny scale still backs off")]
    def uniform(low: float, high: float) -> float:
        return round(low + (high - low) * float(torch.rand((), generator=generator)), 3)

    for _ in range(n_random):
        interval = _randint(generator, 1, 10)
        factors = (2.0, 0.5) if _randint(generator, 0, 1) else (uniform(1.1, 4.0), uniform(0.1, 0.9))
        cases.append(Case((2.0 ** _randint(generator, -4, 24), _randint(generator, 0, interval - 1),
                           bool(_randint(generator, 0, 1)), *factors, interval), "random"))
    return cases


# ----------------------------------------------------------------------------------------------------------
# which dtype each op runs in under autocast
# ----------------------------------------------------------------------------------------------------------

AUTOCAST_EXERCISE_OPS: dict[str, object] = {
    "linear": lambda x, w, t: F.linear(x, w),
    "matmul": lambda x, w, t: x @ w.t(),
    "bmm": lambda x, w, t: torch.bmm(x.reshape(2, 2, 8), w.reshape(2, 8, 3)),
    "softmax": lambda x, w, t: torch.softmax(x, dim=-1),
    "log_softmax": lambda x, w, t: torch.log_softmax(x, dim=-1),
    "layer_norm": lambda x, w, t: F.layer_norm(x, (x.size(-1),)),
    "cross_entropy": lambda x, w, t: F.cross_entropy(x, t),
    "sum": lambda x, w, t: x.sum(),
    "mean": lambda x, w, t: x.mean(dim=-1),
    "exp": lambda x, w, t: torch.exp(x),
    "log": lambda x, w, t: torch.log(x.abs() + 1),
    "relu": lambda x, w, t: F.relu(x),
    "gelu": lambda x, w, t: F.gelu(x),
    "tanh": lambda x, w, t: torch.tanh(x),
    "add": lambda x, w, t: x + x,
    "mul": lambda x, w, t: x * x,
    "transpose": lambda x, w, t: x.transpose(0, 1),
}
"""The ops of the ``amp.autocast_dtype`` exercise, each applied to ``x`` of shape (4, 8), a weight ``w`` of
shape (6, 8) in the same dtype as ``x``, and class targets ``t`` of shape (4,)."""

AUTOCAST_EXERCISE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _autocast_dtype_reference(op: str, input_dtype: torch.dtype) -> torch.dtype:
    """The dtype of ``op``'s output when its inputs have ``input_dtype``, under ``labkit.amp.autocast("cpu",
    torch.bfloat16)`` (found by running it)."""
    from labkit.amp import autocast

    if op not in AUTOCAST_EXERCISE_OPS:
        raise ValueError(f"op must be one of {sorted(AUTOCAST_EXERCISE_OPS)}, got {op!r}")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=generator).to(input_dtype)
    w = torch.randn(6, 8, generator=generator).to(input_dtype)
    targets = torch.tensor([0, 3, 5, 7])
    with autocast("cpu", torch.bfloat16):
        return AUTOCAST_EXERCISE_OPS[op](x, w, targets).dtype


def _autocast_dtype_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((op, dtype), f"{op} on {str(dtype).removeprefix('torch.')}")
             for dtype in AUTOCAST_EXERCISE_DTYPES for op in AUTOCAST_EXERCISE_OPS]
    return cases  # the grid is complete: random picks would only repeat it


# ----------------------------------------------------------------------------------------------------------
# rounding to fp8 e4m3
# ----------------------------------------------------------------------------------------------------------


def _round_to_e4m3_reference(x: Tensor) -> Tensor:
    from labkit.formats import FP8_E4M3, round_to_format

    return round_to_format(x, FP8_E4M3, saturate=True)


def _round_to_e4m3_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def values(*items: float) -> Tensor:
        return torch.tensor(items, dtype=torch.float32)

    cases = [
        Case((values(0.0, 1.0, -1.5, 2.0, 448.0, -448.0, 0.015625),), "values e4m3 holds exactly"),
        Case((values(1.0625, 1.1875, 3.375, -3.875, 0.5 + 1 / 32),), "ties: round to the even mantissa"),
        Case((values(1.05, 1.1, 1.3, -2.7, 100.0, 300.0),), "rounding to 3 mantissa bits"),
        Case((values(2.0**-9, 3 * 2.0**-9, 2.0**-7 + 2.0**-10, -5 * 2.0**-9, 0.0137),),
             "subnormals: a fixed spacing of 2^-9 below 2^-6"),
        Case((values(2.0**-10, 3 * 2.0**-11, 2.0**-11, -(2.0**-10), 1e-6),),
             "below half the smallest subnormal: 0; exactly half: a tie to 0"),
        Case((values(460.0, 464.0, 470.0, 1e4, -1e30, float("inf")),), "above 448: saturate to ±448"),
    ]
    for _ in range(n_random):
        shape = tuple(_randint(generator, 1, 6) for _ in range(_randint(generator, 1, 3)))
        cases.append(Case((_randn(generator, *shape) * 2.0 ** _randint(generator, -10, 9),), "random"))
    return cases


for _exercise in (
    Exercise(
        name="amp.decode_fp16",
        title="Decoding an fp16 bit pattern",
        goal="Split 16 bits into sign s, exponent e (5 bits, bias 15), mantissa m (10 bits); normal: "
             "(-1)^s·2^(e-15)·(1 + m/1024); e = 0: (-1)^s·2^-14·m/1024; e = 31: ±inf (m = 0).",
        make_cases=_decode_fp16_cases,
        reference=_decode_fp16_reference,
        atol=0.0,
        rtol=0.0,
        signature="decode_fp16(bits: int in [0, 2^16)) -> float (NaN patterns are not checked)",
    ),
    Exercise(
        name="amp.update_scale",
        title="The dynamic loss-scale update",
        goal="Overflow: S ← S·backoff, count ← 0. Clean step: count + 1; at growth_interval, S ← S·growth "
             "(unless that overflows float32) and count ← 0.",
        make_cases=_update_scale_cases,
        reference=_update_scale_reference,
        atol=0.0,
        rtol=1e-6,  # the scale is a float32: S·factor rounded to float32 or not, both pass
        signature="update_scale(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval) "
                  "-> (new_scale: float, new_growth_tracker: int)",
    ),
    Exercise(
        name="amp.autocast_dtype",
        title="Which ops stay in fp32",
        goal="Under labkit's autocast('cpu', bf16): matmul-like ops run in bf16, range- and sum-sensitive ops "
             "(softmax, norms, losses, reductions, exp/log) in fp32, the rest in their input dtype; float64 is "
             "never touched.",
        make_cases=_autocast_dtype_cases,
        reference=_autocast_dtype_reference,
        signature=f"autocast_dtype(op: one of {sorted(AUTOCAST_EXERCISE_OPS)}, input_dtype: torch.dtype) "
                  "-> torch.dtype",
    ),
    Exercise(
        name="amp.round_to_e4m3",
        title="Rounding to fp8 e4m3",
        goal="Round each fp32 value to the nearest e4m3fn value (3 mantissa bits, bias 7, subnormal spacing "
             "2^-9), ties to even; values beyond ±448 saturate to ±448.",
        make_cases=_round_to_e4m3_cases,
        reference=_round_to_e4m3_reference,
        atol=0.0,
        rtol=0.0,
        signature="round_to_e4m3(x: float32 tensor) -> float32 tensor of the same shape",
    ),
):
    add_exercise(_exercise)

