"""Chapter "Mixed precision" exercises: the references pass their own checks, independent right answers pass, and
plausible wrong answers fail with a message that names the case."""

from __future__ import annotations

import math

import pytest
import torch

from labkit import exercises
from labkit.exercises import ExerciseError, check

CHAPTER = ["amp.decode_fp16", "amp.update_scale", "amp.autocast_dtype", "amp.round_to_e4m3"]

# ---------------------------------------------------------------------------------------------- learners


def decode_fp16_right(bits):
    sign, exponent, mantissa = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    if exponent == 31:
        value = math.inf if mantissa == 0 else math.nan
    elif exponent == 0:
        value = 2.0**-14 * mantissa / 1024
    else:
        value = 2.0 ** (exponent - 15) * (1 + mantissa / 1024)
    return -value if sign else value


def decode_fp16_with_torch(bits):
    """An independent right answer: reinterpret the bits as torch.float16."""
    signed = bits - 2**16 if bits >= 2**15 else bits
    return torch.tensor([signed], dtype=torch.int16).view(torch.float16).item()


def decode_fp16_no_subnormals(bits):
    """Wrong: treats e = 0 like a normal exponent (an implicit leading 1 and 2^(0-15))."""
    sign, exponent, mantissa = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    if bits & 0x7FFF == 0:
        return -0.0 if sign else 0.0
    if exponent == 31:
        value = math.inf if mantissa == 0 else math.nan
    else:
        value = 2.0 ** (exponent - 15) * (1 + mantissa / 1024)
    return -value if sign else value


def decode_fp16_bias_16(bits):
    """Wrong: the bias of a 5-bit exponent is 2^4 - 1 = 15, not 16."""
    sign, exponent, mantissa = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    if exponent == 31:
        value = math.inf if mantissa == 0 else math.nan
    elif exponent == 0:
        value = 2.0**-15 * mantissa / 1024
    else:
        value = 2.0 ** (exponent - 16) * (1 + mantissa / 1024)
    return -value if sign else value


