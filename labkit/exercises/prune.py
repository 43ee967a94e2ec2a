"""Chapter "Pruning" exercises, checked against labkit.prune.

* ``prune.magnitude_mask`` -- the 0/1 mask that zeroes the ``round(amount * numel)`` smallest ``|w|``
  (:func:`labkit.prune.magnitude_mask`, equal to ``torch.nn.utils.prune.l1_unstructured``'s mask).
* ``prune.nm_mask`` -- the N:M mask: keep the ``n`` largest ``|w|`` of every ``m`` consecutive entries of a row
  (:func:`labkit.prune.nm_mask`).
* ``prune.cubic_sparsity`` -- the gradual-pruning schedule of Zhu & Gupta (2017) (:func:`labkit.prune.cubic_sparsity`).
* ``prune.shrink_ffn`` -- structured pruning of an FFN's hidden neurons: the smaller matrices
  (:func:`labkit.prune.shrink_feedforward` with its default importance :func:`labkit.prune.ffn_neuron_scores`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn

__all__: list[str] = []


def _rand_uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------
# unstructured magnitude mask
# ----------------------------------------------------------------------------------------------------------


def _magnitude_mask_reference(weight: Tensor, amount: float) -> Tensor:
    from labkit.prune import magnitude_mask

    return magnitude_mask(weight, amount)


def _magnitude_mask_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((torch.tensor([[0.5, -3.0, 0.1, 2.0]]), 0.5), "one row: the two smallest |w| go, signs ignored"),
             Case((_randn(generator, 6, 10), 0.0), "amount 0: nothing pruned"),
             Case((_randn(generator, 6, 10), 1.0), "amount 1: everything pruned"),
             Case((_randn(generator, 2, 5), 0.27), "0.27 of 10 = 2.7 rounds up to 3"),
             Case((_randn(generator, 3, 5), 0.3), "0.3 of 15 = 4.5 rounds to 4 (round half to even)"),
             Case((_randn(generator, 7, 3), 0.5), "0.5 of 21 = 10.5 rounds to 10"),
             Case((_randn(generator, 4, 4, 3), 0.6), "a 3-D tensor: the mask has its shape"),
             Case((_randn(generator, 5, 8, dtype=torch.float64), 0.25), "float64 weight: a float64 mask")]
    for _ in range(n_random):
        shape = (_randint(generator, 1, 12), _randint(generator, 1, 12))
        cases.append(Case((_randn(generator, *shape), round(_rand_uniform(generator, 0, 1), 2)), "random"))
    return cases


add_exercise(Exercise(
    name="prune.magnitude_mask",
    title="The magnitude-pruning mask",
    goal="zero the round(amount * numel) entries with the smallest |w|: a 0/1 mask of weight's shape and dtype",
    make_cases=_magnitude_mask_cases,
    reference=_magnitude_mask_reference,
    atol=0.0, rtol=0.0,
    signature="my_magnitude_mask(weight, amount) -> Tensor",
))


# ----------------------------------------------------------------------------------------------------------
# N:M mask
# ----------------------------------------------------------------------------------------------------------


def _nm_mask_reference(weight: Tensor, n: int, m: int) -> Tensor:
    from labkit.prune import nm_mask

    return nm_mask(weight, n, m)


def _nm_mask_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.2, 0.1, -0.3, 9.0]]), 2, 4), "two groups of four, signs"),
             Case((_randn(generator, 4, 8), 2, 4), "2:4, NVIDIA's pattern"),
             Case((_randn(generator, 3, 16), 1, 4), "1:4"),
             Case((_randn(generator, 2, 16), 4, 8), "4:8: groups of eight"),
             Case((_randn(generator, 3, 6), 3, 3), "n = m: nothing pruned"),
             Case((_randn(generator, 5, 8, dtype=torch.float64), 2, 4), "float64")]
    for _ in range(n_random):
        m = _randint(generator, 2, 8)
        cases.append(Case((_randn(generator, _randint(generator, 1, 6), m * _randint(generator, 1, 4)),
                           _randint(generator, 1, m), m), "random"))
    return cases


add_exercise(Exercise(
    name="prune.nm_mask",
    title="An N:M sparsity mask",
    goal="in every group of m consecutive entries of a row keep the n largest |w| (mask 1) and zero the rest",
    make_cases=_nm_mask_cases,
    reference=_nm_mask_reference,
    atol=0.0, rtol=0.0,
    signature="my_nm_mask(weight, n, m) -> Tensor",
))


# ----------------------------------------------------------------------------------------------------------
# cubic sparsity schedule
# ----------------------------------------------------------------------------------------------------------


def _cubic_reference(step: int, final_sparsity: float, total_steps: int, initial_sparsity: float,
                     start_step: int) -> float:
    from labkit.prune import cubic_sparsity

    return cubic_sparsity(step, final_sparsity, total_steps, initial_sparsity, start_step)


def _cubic_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((0, 0.8, 10, 0.0, 0), "the start: s_i"), Case((10, 0.8, 10, 0.0, 0), "the end: s_f"),
             Case((5, 0.8, 10, 0.0, 0), "halfway: s_f (1 - 1/8)"), Case((30, 0.9, 10, 0.0, 0), "after the end: s_f"),
             Case((3, 0.9, 10, 0.2, 5), "before start_step: s_i"), Case((9, 0.9, 8, 0.2, 5), "offset start")]
    for _ in range(n_random):
        total = _randint(generator, 1, 50)
        start = _randint(generator, 0, 10)
        cases.append(Case((_randint(generator, 0, start + total + 5), round(_rand_uniform(generator, 0.3, 1), 2),
                           total, round(_rand_uniform(generator, 0, 0.3), 2), start), "random"))
    return cases


add_exercise(Exercise(
    name="prune.cubic_sparsity",
    title="The cubic sparsity schedule",
    goal="s_t = s_f + (s_i - s_f)(1 - (t - t_0)/n)^3, held at s_i before t_0 and at s_f after t_0 + n",
    make_cases=_cubic_cases,
    reference=_cubic_reference,
    atol=1e-12, rtol=1e-9,
    signature="my_cubic_sparsity(step, final_sparsity, total_steps, initial_sparsity, start_step) -> float",
))


# ----------------------------------------------------------------------------------------------------------
# structured FFN pruning
# ----------------------------------------------------------------------------------------------------------


def _shrink_ffn_reference(up_weight: Tensor, up_bias: Tensor, down_weight: Tensor,
                          amount: float) -> tuple[Tensor, Tensor, Tensor]:
    from labkit.layers import FeedForward
    from labkit.prune import shrink_feedforward

    d_ff, d_model = up_weight.shape
    ffn = FeedForward(d_model, d_ff).to(up_weight.dtype)
    with torch.no_grad():
        ffn.up.weight.copy_(up_weight)
        ffn.up.bias.copy_(up_bias)
        ffn.down.weight.copy_(down_weight)
    small = shrink_feedforward(ffn, amount=amount)
    return small.up.weight.detach(), small.up.bias.detach(), small.down.weight.detach()


def _shrink_ffn_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def case(d_model: int, d_ff: int, amount: float, label: str, dtype: torch.dtype = torch.float32) -> Case:
        return Case((_randn(generator, d_ff, d_model, dtype=dtype), _randn(generator, d_ff, dtype=dtype),
                     _randn(generator, d_model, d_ff, dtype=dtype), amount), label)

    cases = [case(4, 6, 0.5, "remove 3 of 6 neurons"), case(8, 32, 0.3, "0.3 of 32 = 9.6 rounds to 10 removed"),
             case(5, 10, 0.0, "amount 0: the same matrices"), case(6, 12, 0.25, "float64", torch.float64)]
    for _ in range(n_random):
        cases.append(case(_randint(generator, 2, 10), _randint(generator, 2, 24),
                          round(_rand_uniform(generator, 0, 0.9), 2), "random"))
    return cases


add_exercise(Exercise(
    name="prune.shrink_ffn",
    title="Removing FFN neurons",
    goal="keep the neurons with the largest ||W_up[j,:]|| * ||W_down[:,j]||, in their original order; return the "
         "smaller (up_weight, up_bias, down_weight)",
    make_cases=_shrink_ffn_cases,
    reference=_shrink_ffn_reference,
    atol=0.0, rtol=0.0,
    signature="my_shrink_ffn(up_weight, up_bias, down_weight, amount) -> (Tensor, Tensor, Tensor)",
))
