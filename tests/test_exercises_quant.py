"""Chapter "Quantization" exercises: references pass, independent right answers pass, plausible wrong answers fail
on the case that shows the mistake."""

from __future__ import annotations

import pytest
import torch

from labkit import exercises
from labkit.exercises import check

CHAPTER = ["quant.qparams", "quant.fake_quantize", "quant.pack_int4", "quant.smooth_scales"]
EPS = torch.finfo(torch.float32).eps


def qparams_right(lo, hi, bits, symmetric):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        return max(max(-lo, hi) / qmax, EPS), 0
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


def qparams_with_torch_observer(lo, hi, bits, symmetric):
    """An independent right answer for the asymmetric case: torch's observer with the same signed range."""
    if symmetric:
        return qparams_right(lo, hi, bits, symmetric)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, quant_min=qmin, quant_max=qmax)
    obs(torch.tensor([lo, hi]))
    scale, zero_point = obs.calculate_qparams()
    return float(scale), int(zero_point)


def qparams_no_zero_in_range(lo, hi, bits, symmetric):
    """Wrong: the range must contain 0, or 0 (padding, ReLU zeros) is not exactly representable."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        return qparams_right(lo, hi, bits, symmetric)
    scale = max((hi - lo) / (qmax - qmin), EPS)
    return scale, int(min(max(qmin - round(lo / scale), qmin), qmax))


def qparams_symmetric_over_full_range(lo, hi, bits, symmetric):
    """Wrong: max|x|/2^(b-1) leaves +max|x| outside [q_min, q_max] (it clips to q_max)."""
    if symmetric:
        return max(max(-min(lo, 0.0), max(hi, 0.0)) / 2 ** (bits - 1), EPS), 0
    return qparams_right(lo, hi, bits, symmetric)


def fake_quantize_right(x, scale, zero_point, bits):
    q = torch.clamp(torch.round(x / scale) + zero_point, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return ((q - zero_point) * scale).float()


def fake_quantize_with_torch(x, scale, zero_point, bits):
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def fake_quantize_no_clamp(x, scale, zero_point, bits):
    return (torch.round(x / scale) * scale).float()


def fake_quantize_round_half_up(x, scale, zero_point, bits):
    q = torch.clamp(torch.floor(x / scale + 0.5) + zero_point, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return ((q - zero_point) * scale).float()


def pack_int4_right(q):
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def pack_int4_swapped_nibbles(q):
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return (u[..., 0::2] << 4) | u[..., 1::2]


def pack_int4_twos_complement(q):
    """Wrong format for this book: two's-complement nibbles (q & 0xF) instead of q + 8."""
    u = q.to(torch.uint8) & 0xF
    return u[..., 0::2] | (u[..., 1::2] << 4)


def smooth_scales_right(act_absmax, weight, alpha):
    s = act_absmax.pow(alpha) / weight.abs().amax(0).pow(1 - alpha)
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


def smooth_scales_inverted(act_absmax, weight, alpha):
    s = weight.abs().amax(0).pow(1 - alpha) / act_absmax.pow(alpha)
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


def smooth_scales_weight_rows(act_absmax, weight, alpha):
    """Wrong: the weight's maximum must be over the output rows of each input column."""
    w = weight.abs().amax(1).mean()
    s = act_absmax.pow(alpha) / w.pow(1 - alpha)
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


@pytest.mark.parametrize("name", CHAPTER)
def test_references_pass_their_own_checks(name):
    assert check(name, exercises.get_exercise(name).reference, verbose=False).n_cases >= 10


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, learner", [
    ("quant.qparams", qparams_right), ("quant.qparams", qparams_with_torch_observer),
    ("quant.fake_quantize", fake_quantize_right), ("quant.fake_quantize", fake_quantize_with_torch),
    ("quant.pack_int4", pack_int4_right), ("quant.smooth_scales", smooth_scales_right),
])
def test_independent_right_answers_pass(name, learner):
    check(name, learner, verbose=False)


@pytest.mark.parametrize("name, learner, case_label", [
    ("quant.qparams", qparams_no_zero_in_range, "a range above 0 is widened"),
    ("quant.qparams", qparams_symmetric_over_full_range, "symmetric int8 of [-1, 1]"),
    ("quant.fake_quantize", fake_quantize_no_clamp, "clamping"),
    ("quant.fake_quantize", fake_quantize_round_half_up, "rounding, halves to even"),
    ("quant.pack_int4", pack_int4_swapped_nibbles, "the extremes"),
    ("quant.pack_int4", pack_int4_twos_complement, "two zeros"),
    ("quant.smooth_scales", smooth_scales_inverted, "α = 0.5"),
    ("quant.smooth_scales", smooth_scales_weight_rows, "α = 0.5"),
])
def test_wrong_answers_fail_on_the_case_that_shows_the_mistake(name, learner, case_label, rejection):
    assert f"[{case_label}" in rejection(name, learner)


def test_exercises_are_listed_for_the_chapter():
    assert [e.name for e in exercises.list_exercises("quant.")] == sorted(CHAPTER)
