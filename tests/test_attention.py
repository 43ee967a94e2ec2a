"""labkit.attention against F.scaled_dot_product_attention and nn.MultiheadAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.attention import MultiHeadAttention, attention_weights, causal_mask, scaled_dot_product_attention

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}


def qkv(batch, L, S, E, Ev=None, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    Ev = E if Ev is None else Ev
    tensors = (
        torch.randn(*batch, L, E, generator=g, dtype=dtype),
        torch.randn(*batch, S, E, generator=g, dtype=dtype),
        torch.randn(*batch, S, Ev, generator=g, dtype=dtype),
    )
    return tuple(t.requires_grad_(grad) for t in tensors)


def random_bool_mask(shape, seed=1):
    """A bool mask (True = attend) with every row keeping at least one key."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) > 0.4
    mask[..., 0] = True
    return mask


# ---------------------------------------------------------------------------------------------------------------
# scaled_dot_product_attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "batch,L,S,E,Ev", [((2, 3), 4, 6, 8, 5), ((), 5, 5, 4, 4), ((3,), 1, 7, 16, 16), ((2, 2), 7, 3, 8, 8)]
)
def test_sdpa_matches_torch_without_mask(dtype, batch, L, S, E, Ev):
    q, k, v = qkv(batch, L, S, E, Ev, dtype)
    ours = scaled_dot_product_attention(q, k, v)
    assert ours.shape == (*batch, L, Ev) and ours.dtype == dtype
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_bool_and_float_masks_match_torch(dtype):
    q, k, v = qkv((2, 3), 5, 6, 8, dtype=dtype)
    bool_mask = random_bool_mask((2, 3, 5, 6))
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
        **TOL[dtype],
    )
    float_mask = torch.randn(5, 6, dtype=dtype)  # broadcast over (2, 3)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, attn_mask=float_mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask),
        **TOL[dtype],
    )


def test_bool_mask_equals_minus_inf_float_mask():
    q, k, v = qkv((2,), 4, 5, 8)
    mask = random_bool_mask((4, 5))
    additive = torch.zeros(4, 5, dtype=torch.float64).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, attn_mask=mask), scaled_dot_product_attention(q, k, v, attn_mask=additive)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L,S", [(5, 5), (3, 6), (6, 3)])
def test_sdpa_causal_matches_torch(dtype, L, S):
    q, k, v = qkv((2, 2), L, S, 8, dtype=dtype)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, is_causal=True),
        F.scaled_dot_product_attention(q, k, v, is_causal=True),
        **TOL[dtype],
    )


def test_causal_mask_is_top_left_aligned_lower_triangle():
    assert torch.equal(causal_mask(3, 5), torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]).bool())
    assert torch.equal(causal_mask(4), torch.ones(4, 4).tril().bool())


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_custom_scale_matches_torch(dtype):
    q, k, v = qkv((2,), 4, 6, 8, dtype=dtype)
    ours = scaled_dot_product_attention(q, k, v, scale=0.7)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, scale=0.7), **TOL[dtype])
    # and the default really is 1/sqrt(E)
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(8)), scaled_dot_product_attention(q, k, v)
    )
    assert not torch.allclose(ours, scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize(
    "q_batch,kv_batch,mask_shape",
    [((2, 3), (1, 3), (2, 1, 4, 6)), ((2, 3), (2, 1), (4, 6)), ((2, 3), (3,), (1, 6)), ((3,), (2, 1), (3, 4, 6))],
)
def test_sdpa_broadcasts_batch_and_head_dims(q_batch, kv_batch, mask_shape):
    q = qkv(q_batch, 4, 6, 8, seed=0)[0]
    _, k, v = qkv(kv_batch, 4, 6, 8, seed=1)
    mask = random_bool_mask(mask_shape)
    out_shape = torch.broadcast_shapes(q_batch, kv_batch, mask_shape[:-2])
    expected = F.scaled_dot_product_attention(
        q.expand(*out_shape, 4, 8), k.expand(*out_shape, 6, 8), v.expand(*out_shape, 6, 8), attn_mask=mask
    )
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=mask), expected)


