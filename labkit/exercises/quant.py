"""Chapter "Quantization" exercises, checked against :mod:`labkit.quant`.

* ``quant.qparams`` -- scale and zero point of a range, symmetric and asymmetric (:func:`labkit.quant.compute_qparams`).
* ``quant.fake_quantize`` -- quantize then dequantize a tensor, with clamping (:func:`labkit.quant.quantize`,
  :func:`labkit.quant.dequantize`).
* ``quant.pack_int4`` -- two 4-bit integers a byte, offset by 8 (:func:`labkit.quant.pack_int4`).
* ``quant.smooth_scales`` -- SmoothQuant's per-channel migration factor (:func:`labkit.quant.smooth_scales`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn

__all__: list[str] = []


def _qparams_reference(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int]:
    from labkit.quant import compute_qparams

    scale, zero_point = compute_qparams(torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32),
                                        bits, symmetric)
    return float(scale), int(zero_point)


def _qparams_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((-1.0, 1.0, 8, True), "symmetric int8 of [-1, 1]: Δ = 1/127"),
             Case((-0.5, 2.0, 8, True), "symmetric: the larger magnitude sets the step"),
             Case((-1.0, 3.0, 8, False), "asymmetric int8: Δ = 4/255, z = -128 + round(1/Δ)"),
             Case((0.5, 3.0, 4, False), "a range above 0 is widened to include 0: z = q_min"),
             Case((-3.0, -1.0, 4, False), "a range below 0 is widened to include 0: z = q_max"),
             Case((-0.3, 0.7, 2, False), "2 bits: four levels"),
             Case((0.0, 0.0, 8, False), "an empty range: the smallest scale, eps"),
             Case((-6.0, 2.0, 3, True), "3-bit symmetric: q_max = 3")]
    for _ in range(n_random):
        lo = -abs(float(_randn(generator, 1))) * 2 ** _randint(generator, -3, 3)
        hi = abs(float(_randn(generator, 1))) * 2 ** _randint(generator, -3, 3)
        cases.append(Case((round(lo, 4), round(hi, 4), _randint(generator, 2, 8), bool(_randint(generator, 0, 1))),
                          "random"))
    return cases


def _fake_quantize_reference(x: Tensor, scale: float, zero_point: int, bits: int) -> Tensor:
    from labkit.quant import dequantize, quantize

    s, z = torch.tensor(scale, dtype=torch.float32), torch.tensor(zero_point)
    return dequantize(quantize(x, s, z, bits), s, z)


def _fake_quantize_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((torch.tensor([0.0, 0.1, -0.1, 0.26, 0.25, 0.35]), 0.1, 0, 8), "rounding, halves to even"),
             Case((torch.tensor([5.0, -5.0, 0.7, -0.8]), 0.1, 0, 4), "clamping at q_min = -8, q_max = 7"),
             Case((torch.tensor([0.0, 0.3, 1.0, 2.0]), 0.25, -4, 3), "a zero point: q = round(x/Δ) + z"),
             Case((torch.zeros(3, 4), 0.5, 2, 8), "zeros stay exactly zero")]
    for _ in range(n_random):
        bits = _randint(generator, 2, 8)
        x = _randn(generator, _randint(generator, 1, 4), _randint(generator, 1, 9)) * 2
        cases.append(Case((x, round(0.02 + float(torch.rand((), generator=generator)) / 2, 3),
                           _randint(generator, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1), bits), "random"))
    return cases


def _pack_int4_reference(q: Tensor) -> Tensor:
    from labkit.quant import pack_int4

    return pack_int4(q)


def _pack_int4_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def ints(*rows: list[int]) -> Tensor:
        return torch.tensor(rows, dtype=torch.int8)

    cases = [Case((ints([0, 0]),), "two zeros: 8 + 8·16 = 0x88"),
             Case((ints([-8, 7]),), "the extremes: low nibble 0, high nibble 15"),
             Case((ints([1, 2, 3, 4]),), "order: element 0 low, element 1 high"),
             Case((ints([-1, -2], [5, -6]),), "two rows")]
    for _ in range(n_random):
        shape = (_randint(generator, 1, 4), 2 * _randint(generator, 1, 6))
        cases.append(Case((torch.randint(-8, 8, shape, generator=generator, dtype=torch.int8),), "random"))
    return cases


def _smooth_scales_reference(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    from labkit.quant import smooth_scales

    return smooth_scales(act_absmax, weight, alpha)


def _smooth_scales_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    w = torch.tensor([[1.0, -0.5, 0.25], [-2.0, 0.5, 0.5]])
    cases = [Case((torch.tensor([4.0, 1.0, 100.0]), w, 0.5), "α = 0.5: sqrt(max|X_j| / max|W_j|)"),
             Case((torch.tensor([4.0, 1.0, 100.0]), w, 1.0), "α = 1: all of the range moves to the weights"),
             Case((torch.tensor([4.0, 1.0, 100.0]), w, 0.0), "α = 0: s = 1 / max|W_j|"),
             Case((torch.tensor([4.0, 0.0, 100.0]), w, 0.5), "a channel that is always zero: s = 1")]
    for _ in range(n_random):
        k = _randint(generator, 2, 10)
        act = _randn(generator, k).abs() * 2 ** _randint(generator, 0, 6)
        cases.append(Case((act, _randn(generator, _randint(generator, 1, 6), k), round(float(torch.rand(
            (), generator=generator)), 2)), "random"))
    return cases


for _exercise in (
    Exercise(
        name="quant.qparams",
        title="Scale and zero point of a range",
        goal="Widen [lo, hi] to contain 0; signed q in [-2^(b-1), 2^(b-1)-1]. Symmetric: Δ = max(-lo, hi)/q_max, "
             "z = 0; asymmetric: Δ = (hi - lo)/(q_max - q_min), z = clamp(q_min - round(lo/Δ)); Δ ≥ eps(float32).",
        make_cases=_qparams_cases,
        reference=_qparams_reference,
        atol=0.0,
        rtol=1e-6,
        signature="qparams(lo: float, hi: float, bits: int, symmetric: bool) -> (scale: float, zero_point: int)",
    ),
    Exercise(
        name="quant.fake_quantize",
        title="Quantize, then dequantize",
        goal="q = clamp(round(x/Δ) + z, -2^(b-1), 2^(b-1)-1) (round half to even), x̂ = Δ·(q - z), float32.",
        make_cases=_fake_quantize_cases,
        reference=_fake_quantize_reference,
        atol=1e-6,
        rtol=1e-5,
        signature="fake_quantize(x: float32 tensor, scale: float, zero_point: int, bits: int) -> float32 tensor",
    ),
    Exercise(
        name="quant.pack_int4",
        title="Packing int4",
        goal="Store q + 8 (0..15) two a byte: byte j = (q[2j] + 8) | (q[2j+1] + 8) << 4, along the last dim.",
        make_cases=_pack_int4_cases,
        reference=_pack_int4_reference,
        atol=0.0,
        rtol=0.0,
        signature="pack_int4(q: int8 tensor (..., 2n) in [-8, 7]) -> uint8 tensor (..., n)",
    ),
    Exercise(
        name="quant.smooth_scales",
        title="SmoothQuant's migration factor",
        goal="s_j = max|X_j|^α / max_i |W_ij|^(1-α), with s_j = 1 where that is 0 or not finite.",
        make_cases=_smooth_scales_cases,
        reference=_smooth_scales_reference,
        signature="smooth_scales(act_absmax: (in,) tensor, weight: (out, in) tensor, alpha: float) -> (in,) tensor",
    ),
):
    add_exercise(_exercise)
