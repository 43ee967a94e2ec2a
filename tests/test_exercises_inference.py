"""Chapter "Inference optimization" exercises: the references pass their own checks, independent right answers
pass, and plausible wrong answers fail on the case that shows the mistake."""

from __future__ import annotations

import pytest
import torch

from labkit import exercises
from labkit.exercises import ExerciseError, check

CHAPTER = ["inference.kv_cache_bytes", "inference.top_k", "inference.top_p", "inference.linear_intensity"]

# ---------------------------------------------------------------------------------------------- learners


def kv_cache_bytes_right(n_layers, n_heads, head_dim, n_tokens, bytes_per_value, batch_size):
    return 2 * n_layers * n_heads * head_dim * n_tokens * bytes_per_value * batch_size


def kv_cache_bytes_keys_only(n_layers, n_heads, head_dim, n_tokens, bytes_per_value, batch_size):
    """Wrong: the cache holds values as well as keys."""
    return n_layers * n_heads * head_dim * n_tokens * bytes_per_value * batch_size


def kv_cache_bytes_one_sequence(n_layers, n_heads, head_dim, n_tokens, bytes_per_value, batch_size):
    """Wrong: every sequence of the batch has its own cache."""
    return 2 * n_layers * n_heads * head_dim * n_tokens * bytes_per_value


def top_k_right(logits, k):
    kth = torch.sort(logits, dim=-1, descending=True).values[:, min(k, logits.size(-1)) - 1 : min(k, logits.size(-1))]
    return torch.where(logits >= kth, logits, torch.full_like(logits, float("-inf")))


def top_k_drops_ties(logits, k):
    """Wrong: keeps exactly k entries by index, dropping a tie at the k-th place."""
    k = min(k, logits.size(-1))
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_k_zero_instead_of_inf(logits, k):
    """Wrong: a logit of 0 still has probability e^0 / Z; filtered logits must be -inf."""
    filtered = top_k_right(logits, k)
    return torch.where(torch.isinf(filtered), torch.zeros_like(logits), filtered)


def top_p_right(logits, p):
    probs = torch.softmax(logits.double(), dim=-1)
    out = torch.full_like(logits, float("-inf"))
    for r in range(logits.size(0)):
        mass = 0.0
        for j in torch.argsort(probs[r], descending=True).tolist():
            out[r, j] = logits[r, j]
            mass += probs[r, j].item()
            if mass >= p:
                break
    return out


def top_p_without_the_crossing_token(logits, p):
    """Wrong: keeps only tokens whose cumulative probability stays at or below p (may keep none)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop = torch.zeros_like(cumulative, dtype=torch.bool).scatter(-1, order, cumulative > p)
    return logits.masked_fill(drop, float("-inf"))


def top_p_on_logits(logits, p):
    """Wrong: thresholds the cumulative sum of normalised logits, not of probabilities."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    shifted = sorted_logits - sorted_logits.min(-1, keepdim=True).values
    weights = shifted / shifted.sum(-1, keepdim=True).clamp_min(1e-12)
    drop_sorted = (weights.cumsum(-1) - weights) >= p
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))


def linear_intensity_right(n_tokens, d_in, d_out, bytes_per_value):
    return 2 * n_tokens * d_in * d_out / ((d_in * d_out + n_tokens * d_in + n_tokens * d_out) * bytes_per_value)


def linear_intensity_weights_only(n_tokens, d_in, d_out, bytes_per_value):
    """Wrong: activations are read and written too; they dominate when tokens outnumber weight rows."""
    return 2 * n_tokens * d_in * d_out / (d_in * d_out * bytes_per_value)


def linear_intensity_one_flop_per_mac(n_tokens, d_in, d_out, bytes_per_value):
    """Wrong: a multiply-add is 2 FLOPs."""
    return linear_intensity_right(n_tokens, d_in, d_out, bytes_per_value) / 2


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", CHAPTER)
def test_reference_passes_its_own_check(name):
    assert check(name, exercises.get_exercise(name).reference, verbose=False).n_cases >= 13


@pytest.mark.parametrize("name, learner", [
    ("inference.kv_cache_bytes", kv_cache_bytes_right),
    ("inference.top_k", top_k_right),
    ("inference.top_p", top_p_right),
    ("inference.linear_intensity", linear_intensity_right),
])
def test_independent_right_answers_pass(name, learner):
    check(name, learner, verbose=False)


@pytest.mark.parametrize("name, learner, case_label", [
    ("inference.kv_cache_bytes", kv_cache_bytes_keys_only, "the book's cpu GPT"),
    ("inference.kv_cache_bytes", kv_cache_bytes_one_sequence, "batch of 8"),
    ("inference.top_k", top_k_drops_ties, "a tie at the k-th place"),
    ("inference.top_k", top_k_zero_instead_of_inf, "k = 3 of 10"),
    ("inference.top_p", top_p_without_the_crossing_token, ""),
    ("inference.top_p", top_p_on_logits, ""),
    ("inference.linear_intensity", linear_intensity_weights_only, "decoding one token"),
    ("inference.linear_intensity", linear_intensity_one_flop_per_mac, "decoding one token"),
])
def test_wrong_answers_fail_on_the_case_that_shows_the_mistake(name, learner, case_label, rejection):
    assert f"[{case_label}" in rejection(name, learner)


def test_messages_say_what_differs():
    with pytest.raises(ExerciseError, match=r"expected \d+, got \d+"):
        check("inference.kv_cache_bytes", kv_cache_bytes_keys_only, verbose=False)
    with pytest.raises(ExerciseError, match="values differ"):
        check("inference.top_k", top_k_zero_instead_of_inf, verbose=False)


def test_exercises_are_listed_for_the_chapter():
    assert [e.name for e in exercises.list_exercises("inference.")] == sorted(CHAPTER)
