"""labkit.transformer against nn.TransformerEncoderLayer / nn.TransformerDecoderLayer, the parameter and FLOP
formulas against counts, and the behaviour of GPT, EncoderClassifier and EncoderDecoder."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from labkit.config import get_profile
from labkit.transformer import (
    GPT,
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderClassifier,
    EncoderDecoder,
    EncoderLayer,
    TransformerConfig,
    count_parameters,
    decoder_layer_parameter_count,
    encoder_layer_parameter_count,
    gpt_forward_flops,
    gpt_parameter_count,
    layer_forward_flops,
)

D, H, FF = 16, 4, 24
TOL = {torch.float32: dict(atol=3e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}


def perturbed(module, dtype, seed=0):
    """``module`` in ``dtype`` and eval mode, with every parameter randomised (so that copying each one matters)."""
    module = module.to(dtype).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=g, dtype=dtype))
    return module


def grads(outputs, upstream, inputs, module):
    return torch.autograd.grad((outputs * upstream).sum(), [*inputs, *module.parameters()])


def flatten_ours(named):
    """labkit's gradients rearranged into torch's parameter layout."""
    out = {}
    for prefix, torch_prefix in (("self_attn", "self_attn"), ("cross_attn", "multihead_attn")):
        if f"{prefix}.q_proj.weight" in named:
            out[f"{torch_prefix}.in_proj_weight"] = torch.cat([named[f"{prefix}.{p}_proj.weight"] for p in "qkv"])
            out[f"{torch_prefix}.in_proj_bias"] = torch.cat([named[f"{prefix}.{p}_proj.bias"] for p in "qkv"])
            out[f"{torch_prefix}.out_proj.weight"] = named[f"{prefix}.out_proj.weight"]
            out[f"{torch_prefix}.out_proj.bias"] = named[f"{prefix}.out_proj.bias"]
    for ours, theirs in (("ffn.up", "linear1"), ("ffn.down", "linear2")):
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = named[f"{ours}.weight"], named[f"{ours}.bias"]
    for name in ("norm1", "norm2", "norm3"):
        if f"{name}.weight" in named:
            out[f"{name}.weight"], out[f"{name}.bias"] = named[f"{name}.weight"], named[f"{name}.bias"]
    return out


def assert_param_grads_match(ours_module, ours_grads, ref_module, ref_grads, tol):
    ours_named = flatten_ours(dict(zip([n for n, _ in ours_module.named_parameters()], ours_grads)))
    ref_named = dict(zip([n for n, _ in ref_module.named_parameters()], ref_grads))
    assert set(ours_named) == set(ref_named)
    for name, grad in ref_named.items():
        torch.testing.assert_close(ours_named[name], grad, **tol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------------------
# EncoderLayer / DecoderLayer against torch


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encoder_layer_matches_torch_forward_and_backward(norm_first, activation, dtype):
    reference = perturbed(
        nn.TransformerEncoderLayer(D, H, FF, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first),
        dtype,
    )
    ours = EncoderLayer.from_torch(reference)
    assert not ours.training and ours.norm_first == norm_first
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, D, generator=g, dtype=dtype, requires_grad=True)
    upstream = torch.randn(2, 6, D, generator=g, dtype=dtype)
    src_mask = nn.Transformer.generate_square_subsequent_mask(6, dtype=dtype)
    padding = torch.zeros(2, 6, dtype=dtype).masked_fill(torch.tensor([[0] * 6, [0] * 4 + [1] * 2]).bool(), float("-inf"))

    for kwargs in ({}, {"src_mask": src_mask, "src_key_padding_mask": padding}):
        out, ref = ours(x, **kwargs), reference(x, **kwargs)
        torch.testing.assert_close(out, ref, **TOL[dtype])
        ours_grads = grads(out, upstream, [x], ours)
        ref_grads = grads(ref, upstream, [x], reference)
        torch.testing.assert_close(ours_grads[0], ref_grads[0], **TOL[dtype])
        assert_param_grads_match(ours, ours_grads[1:], reference, ref_grads[1:], TOL[dtype])


def test_encoder_layer_bool_masks_and_is_causal_match_torch():
    reference = perturbed(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True), torch.float64)
    ours = EncoderLayer.from_torch(reference)
    x = torch.randn(3, 5, D, dtype=torch.float64)
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    bool_causal = torch.ones(5, 5).triu(1).bool()  # torch convention: True = not allowed
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    expected = reference(x, src_mask=bool_causal, src_key_padding_mask=padding)
    torch.testing.assert_close(ours(x, src_mask=bool_causal, src_key_padding_mask=padding), expected)
    torch.testing.assert_close(ours(x, is_causal=True, src_key_padding_mask=padding), expected)
    torch.testing.assert_close(ours(x, is_causal=True), reference(x, src_mask=causal, is_causal=True))


def test_encoder_layer_need_weights_returns_per_head_maps():
    reference = perturbed(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True), torch.float64)
    ours = EncoderLayer.from_torch(reference)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    out, weights = ours(x, is_causal=True, need_weights=True)
    torch.testing.assert_close(out, ours(x, is_causal=True))
    mask = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    _, ref_weights = reference.self_attn(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)
    assert weights.shape == (2, H, 5, 5)
    torch.testing.assert_close(weights, ref_weights)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_matches_torch_forward_and_backward(norm_first, activation):
    dtype = torch.float64
    reference = perturbed(
        nn.TransformerDecoderLayer(D, H, FF, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first),
        dtype,
    )
    ours = DecoderLayer.from_torch(reference)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, D, generator=g, dtype=dtype, requires_grad=True)
    memory = torch.randn(2, 7, D, generator=g, dtype=dtype, requires_grad=True)
    upstream = torch.randn(2, 5, D, generator=g, dtype=dtype)
    def additive(mask):  # torch wants all masks of one kind; labkit accepts either
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))

    kwargs = dict(
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(5, dtype=dtype),
        tgt_key_padding_mask=additive(torch.tensor([[False] * 5, [False] * 4 + [True]])),
        memory_key_padding_mask=additive(torch.tensor([[False] * 7, [False] * 5 + [True] * 2])),
        tgt_is_causal=True,
    )
    out, ref = ours(x, memory, **kwargs), reference(x, memory, **kwargs)
    torch.testing.assert_close(out, ref)
    ours_grads = grads(out, upstream, [x, memory], ours)
    ref_grads = grads(ref, upstream, [x, memory], reference)
    torch.testing.assert_close(ours_grads[0], ref_grads[0])
    torch.testing.assert_close(ours_grads[1], ref_grads[1])
    assert_param_grads_match(ours, ours_grads[2:], reference, ref_grads[2:], TOL[dtype])
    # tgt_is_causal alone builds the causal mask that torch needs to be given
    del kwargs["tgt_mask"]
    torch.testing.assert_close(ours(x, memory, **kwargs), ref)


def test_encoder_stack_matches_nn_transformer_encoder_with_final_norm():
    config = TransformerConfig(vocab_size=10, d_model=D, n_heads=H, n_layers=2, d_ff=FF, activation="gelu", norm_first=True)
    layer = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    reference = perturbed(
        nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(D), enable_nested_tensor=False), torch.float64
    )
    ours = Encoder(config).double()
    ours.layers = nn.ModuleList(EncoderLayer.from_torch(t) for t in reference.layers)
    with torch.no_grad():
        ours.norm.weight.copy_(reference.norm.weight)
        ours.norm.bias.copy_(reference.norm.bias)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    padding = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    torch.testing.assert_close(ours(x, key_padding_mask=padding), reference(x, src_key_padding_mask=padding))


def test_decoder_stack_runs_causally_by_default():
    config = TransformerConfig(vocab_size=10, d_model=D, n_heads=H, n_layers=2, d_ff=FF)
    decoder = Decoder(config).eval()
    x, memory = torch.randn(1, 6, D), torch.randn(1, 4, D)
    changed = x.clone()
    changed[0, 4] += torch.randn(D)  # not a constant shift: LayerNorm would remove that
    a, b = decoder(x, memory), decoder(changed, memory)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_layer_from_torch_rejects_what_it_cannot_copy():
    with pytest.raises(TypeError, match="nn.TransformerEncoderLayer"):
        EncoderLayer.from_torch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nn.TransformerDecoderLayer"):
        DecoderLayer.from_torch(nn.TransformerEncoderLayer(8, 2, 16))
    with pytest.raises(ValueError, match="only relu and \\(exact\\) gelu"):
        EncoderLayer.from_torch(nn.TransformerEncoderLayer(8, 2, 16, activation=F.silu))


def test_layer_bad_inputs():
    layer = EncoderLayer(D, H, FF)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 16\), got \(5, 16\)"):
        layer(torch.randn(5, D))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 5, D, dtype=torch.long))
    with pytest.raises(ValueError, match=r"memory must have shape \(B, T, 16\)"):
        DecoderLayer(D, H, FF)(torch.randn(2, 5, D), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(4\)"):
        EncoderLayer(10, 4, 16)


# ---------------------------------------------------------------------------------------------------------------
# config


def test_config_validation_names_the_numbers():
    with pytest.raises(ValueError, match=r"d_model \(100\) must be divisible by n_heads \(3\)"):
        TransformerConfig(vocab_size=10, d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="positional must be one of"):
        TransformerConfig(vocab_size=10, positional="rotary")
    with pytest.raises(ValueError, match="activation must be one of"):
        TransformerConfig(vocab_size=10, activation="tanh")
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        TransformerConfig(vocab_size=0)
    with pytest.raises(ValueError, match=r"pad_id must be None or an int in \[0, 10\)"):
        TransformerConfig(vocab_size=10, pad_id=10)


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_config_from_profile(name):
    profile = get_profile(name)
    config = TransformerConfig.from_profile(profile, vocab_size=300, dropout=0.1, n_classes=5)
    assert (config.d_model, config.n_heads, config.n_layers, config.d_ff, config.max_len) == (
        profile.d_model, profile.n_heads, profile.n_layers, profile.d_ff, profile.seq_len
    )
    assert config.vocab_size == 300 and config.dropout == 0.1 and config.n_classes == 5
    assert TransformerConfig.from_profile(profile, 300, max_len=7).max_len == 7
    with pytest.raises(TypeError, match=r"unknown TransformerConfig field\(s\) \['heads'\]"):
        TransformerConfig.from_profile(profile, 300, heads=2)


# ---------------------------------------------------------------------------------------------------------------
# parameter counts


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_parameter_formulas_equal_counted_parameters(activation, bias):
    assert encoder_layer_parameter_count(24, 40, bias, activation) == count_parameters(
        EncoderLayer(24, 4, 40, activation=activation, bias=bias)
    )
    assert decoder_layer_parameter_count(24, 40, bias, activation) == count_parameters(
        DecoderLayer(24, 4, 40, activation=activation, bias=bias)
    )
    if activation != "swiglu":
        torch_layer = nn.TransformerEncoderLayer(24, 4, 40, activation=activation, bias=bias)
        assert encoder_layer_parameter_count(24, 40, bias, activation) == count_parameters(torch_layer)
        torch_decoder = nn.TransformerDecoderLayer(24, 4, 40, activation=activation, bias=bias)
        assert decoder_layer_parameter_count(24, 40, bias, activation) == count_parameters(torch_decoder)


def test_encoder_layer_parameter_formula_by_hand():
    d, f = 128, 512  # 4d^2 + 4d + 2 d f + f + d + 4d
    assert encoder_layer_parameter_count(d, f) == 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d == 198272


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": False},
        {"positional": "sinusoidal"},
        {"norm_first": False, "activation": "relu"},
        {"activation": "swiglu", "bias": False, "n_layers": 3},
        {"d_model": 48, "n_heads": 6, "d_ff": 100, "max_len": 33, "vocab_size": 77},
    ],
)
def test_gpt_parameter_formula_equals_counted_parameters(overrides):
    config = TransformerConfig(**{**dict(vocab_size=50, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=20), **overrides})
    model = GPT(config)
    assert gpt_parameter_count(config) == count_parameters(model)
    tied = model.lm_head.weight is model.embed.tokens.weight
    assert tied == config.tie_embeddings


def test_count_parameters_trainable_only():
    model = GPT(TransformerConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=8))
    model.embed.tokens.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 20 * 16
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters(torch.zeros(3))


# ---------------------------------------------------------------------------------------------------------------
# FLOPs (matmuls only, 2 per multiply-add) against FlopCounterMode


def measured_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("seq_len,d_model,n_heads,d_ff", [(7, 16, 4, 24), (12, 32, 2, 64)])
def test_layer_flop_formula_equals_flop_counter(activation, seq_len, d_model, n_heads, d_ff):
    layer = EncoderLayer(d_model, n_heads, d_ff, activation=activation).eval()
    batch = 3
    x = torch.randn(batch, seq_len, d_model)
    formula = layer_forward_flops(d_model, d_ff, seq_len, n_heads, activation=activation)
    assert formula["total"] == sum(v for k, v in formula.items() if k != "total")
    assert measured_flops(lambda: layer(x)) == batch * formula["total"]
    # the from-scratch causal forward still computes the full T x T square
    assert measured_flops(lambda: layer(x, is_causal=True)) == batch * formula["total"]
    # the components, measured one by one
    attn = layer.self_attn
    assert measured_flops(lambda: (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))) == batch * formula["qkv_proj"]
    assert measured_flops(lambda: attn.out_proj(x)) == batch * formula["out_proj"]
    assert measured_flops(lambda: layer.ffn(x)) == batch * formula["ffn"]


def test_causal_flop_count_is_the_lower_triangle():
    t, d = 9, 8
    q, k, v = torch.randn(3, t, d).unbind(0)
    # row i of causal attention only needs keys 0..i
    needed = measured_flops(lambda: [(q[i : i + 1] @ k[: i + 1].T) @ v[: i + 1] for i in range(t)])
    counts = layer_forward_flops(d, 16, t, causal=True)
    assert needed == counts["attention_scores"] + counts["attention_values"] == 2 * d * t * (t + 1)
    full = layer_forward_flops(d, 16, t)
    assert full["attention_scores"] == 2 * t * t * d and full["qkv_proj"] == counts["qkv_proj"]


@pytest.mark.parametrize("overrides", [{}, {"activation": "swiglu", "n_layers": 3, "tie_embeddings": False}])
def test_gpt_flop_formula_equals_flop_counter(overrides):
    config = small_config(vocab_size=40, max_len=16, **overrides)
    model = GPT(config).eval()
    idx = torch.randint(0, 40, (2, 11))
    assert measured_flops(lambda: model(idx)) == 2 * gpt_forward_flops(config, 11)


def test_flop_formula_bad_arguments():
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by n_heads \(3\)"):
        layer_forward_flops(10, 20, 5, n_heads=3)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        layer_forward_flops(8, 16, 0)
    with pytest.raises(ValueError, match="seq_len 20 exceeds max_len 16"):
        gpt_forward_flops(TransformerConfig(vocab_size=10, max_len=16), 20)


# ---------------------------------------------------------------------------------------------------------------
# GPT


def small_config(**overrides):
    return TransformerConfig(**{**dict(vocab_size=37, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=12), **overrides})


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_gpt_shape_and_causality(positional, norm_first):
    torch.manual_seed(0)
    model = GPT(small_config(positional=positional, norm_first=norm_first)).eval()
    idx = torch.randint(0, 37, (2, 10))
    logits = model(idx)
    assert logits.shape == (2, 10, 37)
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 37
    other = model(changed)
    torch.testing.assert_close(logits[:, :6], other[:, :6])
    assert not torch.allclose(logits[:, 6:], other[:, 6:])


def test_gpt_loss_equals_cross_entropy_and_trains():
    torch.manual_seed(0)
    model = GPT(small_config())
    idx = torch.randint(0, 37, (3, 12))
    targets = torch.roll(idx, -1, dims=1)
    loss = model.loss(idx, targets)
    logits = model(idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 37), targets.reshape(-1)))
    assert abs(loss.item() - torch.log(torch.tensor(37.0)).item()) < 0.3  # near uniform at initialisation
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gpt_attention_maps():
    model = GPT(small_config(n_layers=3)).eval()
    idx = torch.randint(0, 37, (2, 9))
    logits, maps = model(idx, return_attention=True)
    torch.testing.assert_close(logits, model(idx))
    assert len(maps) == 3 and all(m.shape == (2, 2, 9, 9) for m in maps)
    for weights in maps:
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 9))
        assert torch.equal(weights.triu(1), torch.zeros_like(weights))


def test_gpt_tied_embeddings_share_one_tensor():
    model = GPT(small_config())
    with torch.no_grad():
        model.embed.tokens.weight[3].fill_(1.0)
    assert torch.equal(model.lm_head.weight[3], torch.ones(16))
    untied = GPT(small_config(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.tokens.weight


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda m: m(torch.rand(2, 5)), TypeError, r"token ids must be an integer tensor \(torch.long\), got dtype torch.float32"),
        (lambda m: m(torch.randint(0, 37, (5,))), ValueError, r"token ids must have shape \(B, T\), got \(5,\)"),
        (lambda m: m(torch.randint(0, 37, (1, 13))), ValueError, "sequence length 13 exceeds max_len 12"),
        (lambda m: m(torch.tensor([[1, 2, 37]])), ValueError, r"token ids must be in \[0, 37\)"),
        (lambda m: m.loss(torch.randint(0, 37, (2, 5)), torch.randint(0, 37, (2, 4))), ValueError, "targets must have the shape of idx"),
        (lambda m: m.loss(torch.randint(0, 37, (2, 5)), torch.rand(2, 5)), TypeError, "targets must be integer"),
    ],
)
def test_gpt_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(GPT(small_config()))


# ---------------------------------------------------------------------------------------------------------------
# EncoderClassifier and EncoderDecoder


def test_classifier_ignores_padding():
    torch.manual_seed(0)
    model = EncoderClassifier(small_config(n_classes=4, pad_id=0)).eval()
    idx = torch.randint(1, 37, (3, 10))
    idx[1, 6:] = 0
    idx[2, 3:] = 0
    logits = model(idx)
    assert logits.shape == (3, 4)
    mask = idx == 0
    torch.testing.assert_close(model(idx, padding_mask=mask), logits)

    # change the ids under an explicit padding mask: same logits
    scrambled = idx.clone()
    scrambled[mask] = torch.randint(1, 37, (int(mask.sum()),))
    torch.testing.assert_close(model(scrambled, padding_mask=mask), logits)
    # the same sequence without padding, cut to its length: same logits
    torch.testing.assert_close(model(idx[2:, :3]), logits[2:])
    # without the mask the scrambled pads do change the result, so the check above can fail
    no_pad_id = EncoderClassifier(small_config(n_classes=4)).eval()
    no_pad_id.load_state_dict(model.state_dict())
    assert not torch.allclose(no_pad_id(scrambled), logits)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: EncoderClassifier(small_config()), ValueError, "needs config.n_classes"),
        (lambda: EncoderClassifier(small_config(n_classes=2))(torch.randint(0, 37, (2, 4)), torch.zeros(2, 4)), TypeError, "padding_mask must be a bool tensor"),
        (lambda: EncoderClassifier(small_config(n_classes=2))(torch.randint(0, 37, (2, 4)), torch.zeros(2, 5).bool()), ValueError, r"padding_mask must have the shape of the token ids \(2, 4\)"),
    ],
)
def test_classifier_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_encoder_decoder_shape_causality_and_source_padding():
    torch.manual_seed(0)
    model = EncoderDecoder(small_config(pad_id=0)).eval()
    src = torch.randint(1, 37, (2, 7))
    src[1, 5:] = 0
    tgt = torch.randint(1, 37, (2, 6))
    logits = model(src, tgt)
    assert logits.shape == (2, 6, 37)
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 36 + 1
    torch.testing.assert_close(model(src, changed)[:, :4], logits[:, :4])
    # padding in the source is ignored
    torch.testing.assert_close(model(src[1:, :5], tgt[1:]), logits[1:])
    # but the source does matter
    other_src = src.clone()
    other_src[0, 0] = (other_src[0, 0] % 36) + 1
    assert not torch.allclose(model(other_src, tgt)[0], logits[0])
    with pytest.raises(ValueError, match="same batch size"):
        model(src, tgt[:1])


def test_config_round_trips_through_dict():
    config = small_config(n_classes=3)
    assert TransformerConfig(**config.to_dict()) == config
    assert dataclasses.asdict(config) == config.to_dict()