def update_scale_right(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    if found_inf:
        return scale * backoff_factor, 0
    growth_tracker += 1
    if growth_tracker == growth_interval:
        grown = scale * growth_factor
        return (grown if grown <= torch.finfo(torch.float32).max else scale), 0
    return scale, growth_tracker


def update_scale_with_torch_kernel(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    """An independent right answer: the fused kernel torch.amp.GradScaler calls."""
    scale_t = torch.tensor(scale, dtype=torch.float32)
    tracker_t = torch.tensor(growth_tracker, dtype=torch.int32)
    torch._amp_update_scale_(scale_t, tracker_t, torch.tensor(float(found_inf)), growth_factor, backoff_factor,
                             growth_interval)
    return scale_t.item(), int(tracker_t.item())


def update_scale_grows_without_overflow_check(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                                              growth_interval):
    """Wrong: in Python floats 2^127·2 is finite, in the float32 the scale lives in it is inf."""
    if found_inf:
        return scale * backoff_factor, 0
    if growth_tracker + 1 == growth_interval:
        return scale * growth_factor, 0
    return scale, growth_tracker + 1


def update_scale_off_by_one(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    """Wrong: compares the count before adding this step, so it grows one clean step late."""
    if found_inf:
        return scale * backoff_factor, 0
    if growth_tracker == growth_interval:
        return scale * growth_factor, 0
    return scale, growth_tracker + 1


def update_scale_keeps_count_on_overflow(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                                         growth_interval):
    """Wrong: an overflow must restart the count of clean steps."""
    if found_inf:
        return scale * backoff_factor, growth_tracker
    return update_scale_right(scale, growth_tracker, False, growth_factor, backoff_factor, growth_interval)


MATMUL_OPS = {"linear", "matmul", "bmm"}
FP32_OPS = {"softmax", "log_softmax", "layer_norm", "cross_entropy", "sum", "mean", "exp", "log"}


def autocast_dtype_right(op, input_dtype):
    if input_dtype == torch.float64:
        return torch.float64
    if op in MATMUL_OPS:
        return torch.bfloat16
    if op in FP32_OPS:
        return torch.float32
    return input_dtype


def autocast_dtype_torch_cpu_policy(op, input_dtype):
    """Wrong for labkit: torch's CPU autocast leaves softmax, norms, sums and exp/log in their input dtype."""
    if input_dtype == torch.float64:
        return torch.float64
    if op in MATMUL_OPS:
        return torch.bfloat16
    if op == "cross_entropy":
        return torch.float32
    return input_dtype


def autocast_dtype_casts_float64(op, input_dtype):
    """Wrong: autocast never touches float64."""
    if op in MATMUL_OPS:
        return torch.bfloat16
    if op in FP32_OPS:
        return torch.float32
    return input_dtype


def autocast_dtype_everything_bf16(op, input_dtype):
    """Wrong: not every op runs in the low dtype."""
    return torch.float64 if input_dtype == torch.float64 else torch.bfloat16


def round_to_e4m3_right(x):
    magnitude = x.double().abs().clamp_max(1024.0)  # anything above 464 saturates: keep inf out of log2
    exponent = torch.floor(torch.log2(magnitude.clamp_min(2.0**-30))).clamp_min(-6)
    spacing = 2.0 ** (exponent - 3)
    rounded = torch.round(magnitude / spacing) * spacing  # ties to even
    rounded = rounded.clamp_max(448.0)
    return (torch.sign(x.double()) * rounded).float()


def round_to_e4m3_with_torch(x):
    """An independent right answer: torch's own (saturating) cast."""
    return x.to(torch.float8_e4m3fn).float()


def round_to_e4m3_ties_away(x):
    """Wrong: floor(|x|/q + 1/2) rounds ties away from zero, not to even."""
    magnitude = x.double().abs()
    exponent = torch.floor(torch.log2(magnitude.clamp_min(2.0**-30))).clamp_min(-6)
    spacing = 2.0 ** (exponent - 3)
    rounded = (torch.floor(magnitude / spacing + 0.5) * spacing).clamp_max(448.0)
    return (torch.sign(x.double()) * rounded).float()


def round_to_e4m3_flush_subnormals(x):
    """Wrong: flushes everything below the smallest normal 2^-6 to zero."""
    y = round_to_e4m3_right(x)
    return torch.where(y.abs() < 2.0**-6, torch.zeros_like(y), y)


def round_to_e4m3_no_saturation(x):
    """Wrong: e4m3fn has no infinity; torch's cast saturates at ±448."""
    y = round_to_e4m3_right(x)
    return torch.where(x.abs() > 464.0, torch.full_like(y, math.nan), y)


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", CHAPTER)
def test_every_format_edge_is_a_case(name):
    # edge cases on top of (or, for the dtype grid, instead of) random ones
    assert check(name, exercises.get_exercise(name).reference, verbose=False).n_cases >= 14


@pytest.mark.parametrize("name, learner", [
    ("amp.decode_fp16", decode_fp16_right),
    ("amp.decode_fp16", decode_fp16_with_torch),
    ("amp.update_scale", update_scale_right),
    ("amp.update_scale", update_scale_with_torch_kernel),
    ("amp.autocast_dtype", autocast_dtype_right),
    ("amp.round_to_e4m3", round_to_e4m3_right),
    ("amp.round_to_e4m3", round_to_e4m3_with_torch),
])
def test_independent_right_answers_pass(name, learner):
    check(name, learner, verbose=False)


@pytest.mark.parametrize("name, learner, case_label", [
    ("amp.decode_fp16", decode_fp16_no_subnormals, "0x0001: the smallest subnormal"),
    ("amp.decode_fp16", decode_fp16_bias_16, "0x3C00 = 1.0"),
    ("amp.update_scale", update_scale_grows_without_overflow_check, "growth would overflow float32"),
    ("amp.update_scale", update_scale_off_by_one, "clean step 2000 of 2000"),
    ("amp.update_scale", update_scale_keeps_count_on_overflow, "overflow late in an interval"),
    ("amp.autocast_dtype", autocast_dtype_torch_cpu_policy, "softmax on bfloat16"),
    ("amp.autocast_dtype", autocast_dtype_casts_float64, "linear on float64"),
    ("amp.autocast_dtype", autocast_dtype_everything_bf16, "softmax on float32"),
    ("amp.round_to_e4m3", round_to_e4m3_ties_away, "ties: round to the even mantissa"),
    ("amp.round_to_e4m3", round_to_e4m3_flush_subnormals, "subnormals"),
    ("amp.round_to_e4m3", round_to_e4m3_no_saturation, "above 448"),
])
def test_wrong_answers_fail_on_the_case_that_shows_the_mistake(name, learner, case_label, rejection):
    assert f"[{case_label}" in rejection(name, learner)


def test_messages_say_what_differs():
    with pytest.raises(ExerciseError, match=r"expected 1\.0, got 0\.5"):
        check("amp.decode_fp16", decode_fp16_bias_16, verbose=False)
    with pytest.raises(ExerciseError, match=r"expected torch\.float32, got torch\.bfloat16"):
        check("amp.autocast_dtype", autocast_dtype_torch_cpu_policy, verbose=False)
    with pytest.raises(ExerciseError, match="values differ"):
        check("amp.round_to_e4m3", round_to_e4m3_ties_away, verbose=False)


def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="op must be one of"):
        exercises.get_exercise("amp.autocast_dtype").reference("conv9d", torch.float32)


def test_exercises_are_listed_for_the_chapter():
    assert [e.name for e in exercises.list_exercises("amp.")] == sorted(CHAPTER)
