"""labkit.quant against torch's quantized tensors, observers and fake-quant ops, and against exact formulas."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import quant
from labkit.transformer import GPT, EncoderClassifier, TransformerConfig


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------- the quantizer


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,group_size", [("tensor", None), ("channel", None), ("group", 16)])
def test_round_trip_error_within_half_a_step(bits, symmetric, granularity, group_size):
    w = randn(24, 64, seed=bits) * 3 + 0.5
    qt = quant.quantize_tensor(w, bits, granularity, group_size, symmetric=symmetric)
    err = (qt.dequantize() - w).abs()
    step = qt._broadcast(qt.scale)
    assert bool((err <= step / 2 + 1e-6).all())  # min-max range: no clipping, only rounding
    qmin, qmax = quant.quant_range(bits)
    q = qt.int_values()
    assert int(q.min()) >= qmin and int(q.max()) <= qmax


def test_rounding_noise_variance_is_step_squared_over_twelve():
    x = torch.rand(400_000, generator=torch.Generator().manual_seed(1)) * 8 - 4
    scale, zp = quant.compute_qparams(x.min(), x.max(), 4, symmetric=False)
    err = quant.dequantize(quant.quantize(x, scale, zp, 4), scale, zp) - x
    assert err.var().item() == pytest.approx(quant.rounding_noise_variance(scale).item(), rel=0.02)
    assert abs(err.mean().item()) < 0.01 * scale.item()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_qparams_and_integers_match_torch_per_tensor_affine(dtype):
    x = randn(10, 33, seed=2, dtype=dtype) * 2 + 0.7
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    obs(x.float())
    torch_scale, torch_zp = obs.calculate_qparams()
    scale, zp = quant.compute_qparams(x.min().float(), x.max().float(), 8, symmetric=False)
    assert scale.item() == pytest.approx(torch_scale.item(), rel=1e-6)
    assert zp.item() == torch_zp.item()
    ours = quant.quantize(x, scale, zp, 8)
    theirs = torch.quantize_per_tensor(x.float(), scale.item(), int(zp), torch.qint8).int_repr()
    assert torch.equal(ours, theirs)
    assert torch.allclose(quant.dequantize(ours, scale, zp), torch.quantize_per_tensor(
        x.float(), scale.item(), int(zp), torch.qint8).dequantize())


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_symmetric_per_channel_matches_torch_restricted_range_observer():
    w = randn(12, 40, seed=3)
    obs = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                         quant_min=-127, quant_max=127)
    obs(w)
    torch_scale, _ = obs.calculate_qparams()
    qt = quant.quantize_tensor(w, 8, "channel")
    assert torch.allclose(qt.scale.squeeze(1), torch_scale, rtol=1e-6)
    theirs = torch.quantize_per_channel(w, torch_scale, torch.zeros(12, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(qt.int_values(), theirs.int_repr())


def test_percentile_and_mse_calibration_clip_outliers():
    w = randn(1, 4096, seed=4)
    w[0, 0] = 40.0  # one outlier stretches the min-max range
    errors = {}
    for method in quant.CALIBRATIONS:
        qt = quant.quantize_tensor(w, 4, "tensor", method=method, percentile=99.0)
        errors[method] = (qt.dequantize() - w).pow(2).mean().item()
    assert errors["mse"] < errors["minmax"] and errors["percentile"] < errors["minmax"]
    lo, hi = quant.calibrate_range(w, "percentile", percentile=100.0)
    assert hi.item() == pytest.approx(40.0)


def test_mse_search_never_worse_than_minmax():
    w = randn(8, 64, seed=5)
    for bits in (2, 3, 4, 8):
        mse = (quant.quantize_tensor(w, bits, "channel", method="mse").dequantize() - w).pow(2).sum(1)
        minmax = (quant.quantize_tensor(w, bits, "channel").dequantize() - w).pow(2).sum(1)
        assert bool((mse <= minmax + 1e-6).all())


def test_finer_granularity_lowers_error():
    w = randn(32, 256, seed=6) * torch.linspace(0.1, 4, 32)[:, None]
    err = {g: (quant.quantize_tensor(w, 4, g, 32).dequantize() - w).pow(2).mean().item()
           for g in quant.GRANULARITIES}
    assert err["group"] < err["channel"] < err["tensor"]


def test_int4_packing_round_trip_and_size():
    q = torch.randint(-8, 8, (5, 34), generator=torch.Generator().manual_seed(7), dtype=torch.int8)
    packed = quant.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 17)
    assert torch.equal(quant.unpack_int4(packed), q)
    assert quant.pack_int4(torch.tensor([[-8, 7]], dtype=torch.int8)).item() == 0xF0


def test_weight_sizes_reach_the_targets():
    w = randn(256, 512, seed=8)
    fp32 = w.numel() * 4
    assert fp32 / quant.quantize_tensor(w, 8, "channel").nbytes > 3.95
    assert fp32 / quant.quantize_tensor(w, 4, "group", 128).nbytes >= 7.0
    assert quant.quantize_tensor(w, 4, "group", 128, symmetric=False).nbytes > quant.quantize_tensor(w, 4, "group", 128).nbytes


def test_edge_cases_zero_constant_and_non_finite():
    zeros = torch.zeros(4, 8)
    qt = quant.quantize_tensor(zeros, 8, "channel")
    assert torch.equal(qt.dequantize(), zeros)  # scale = eps, integers 0: exactly zero back
    constant = torch.full((3, 8), 2.5)
    for symmetric in (True, False):
        back = quant.quantize_tensor(constant, 8, "channel", symmetric=symmetric).dequantize()
        assert torch.allclose(back, constant, atol=2.5 / 127)
    bad = torch.ones(2, 8)
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="inf or nan"):
        quant.quantize_tensor(bad, 8)
    bad[0, 1] = float("inf")
    with pytest.raises(ValueError, match="inf or nan"):
        quant.calibrate_range(bad)
    scale, zp = torch.tensor(0.1), torch.tensor(0)
    assert quant.quantize(torch.tensor([float("inf"), -float("inf")]), scale, zp, 8).tolist() == [127, -128]
    with pytest.raises(ValueError, match="nan"):
        quant.quantize(torch.tensor([float("nan")]), scale, zp, 8)


@pytest.mark.parametrize("call,error,message", [
    (lambda: quant.quantize_tensor(torch.randn(4, 8), 1), ValueError, "bits must be an int in 2..8"),
    (lambda: quant.quantize_tensor(torch.randn(4, 8), 9), ValueError, "bits must be an int in 2..8"),
    (lambda: quant.quantize_tensor(torch.randn(4, 8), 4.0), ValueError, "bits must be an int in 2..8"),
    (lambda: quant.quantize_tensor(torch.randn(4, 12), 4, "group", 8), ValueError, "must divide the input dimension"),
    (lambda: quant.quantize_tensor(torch.randn(4, 12), 4, "row"), ValueError, "granularity must be one of"),
    (lambda: quant.quantize_tensor(torch.ones(4, 8, dtype=torch.int32), 8), ValueError, "floating-point"),
    (lambda: quant.quantize_tensor([[1.0]], 8), TypeError, "must be a torch.Tensor"),
    (lambda: quant.quantize_tensor(torch.randn(8), 8), ValueError, "2-D"),
    (lambda: quant.calibrate_range(torch.randn(4, 8), "kl"), ValueError, "method must be one of"),
    (lambda: quant.calibrate_range(torch.randn(4, 8), "percentile", percentile=0), ValueError, "percentile"),
    (lambda: quant.pack_int4(torch.tensor([[8, 0]], dtype=torch.int8)), ValueError, r"\[-8, 7\]"),
    (lambda: quant.pack_int4(torch.zeros(2, 3, dtype=torch.int8)), ValueError, "even last dimension"),
    (lambda: quant.QuantConfig(weight_bits=4, activation="token"), ValueError, "need weight_bits=8"),
    (lambda: quant.QuantConfig(activation="channel"), ValueError, "activation must be"),
    (lambda: quant.QuantConfig(smooth_alpha=1.5), ValueError, "smooth_alpha"),
    (lambda: quant.int8_matmul(torch.ones(2, 3), torch.ones(3, 2)), ValueError, "int8"),
    (lambda: quant.Int8DynamicLinear.from_float(nn.Conv1d(2, 2, 1)), TypeError, "nn.Linear"),
    (lambda: quant.smooth_scales(torch.ones(3), torch.ones(4, 5)), ValueError, "one value per input channel"),
])
def test_bad_input_raises_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------------------------------------- STE / fake quant


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fake_quantize_matches_torch_forward_and_backward(dtype):
    x = (randn(64, seed=9, dtype=dtype) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    scale, zp = 0.05, 3
    ours = quant.fake_quantize(x, torch.tensor(scale, dtype=dtype), torch.tensor(zp), 8)
    theirs = torch.fake_quantize_per_tensor_affine(x_ref.float(), scale, zp, -128, 127)
    assert torch.allclose(ours.float(), theirs, atol=1e-6)
    grad = randn(64, seed=10)
    ours.backward(grad.to(dtype))
    theirs.backward(grad)
    assert torch.equal(x.grad.float(), x_ref.grad)
    assert 0 < int((x.grad == 0).sum()) < 64  # clipped entries get no gradient, the rest pass it straight through


def test_fake_quant_linear_trains_and_converts_to_the_same_integers():
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    fq = quant.FakeQuantLinear.from_float(linear, bits=4, granularity="group", group_size=32)
    x = randn(5, 64, seed=11)
    fq(x).sum().backward()
    assert fq.weight.grad is not None and fq.weight.grad.abs().sum() > 0
    model = nn.Sequential(copy.deepcopy(linear))
    prepared = quant.prepare_qat(model, bits=4, group_size=32)
    converted = quant.convert_qat(prepared)
    assert isinstance(converted[0], quant.WeightOnlyLinear)
    with torch.no_grad():
        assert torch.allclose(prepared(x), converted(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------- integer linears


@pytest.mark.parametrize("M,K,N", [(1, 64, 32), (7, 96, 40), (33, 128, 24)])
def test_int8_matmul_is_exact(M, K, N):
    g = torch.Generator().manual_seed(M)
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (K, N), generator=g, dtype=torch.int8)
    out = quant.int8_matmul(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out, (a.long() @ b.long()).int())


def test_int8_matmul_backend_is_named_honestly(monkeypatch):
    assert quant.int8_matmul_backend("cpu") in ("torch._int_mm", "emulated")
    monkeypatch.setitem(quant._INT_MM_WORKS, "cpu", False)
    assert quant.int8_matmul_backend("cpu") == "emulated"
    a = torch.randint(-128, 128, (3, 16), dtype=torch.int8)
    assert torch.equal(quant.int8_matmul(a, a.t().contiguous()), (a.long() @ a.long().t()).int())


@pytest.mark.parametrize("shape", [(4, 96), (2, 3, 96), (1, 96)])
def test_int8_linear_close_to_float_and_bit_exact_against_int32_reference(shape):
    torch.manual_seed(0)
    linear = nn.Linear(96, 48)
    layer = quant.Int8DynamicLinear.from_float(linear)
    x = randn(*shape, seed=12)
    y = layer(x)
    expected = linear(x)
    assert y.shape == expected.shape
    assert (y - expected).abs().max() < 0.02 * expected.abs().max()
    # the same arithmetic by hand: per-token int8, per-channel int8, int64 accumulation, then rescale
    rows = x.reshape(-1, 96)
    sx = rows.abs().amax(1, keepdim=True) / 127
    qx = torch.round(rows / sx).clamp(-128, 127).long()
    sw = linear.weight.abs().amax(1) / 127
    qw = torch.round(linear.weight / sw[:, None]).clamp(-128, 127).long()
    acc = qx @ qw.t()
    assert torch.equal(quant.int8_matmul(qx.to(torch.int8), qw.to(torch.int8).t()).long(), acc)
    by_hand = (acc.float() * (sx * sw) + linear.bias).reshape(y.shape)
    assert torch.allclose(y, by_hand, rtol=1e-6, atol=1e-6)


def test_per_tensor_activations_fail_on_outlier_channels_and_smoothing_recovers():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = randn(16, 64, seed=13)
    x[:, 3] *= 60  # an outlier channel, as in large language models
    expected = linear(x)
    err = {}
    for name, kwargs in {"tensor": dict(activation="tensor"),
                         "smoothed": dict(activation="tensor",
                                          input_scale=quant.smooth_scales(x.abs().amax(0), linear.weight, 0.5))}.items():
        err[name] = (quant.Int8DynamicLinear.from_float(linear, **kwargs)(x) - expected).pow(2).mean().item()
    assert err["smoothed"] < err["tensor"] / 4


def test_smooth_scales_preserve_the_product():
    w, x = randn(8, 16, seed=14), randn(5, 16, seed=15).abs() + 0.1
    s = quant.smooth_scales(x.abs().amax(0), w, 0.5)
    assert torch.allclose((x / s) @ (w * s).t(), x @ w.t(), atol=1e-5)
    # alpha = 0.5 equalises the per-channel maxima of activations and weights
    assert torch.allclose((x / s).abs().amax(0), (w * s).abs().amax(0), rtol=1e-5)


@pytest.mark.parametrize("bits,granularity,group", [(8, "channel", None), (4, "group", 32), (3, "group", 16),
                                                    (4, "tensor", None)])
def test_weight_only_linear_matches_dequantized_weight(bits, granularity, group):
    torch.manual_seed(0)
    linear = nn.Linear(64, 24)
    layer = quant.WeightOnlyLinear.from_float(linear, bits, granularity, group)
    x = randn(3, 64, seed=16)
    qt = quant.quantize_tensor(linear.weight, bits, granularity, group)
    assert torch.allclose(layer(x), F.linear(x, qt.dequantize(), linear.bias), atol=1e-6)
    assert (layer(x) - linear(x)).abs().max() < (0.05 if bits == 8 else 1.0)


# ---------------------------------------------------------------------------------------------- whole models


def small_gpt():
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=16)).eval()


def test_quantize_model_swaps_linears_keeps_skipped_and_reports_sizes():
    model = small_gpt()
    before = copy.deepcopy(model.state_dict())
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    qmodel, report = quant.quantize_model(model, quant.QuantConfig(skip=("lm_head",)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert type(qmodel.lm_head) is nn.Linear and report.kept == ["lm_head"]
    assert len(report.quantized) == 12
    assert all(isinstance(qmodel.get_submodule(n), quant.Int8DynamicLinear) for n in report.quantized)
    assert 3.5 < report.linear_compression <= 4
    with torch.no_grad():
        assert (qmodel(idx) - model(idx)).abs().max() < 0.1
    w4, report4 = quant.quantize_model(model, quant.QuantConfig(4, None, "group", 16))
    assert isinstance(w4.lm_head, quant.WeightOnlyLinear) and report4.linear_compression == pytest.approx(4 / (0.5 + 4 / 16))
    assert "quantized" in str(report4)


def test_quantize_model_static_and_smoothquant_need_calibration():
    model = small_gpt()
    with pytest.raises(ValueError, match="calibration_batches"):
        quant.quantize_model(model, quant.QuantConfig(activation="static"))
    batches = [torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    qmodel, _ = quant.quantize_model(model, quant.QuantConfig(activation="static", smooth_alpha=0.5), batches)
    layer = qmodel.blocks.layers[0].self_attn.q_proj
    assert layer.static_scale is not None and layer.input_scale is not None
    with torch.no_grad():
        assert (qmodel(batches[0]) - model(batches[0])).abs().max() < 0.2


def test_outlier_injection_keeps_the_function_and_creates_outliers():
    model = small_gpt()
    changed = quant.inject_outlier_channels(model, channels=(1, 5), factor=50.0)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(changed(idx), model(idx), atol=1e-4)
    stats = quant.activation_absmax(changed, [idx], ["blocks.layers.0.self_attn.q_proj"])
    absmax = stats["blocks.layers.0.self_attn.q_proj"]
    assert absmax[1] > 10 * absmax.median()


def test_classifier_quantizes_too():
    torch.manual_seed(0)
    model = EncoderClassifier(TransformerConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=1, d_ff=64,
                                                max_len=12, n_classes=3, norm_first=True)).eval()
    idx = torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(0))
    qmodel, _ = quant.quantize_model(model, quant.QuantConfig(), None)
    with torch.no_grad():
        assert torch.allclose(qmodel(idx), model(idx), atol=0.05)


def test_model_bytes_counts_tied_weights_once():
    model = small_gpt()
    assert quant.model_bytes(model) == sum(p.numel() * 4 for p in model.parameters())  # parameters() dedups too
    assert quant.linear_weight_bytes(model.lm_head) == 50 * 32 * 4
    with pytest.raises(TypeError, match="linear"):
        quant.linear_weight_bytes(nn.ReLU())


# ---------------------------------------------------------------------------------------------- the Triton kernel

_INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from labkit import quant
    from labkit.kernels.quant_matmul_triton import weight_only_matmul, supports
    g = torch.Generator().manual_seed(0)
    errors = {}
    for bits, gran, group, M, N, K in ((4, "group", 32, 3, 70, 64), (4, "group", 64, 17, 33, 128),
                                       (8, "channel", None, 1, 40, 96), (8, "group", 32, 5, 64, 64)):
        w, x = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g)
        qt = quant.quantize_tensor(w, bits, gran, group)
        y = weight_only_matmul(x, qt.data, qt.scale, bits)
        errors[f"{bits} {gran} {M}x{K}x{N}"] = (y - x @ qt.dequantize().t()).abs().max().item()
    y = weight_only_matmul(x.half(), qt.data, qt.scale, bits)
    assert y.dtype == torch.float16
    errors["float16"] = (y.float() - x @ qt.dequantize().t()).abs().max().item() / 10
    assert not supports(torch.randn(2, 48), torch.zeros(4, 24, dtype=torch.uint8), torch.ones(4, 1), 4)
    print(json.dumps(errors))
""")