@pytest.mark.parametrize("masking", ["none", "bool", "float", "causal"])
def test_sdpa_gradients_match_torch(masking):
    q, k, v = qkv((2, 2), 5, 5, 4, dtype=torch.float64, grad=True)
    kwargs = {
        "none": {},
        "bool": {"attn_mask": random_bool_mask((5, 5))},
        "float": {"attn_mask": torch.randn(2, 1, 5, 5, dtype=torch.float64)},
        "causal": {"is_causal": True},
    }[masking]
    upstream = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    ours = torch.autograd.grad((scaled_dot_product_attention(q, k, v, **kwargs) * upstream).sum(), (q, k, v))
    ref = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v, **kwargs) * upstream).sum(), (q, k, v))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_fully_masked_row_gives_zeros_like_torch_and_finite_gradients():
    q, k, v = qkv((2,), 4, 5, 8, grad=True)
    mask = random_bool_mask((4, 5))
    mask[2] = False
    ours = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(ours[:, 2], torch.zeros_like(ours[:, 2]))
    ours.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.equal(q.grad[:, 2], torch.zeros_like(q.grad[:, 2]))
    weights = attention_weights(q, k, attn_mask=mask)
    assert torch.equal(weights[:, 2], torch.zeros_like(weights[:, 2]))


def test_attention_weights_are_the_softmax_of_scaled_scores():
    q, k, _ = qkv((2, 3), 4, 6, 8)
    mask = random_bool_mask((4, 6))
    weights = attention_weights(q, k, attn_mask=mask)
    manual = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(weights, manual)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 4, dtype=torch.float64))
    # with V = identity, attention returns its weights: check against torch
    eye = torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(weights, F.scaled_dot_product_attention(q, k, eye, attn_mask=mask))
    causal = attention_weights(q, k, is_causal=True)
    assert torch.equal(causal.triu(1), torch.zeros_like(causal))


def test_dropout_zero_is_no_dropout_and_one_gives_zeros():
    q, k, v = qkv((2,), 4, 6, 8)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, dropout_p=0.0), scaled_dot_product_attention(q, k, v))
    dropped = scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    assert torch.equal(dropped, torch.zeros_like(dropped))
    assert torch.equal(F.scaled_dot_product_attention(q, k, v, dropout_p=1.0), dropped)


