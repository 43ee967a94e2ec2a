"""labkit.attention_variants: sliding-window, linear and grouped-query attention against their references
(labkit's and torch's scaled dot-product attention with an explicit mask, the quadratic form of linear attention,
F.scaled_dot_product_attention with repeated K/V heads), the KV-cache formula and the long-range classifier."""

import pytest
import torch
import torch.nn.functional as F

from labkit.attention import MultiHeadAttention, scaled_dot_product_attention
from labkit.attention_variants import (
    GroupedQueryAttention,
    LongRangeClassifier,
    VariantSelfAttention,
    elu_feature_map,
    kv_cache_bytes,
    linear_attention,
    linear_attention_quadratic,
    sliding_window_attention,
    sliding_window_mask,
)
from labkit.bench import peak_memory
from labkit.data import long_range_task

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}
DTYPES = list(TOL)


def inputs(batch, L, S, E, Ev=None, *, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    shapes = ((*batch, L, E), (*batch, S, E), (*batch, S, E if Ev is None else Ev))
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad) for shape in shapes]


def assert_same_with_gradients(ours_fn, reference_fn, tensors, tol):
    ours, expected = ours_fn(*tensors), reference_fn(*tensors)
    torch.testing.assert_close(ours, expected, **tol)
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=expected.dtype)
    for a, b in zip(torch.autograd.grad(ours, tensors, grad_out), torch.autograd.grad(expected, tensors, grad_out)):
        torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------------------------------- sliding window


def test_sliding_window_mask_by_hand():
    causal = sliding_window_mask(5, 2)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]],
                            dtype=torch.bool)
    assert torch.equal(causal, expected)
    both_sides = sliding_window_mask(5, 2, causal=False)
    assert torch.equal(both_sides, expected | expected.T)
    assert torch.equal(sliding_window_mask(4, 1), torch.eye(4, dtype=torch.bool))
    assert torch.equal(sliding_window_mask(4, 10), torch.ones(4, 4, dtype=torch.bool).tril())
    assert sliding_window_mask(0, 3).shape == (0, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,window", [(17, 4), (16, 4), (9, 1), (5, 5), (6, 11), (1, 3), (33, 7)])
def test_sliding_window_equals_masked_attention(dtype, causal, n, window):
    q, k, v = inputs((2, 3), n, n, 8, 5, dtype=dtype)
    mask = sliding_window_mask(n, window, causal)

    def ours(q, k, v):
        return sliding_window_attention(q, k, v, window, causal=causal)

    assert_same_with_gradients(ours, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               (q, k, v), TOL[dtype])
    torch.testing.assert_close(ours(q, k, v), scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL[dtype])


def test_sliding_window_broadcasts_and_takes_a_scale():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, 10, 4, generator=g, dtype=torch.float64)
    k = torch.randn(1, 3, 10, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 10, 6, generator=g, dtype=torch.float64)
    mask = sliding_window_mask(10, 3)
    torch.testing.assert_close(sliding_window_attention(q, k, v, 3, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3))


def test_sliding_window_memory_grows_linearly():
    """Doubling n doubles the peak memory (the naive masked form would quadruple it)."""
    g = torch.Generator().manual_seed(0)

    def peak(n):
        q, k, v = (torch.randn(1, n, 16, generator=g) for _ in range(3))
        with torch.no_grad():
            return peak_memory(lambda: sliding_window_attention(q, k, v, 32), "cpu")

    small, large = peak(1024), peak(4096)
    assert 3.0 < large / small < 5.0  # 4x the length: ~4x the memory, not ~16x
    assert large < 4096 * 4096 * 4 / 8  # far below one 4096 x 4096 float32 score matrix


def test_sliding_window_bad_inputs():
    q, k, v = inputs((1,), 6, 6, 4, grad=False)
    with pytest.raises(ValueError, match="window must be a positive int"):
        sliding_window_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="same length n"):
        sliding_window_attention(q, k[..., :5, :], v[..., :5, :], 2)
    with pytest.raises(TypeError, match="causal must be a bool"):
        sliding_window_attention(q, k, v, 2, causal="yes")
    with pytest.raises(TypeError, match="floating-point"):
        sliding_window_attention(q.long(), k, v, 2)
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        sliding_window_mask(-1, 2)


# ---------------------------------------------------------------------------------------------- linear attention


