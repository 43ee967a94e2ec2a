"""Chapter "Choosing a compression" exercises: the references pass their own checks, independent right answers
pass, and plausible wrong answers fail with a message that names the case."""

from __future__ import annotations

import pytest

from labkit.exercises import check, get_exercise

CHAPTER = ["compression.pareto_front", "compression.quantized_bytes", "compression.best_under_budget",
           "compression.matmul_intensity"]

# ---------------------------------------------------------------------------------------------- learners


def pareto_right(costs, scores):
    front = []
    for i in range(len(costs)):
        if not any(costs[j] <= costs[i] and scores[j] >= scores[i] and (costs[j] < costs[i] or scores[j] > scores[i])
                   for j in range(len(costs))):
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -scores[i], i))


def pareto_strict(costs, scores):
    """Wrong: 'dominated' with <= on both sides drops equal points, duplicates included."""
    return sorted((i for i in range(len(costs))
                   if not any(j != i and costs[j] <= costs[i] and scores[j] >= scores[i] for j in range(len(costs)))),
                  key=lambda i: costs[i])


def pareto_unsorted(costs, scores):
    """Wrong: the front in input order, not by cost."""
    return sorted(pareto_right(costs, scores))


def quantized_bytes_right(rows, cols, bits, group_size):
    return rows * cols * bits // 8 + rows * (cols // group_size) * 4


def quantized_bytes_unpacked(rows, cols, bits, group_size):
    """Wrong: one byte an integer even at 4 bits."""
    return rows * cols + rows * (cols // group_size) * 4


def quantized_bytes_fp16_scales(rows, cols, bits, group_size):
    """Wrong: 2-byte scales."""
    return rows * cols * bits // 8 + rows * (cols // group_size) * 2


def best_right(accuracies, costs, budget):
    fit = [i for i in range(len(costs)) if costs[i] <= budget]
    return min(fit, key=lambda i: (-accuracies[i], costs[i], i), default=-1)


def best_strict_budget(accuracies, costs, budget):
    """Wrong: a cost equal to the budget does not fit."""
    fit = [i for i in range(len(costs)) if costs[i] < budget]
    return min(fit, key=lambda i: (-accuracies[i], costs[i], i), default=-1)


def best_ignores_ties(accuracies, costs, budget):
    """Wrong: among equally accurate models takes the first, not the cheapest."""
    fit = [i for i in range(len(costs)) if costs[i] <= budget]
    return min(fit, key=lambda i: (-accuracies[i], i), default=-1)


def intensity_right(m, k, n, weight_bytes):
    return 2 * m * k * n / (k * n * weight_bytes + (m * k + m * n) * 4)


def intensity_weights_only(m, k, n, weight_bytes):
    """Wrong: counts only the weights' bytes."""
    return 2 * m * k * n / (k * n * weight_bytes)


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", CHAPTER)
def test_reference_passes_its_own_check(name):
    result = check(name, get_exercise(name).reference, verbose=False)
    assert result.n_cases >= 8 and result.max_abs_error == 0


@pytest.mark.parametrize("name,learner", [
    ("compression.pareto_front", pareto_right), ("compression.quantized_bytes", quantized_bytes_right),
    ("compression.best_under_budget", best_right), ("compression.matmul_intensity", intensity_right)])
def test_independent_right_answers_pass(name, learner):
    check(name, learner, verbose=False)


@pytest.mark.parametrize("name,learner,case", [
    ("compression.pareto_front", pareto_strict, "duplicates"),
    ("compression.pareto_front", pareto_unsorted, "unsorted"),
    ("compression.quantized_bytes", quantized_bytes_unpacked, "int4"),
    ("compression.quantized_bytes", quantized_bytes_fp16_scales, "int8"),
    ("compression.best_under_budget", best_strict_budget, "equal to the budget"),
    ("compression.best_under_budget", best_ignores_ties, "equal accuracy"),
    ("compression.matmul_intensity", intensity_weights_only, "batch 1")])
def test_wrong_answers_fail_on_a_named_case(rejection, name, learner, case):
    assert case in rejection(name, learner)


def test_not_implemented_is_reported():
    def stub(*args):
        raise NotImplementedError
    with pytest.raises(AssertionError, match="not implemented"):
        check("compression.pareto_front", stub, verbose=False)