def test_dropout_drops_weights_and_rescales_the_rest():
    torch.manual_seed(0)
    p = 0.3
    q, k, _ = qkv((8, 4), 32, 32, 8)
    eye = torch.eye(32, dtype=torch.float64)  # output = (dropped) weights
    weights = attention_weights(q, k)
    out = scaled_dot_product_attention(q, k, eye, dropout_p=p)
    kept = out != 0
    torch.testing.assert_close(out[kept], weights[kept] / (1 - p))
    assert abs((~kept).double().mean().item() - p) < 0.02  # 32768 draws: standard error ~0.0025


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((torch.randn(4), torch.randn(4, 4), torch.randn(4, 4)), {}, ValueError, r"query must have shape \(\.\.\., L, E\)"),
        ((torch.randn(3, 4), torch.randn(5, 6), torch.randn(5, 4)), {}, ValueError, "same last dim E"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(6, 4)), {}, ValueError, "same length S"),
        ((torch.randn(3, 4), torch.randn(5, 4).double(), torch.randn(5, 4)), {}, TypeError, "same dtype"),
        ((torch.ones(3, 4, dtype=torch.long),) * 3, {}, TypeError, "floating-point"),
        ((torch.randn(2, 3, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 4)), {}, ValueError, "must broadcast"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)), {"attn_mask": torch.ones(4, 5).bool()}, ValueError, r"attn_mask must broadcast to"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)), {"attn_mask": torch.ones(3, 5, dtype=torch.long)}, TypeError, "bool"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)), {"attn_mask": torch.ones(3, 5).bool(), "is_causal": True}, ValueError, "is_causal"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)), {"dropout_p": 1.5}, ValueError, r"dropout_p must be a float in \[0, 1\]"),
    ],
)
def test_sdpa_bad_inputs_raise_clear_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        scaled_dot_product_attention(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# MultiHeadAttention


def make_mha(embed_dim=16, num_heads=4, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    reference = nn.MultiheadAttention(embed_dim, num_heads, batch_first=kwargs.pop("batch_first", True), **kwargs)
    reference = reference.to(dtype).eval()
    with torch.no_grad():  # non-zero biases, so that copying them is tested
        for name, param in reference.named_parameters():
            if "bias" in name:
                param.normal_()
    return reference, MultiHeadAttention.from_torch(reference)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("average", [True, False])
def test_mha_self_attention_matches_torch(dtype, average):
    reference, ours = make_mha(dtype=dtype)
    x = torch.randn(3, 5, 16, dtype=dtype)
    out, weights = ours(x, x, x, need_weights=True, average_attn_weights=average)
    ref_out, ref_weights = reference(x, x, x, need_weights=True, average_attn_weights=average)
    assert weights.shape == ((3, 5, 5) if average else (3, 4, 5, 5))
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    torch.testing.assert_close(weights, ref_weights, **TOL[dtype])
    assert ours(x, x, x)[1] is None


@pytest.mark.parametrize("kdim,vdim", [(None, None), (12, 10)])
def test_mha_cross_attention_matches_torch(kdim, vdim):
    reference, ours = make_mha(kdim=kdim, vdim=vdim)
    query = torch.randn(2, 4, 16, dtype=torch.float64)
    key = torch.randn(2, 7, kdim or 16, dtype=torch.float64)
    value = torch.randn(2, 7, vdim or 16, dtype=torch.float64)
    out, weights = ours(query, key, value, need_weights=True)
    ref_out, ref_weights = reference(query, key, value)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)


@pytest.mark.parametrize("padding_kind", ["bool", "float"])
@pytest.mark.parametrize("mask_kind", ["none", "bool2d", "float2d", "float3d"])
def test_mha_masks_match_torch(padding_kind, mask_kind):
    reference, ours = make_mha()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    key_padding_mask = pad if padding_kind == "bool" else torch.zeros(2, 5, dtype=torch.float64).masked_fill(pad, -1e4)
    attn_mask = {
        "none": None,
        "bool2d": ~causal_mask(5),  # nn.MultiheadAttention: True = not allowed
        "float2d": torch.randn(5, 5, dtype=torch.float64),
        "float3d": torch.randn(2 * 4, 5, 5, dtype=torch.float64),
    }[mask_kind]
    if mask_kind == "bool2d" and padding_kind == "float":
        attn_mask = torch.zeros(5, 5, dtype=torch.float64).masked_fill(attn_mask, float("-inf"))
    kwargs = dict(key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=True, average_attn_weights=False)
    out, weights = ours(x, x, x, **kwargs)
    if attn_mask is not None and attn_mask.is_floating_point() and padding_kind == "bool":
        # labkit mixes bool and float masks silently; torch warns, so hand it the float form
        kwargs["key_padding_mask"] = torch.zeros(2, 5, dtype=torch.float64).masked_fill(pad, float("-inf"))
    ref_out, ref_weights = reference(x, x, x, **kwargs)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)
    if padding_kind == "bool":
        assert torch.equal(weights[1, :, :, 3:], torch.zeros(4, 5, 2, dtype=torch.float64))


def test_mha_is_causal_without_mask_builds_the_causal_mask():
    reference, ours = make_mha()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch_mask = nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    out, weights = ours(x, x, x, is_causal=True, need_weights=True)
    ref_out, ref_weights = reference(x, x, x, attn_mask=torch_mask, is_causal=True, need_weights=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)


def test_mha_without_bias_batch_first_false_and_unbatched_match_torch():
    reference, ours = make_mha(bias=False, batch_first=False)
    assert ours.q_proj.bias is None and ours.out_proj.bias is None
    x = torch.randn(5, 2, 16, dtype=torch.float64)  # (L, B, E)
    torch.testing.assert_close(ours(x, x, x)[0], reference(x, x, x)[0])
    single = torch.randn(5, 16, dtype=torch.float64)
    masks = dict(key_padding_mask=torch.tensor([0.0, 0, 0, 0, -1e9], dtype=torch.float64),
                 attn_mask=torch.randn(4, 5, 5, dtype=torch.float64))  # unbatched: (S,) and (H, L, S)
    out, weights = ours(single, single, single, need_weights=True, **masks)
    ref_out, ref_weights = reference(single, single, single, **masks)
    assert out.shape == (5, 16) and weights.shape == (5, 5)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)


