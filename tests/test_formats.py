"""labkit.formats against torch's own dtypes: every fp16/bf16/fp8 bit pattern, casts, finfo, and summation."""

from __future__ import annotations

import math

import pytest
import torch

from labkit import formats as fm
from labkit.formats import BF16, FP8_E4M3, FP8_E5M2, FP16, FP32

FORMATS = [FP32, FP16, BF16, FP8_E4M3, FP8_E5M2]
SMALL = [FP16, BF16, FP8_E4M3, FP8_E5M2]  # at most 16 bits: every pattern can be listed


def torch_values(fmt: fm.FloatFormat) -> torch.Tensor:
    """Every bit pattern of ``fmt`` reinterpreted by torch, as float64."""
    if fmt.bits == 16:
        bits = torch.arange(2 ** 16, dtype=torch.int32).to(torch.int16)  # wraps to the signed patterns
        return bits.view(fmt.torch_dtype).double()
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(fmt.torch_dtype).double()


def assert_same_values(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal, NaN where NaN, and the same sign of zero."""
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    finite = ~torch.isnan(theirs)
    assert torch.equal(ours[finite], theirs[finite])
    assert torch.equal(torch.signbit(ours[finite]), torch.signbit(theirs[finite]))


# ---- decoding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", SMALL, ids=lambda f: f.name)
def test_decode_tensor_every_pattern_matches_torch(fmt):
    ours = fm.decode_tensor(torch.arange(2 ** fmt.bits), fmt)
    assert ours.dtype == torch.float64
    assert_same_values(ours, torch_values(fmt))


@pytest.mark.parametrize("fmt", [FP16, BF16, FP8_E4M3], ids=lambda f: f.name)
def test_decode_bits_every_pattern_matches_torch(fmt):
    theirs = torch_values(fmt).tolist()
    for bits in range(2 ** fmt.bits):
        ours = fm.decode_bits(bits, fmt)
        if math.isnan(theirs[bits]):
            assert math.isnan(ours), bits
        else:
            assert ours == theirs[bits] and math.copysign(1, ours) == math.copysign(1, theirs[bits]), bits


def test_decode_known_patterns():
    assert fm.decode_bits(0x3C00, FP16) == 1.0
    assert fm.decode_bits(0xC000, FP16) == -2.0
    assert fm.decode_bits(0x7BFF, FP16) == 65504.0
    assert fm.decode_bits(0x0001, FP16) == 2.0 ** -24
    assert fm.decode_bits(0x7C00, FP16) == math.inf
    assert math.isnan(fm.decode_bits(0x7E00, FP16))
    assert fm.decode_bits(0x3F80, BF16) == 1.0
    assert fm.decode_bits(0x7E, FP8_E4M3) == 448.0
    assert math.isnan(fm.decode_bits(0x7F, FP8_E4M3)) and math.isnan(fm.decode_bits(0xFF, FP8_E4M3))
    assert fm.decode_bits(0x78, FP8_E4M3) == 256.0  # exponent all ones is still a number in e4m3fn
    assert fm.decode_bits(0x7C, FP8_E5M2) == math.inf
    assert fm.decode_bits(0x3F800000, FP32) == 1.0
    assert fm.decode_bits(0x00000001, FP32) == 2.0 ** -149
    assert fm.split_bits(0x3C00, FP16) == (0, 15, 0)
    assert fm.split_bits(0x8001, "fp16") == (1, 0, 1)
    value = fm.decode_bits(0x8000, FP16)
    assert value == 0.0 and math.copysign(1, value) == -1.0


def test_decode_fp32_random_patterns_match_torch():
    bits = torch.randint(-2 ** 31, 2 ** 31, (4000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    theirs = bits.to(torch.int32).view(torch.float32).double()
    ours = fm.decode_tensor(bits % 2 ** 32, FP32)
    assert_same_values(ours, theirs)
    for b in bits[:300].tolist():
        value = fm.decode_bits(b % 2 ** 32, FP32)
        expected = torch.tensor(b, dtype=torch.int32).view(torch.float32).item()
        assert (math.isnan(value) and math.isnan(expected)) or value == expected


def test_custom_format_scalar_and_vector_paths_agree():
    e3m4 = fm.FloatFormat("fp8_e3m4", 3, 4)
    vector = fm.decode_tensor(torch.arange(256), e3m4)
    scalar = torch.tensor([fm.decode_bits(b, e3m4) for b in range(256)], dtype=torch.float64)
    assert_same_values(vector, scalar)
    finite = fm.representable_values(e3m4)
    assert torch.equal(fm.round_to_format(finite, e3m4), finite)  # representable values are fixed points
    assert e3m4.max_normal == finite.max().item() == 15.5


# ---- properties ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_properties_equal_torch_finfo(fmt):
    info = torch.finfo(fmt.torch_dtype)
    assert fmt.bits == info.bits
    assert fmt.max_normal == info.max
    assert fmt.min_normal == info.tiny == info.smallest_normal
    assert fmt.eps == info.eps
    assert fmt.resolution == info.resolution
    pattern_one = {32: torch.int32, 16: torch.int16, 8: torch.uint8}[fmt.bits]  # the smallest subnormal's bits
    assert fmt.min_subnormal == torch.tensor(1, dtype=pattern_one).view(fmt.torch_dtype).item()


def test_format_lookup_and_text():
    assert fm.get_format("half") is FP16 and fm.get_format(torch.bfloat16) is BF16
    assert fm.get_format("e4m3fn") is FP8_E4M3 and fm.get_format(torch.float8_e5m2) is FP8_E5M2
    assert FP16.decimal_digits == 3 and BF16.decimal_digits == 2 and FP32.decimal_digits == 6
    assert FP8_E4M3.max_exponent == 8 and FP8_E5M2.max_exponent == 15 and FP16.min_exponent == -14
    assert "5 exponent" in str(FP16)


@pytest.mark.parametrize("fmt,count", [(FP16, 63487), (BF16, 65536 - 2 - 254 - 1), (FP8_E4M3, 253), (FP8_E5M2, 247)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_representable_values_match_torch(fmt, count):
    values = fm.representable_values(fmt)
    theirs = torch_values(fmt)
    assert torch.equal(values, torch.unique(theirs[torch.isfinite(theirs)]))
    assert values.numel() == count
    positive = fm.representable_values(fmt, include_negative=False)
    assert positive.min() == 0 and positive.numel() == (count + 1) // 2


# ---- rounding ----------------------------------------------------------------------------------------------------


def probe_values(fmt: fm.FloatFormat) -> torch.Tensor:
    """Random values over many binades, exact ties (midpoints), overflow, subnormals, zeros and specials (fp32)."""
    generator = torch.Generator().manual_seed(hash(fmt.name) % 1000)
    exponents = torch.randint(fmt.min_exponent - fmt.mantissa_bits - 3, fmt.max_exponent + 3, (20000,),
                              generator=generator)
    random = torch.ldexp(torch.rand(20000, generator=generator, dtype=torch.float64) + 1, exponents)
    grid = fm.representable_values(fmt, include_negative=False) if fmt.bits <= 16 else torch.zeros(1)
    grid = grid[:: max(1, grid.numel() // 8000)]
    ties = (grid[1:] + grid[:-1]) / 2  # exact in float64, and in float32 for formats of <= 16 bits
    near_ties = torch.cat([torch.nextafter(ties.float(), torch.tensor(math.inf)).double(),
                           torch.nextafter(ties.float(), torch.tensor(0.0)).double()])
    top = fmt.max_normal
    edges = torch.tensor([0.0, fmt.min_subnormal / 2, fmt.min_subnormal * 0.75, fmt.min_subnormal * 1.5,
                          fmt.min_normal, fmt.min_normal * (1 - fmt.eps / 4), top, top * (1 + fmt.eps / 4),
                          top * (1 + fmt.eps / 2), top * (1 + fmt.eps), top * 4, math.inf, math.nan],
                         dtype=torch.float64)
    values = torch.cat([random, grid, ties, near_ties, edges])
    values = torch.cat([values, -values])
    return values[torch.isfinite(values.float()) | ~torch.isfinite(values)].float()


@pytest.mark.parametrize("fmt,saturate", [(FP16, False), (BF16, False), (FP8_E4M3, True), (FP8_E5M2, False)],
                         ids=["fp16", "bf16", "e4m3fn-saturating", "e5m2"])
def test_round_to_format_equals_torch_cast(fmt, saturate):
    x = probe_values(fmt)
    ours = fm.round_to_format(x, fmt, saturate=saturate)
    assert ours.dtype == torch.float32
    assert_same_values(ours.double(), x.to(fmt.torch_dtype).double())


def test_e4m3_overflow_without_saturation_is_nan():
    x = torch.tensor([448.0, 463.99, 464.0, 464.01, 1e4, math.inf, -math.inf, -464.01])
    ours = fm.round_to_format(x, FP8_E4M3)
    assert ours[:3].tolist() == [448.0, 448.0, 448.0]  # 464 is the tie between 448 and the NaN code: even wins
    assert torch.isnan(ours[3:]).all()
    saturated = fm.round_to_format(x, FP8_E4M3, saturate=True)
    assert saturated.tolist() == [448.0] * 6 + [-448.0, -448.0]
    e5m2 = fm.round_to_format(torch.tensor([61439.0, 61440.0, -1e9, math.inf]), FP8_E5M2, saturate=True)
    assert e5m2.tolist() == [57344.0, 57344.0, -57344.0, 57344.0]


def test_round_float64_to_fp32_equals_torch():
    x = torch.randn(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 10.0 ** torch.randint(
        -40, 39, (5000,), generator=torch.Generator().manual_seed(4))
    ours = fm.round_to_format(x, FP32)
    assert ours.dtype == torch.float64
    assert torch.equal(ours, x.float().double())


def test_encode_round_trips_and_matches_torch():
    generator = torch.Generator().manual_seed(5)
    for fmt in SMALL:
        values = torch_values(fmt)
        patterns = range(256) if fmt.bits == 8 else torch.randint(0, 2 ** 16, (600,), generator=generator).tolist()
        for bits in patterns:
            value = fm.decode_bits(bits, fmt)
            if math.isnan(value):
                assert math.isnan(fm.decode_bits(fm.encode_float(value, fmt), fmt))
            else:
                assert fm.encode_float(value, fmt) == bits, (fmt.name, bits)
        assert fm.encode_float(math.nan, fmt) == fmt.nan_bits and math.isnan(values[fmt.nan_bits])
    x = torch.randn(400, generator=generator) * 100
    for value in x.tolist():
        assert fm.encode_float(value, FP16) == torch.tensor(value).half().view(torch.int16).item() % 2 ** 16
        assert fm.encode_float(value, BF16) == torch.tensor(value).bfloat16().view(torch.int16).item() % 2 ** 16
        assert fm.encode_float(value, FP32) == torch.tensor(value).view(torch.int32).item() % 2 ** 32
    assert fm.encode_float(1.0 + 2 ** -11, FP16) == 0x3C00  # tie -> even mantissa
    assert fm.encode_float(1.0 + 3 * 2 ** -11, FP16) == 0x3C02
    assert fm.encode_float(1e6, FP16) == 0x7C00 and fm.encode_float(-1e6, FP8_E4M3, saturate=True) == 0xFE
    assert fm.encode_float(1e6, FP8_E4M3) == FP8_E4M3.nan_bits == 0x7F


def test_spacing():
    assert fm.spacing(1.0, FP32) == torch.finfo(torch.float32).eps
    assert fm.spacing(1.0, FP16) == 2 ** -10 and fm.spacing(0.0, FP16) == FP16.min_subnormal
    assert fm.spacing(448.0, FP8_E4M3) == 32.0 and fm.spacing(1e6, FP16) == math.inf
    assert math.isnan(fm.spacing(math.inf, FP16))
    values = fm.representable_values(FP16, include_negative=False)
    gaps = fm.spacing(values[:-1], FP16)
    assert torch.equal(gaps, values[1:] - values[:-1])
    x = torch.randn(1000, generator=torch.Generator().manual_seed(6)) * 1e3
    assert torch.equal(fm.spacing(x, FP32), (torch.nextafter(x.abs(), torch.tensor(math.inf)) - x.abs()).double())


def test_range_fractions():
    x = torch.tensor([0.0, 1e-9, 1e-6, 1.0, 1e6, math.inf, -2e-8, 2.0])  # 2e-8 < min_subnormal / 2
    fractions = fm.range_fractions(x, FP16)
    assert fractions == {"zero": 1 / 8, "underflow": 2 / 8, "subnormal": 1 / 8, "normal": 2 / 8,
                         "overflow": 1 / 8, "nonfinite": 1 / 8}
    scaled = fm.range_fractions(x, FP16, scale=2.0 ** 10)
    assert scaled["underflow"] == 0 and scaled["overflow"] == 1 / 8  # scaling rescues small values
    assert math.isclose(sum(scaled.values()), 1.0)


# ---- summation ----------------------------------------------------------------------------------------------------


def sequential_reference(terms: list[float], fmt: fm.FloatFormat) -> float:
    """Round after every addition, in float64 with round_to_format: an independent model of the accumulator."""
    total = torch.zeros(1, dtype=torch.float64)
    for term in terms:
        total = fm.round_to_format(total + term, fmt)
    return total.item()


@pytest.mark.parametrize("dtype,fmt", [(torch.float16, FP16), (torch.bfloat16, BF16)])
def test_naive_sum_is_sequential_rounding(dtype, fmt):
    x = (torch.rand(3, 300, generator=torch.Generator().manual_seed(7)) * 4).to(dtype)
    ours = fm.naive_sum(x, dtype)
    assert ours.dtype == dtype and ours.shape == (3,)
    for row in range(3):
        assert ours[row].item() == sequential_reference(x[row].double().tolist(), fmt)
    assert ours[0].item() != x[0].double().sum().item()  # rounding error is real


def test_naive_sum_stagnates_and_kahan_does_not():
    ones = torch.ones(4096, dtype=torch.float16)
    assert fm.naive_sum(ones, torch.float16).item() == 2048.0  # 2048 + 1 rounds back to 2048 (spacing 2)
    assert fm.kahan_sum(ones, torch.float16).item() == 4096.0


def test_kahan_beats_naive_fp16_sum():
    x = torch.rand(4000, generator=torch.Generator().manual_seed(8)).half() * 0.1
    truth = x.double().sum().item()
    naive_error = abs(fm.naive_sum(x, torch.float16).item() - truth) / truth
    kahan_error = abs(fm.kahan_sum(x, torch.float16).item() - truth) / truth
    fp32_error = abs(fm.naive_sum(x, torch.float32).item() - truth) / truth
    assert kahan_error <= FP16.eps  # within one fp16 ulp of the sum
    assert naive_error > 20 * kahan_error
    assert fp32_error < 1e-5


def test_sums_in_float64_are_exact_for_integers():
    x = torch.arange(1000, dtype=torch.float64)
    assert fm.naive_sum(x, torch.float64).item() == fm.kahan_sum(x, torch.float64).item() == 499500.0


# ---- bad input ----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="bits must be in"):
        fm.decode_bits(2 ** 16, FP16)
    with pytest.raises(TypeError, match="bits must be an int"):
        fm.decode_bits(1.0, FP16)
    with pytest.raises(ValueError, match="bits must be in"):
        fm.decode_tensor(torch.tensor([-1]), FP16)
    with pytest.raises(TypeError, match="integer tensor"):
        fm.decode_tensor(torch.tensor([1.0]), FP16)
    with pytest.raises(ValueError, match="unknown float format"):
        fm.get_format("fp12")
    with pytest.raises(TypeError, match="fmt must be"):
        fm.get_format(16)
    with pytest.raises(TypeError, match="floating-point"):
        fm.round_to_format(torch.tensor([1, 2]), FP16)
    with pytest.raises(TypeError, match="saturate"):
        fm.round_to_format(torch.tensor([1.0]), FP16, saturate=1)
    with pytest.raises(ValueError, match="at most 16 bits"):
        fm.representable_values(FP32)
    with pytest.raises(ValueError, match="exponent_bits"):
        fm.FloatFormat("bad", 1, 3)
    with pytest.raises(ValueError, match="has_inf=False"):
        fm.FloatFormat("bad", 4, 3, nan_encoding="all_ones")
    with pytest.raises(ValueError, match="nan_encoding"):
        fm.FloatFormat("bad", 4, 3, nan_encoding="fnuz")
    with pytest.raises(TypeError, match="real number"):
        fm.encode_float("1.0", FP16)
    with pytest.raises(ValueError, match="scale"):
        fm.range_fractions(torch.ones(3), FP16, scale=0)
    with pytest.raises(TypeError, match="accumulate_dtype"):
        fm.naive_sum(torch.ones(3), torch.int32)
    with pytest.raises(ValueError, match="at least one element"):
        fm.kahan_sum(torch.ones(0), torch.float16)
