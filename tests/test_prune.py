"""labkit.prune against torch.nn.utils.prune and exact formulas."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from labkit import prune
from labkit.attention import MultiHeadAttention
from labkit.layers import FeedForward
from labkit.transformer import EncoderClassifier, TransformerConfig, count_parameters


def _linear(shape, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(shape[1], shape[0]).to(dtype)


def _torch_mask(module):
    return module.weight_mask.clone()


# ------------------------------------------------------------------------------------------------ masks vs torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8, 12), (33, 7), (1, 5)])
@pytest.mark.parametrize("amount", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_magnitude_mask_equals_torch_l1_unstructured(shape, amount, dtype):
    ours, theirs = _linear(shape, dtype=dtype), _linear(shape, dtype=dtype)
    torch_prune.l1_unstructured(theirs, "weight", amount=amount)
    mask = prune.magnitude_mask(ours.weight, amount)
    assert mask.dtype == dtype
    assert torch.equal(mask, _torch_mask(theirs))
    prune.apply_mask(ours, "weight", mask)
    assert torch.equal(ours.weight, theirs.weight)


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.8])
def test_global_masks_equal_torch_global_unstructured(amount):
    torch.manual_seed(1)
    ours = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    with torch.no_grad():
        ours[2].weight.mul_(3)  # different scales, so global and layer-wise pruning differ
    theirs = copy.deepcopy(ours)
    torch_prune.global_unstructured([(theirs[0], "weight"), (theirs[2], "weight")],
                                    pruning_method=torch_prune.L1Unstructured, amount=amount)
    masks = prune.global_magnitude_masks({"a": ours[0].weight, "b": ours[2].weight}, amount)
    assert torch.equal(masks["a"], theirs[0].weight_mask)
    assert torch.equal(masks["b"], theirs[2].weight_mask)
    layer = prune.magnitude_mask(ours[0].weight, amount)
    assert not torch.equal(layer, masks["a"])  # the global threshold prunes the small layer harder


@pytest.mark.parametrize("n", [1, 2, float("inf")])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
def test_ln_structured_mask_equals_torch(n, dim, amount):
    ours, theirs = _linear((12, 8), seed=2), _linear((12, 8), seed=2)
    torch_prune.ln_structured(theirs, "weight", amount=amount, n=n, dim=dim)
    assert torch.equal(prune.ln_structured_mask(ours.weight, amount, n=n, dim=dim), theirs.weight_mask)


def test_magnitude_mask_with_scores_prunes_by_scores():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.equal(prune.magnitude_mask(weight, 0.5, scores), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("amount", [0.1, 0.5, 0.83])
def test_model_pruning_gives_exact_sparsity(scope, amount):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    weights = {"0": (model[0], "weight"), "2": (model[2], "weight")}
    prune.magnitude_prune(model, amount, scope=scope, weights=weights)
    total = 16 * 32 + 32 * 8
    zeros = sum(int((m.weight == 0).sum()) for m, _ in weights.values())
    if scope == "global":
        assert zeros == round(amount * total)
    else:
        assert zeros == round(amount * 16 * 32) + round(amount * 32 * 8)
    assert prune.model_sparsity(model, weights) == pytest.approx(zeros / total)


def test_growing_amount_keeps_pruned_weights_pruned():
    torch.manual_seed(0)
    layer = nn.Linear(20, 20)
    prune.magnitude_prune(layer, 0.3, weights={"w": (layer, "weight")})
    first = prune.get_mask(layer).clone()
    prune.magnitude_prune(layer, 0.6, weights={"w": (layer, "weight")})
    second = prune.get_mask(layer)
    assert bool((second <= first).all()) and prune.sparsity(layer.weight) == pytest.approx(0.6)


# ------------------------------------------------------------------------------------------------ N:M


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_nm_mask_pattern_is_valid_and_keeps_the_largest(n, m):
    torch.manual_seed(3)
    weight = torch.randn(6, 4 * m)
    mask = prune.nm_mask(weight, n, m)
    groups = mask.view(-1, m)
    assert bool((groups.sum(dim=1) == n).all())
    assert prune.is_nm_sparse(weight * mask, n, m)
    kept = (weight.abs() * mask).view(-1, m)
    dropped = (weight.abs() * (1 - mask)).view(-1, m)
    assert bool((kept.masked_fill(kept == 0, math.inf).min(dim=1).values >= dropped.max(dim=1).values).all())
    assert prune.sparsity(weight * mask) == pytest.approx(1 - n / m)


def test_is_nm_sparse_rejects_a_dense_group():
    weight = torch.ones(2, 8)
    weight[:, ::2] = 0
    assert prune.is_nm_sparse(weight, 2, 4)
    weight[0, 0] = 1.0
    assert not prune.is_nm_sparse(weight, 2, 4)


# ------------------------------------------------------------------------------------------------ hooks and remove


def test_apply_mask_and_remove_make_pruning_permanent():
    layer = _linear((6, 6))
    original = layer.weight.detach().clone()
    mask = prune.magnitude_mask(layer.weight, 0.5)
    prune.apply_mask(layer, "weight", mask)
    assert prune.is_pruned(layer) and torch.equal(layer.weight, original * mask)
    assert torch.equal(layer.parametrizations.weight.original, original)
    prune.remove(layer, "weight")
    assert not prune.is_pruned(layer) and isinstance(layer.weight, nn.Parameter)
    assert torch.equal(layer.weight, original * mask)
    with pytest.raises(ValueError, match="not pruned"):
        prune.remove(layer, "weight")


def test_remove_all_and_state_dict_roundtrip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    prune.magnitude_prune(model, 0.5, weights={"a": (model[0], "weight"), "b": (model[1], "weight")})
    x = torch.randn(3, 8)
    before = model(x)
    prune.remove_all(model)
    assert not any(prune.is_pruned(m) for m in model)
    assert torch.equal(model(x), before)
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias"}


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd_momentum"])
def test_pruned_weights_stay_zero_through_training(optimizer_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))
    weights = prune.prunable_weights(model, exclude=())
    masks = prune.magnitude_prune(model, 0.6, weights=weights)
    params = list(model.parameters())
    optimizer = (torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1) if optimizer_name == "adamw"
                 else torch.optim.SGD(params, lr=0.1, momentum=0.9))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, (module, attr) in weights.items():
        assert bool((getattr(module, attr)[masks[name] == 0] == 0).all())
        assert bool((getattr(module, attr)[masks[name] == 1] != 0).all())


def test_masked_adamw_equals_torch_adamw_on_kept_entries_and_keeps_zeros():
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    masks = {}
    with torch.no_grad():
        for layer in (ours[0], ours[2]):
            masks[layer.weight] = prune.magnitude_mask(layer.weight, 0.7)
            layer.weight.mul_(masks[layer.weight])
    theirs = copy.deepcopy(ours)
    their_masks = [(theirs[0].weight, masks[ours[0].weight]), (theirs[2].weight, masks[ours[2].weight])]
    handles = prune.mask_gradients(their_masks)
    mine = prune.MaskedAdamW(ours.parameters(), masks, lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(10):
        for model, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for param, mask in masks.items():
        assert bool((param[mask == 0] == 0).all())
    nnz = sum(int(m.sum()) for m in masks.values())
    dense_rest = sum(p.numel() for p in ours.parameters() if p.dim() == 1)
    assert mine.state_numel() == 2 * (nnz + dense_rest)
    for h in handles:
        h.remove()


def test_mask_gradients_zeroes_pruned_gradients():
    param = nn.Parameter(torch.randn(4, 4))
    mask = (torch.rand(4, 4) > 0.5).float()
    (handle,) = prune.mask_gradients([(param, mask)])
    (param ** 2).sum().backward()
    assert torch.equal(param.grad, 2 * param.detach() * mask)
    handle.remove()


# ------------------------------------------------------------------------------------------------ schedule


def test_cubic_sparsity_schedule():
    assert prune.cubic_sparsity(0, 0.8, 10) == 0.0
    assert prune.cubic_sparsity(10, 0.8, 10) == pytest.approx(0.8)
    assert prune.cubic_sparsity(25, 0.8, 10) == pytest.approx(0.8)
    assert prune.cubic_sparsity(5, 0.8, 10) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert prune.cubic_sparsity(3, 0.8, 10, initial_sparsity=0.2, start_step=2) == pytest.approx(
        0.8 + (0.2 - 0.8) * 0.9 ** 3)
    levels = [prune.cubic_sparsity(t, 0.9, 20) for t in range(21)]
    steps = [b - a for a, b in zip(levels, levels[1:])]
    assert all(s >= 0 for s in steps) and steps[0] > steps[-1]  # fast first, slow last


def test_gradual_prune_reaches_final_sparsity_and_fine_tunes_between_stages():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    calls = []
    levels = prune.gradual_prune(model, 0.75, 3, lambda m, k: calls.append((k, prune.model_sparsity(m))),
                                 weights=prune.prunable_weights(model, exclude=()))
    assert levels == pytest.approx([prune.cubic_sparsity(k, 0.75, 3) for k in (1, 2, 3)])
    assert [k for k, _ in calls] == [1, 2, 3]
    assert calls[-1][1] == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------ OBD / Fisher


def test_obd_saliency_is_the_exact_loss_increase_of_a_diagonal_quadratic():
    torch.manual_seed(0)
    w_star = torch.randn(50, dtype=torch.float64)
    h = torch.rand(50, dtype=torch.float64) + 0.1

    def loss(w):
        return 0.5 * (h * (w - w_star) ** 2).sum()

    saliency = prune.obd_saliency(w_star, h)
    for i in (0, 7, 33):
        w = w_star.clone()
        w[i] = 0
        assert float(loss(w) - loss(w_star)) == pytest.approx(float(saliency[i]))


def test_fisher_diagonal_is_the_mean_squared_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    batches = [(torch.randn(4, 5), torch.randint(0, 3, (4,))) for _ in range(3)]

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    weights = {"w": (model[0], "weight")}
    fisher = prune.fisher_diagonal(model, batches, loss_fn, weights)["w"]
    expected = torch.zeros(3, 5)
    for batch in batches:
        (grad,) = torch.autograd.grad(loss_fn(model, batch), [model[0].weight])
        expected += grad ** 2
    torch.testing.assert_close(fisher, expected / 3)
    prune.magnitude_prune(model, 0.5, weights=weights)  # works through the mask parametrization too
    masked = prune.fisher_diagonal(model, batches, loss_fn, weights)["w"]
    assert masked.shape == (3, 5) and bool((masked > 0).any())
    with pytest.raises(ValueError, match="no batch"):
        prune.fisher_diagonal(model, [], loss_fn, weights)


# ------------------------------------------------------------------------------------------------ structured


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shrunk_ffn_equals_masking_the_same_neurons(activation, dtype):
    torch.manual_seed(0)
    ffn = FeedForward(16, 40, activation=activation).to(dtype)
    x = torch.randn(3, 5, 16, dtype=dtype)
    small = prune.shrink_feedforward(ffn, amount=0.3)
    assert small.d_ff == 28 and small.up.out_features == 28 and small.down.in_features == 28
    kept = torch.topk(prune.ffn_neuron_scores(ffn), 28).indices
    masked = copy.deepcopy(ffn)
    column_mask = torch.zeros(40, dtype=dtype)
    column_mask[kept] = 1
    prune.apply_mask(masked.down, "weight", column_mask.expand(16, 40).clone())
    torch.testing.assert_close(small(x), masked(x))
    assert not torch.allclose(small(x), ffn(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shrunk_attention_equals_masking_the_same_heads(dtype):
    torch.manual_seed(0)
    attention = MultiHeadAttention(32, 8).to(dtype)
    x = torch.randn(2, 7, 32, dtype=dtype)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    keep = [1, 4, 6]
    small = prune.shrink_attention(attention, keep=keep)
    assert small.num_heads == 3 and small.q_proj.out_features == 12 and small.out_proj.in_features == 12
    masked = copy.deepcopy(attention)
    column_mask = torch.zeros(8, 4, dtype=dtype)
    column_mask[keep] = 1
    prune.apply_mask(masked.out_proj, "weight", column_mask.reshape(1, 32).expand(32, 32).clone())
    ours, _ = small(x, x, x, key_padding_mask=padding)
    reference, _ = masked(x, x, x, key_padding_mask=padding)
    torch.testing.assert_close(ours, reference)
    _, weights = small(x, x, x, need_weights=True, average_attn_weights=False)
    _, all_weights = attention(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(weights, all_weights[:, keep])
    again = prune.shrink_attention(small, keep=[0, 2])  # shrinking twice works
    assert again.num_heads == 2


def _classifier(seed=0):
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=50, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=16, n_classes=3)
    return EncoderClassifier(config).eval()


def test_shrink_model_equals_masking_and_really_shrinks():
    model = _classifier()
    ids = torch.randint(0, 50, (4, 10))
    small = prune.shrink_model(model, ffn_amount=0.25, head_amount=0.5)
    masked = copy.deepcopy(model)
    for layer, masked_layer in zip(model.encoder.layers, masked.encoder.layers):
        kept = torch.topk(prune.ffn_neuron_scores(layer.ffn), 48).indices
        ffn_mask = torch.zeros(64)
        ffn_mask[kept] = 1
        prune.apply_mask(masked_layer.ffn.down, "weight", ffn_mask.expand(32, 64).clone())
        heads = torch.topk(prune.attention_head_scores(layer.self_attn), 2).indices
        head_mask = torch.zeros(4, 8)
        head_mask[heads] = 1
        prune.apply_mask(masked_layer.self_attn.out_proj, "weight", head_mask.reshape(1, 32).expand(32, 32).clone())
    torch.testing.assert_close(small(ids), masked(ids))
    removed_per_layer = 16 * (32 + 1) + 16 * 32 + 3 * 16 * (32 + 1) + 16 * 32
    assert count_parameters(model) - count_parameters(small) == 2 * removed_per_layer
    assert small.encoder.layers[0].ffn.up.out_features == 48
    assert model.encoder.layers[0].ffn.up.out_features == 64  # the original is untouched


def test_structured_keep_validation():
    ffn = FeedForward(8, 10)
    with pytest.raises(ValueError, match="exactly one of keep"):
        prune.shrink_feedforward(ffn)
    with pytest.raises(ValueError, match="distinct"):
        prune.shrink_feedforward(ffn, keep=[0, 0, 3])
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        prune.shrink_feedforward(ffn, keep=[12])
    with pytest.raises(ValueError, match="at least one"):
        prune.shrink_feedforward(ffn, amount=1.0)
    with pytest.raises(TypeError, match="FeedForward"):
        prune.shrink_feedforward(nn.Linear(3, 3), amount=0.5)


# ------------------------------------------------------------------------------------------------ storage


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("sparsity_level", [0.0, 0.5, 0.9, 0.99])
def test_csr_and_coo_sizes_equal_torch_sparse_tensors(sparsity_level):
    torch.manual_seed(0)
    weight = torch.randn(64, 48)
    weight = weight * prune.magnitude_mask(weight, sparsity_level)
    nnz = int((weight != 0).sum())
    csr = weight.to_sparse_csr()
    csr_bytes = sum(t.numel() * t.element_size() for t in (csr.values(), csr.crow_indices(), csr.col_indices()))
    assert prune.storage_bytes((64, 48), nnz, "csr", 4, 8) == csr_bytes
    coo = weight.to_sparse().coalesce()
    coo_bytes = coo.values().numel() * 4 + coo.indices().numel() * 8
    assert prune.storage_bytes((64, 48), nnz, "coo", 4, 8) == coo_bytes
    assert prune.storage_bytes((64, 48), nnz, "dense") == weight.numel() * weight.element_size()


@pytest.mark.parametrize("fmt,value_bytes,index_bytes", [("csr", 4, 4), ("csr", 2, 4), ("coo", 2, 2),
                                                           ("bitmask", 4, 4), ("bitmask", 2, 4)])
def test_breakeven_sparsity_separates_smaller_from_larger(fmt, value_bytes, index_bytes):
    shape = (4096, 4096)
    n = shape[0] * shape[1]
    s = prune.breakeven_sparsity(fmt, value_bytes, index_bytes)
    dense = prune.storage_bytes(shape, n, "dense", value_bytes)
    above = prune.storage_bytes(shape, round(n * (1 - s - 0.01)), fmt, value_bytes, index_bytes)
    below = prune.storage_bytes(shape, round(n * (1 - s + 0.01)), fmt, value_bytes, index_bytes)
    assert above < dense < below


def test_bitmask_roundtrip_and_size():
    torch.manual_seed(0)
    for shape in [(5, 7), (16, 16), (1, 3)]:
        t = torch.randn(shape) * (torch.rand(shape) > 0.6)
        values, bits = prune.to_bitmask(t)
        assert bits.dtype == torch.uint8 and bits.numel() == math.ceil(t.numel() / 8)
        assert torch.equal(prune.from_bitmask(values, bits, shape), t)
        assert values.numel() * 4 + bits.numel() == prune.storage_bytes(shape, int((t != 0).sum()), "bitmask")
    with pytest.raises(ValueError, match="bytes"):
        prune.from_bitmask(values, bits[:-1], (1, 3)) if bits.numel() > 1 else prune.from_bitmask(
            values, torch.zeros(2, dtype=torch.uint8), (1, 3))


def test_two_four_storage_is_half_plus_metadata():
    assert prune.storage_bytes((8, 16), 64, "2:4", value_bytes=2) == 64 * 2 + 128 // 8
    with pytest.raises(ValueError, match="divisible by 4"):
        prune.storage_bytes((8, 6), 24, "2:4")


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("amount", [-0.1, 1.5, float("nan")])
def test_amount_outside_unit_interval_raises(amount):
    w = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"amount must be in \[0, 1\]"):
        prune.magnitude_mask(w, amount)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        prune.magnitude_prune(nn.Linear(4, 4), amount)


def test_bad_inputs_raise_clear_errors():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="n <= m"):
        prune.nm_mask(w, 5, 4)
    with pytest.raises(ValueError, match="divisible by m=4"):
        prune.nm_mask(torch.randn(4, 6), 2, 4)
    with pytest.raises(TypeError, match="float in"):
        prune.magnitude_mask(w, "half")
    with pytest.raises(ValueError, match="shape of weight"):
        prune.apply_mask(nn.Linear(8, 4), "weight", torch.ones(8, 4))
    with pytest.raises(ValueError, match="scope"):
        prune.magnitude_prune(nn.Linear(4, 4), 0.5, scope="row")
    with pytest.raises(ValueError, match="fmt must be"):
        prune.storage_bytes((4, 4), 3, "ell")
    with pytest.raises(ValueError, match="nnz must be"):
        prune.storage_bytes((4, 4), 17, "csr")
    with pytest.raises(ValueError, match="no tensor called"):
        prune.apply_mask(nn.Linear(4, 4), "gain", torch.ones(4))


def test_semi_structured_is_refused_cleanly_without_a_supporting_gpu():
    if prune.semi_structured_supported():
        pytest.skip("this machine supports 2:4; the CUDA test covers it")
    with pytest.raises(RuntimeError, match="compute capability"):
        prune.to_semi_structured(nn.Linear(16, 16))


@pytest.mark.cuda
def test_semi_structured_linear_matches_dense_on_cuda():
    if not prune.semi_structured_supported():
        pytest.skip("needs a CUDA GPU with compute capability >= 8.0")
    torch.manual_seed(0)
    linear = nn.Linear(256, 128).half().cuda()
    with torch.no_grad():
        linear.weight.mul_(prune.nm_mask(linear.weight, 2, 4))
    sparse = prune.to_semi_structured(linear)
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(sparse(x), linear(x), rtol=1e-2, atol=1e-2)


def test_remove_on_a_deep_copy_leaves_the_original_pruned():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    prune.magnitude_prune(original, 0.5)
    x = torch.randn(3, 8)
    before = original(x)
    copy_ = copy.deepcopy(original)
    prune.remove_all(copy_)
    assert not prune.is_pruned(copy_[0]) and type(copy_[0]) is nn.Linear
    assert prune.is_pruned(original[0]) and prune.is_pruned(original[2]), "the original keeps its masks"
    torch.testing.assert_close(original(x), before)
    torch.testing.assert_close(copy_(x), before)
    prune.remove_all(original)
    torch.testing.assert_close(original(x), before)