def test_mha_gradients_match_torch():
    reference, ours = make_mha()
    query = torch.randn(2, 4, 16, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    upstream = torch.randn(2, 4, 16, dtype=torch.float64)

    loss = (ours(query, memory, memory, key_padding_mask=pad)[0] * upstream).sum()
    ours_grads = torch.autograd.grad(loss, [query, memory, *ours.parameters()])
    loss = (reference(query, memory, memory, key_padding_mask=pad)[0] * upstream).sum()
    ref_grads = torch.autograd.grad(loss, [query, memory, *reference.parameters()])

    grad_q, grad_mem, *param_grads = ours_grads
    torch.testing.assert_close(grad_q, ref_grads[0])
    torch.testing.assert_close(grad_mem, ref_grads[1])
    named = dict(zip([n for n, _ in ours.named_parameters()], param_grads))
    ref_named = dict(zip([n for n, _ in reference.named_parameters()], ref_grads[2:]))
    torch.testing.assert_close(
        torch.cat([named["q_proj.weight"], named["k_proj.weight"], named["v_proj.weight"]]), ref_named["in_proj_weight"]
    )
    torch.testing.assert_close(
        torch.cat([named["q_proj.bias"], named["k_proj.bias"], named["v_proj.bias"]]), ref_named["in_proj_bias"]
    )
    torch.testing.assert_close(named["out_proj.weight"], ref_named["out_proj.weight"])


def test_mha_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 8, 16)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x)[0], mha(x, x, x)[0])
    mha.train()
    _, weights = mha(x, x, x, need_weights=True, average_attn_weights=False)
    assert (weights == 0).any()
    assert not torch.allclose(mha(x, x, x)[0], mha(x, x, x)[0])


def test_mha_from_torch_copies_rather_than_shares():
    reference, ours = make_mha()
    with torch.no_grad():
        ours.q_proj.weight.zero_()
    assert reference.in_proj_weight.abs().sum() > 0


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: MultiHeadAttention(10, 3), ValueError, r"embed_dim \(10\) must be divisible by num_heads \(3\)"),
        (lambda: MultiHeadAttention(0, 1), ValueError, "embed_dim must be a positive int"),
        (lambda: MultiHeadAttention(8, 2, dropout=-0.1), ValueError, "dropout"),
        (lambda: MultiHeadAttention.from_torch(nn.Linear(2, 2)), TypeError, "nn.MultiheadAttention"),
        (lambda: MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True)), ValueError, "add_bias_kv"),
    ],
)
def test_mha_bad_construction_raises(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    "inputs,kwargs,error,match",
    [
        ((torch.randn(2, 5, 12),) * 3, {}, ValueError, "query must have last dim 16"),
        ((torch.randn(2, 2, 5, 16),) * 3, {}, ValueError, r"batched \(B, L, E\) or unbatched"),
        ((torch.randn(2, 5, 16),) * 3, {"key_padding_mask": torch.zeros(2, 4).bool()}, ValueError, r"key_padding_mask must have shape \(B, S\) = \(2, 5\)"),
        ((torch.randn(2, 5, 16),) * 3, {"attn_mask": torch.zeros(4, 5).bool()}, ValueError, r"attn_mask must have shape \(L, S\)"),
        ((torch.randn(2, 5, 16),) * 3, {"attn_mask": torch.zeros(5, 5, dtype=torch.long)}, TypeError, "bool"),
        ((torch.randn(2, 5, 16), torch.randn(3, 5, 16), torch.randn(3, 5, 16)), {}, ValueError, "B = 2"),
        ((torch.ones(2, 5, 16, dtype=torch.long),) * 3, {}, TypeError, "floating-point"),
    ],
)
def test_mha_bad_inputs_raise_clear_errors(inputs, kwargs, error, match):
    mha = MultiHeadAttention(16, 4)
    with pytest.raises(error, match=match):
        mha(*inputs, **kwargs)
