"""labkit.layers against F.layer_norm / nn.LayerNorm, F.rms_norm, the FFN and sinusoid formulas, nn.Embedding."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.layers import (
    FeedForward,
    LayerNorm,
    LearnedPositionalEmbedding,
    RMSNorm,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
    layer_norm,
    rms_norm,
    sinusoidal_encoding,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-10)}


def randn(*shape, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,normalized", [((4, 7, 16), 16), ((3, 5, 6), (5, 6)), ((8,), (8,))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch_forward_and_backward(dtype, shape, normalized, affine):
    x = randn(*shape, dtype=dtype, grad=True) * 3 + 1
    norm_shape = (normalized,) if isinstance(normalized, int) else normalized
    weight = randn(*norm_shape, dtype=dtype, seed=1, grad=True) if affine else None
    bias = randn(*norm_shape, dtype=dtype, seed=2, grad=True) if affine else None
    upstream = randn(*shape, dtype=dtype, seed=3)
    inputs = [t for t in (x, weight, bias) if t is not None]

    ours = layer_norm(x, normalized, weight, bias, eps=1e-5)
    ref = F.layer_norm(x, norm_shape, weight, bias, eps=1e-5)
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    ours_grads = torch.autograd.grad((ours * upstream).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), inputs)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-4)


def test_layer_norm_uses_the_biased_variance():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    mean, var = 3.0, ((2**2 + 1 + 0 + 3**2) / 4)  # divide by N = 4
    expected = (x - mean) / math.sqrt(var + 1e-5)
    torch.testing.assert_close(layer_norm(x, 4), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_module_matches_nn_layernorm(bias):
    torch.manual_seed(0)
    reference = nn.LayerNorm(12, eps=1e-6, bias=bias).double()
    with torch.no_grad():
        reference.weight.normal_()
        if bias:
            reference.bias.normal_()
    ours = LayerNorm.from_torch(reference)
    assert (ours.bias is None) == (not bias)
    x = randn(2, 3, 12)
    torch.testing.assert_close(ours(x), reference(x))
    fresh = LayerNorm(12, eps=1e-6, bias=bias).double()
    fresh.load_state_dict(reference.state_dict())  # same parameter names as nn.LayerNorm
    torch.testing.assert_close(fresh(x), reference(x))
    plain = LayerNorm((3, 12), elementwise_affine=False)
    assert list(plain.parameters()) == []
    torch.testing.assert_close(plain(x.float()), F.layer_norm(x.float(), (3, 12)))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: layer_norm(torch.randn(2, 5), 4), ValueError, r"x must end with normalized_shape \(4,\), got shape \(2, 5\)"),
        (lambda: layer_norm(torch.ones(2, 4, dtype=torch.long), 4), TypeError, "floating-point"),
        (lambda: layer_norm(torch.randn(2, 4), 4, weight=torch.ones(5)), ValueError, r"weight must have shape \(4,\)"),
        (lambda: layer_norm(torch.randn(2, 4), 0), ValueError, "normalized_shape"),
        (lambda: LayerNorm(2.5), TypeError, "normalized_shape"),
    ],
)
def test_layer_norm_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_the_formula(dtype):
    x = randn(3, 4, 10, dtype=dtype) * 2 + 0.5
    weight = randn(10, dtype=dtype, seed=1)
    rms = torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(rms_norm(x, weight), x / rms * weight, **TOL[dtype])
    torch.testing.assert_close(rms_norm(x), x / rms, **TOL[dtype])
    # unlike LayerNorm, the mean is not removed
    assert not torch.allclose(rms_norm(x), layer_norm(x, 10), atol=1e-3)


@pytest.mark.skipif(not hasattr(F, "rms_norm"), reason="torch.nn.functional.rms_norm needs torch >= 2.4")
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_torch_forward_and_backward(dtype):
    x = randn(3, 4, 10, dtype=dtype, grad=True)
    weight = randn(10, dtype=dtype, seed=1, grad=True)
    ours = rms_norm(x, weight, eps=1e-6)
    ref = F.rms_norm(x, (10,), weight, eps=1e-6)
    torch.testing.assert_close(ours, ref, **TOL[dtype])
    for a, b in zip(torch.autograd.grad(ours.sum(), (x, weight)), torch.autograd.grad(ref.sum(), (x, weight))):
        torch.testing.assert_close(a, b, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-4)


def test_rms_norm_module():
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = randn(2, 6, dtype=torch.float32)
    torch.testing.assert_close(norm(x), rms_norm(x, torch.arange(1.0, 7.0), eps=1e-5))
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        rms_norm(x, torch.ones(5))
    with pytest.raises(ValueError, match="dim must be a positive int"):
        RMSNorm(0)


# ---------------------------------------------------------------------------------------------------------------
# FeedForward


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_ffn_matches_the_formula(activation, bias):
    torch.manual_seed(0)
    ffn = FeedForward(8, 20, activation=activation, bias=bias).double()
    x = randn(2, 5, 8, grad=True)
    W1, W2 = ffn.up.weight.T, ffn.down.weight.T
    hidden = x @ W1 + (ffn.up.bias if bias else 0)
    hidden = torch.clamp(hidden, min=0) if activation == "relu" else 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    expected = hidden @ W2 + (ffn.down.bias if bias else 0)  # 003 §4.1: max(0, XW_1 + b_1) W_2 + b_2
    torch.testing.assert_close(ffn(x), expected)
    grads = torch.autograd.grad(ffn(x).sum(), (x, ffn.up.weight))
    ref_grads = torch.autograd.grad(expected.sum(), (x, ffn.up.weight))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert sum(p.numel() for p in ffn.parameters()) == 2 * 8 * 20 + (20 + 8 if bias else 0)


def test_swiglu_matches_the_formula():
    torch.manual_seed(0)
    ffn = FeedForward(8, 12, activation="swiglu", bias=False).double()
    x = randn(3, 8)
    gate = x @ ffn.gate.weight.T
    expected = (gate * torch.sigmoid(gate) * (x @ ffn.up.weight.T)) @ ffn.down.weight.T
    torch.testing.assert_close(ffn(x), expected)
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 8 * 12


def test_ffn_dropout_acts_in_training_only():
    torch.manual_seed(0)
    ffn = FeedForward(8, 64, dropout=0.5)
    x = torch.randn(4, 8)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn(x))
    ffn.train()
    assert not torch.allclose(ffn(x), ffn(x))


def test_ffn_bad_arguments():
    with pytest.raises(ValueError, match=r"activation must be one of \('relu', 'gelu', 'swiglu'\), got 'tanh'"):
        FeedForward(8, 16, activation="tanh")
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 8\), got \(2, 7\)"):
        FeedForward(8, 16)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="d_ff must be a positive int"):
        FeedForward(8, 0)


# ---------------------------------------------------------------------------------------------------------------
# positions and embeddings


@pytest.mark.parametrize("d_model", [16, 7])
def test_sinusoidal_encoding_values_at_specific_positions(d_model):
    table = sinusoidal_encoding(50, d_model, dtype=torch.float64)
    assert table.shape == (50, d_model)
    for p, i in [(0, 0), (1, 0), (3, 1), (17, 2), (49, 3)]:
        angle = p / 10000 ** (2 * i / d_model)
        assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-12)
        if 2 * i + 1 < d_model:
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-12)
    assert torch.equal(table[0, 0::2], torch.zeros_like(table[0, 0::2]))  # sin(0) = 0
    assert torch.equal(table[0, 1::2], torch.ones_like(table[0, 1::2]))  # cos(0) = 1
    assert sinusoidal_encoding(4, 8).dtype == torch.float32


def test_sinusoidal_relative_shift_is_a_rotation():
    # Vaswani et al. 2017, §3.5: PE[p + k] is a linear (rotation) function of PE[p] for each frequency pair
    table = sinusoidal_encoding(40, 8, dtype=torch.float64)
    k, i = 5, 1
    w = 1 / 10000 ** (2 * i / 8)
    # [sin a, cos a] @ R = [sin(a + b), cos(a + b)] with b = k w
    rotation = torch.tensor([[math.cos(k * w), -math.sin(k * w)], [math.sin(k * w), math.cos(k * w)]], dtype=torch.float64)
    pairs = table[:, 2 * i : 2 * i + 2]
    torch.testing.assert_close(pairs[:-k] @ rotation, pairs[k:])


def test_sinusoidal_module_adds_the_table():
    module = SinusoidalPositionalEncoding(8, max_len=20)
    assert list(module.parameters()) == [] and "table" not in module.state_dict()
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(module(x), x + sinusoidal_encoding(6, 8))
    torch.testing.assert_close(module(x, offset=3), x + sinusoidal_encoding(9, 8)[3:])
    with pytest.raises(ValueError, match="exceed max_len 20"):
        module(torch.randn(1, 21, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., T, 8\)"):
        module(torch.randn(2, 6, 4))


def test_learned_positional_embedding_adds_its_rows_and_learns():
    module = LearnedPositionalEmbedding(10, 4)
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(module(x), x + module.weight[:5])
    torch.testing.assert_close(module(x, offset=2), x + module.weight[2:7])
    module(x).sum().backward()
    assert torch.equal(module.weight.grad[5:], torch.zeros(5, 4)) and torch.equal(module.weight.grad[:5], torch.full((5, 4), 3.0))
    with pytest.raises(ValueError, match=r"positions 8\.\.12 exceed max_len 10"):
        module(x, offset=8)


def test_token_embedding_matches_nn_embedding():
    emb = TokenEmbedding(11, 6)
    reference = nn.Embedding(11, 6)
    with torch.no_grad():
        reference.weight.copy_(emb.weight)
    idx = torch.tensor([[0, 3, 10], [5, 5, 1]])
    torch.testing.assert_close(emb(idx), reference(idx))
    emb(idx).sum().backward()
    reference(idx).sum().backward()
    torch.testing.assert_close(emb.weight.grad, reference.weight.grad)
    scaled = TokenEmbedding(11, 16, scale=True)
    torch.testing.assert_close(scaled(idx), scaled.weight[idx] * 4.0)


@pytest.mark.parametrize(
    "idx,error,match",
    [
        (torch.tensor([[0.0, 1.0]]), TypeError, r"integer tensor \(torch.long\), got dtype torch.float32"),
        (torch.tensor([[0, 11]]), ValueError, r"token ids must be in \[0, 11\), got values in \[0, 11\]"),
        (torch.tensor([[-1, 2]]), ValueError, r"\[0, 11\)"),
        ([[1, 2]], TypeError, "torch.Tensor"),
    ],
)
def test_token_embedding_bad_ids(idx, error, match):
    with pytest.raises(error, match=match):
        TokenEmbedding(11, 4)(idx)
