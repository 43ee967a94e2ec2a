"""labkit.generate: the KV cache changes nothing but the speed, sampling filters match a reference, padding is
invisible, bad input is refused."""

from __future__ import annotations

import pytest
import torch

from labkit.attention import KVCache
from labkit.bench import cpu_threads
from labkit.generate import (generate, generate_timed, kv_cache_bytes, pad_prompts, sample_next, top_k_filter,
                             top_p_filter)
from labkit.transformer import GPT, TransformerConfig


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest, and steadiest on a shared machine, on one CPU thread."""
    with cpu_threads(1):
        yield


def make_gpt(dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=41, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=48)
    fields.update(overrides)
    model = GPT(TransformerConfig(**fields)).to(dtype).eval()
    with torch.no_grad():  # sharper next-token distributions than at initialisation, so greedy has no near-ties
        model.embed.tokens.weight.mul_(4)
    return model


def prompt(batch=2, length=7, seed=1, vocab=41):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- the KV cache


@pytest.mark.parametrize("overrides", [{}, {"norm_first": False}, {"positional": "sinusoidal"}, {"n_layers": 3}])
def test_cached_forward_equals_full_forward(overrides):
    model = make_gpt(**overrides)
    idx = prompt(3, 20)
    cache = KVCache(model.config.n_layers, 3, 4, 8, 32, dtype=torch.float64)
    pieces = [model(idx[:, :9], kv_cache=cache)] + [model(idx[:, t : t + 1], kv_cache=cache) for t in range(9, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(idx), rtol=0, atol=1e-12)
    assert cache.length == 20


def test_greedy_with_and_without_cache_token_for_token():
    model = make_gpt()
    with_cache = generate(model, prompt(), 30, use_cache=True)
    without = generate(model, prompt(), 30, use_cache=False)
    assert with_cache.shape == (2, 37)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :7], prompt())


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                      dict(temperature=1.3, top_p=0.8), dict(top_k=10, top_p=0.9)])
def test_seeded_sampling_with_and_without_cache_token_for_token(settings):
    model = make_gpt()
    runs = [generate(model, prompt(), 25, use_cache=use, do_sample=True,
                     generator=torch.Generator().manual_seed(3), **settings) for use in (True, False)]
    assert torch.equal(*runs)
    other_seed = generate(model, prompt(), 25, do_sample=True, generator=torch.Generator().manual_seed(4), **settings)
    assert not torch.equal(runs[0], other_seed)


def test_float32_greedy_with_and_without_cache():
    model = make_gpt(torch.float32)
    assert torch.equal(generate(model, prompt(), 20), generate(model, prompt(), 20, use_cache=False))


def test_greedy_is_the_argmax_of_the_full_forward():
    model = make_gpt()
    out = generate(model, prompt(1), 5)
    for t in range(7, 12):
        assert out[0, t] == model(out[:, :t])[0, -1].argmax()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_padded_generation_equals_one_prompt_at_a_time(side, use_cache):
    model = make_gpt()
    prompts = [[3, 9, 1, 4, 7, 2, 8], [5, 6], [11, 12, 13, 14]]
    ids, padding = pad_prompts(prompts, pad_id=0, side=side)
    batched = generate(model, ids, 12, padding_mask=padding, use_cache=use_cache)
    for row, tokens in enumerate(prompts):
        alone = generate(model, torch.tensor([tokens]), 12)
        assert torch.equal(batched[row, ids.size(1):], alone[0, len(tokens):]), (side, row)


def test_pad_prompts_layout():
    ids, padding = pad_prompts([[1, 2, 3], [4]], pad_id=9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and padding.tolist() == [[False] * 3, [True, True, False]]
    ids, padding = pad_prompts([[1, 2, 3], [4]], pad_id=9, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and padding.tolist() == [[False] * 3, [False, True, True]]


def test_pad_token_values_do_not_matter():
    model = make_gpt()
    ids, padding = pad_prompts([[3, 9, 1, 4], [5, 6]], pad_id=0)
    other = ids.masked_fill(padding, 17)
    assert torch.equal(generate(model, ids, 8, padding_mask=padding)[:, 4:],
                       generate(model, other, 8, padding_mask=padding)[:, 4:])


def test_timed_generation_reports_both_phases():
    result = generate_timed(make_gpt(), prompt(), 6)
    assert result.prefill_s > 0 and result.decode_s > 0 and result.new_tokens.shape == (2, 6)
    assert result.decode_tokens_per_s == pytest.approx(2 * 5 / result.decode_s)


def test_generation_restores_training_mode():
    model = make_gpt().train()
    generate(model, prompt(), 2)
    assert model.training


def test_kv_cache_bytes_formula_and_the_real_cache():
    assert kv_cache_bytes(2, 4, 8, 100, 4) == 2 * 2 * 4 * 8 * 100 * 4
    assert kv_cache_bytes(12, 12, 64, 1024, 2, batch_size=8) == 2 * 12 * 12 * 64 * 1024 * 2 * 8
    model = make_gpt(torch.float32)
    cache = KVCache(2, 3, 4, 8, 40, dtype=torch.float32)
    model(prompt(3, 10), kv_cache=cache)
    assert cache.used_bytes == kv_cache_bytes(2, 4, 8, 10, 4, batch_size=3)
    assert cache.nbytes == kv_cache_bytes(2, 4, 8, 40, 4, batch_size=3)


# ------------------------------------------------------------------------------------------- sampling filters


def reference_top_k(logits, k):
    out = torch.full_like(logits, float("-inf"))
    for r, row in enumerate(logits):
        kth = sorted(row.tolist(), reverse=True)[min(k, len(row)) - 1]
        keep = row >= kth
        out[r, keep] = row[keep]
    return out


def reference_top_p(logits, p):
    out = torch.full_like(logits, float("-inf"))
    for r, row in enumerate(logits):
        probs = torch.softmax(row.double(), -1).tolist()
        mass = 0.0
        for j in sorted(range(len(row)), key=lambda j: -probs[j]):
            out[r, j] = row[j]
            mass += probs[j]
            if mass >= p:
                break
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_top_k_matches_reference(seed, k):
    logits = torch.randn(4, 23, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.equal(top_k_filter(logits, k), reference_top_k(logits, k))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999, 1.0])
def test_top_p_matches_reference(seed, p):
    logits = 3 * torch.randn(4, 23, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.equal(top_p_filter(logits, p), reference_top_p(logits, p))


def test_top_k_keeps_ties_and_top_p_keeps_the_top_token():
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(top_p_filter(torch.tensor([[5.0, 0.0, 0.0]]), 0.01)).tolist() == [[True, False, False]]


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).expand(20000, 4).contiguous()
    draws = sample_next(logits, do_sample=True, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64), atol=0.015, rtol=0)
    top1 = sample_next(logits, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.all(top1 == 0)


def test_low_temperature_is_greedy_and_seeds_reproduce():
    logits = torch.randn(16, 30, generator=torch.Generator().manual_seed(2))
    cold = sample_next(logits, do_sample=True, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, logits.argmax(-1))
    runs = [sample_next(logits, do_sample=True, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(*runs)


# ------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_a_clear_message():
    model = make_gpt()
    with pytest.raises(ValueError, match="exceeds the model's max_len 48"):
        generate(model, prompt(), 42)
    with pytest.raises(ValueError, match="idx must be an integer tensor of shape"):
        generate(model, torch.randn(2, 3), 2)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int"):
        generate(model, prompt(), -1)
    with pytest.raises(ValueError, match="padding_mask must have the shape of idx"):
        generate(model, prompt(), 2, padding_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one non-pad token"):
        generate(model, prompt(), 2, padding_mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="labkit's GPT"):
        generate(torch.nn.Linear(2, 2), prompt(), 2)
    with pytest.raises(ValueError, match="temperature must be a float > 0"):
        sample_next(torch.randn(2, 5), do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        top_k_filter(torch.randn(2, 5), 0)
    with pytest.raises(ValueError, match=r"top_p must be a float in \(0, 1\]"):
        top_p_filter(torch.randn(2, 5), 1.5)
    with pytest.raises(ValueError, match=r"logits must have shape \(B, V\)"):
        sample_next(torch.randn(5))
    with pytest.raises(ValueError, match="side must be 'left' or 'right'"):
        pad_prompts([[1]], 0, side="middle")
    with pytest.raises(ValueError, match="at least one token"):
        pad_prompts([[1], []], 0)


def test_cache_refuses_overflow_and_wrong_shapes():
    cache = KVCache(1, 2, 4, 8, 5)
    with pytest.raises(ValueError, match=r"must have shape \(B, H, T, head_dim\)"):
        cache.update(0, torch.zeros(2, 3, 1, 8), torch.zeros(2, 3, 1, 8))
    cache.update(0, torch.zeros(2, 4, 4, 8), torch.zeros(2, 4, 4, 8))
    with pytest.raises(ValueError, match="the cache holds 5 tokens; 4 stored \\+ 2 new exceed it"):
        cache.update(0, torch.zeros(2, 4, 2, 8), torch.zeros(2, 4, 2, 8))
    with pytest.raises(ValueError, match="layer must be an int"):
        cache.update(1, torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8))
    model = make_gpt()
    with pytest.raises(ValueError, match="kv_cache was made for batch size 2"):
        model(prompt(3), kv_cache=KVCache(2, 2, 4, 8, 20, dtype=torch.float64))
    with pytest.raises(ValueError, match="not supported together with kv_cache"):
        model(prompt(2), return_attention=True, kv_cache=KVCache(2, 2, 4, 8, 20, dtype=torch.float64))
    with pytest.raises(ValueError, match="positions must be in"):
        model(prompt(2), positions=torch.full((2, 7), 48))