def test_triton_kernel_under_the_interpreter(triton_interpreter):
    errors = json.loads(triton_interpreter(_INTERPRETER_SCRIPT).strip().splitlines()[-1])
    assert len(errors) == 5
    assert max(errors.values()) < 1e-4 * 50, errors


def test_triton_kernel_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    from labkit.kernels import quant_matmul_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qt = quant.quantize_tensor(randn(8, 64), 4, "group", 32)
    with pytest.raises(ValueError, match="CUDA tensors"):
        quant_matmul_triton.weight_only_matmul(randn(2, 64), qt.data, qt.scale, 4)
    with pytest.raises(ValueError, match="unsupported operands"):
        quant_matmul_triton.weight_only_matmul(randn(2, 64), qt.data, qt.scale, 8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bits,group", [(4, 128), (4, 32), (8, 128)])
@pytest.mark.parametrize("M", [1, 16, 100])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.float32, 1e-3)])
def test_triton_kernel_on_cuda(bits, group, M, dtype, tol):
    pytest.importorskip("triton")
    linear = nn.Linear(512, 384).cuda()
    layer = quant.WeightOnlyLinear.from_float(linear, bits, "group", group).cuda()
    x = torch.randn(M, 512, device="cuda", dtype=dtype)
    expected = F.linear(x.float(), layer.quantized_weight().dequantize(), layer.bias)
    assert torch.allclose(layer(x).float(), expected, atol=tol, rtol=tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_int8_linear_on_cuda_is_exact_against_cpu():
    linear = nn.Linear(256, 128)
    x = randn(3, 256)
    cpu = quant.Int8DynamicLinear.from_float(linear)(x)
    gpu = quant.Int8DynamicLinear.from_float(linear.cuda())(x.cuda())
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