def linear_attention_by_cumsum(q, k, v, eps=1e-6):
    """The recurrent form: S_i = sum_{j<=i} phi(k_j) v_j^T and z_i = sum_{j<=i} phi(k_j), out_i = phi(q_i) S_i / ..."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    states = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (..., n, E, Ev)
    sums = torch.cumsum(phi_k, dim=-2)
    numerator = (phi_q.unsqueeze(-1) * states).sum(-2)
    return numerator / ((phi_q * sums).sum(-1, keepdim=True) + eps)


def test_feature_map_is_positive_elu_plus_one():
    x = torch.linspace(-30, 5, 101, dtype=torch.float64)
    phi = elu_feature_map(x)
    assert (phi > 0).all()
    torch.testing.assert_close(phi, torch.where(x > 0, x + 1, torch.exp(x)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,L,S,E,Ev", [((2, 3), 5, 9, 8, 4), ((), 13, 13, 4, 4), ((2,), 1, 1, 16, 3)])
def test_linear_attention_noncausal_equals_quadratic_form(dtype, batch, L, S, E, Ev):
    q, k, v = inputs(batch, L, S, E, Ev, dtype=dtype)
    assert_same_with_gradients(linear_attention, linear_attention_quadratic, (q, k, v), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,chunk_size", [(13, 4), (16, 4), (5, 64), (9, 1), (20, 7)])
def test_linear_attention_causal_chunks_equal_quadratic_and_cumsum(dtype, n, chunk_size):
    q, k, v = inputs((2, 2), n, n, 6, 5, dtype=dtype)

    def ours(q, k, v):
        return linear_attention(q, k, v, is_causal=True, chunk_size=chunk_size)

    assert_same_with_gradients(ours, lambda q, k, v: linear_attention_quadratic(q, k, v, is_causal=True),
                               (q, k, v), TOL[dtype])
    torch.testing.assert_close(ours(q, k, v), linear_attention_by_cumsum(q, k, v), **TOL[dtype])


def test_linear_attention_quadratic_by_hand():
    """One query, two keys: weights phi(q).phi(k_j) / sum, exactly."""
    q = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 0.0], [-2.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # noqa: E731
    a = (phi(q) * phi(k)).sum(-1)
    expected = (a[0] * 1.0 + a[1] * 3.0) / (a.sum() + 1e-6)
    torch.testing.assert_close(linear_attention_quadratic(q, k, v), expected.view(1, 1))
    # and it is not softmax attention
    assert not torch.allclose(linear_attention_quadratic(q, k, v), scaled_dot_product_attention(q, k, v))


def test_linear_attention_broadcasts_batch_dims():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 1, 7, 4, generator=g, dtype=torch.float64)
    k = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    v = torch.randn(1, 3, 7, 2, generator=g, dtype=torch.float64)
    for causal in (False, True):
        out = linear_attention(q, k, v, is_causal=causal, chunk_size=3)
        assert out.shape == (2, 3, 7, 2)
        torch.testing.assert_close(out, linear_attention_quadratic(q, k, v, is_causal=causal))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_tolerance(dtype):
    """Half inputs: linear attention sums over 2048 tokens in float32 (in float16 its normaliser would overflow)."""
    q, k, v = inputs((1, 1), 2048, 2048, 64, grad=False)
    linear = linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True)
    assert linear.dtype == dtype and torch.isfinite(linear).all()
    expected = linear_attention_quadratic(q, k, v, is_causal=True)
    torch.testing.assert_close(linear.double(), expected, atol=2e-2, rtol=2e-2)
    window = sliding_window_attention(q.to(dtype), k.to(dtype), v.to(dtype), 64)
    assert window.dtype == dtype
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(2048, 64))
    torch.testing.assert_close(window.double(), expected, atol=3e-2, rtol=3e-2)


def test_linear_attention_bad_inputs():
    q, k, v = inputs((1,), 4, 6, 4, grad=False)
    with pytest.raises(ValueError, match="same length"):
        linear_attention(q, k, v, is_causal=True)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="eps must be a non-negative float"):
        linear_attention(q, k, v, eps=-1.0)
    with pytest.raises(ValueError, match="same last dim"):
        linear_attention(q, k[..., :3], v)


# ---------------------------------------------------------------------------------------------- grouped-query attention


def test_gqa_with_all_heads_is_multi_head_attention():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).double()
    gqa = GroupedQueryAttention(16, 4, num_kv_heads=4).double()
    gqa.load_state_dict(mha.state_dict())
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    for kwargs in ({}, {"is_causal": True}, {"key_padding_mask": pad}):
        ours, ours_w = gqa(x, x, x, need_weights=True, average_attn_weights=False, **kwargs)
        theirs, theirs_w = mha(x, x, x, need_weights=True, average_attn_weights=False, **kwargs)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(ours_w, theirs_w)


@pytest.mark.parametrize("num_kv_heads", [1, 2, 3, 6])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gqa_equals_torch_sdpa_with_grouped_kv_heads(num_kv_heads, is_causal):
    torch.manual_seed(1)
    heads, head_dim = 6, 4
    gqa = GroupedQueryAttention(heads * head_dim, heads, num_kv_heads, dtype=torch.float64)
    assert gqa.k_proj.weight.shape == (num_kv_heads * head_dim, heads * head_dim)
    x = torch.randn(2, 9, heads * head_dim, dtype=torch.float64, requires_grad=True)

    def reference(x):
        q = gqa.q_proj(x).view(2, 9, heads, head_dim).transpose(1, 2)
        k = gqa.k_proj(x).view(2, 9, num_kv_heads, head_dim).transpose(1, 2)
        v = gqa.v_proj(x).view(2, 9, num_kv_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
        return gqa.out_proj(out.transpose(1, 2).reshape(2, 9, heads * head_dim))

    ours = gqa(x, x, x, is_causal=is_causal)[0]
    torch.testing.assert_close(ours, reference(x))
    g = torch.randn_like(ours)
    params = list(gqa.parameters())
    for a, b in zip(torch.autograd.grad(ours, [x, *params], g), torch.autograd.grad(reference(x), [x, *params], g)):
        torch.testing.assert_close(a, b)


def test_gqa_parameters_shrink_and_mqa_is_one_kv_head():
    mha, mqa = GroupedQueryAttention(64, 8), GroupedQueryAttention(64, 8, num_kv_heads=1)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(mha) == 4 * 64 * 64 + 4 * 64
    assert count(mqa) == 2 * (64 * 64 + 64) + 2 * (64 * 8 + 8)
    assert mqa.group_size == 8 and "num_kv_heads=1" in repr(mqa)


def test_gqa_from_multi_head_mean_pools_kv_heads():
    torch.manual_seed(2)
    mha = MultiHeadAttention(12, 4).double()
    gqa = GroupedQueryAttention.from_multi_head(mha, 2)
    torch.testing.assert_close(gqa.q_proj.weight, mha.q_proj.weight)
    torch.testing.assert_close(gqa.k_proj.weight[:3], (mha.k_proj.weight[:3] + mha.k_proj.weight[3:6]) / 2)
    torch.testing.assert_close(gqa.v_proj.weight[3:], (mha.v_proj.weight[6:9] + mha.v_proj.weight[9:]) / 2)
    same = GroupedQueryAttention.from_multi_head(mha, 4)
    x = torch.randn(1, 5, 12, dtype=torch.float64)
    torch.testing.assert_close(same(x, x, x)[0], mha(x, x, x)[0])
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        GroupedQueryAttention.from_multi_head(torch.nn.Linear(2, 2), 1)


def test_gqa_bad_arguments():
    with pytest.raises(ValueError, match="divisible by num_kv_heads"):
        GroupedQueryAttention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int"):
        GroupedQueryAttention(16, 4, num_kv_heads=0)


def test_kv_cache_bytes():
    # LLaMA-7B shape: 32 layers, 32 heads of width 128, 4096 tokens, fp16: 2 GiB per sequence
    assert kv_cache_bytes(32, 32, 128, 4096, 1, torch.float16) == 2 * 2**30
    assert kv_cache_bytes(32, 8, 128, 4096, 1, torch.float16) == 2**29  # GQA with 8 K/V heads: a quarter
    assert kv_cache_bytes(2, 1, 64, 10, 3, torch.float32) == 2 * 2 * 1 * 64 * 10 * 3 * 4
    assert kv_cache_bytes(2, 1, 64, 10, 3, 1) == 2 * 2 * 64 * 10 * 3  # int8: one byte
    assert kv_cache_bytes(1, 1, 1, 0) == 0
    with pytest.raises(ValueError, match="n_kv_heads must be a positive int"):
        kv_cache_bytes(2, 0, 64, 10)


# ---------------------------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize("kind", ["full", "window", "linear"])
def test_variant_self_attention_matches_its_kernel(kind):
    torch.manual_seed(3)
    attn = VariantSelfAttention(8, 2, kind, window=3 if kind == "window" else None, num_kv_heads=1).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    q = attn.q_proj(x).view(2, 10, 2, 4).transpose(1, 2)
    k = attn.k_proj(x).view(2, 10, 1, 4).transpose(1, 2)
    v = attn.v_proj(x).view(2, 10, 1, 4).transpose(1, 2)
    if kind == "linear":
        heads = linear_attention_quadratic(q, k.expand_as(q), v.expand_as(q), is_causal=True)
    else:
        mask = sliding_window_mask(10, 3) if kind == "window" else torch.ones(10, 10, dtype=torch.bool).tril()
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    expected = attn.out_proj(heads.transpose(1, 2).reshape(2, 10, 8))
    torch.testing.assert_close(attn(x)[0], expected)


def test_causal_models_do_not_look_ahead():
    """Changing the last token changes nothing at earlier positions: the readout of a prefix is unchanged."""
    torch.manual_seed(4)
    idx, _ = long_range_task(3, 12, 4, vocab_size=8)
    for kind in ("full", "window", "linear"):
        model = LongRangeClassifier(8, 12, kind, window=3 if kind == "window" else None, d_model=16).eval()
        changed = idx.clone()
        changed[:, -1] = (changed[:, -1] % 7) + 1
        with torch.no_grad():
            torch.testing.assert_close(model(idx[:, :-1]), model(changed[:, :-1]))
            assert not torch.allclose(model(idx), model(changed))


def test_window_model_cannot_see_past_its_receptive_field():
    """Tokens more than n_layers * (window - 1) positions back cannot change the window model's output."""
    torch.manual_seed(5)
    model = LongRangeClassifier(8, 20, "window", window=3, n_layers=2, d_model=16).eval()
    assert model.receptive_field == 4
    idx, _ = long_range_task(2, 20, 10, vocab_size=8)
    far, near = idx.clone(), idx.clone()
    far[:, 20 - 1 - 5] = (far[:, 20 - 1 - 5] % 7) + 1  # 5 positions back: out of reach
    near[:, 20 - 1 - 4] = (near[:, 20 - 1 - 4] % 7) + 1  # 4 positions back: in reach
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model(far))
        assert not torch.allclose(model(idx), model(near))


