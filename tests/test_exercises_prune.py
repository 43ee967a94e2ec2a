"""Chapter "Pruning" exercises: the references pass their own checks, independent right answers pass, and
plausible wrong answers fail with a message that names the case."""

from __future__ import annotations


import pytest
import torch

from labkit.exercises import check, get_exercise

CHAPTER = ["prune.magnitude_mask", "prune.nm_mask", "prune.cubic_sparsity", "prune.shrink_ffn"]

# ---------------------------------------------------------------------------------------------- learners


def magnitude_mask_right(weight, amount):
    k = round(amount * weight.numel())
    mask = torch.ones(weight.numel(), dtype=weight.dtype)
    mask[weight.abs().reshape(-1).argsort()[:k]] = 0
    return mask.view_as(weight)


def magnitude_mask_floor(weight, amount):
    """Wrong: int(amount * n) truncates where torch.nn.utils.prune rounds."""
    k = int(amount * weight.numel())
    mask = torch.ones(weight.numel(), dtype=weight.dtype)
    mask[weight.abs().reshape(-1).argsort()[:k]] = 0
    return mask.view_as(weight)


def magnitude_mask_signed(weight, amount):
    """Wrong: prunes the most negative weights, not the smallest magnitudes."""
    k = round(amount * weight.numel())
    mask = torch.ones(weight.numel(), dtype=weight.dtype)
    mask[weight.reshape(-1).argsort()[:k]] = 0
    return mask.view_as(weight)


def nm_mask_right(weight, n, m):
    groups = weight.abs().reshape(-1, m)
    order = groups.argsort(dim=1, descending=True)
    mask = torch.zeros_like(groups)
    for row in range(groups.size(0)):
        mask[row, order[row, :n]] = 1
    return mask.view_as(weight)


def nm_mask_columns(weight, n, m):
    """Wrong: groups m consecutive rows (along dim 0) instead of m consecutive entries of a row."""
    t = weight.t().contiguous()
    return nm_mask_right(t, n, m).t() if t.size(-1) % m == 0 else torch.ones_like(weight)


def nm_mask_keeps_smallest(weight, n, m):
    """Wrong: keeps the n smallest of each group."""
    groups = weight.abs().reshape(-1, m)
    kept = groups.argsort(dim=1)[:, :n]
    return torch.zeros_like(groups).scatter_(1, kept, 1.0).view_as(weight)


def cubic_right(step, final_sparsity, total_steps, initial_sparsity, start_step):
    progress = min(max((step - start_step) / total_steps, 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - progress) ** 3


def cubic_linear(step, final_sparsity, total_steps, initial_sparsity, start_step):
    """Wrong: a linear ramp."""
    progress = min(max((step - start_step) / total_steps, 0.0), 1.0)
    return initial_sparsity + (final_sparsity - initial_sparsity) * progress


def cubic_unclamped(step, final_sparsity, total_steps, initial_sparsity, start_step):
    """Wrong: no clamping, so the schedule overshoots after the end."""
    progress = (step - start_step) / total_steps
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - progress) ** 3


def shrink_ffn_right(up_weight, up_bias, down_weight, amount):
    d_ff = up_weight.size(0)
    n_keep = d_ff - round(amount * d_ff)
    score = up_weight.norm(dim=1) * down_weight.norm(dim=0)
    keep = score.argsort(descending=True)[:n_keep].sort().values
    return up_weight[keep], up_bias[keep], down_weight[:, keep]


def shrink_ffn_up_only(up_weight, up_bias, down_weight, amount):
    """Wrong: scores neurons by the up-projection alone."""
    d_ff = up_weight.size(0)
    keep = up_weight.norm(dim=1).argsort(descending=True)[:d_ff - round(amount * d_ff)].sort().values
    return up_weight[keep], up_bias[keep], down_weight[:, keep]


def shrink_ffn_down_rows(up_weight, up_bias, down_weight, amount):
    """Wrong: slices rows of W_down (its output features) instead of its columns."""
    up, bias, _ = shrink_ffn_right(up_weight, up_bias, down_weight, amount)
    return up, bias, down_weight[: up.size(0)]


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", CHAPTER)
def test_reference_passes_its_own_check(name):
    exercise = get_exercise(name)
    result = check(name, exercise.reference, verbose=False)
    assert result.n_cases >= 8 and result.max_abs_error == 0


@pytest.mark.parametrize("name,learner", [
    ("prune.magnitude_mask", magnitude_mask_right), ("prune.nm_mask", nm_mask_right),
    ("prune.cubic_sparsity", cubic_right), ("prune.shrink_ffn", shrink_ffn_right)])
def test_independent_right_answers_pass(name, learner):
    check(name, learner, verbose=False)


@pytest.mark.parametrize("name,learner,case", [
    ("prune.magnitude_mask", magnitude_mask_floor, "rounds up to 3"),
    ("prune.magnitude_mask", magnitude_mask_signed, "signs ignored"),
    ("prune.nm_mask", nm_mask_columns, "case"),
    ("prune.nm_mask", nm_mask_keeps_smallest, "two groups of four"),
    ("prune.cubic_sparsity", cubic_linear, "halfway"),
    ("prune.cubic_sparsity", cubic_unclamped, "after the end"),
    ("prune.shrink_ffn", shrink_ffn_up_only, "case"),
    ("prune.shrink_ffn", shrink_ffn_down_rows, "case"),
])
def test_wrong_answers_fail_on_a_named_case(rejection, name, learner, case):
    message = rejection(name, learner)
    assert case in message


def test_not_implemented_is_reported():
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not implemented yet"):
        check("prune.nm_mask", stub, verbose=False)
