"""Chapter 2 exercises ("The cost of attention"): right answers pass, plausible wrong ones fail."""

from __future__ import annotations

import math

import pytest
import torch

from labkit import exercises
from labkit.exercises import check
from labkit.flash_attention import tiled_forward

CHAPTER_2 = ["attention_cost.online_softmax_update", "attention_cost.crossover_length",
             "attention_cost.causal_block_skip", "attention_cost.kv_cache_bytes"]


# ---------------------------------------------------------------------------------------------- learners


def update_right(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.max(dim=-1).values)
    p = torch.exp(scores - m_new[:, None])
    c = torch.exp(m - m_new)
    return m_new, c * l + p.sum(-1), c[:, None] * acc + p @ values


def update_no_rescale(m, l, acc, scores, values):
    """Wrong: forgets to rescale the old sum and accumulator by exp(m - m_new)."""
    m_new = torch.maximum(m, scores.max(dim=-1).values)
    p = torch.exp(scores - m_new[:, None])
    return m_new, l + p.sum(-1), acc + p @ values


def update_without_max(m, l, acc, scores, values):
    """Wrong: plain exponentials, no running max (overflows for large scores)."""
    p = torch.exp(scores)
    return torch.zeros_like(m), l + p.sum(-1), acc + p @ values


def crossover_right(d_model, d_ff, causal, activation):
    ffn = (3 if activation == "swiglu" else 2) * 2 * d_model * d_ff  # per token
    linear = 8 * d_model * d_model + ffn  # per token: projections + FFN
    if causal:  # 2 T (T + 1) d >= T * linear  <=>  T >= linear / (2 d) - 1
        return max(1, math.ceil(linear / (2 * d_model)) - 1)
    return max(1, math.ceil(linear / (4 * d_model)))  # 4 T^2 d >= T * linear


def crossover_six_d(d_model, d_ff, causal, activation):
    """Wrong: the rule of thumb T* = 6d, which assumes d_ff = 4d, ReLU and no mask."""
    return 6 * d_model


def crossover_ignores_causal(d_model, d_ff, causal, activation):
    return crossover_right(d_model, d_ff, False, activation)


def blocks_right(n_queries, n_keys, block_q, block_k, diagonal_visible=True):
    out = torch.zeros(-(-n_queries // block_q), -(-n_keys // block_k), dtype=torch.long)
    for qb in range(out.size(0)):
        first_q, last_q = qb * block_q, min((qb + 1) * block_q, n_queries) - 1
        for kb in range(out.size(1)):
            first_k, last_k = kb * block_k, min((kb + 1) * block_k, n_keys) - 1
            if first_k > last_q:
                out[qb, kb] = 0  # every key after every query
            elif last_k <= first_q if diagonal_visible else last_k < first_q:
                out[qb, kb] = 1  # every key at or before every query
            else:
                out[qb, kb] = 2
    return out


def blocks_strict_diagonal(n_queries, n_keys, block_q, block_k):
    """Wrong: treats the diagonal as masked (j < i instead of j <= i)."""
    return blocks_right(n_queries, n_keys, block_q, block_k, diagonal_visible=False)


def blocks_no_partial(n_queries, n_keys, block_q, block_k):
    """Wrong: every tile that is not skipped is computed without a mask."""
    return blocks_right(n_queries, n_keys, block_q, block_k).clamp(max=1)


def kv_right(n_layers, n_kv_heads, head_dim, seq_len, batch_size, dtype):
    bits = torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bits // 8


def kv_keys_only(n_layers, n_kv_heads, head_dim, seq_len, batch_size, dtype):
    return kv_right(n_layers, n_kv_heads, head_dim, seq_len, batch_size, dtype) // 2


def kv_float32_always(n_layers, n_kv_heads, head_dim, seq_len, batch_size, dtype):
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * 4


# ---------------------------------------------------------------------------------------------- tests


def test_chapter_2_exercises_are_listed():
    assert [e.name for e in exercises.list_exercises("attention_cost.")] == sorted(CHAPTER_2)


@pytest.mark.parametrize("name, learner", [
    ("attention_cost.online_softmax_update", update_right),
    ("attention_cost.crossover_length", crossover_right),
    ("attention_cost.causal_block_skip", blocks_right),
    ("attention_cost.kv_cache_bytes", kv_right),
])
def test_a_correct_solution_from_scratch_passes(name, learner):
    assert check(name, learner, verbose=False, n_cases=20).max_abs_error <= 1e-5


@pytest.mark.parametrize("name, learner, message", [
    ("attention_cost.online_softmax_update", update_no_rescale, "a later block"),
    ("attention_cost.online_softmax_update", update_without_max, "the first block"),
    ("attention_cost.crossover_length", crossover_six_d, "d_ff not a multiple of d"),
    ("attention_cost.crossover_length", crossover_ignores_causal, "causal"),
    ("attention_cost.causal_block_skip", blocks_strict_diagonal, "one entry a tile"),
    ("attention_cost.causal_block_skip", blocks_no_partial, "2 x 2 tiles"),
    ("attention_cost.kv_cache_bytes", kv_keys_only, "LLaMA-7B"),
    ("attention_cost.kv_cache_bytes", kv_float32_always, "LLaMA-7B"),
])
def test_wrong_answers_fail_with_a_useful_message(name, learner, message, rejection):
    assert message in rejection(name, learner)


def test_online_softmax_updates_over_all_blocks_give_softmax_attention():
    """Folding every key block with the reference update, then A / l, is softmax(S) V -- and tiled_forward."""
    update = exercises.get_exercise("attention_cost.online_softmax_update").reference
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows, 8, generator=g, dtype=torch.float64) for rows in (5, 8, 8))
    scores = q @ k.T / math.sqrt(8)
    m, l, acc = torch.full((5,), -math.inf, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), \
        torch.zeros(5, 8, dtype=torch.float64)
    for start in range(0, 8, 3):
        m, l, acc = update(m, l, acc, scores[:, start:start + 3], v[start:start + 3])
    torch.testing.assert_close(acc / l[:, None], torch.softmax(scores, -1) @ v)
    torch.testing.assert_close(acc / l[:, None], tiled_forward(q, k, v, False, 1 / math.sqrt(8), 2, 3)[0])
    torch.testing.assert_close(m + l.log(), torch.logsumexp(scores, -1))


def test_crossover_reference_matches_the_closed_forms():
    reference = exercises.get_exercise("attention_cost.crossover_length").reference
    assert reference(128, 512, False, "relu") == 2 * 128 + 512
    assert reference(128, 512, True, "relu") == 4 * 128 + 2 * 512 - 1
    assert reference(768, 2048, False, "swiglu") == 2 * 768 + 3 * 2048 // 2


def test_block_reference_by_hand():
    reference = exercises.get_exercise("attention_cost.causal_block_skip").reference
    assert reference(10, 10, 4, 4).tolist() == [[2, 0, 0], [1, 2, 0], [1, 1, 2]]
    assert reference(8, 8, 2, 4).tolist() == [[2, 0], [2, 0], [1, 2], [1, 2]]
    assert reference(3, 3, 1, 1).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