def test_classifier_shapes_and_attention_maps():
    idx, _ = long_range_task(4, 16, 5, vocab_size=10)
    for kind in ("full", "window", "linear", "gru"):
        model = LongRangeClassifier(10, 16, kind, window=4 if kind == "window" else None, d_model=16, n_heads=2)
        assert model(idx).shape == (4, 10)
    model = LongRangeClassifier(10, 16, "full", d_model=16, n_layers=3)
    logits, maps = model(idx, return_attention=True)
    torch.testing.assert_close(logits, model(idx))  # the same model with or without the maps
    assert len(maps) == 3 and maps[0].shape == (4, 2, 16, 16)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(4, 2, 16))
    assert (maps[2].triu(1) == 0).all()  # causal


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread (and do not stall when other processes hold the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_full_model_learns_the_task(one_thread):
    from labkit.train import evaluate_classifier, train_classifier

    ids, labels = long_range_task(512, 16, 8, vocab_size=6, seed=0)
    val_ids, val_labels = long_range_task(256, 16, 8, vocab_size=6, seed=1)
    torch.manual_seed(0)
    model = LongRangeClassifier(6, 16, "full", d_model=32, n_heads=2, n_layers=1)
    train_classifier(model, ids, labels, steps=150, batch_size=64, lr=3e-3, progress=False)
    assert evaluate_classifier(model, val_ids, val_labels)["accuracy"] > 0.9  # chance: 1/5


def test_classifier_bad_inputs():
    with pytest.raises(ValueError, match="kind must be one of"):
        LongRangeClassifier(8, 10, "lstm")
    with pytest.raises(ValueError, match="needs a window"):
        LongRangeClassifier(8, 10, "window")
    with pytest.raises(ValueError, match="window only applies"):
        LongRangeClassifier(8, 10, "full", window=3)
    with pytest.raises(ValueError, match="do not apply to kind='gru'"):
        LongRangeClassifier(8, 10, "gru", window=3)
    model = LongRangeClassifier(8, 10, "window", window=3)
    with pytest.raises(TypeError, match="int64 tensor of shape"):
        model(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="1 to seq_len = 10 positions"):
        model(torch.zeros(2, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 8\)"):
        model(torch.full((2, 10), 8))
    with pytest.raises(ValueError, match="return_attention=True needs kind='full'"):
        model(torch.zeros(2, 10, dtype=torch.long), return_attention=True)
