"""Chapter "Choosing a compression" exercises, checked against labkit.compression and labkit.quant.

* ``compression.pareto_front`` -- the indices of the non-dominated (cost, accuracy) points, by cost
  (:func:`labkit.compression.pareto_front`).
* ``compression.quantized_bytes`` -- the stored bytes of a ``(rows, cols)`` weight quantized to ``bits`` bits with
  one fp32 scale per group of ``group_size`` inputs (``QuantizedTensor.nbytes`` of :func:`labkit.quant.quantize_tensor`).
* ``compression.best_under_budget`` -- the index of the most accurate model within a cost budget, ``-1`` when none
  fits (:func:`labkit.compression.best_under_budget`).
* ``compression.matmul_intensity`` -- FLOPs per byte of an ``(M, K) x (K, N)`` product
  (:func:`labkit.compression.matmul_intensity`).
"""

from __future__ import annotations

import torch

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint

__all__: list[str] = []


# ----------------------------------------------------------------------------------------------------------
# Pareto front
# ----------------------------------------------------------------------------------------------------------


def _pareto_reference(costs: list[float], scores: list[float]) -> list[int]:
    from labkit.compression import pareto_front

    return pareto_front(costs, scores)


def _pareto_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case(([1.0, 2.0, 3.0], [0.3, 0.2, 0.9]), "the middle point is dominated by the first"),
             Case(([3.0, 1.0, 2.0], [0.9, 0.3, 0.5]), "unsorted input: the answer is sorted by cost"),
             Case(([1.0, 1.0, 2.0], [0.5, 0.7, 0.7]), "equal cost: only the more accurate one"),
             Case(([1.0, 2.0], [0.5, 0.5]), "equal accuracy: only the cheaper one"),
             Case(([2.0, 2.0], [0.5, 0.5]), "exact duplicates: both stay"),
             Case(([5.0], [0.1]), "one point"),
             Case(([], []), "no points")]
    for _ in range(n_random):
        n, values = _randint(generator, 2, 12), _randint(generator, 3, 50)
        costs = [float(v) for v in torch.randint(0, values, (n,), generator=generator)]
        scores = [float(v) / values for v in torch.randint(0, values, (n,), generator=generator)]
        cases.append(Case((costs, scores), "random, with ties"))
    return cases


add_exercise(Exercise(
    name="compression.pareto_front",
    title="The Pareto front",
    goal="the indices of the points no other point dominates (cost <= and score >=, one strictly), sorted by cost",
    make_cases=_pareto_cases,
    reference=_pareto_reference,
    atol=0.0, rtol=0.0,
    signature="my_pareto_front(costs, scores) -> list[int]",
))


# ----------------------------------------------------------------------------------------------------------
# bytes of a quantized weight
# ----------------------------------------------------------------------------------------------------------


def _quantized_bytes_reference(rows: int, cols: int, bits: int, group_size: int) -> int:
    from labkit.quant import quantize_tensor

    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
    return int(quantize_tensor(weight, bits, "group", group_size).nbytes)


def _quantized_bytes_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((8, 32, 8, 32), "int8, one group a row"),
             Case((8, 32, 4, 32), "int4: two integers a byte"),
             Case((16, 64, 4, 16), "int4, four groups a row"),
             Case((3, 16, 8, 4), "int8, groups of four: the scales cost as much as the integers"),
             Case((1, 2, 4, 2), "the smallest int4 matrix")]
    for _ in range(n_random):
        group = [2, 4, 8, 16, 32][_randint(generator, 0, 4)]
        cases.append(Case((_randint(generator, 1, 20), group * _randint(generator, 1, 6), [4, 8][_randint(generator, 0, 1)],
                           group), "random"))
    return cases


add_exercise(Exercise(
    name="compression.quantized_bytes",
    title="Bytes of a group-quantized weight",
    goal="rows*cols*bits/8 bytes of integers (int4 packed two a byte) + 4 bytes (fp32) per scale, one a group",
    make_cases=_quantized_bytes_cases,
    reference=_quantized_bytes_reference,
    atol=0.0, rtol=0.0,
    signature="my_quantized_bytes(rows, cols, bits, group_size) -> int",
))


# ----------------------------------------------------------------------------------------------------------
# best model under a budget
# ----------------------------------------------------------------------------------------------------------


def _best_under_budget_reference(accuracies: list[float], costs: list[float], budget: float) -> int:
    from labkit.compression import Measurement, best_under_budget

    ms = [Measurement(name=str(i), family="", accuracy=a, val_loss=0.0, parameters=0, size_bytes=0, latency_s=c,
                      seconds_per_example=1.0, batch=1, threads=1) for i, (a, c) in enumerate(zip(accuracies, costs))]
    best = best_under_budget(ms, "latency_s", budget)
    return -1 if best is None else int(best.name)


def _best_under_budget_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case(([0.9, 0.8, 0.7], [3.0, 2.0, 1.0], 2.5), "the most accurate one is over budget"),
             Case(([0.9, 0.8, 0.7], [3.0, 2.0, 1.0], 0.5), "nothing fits: -1"),
             Case(([0.8, 0.8, 0.7], [2.0, 1.0, 0.5], 2.0), "equal accuracy: the cheaper one"),
             Case(([0.6, 0.9], [1.0, 1.0], 1.0), "a cost equal to the budget fits")]
    for _ in range(n_random):
        n = _randint(generator, 1, 10)
        accuracies = [float(v) / 10 for v in torch.randint(0, 11, (n,), generator=generator)]
        costs = [float(v) for v in torch.randint(1, 10, (n,), generator=generator)]
        cases.append(Case((accuracies, costs, float(_randint(generator, 0, 10))), "random"))
    return cases


add_exercise(Exercise(
    name="compression.best_under_budget",
    title="The most accurate model within a budget",
    goal="the index of the highest accuracy among costs <= budget (ties: lower cost, then first), -1 if none",
    make_cases=_best_under_budget_cases,
    reference=_best_under_budget_reference,
    atol=0.0, rtol=0.0,
    signature="my_best_under_budget(accuracies, costs, budget) -> int",
))


# ----------------------------------------------------------------------------------------------------------
# arithmetic intensity
# ----------------------------------------------------------------------------------------------------------


def _intensity_reference(m: int, k: int, n: int, weight_bytes: float) -> float:
    from labkit.compression import matmul_intensity

    return matmul_intensity(m, k, n, weight_bytes=weight_bytes, activation_bytes=4.0)


def _intensity_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((1, 1024, 1024, 4.0), "batch 1, fp32 weights: about 0.5 FLOP a byte"),
             Case((1, 1024, 1024, 0.5), "batch 1, int4 weights"),
             Case((4096, 1024, 1024, 4.0), "a large batch: compute-bound"),
             Case((1, 1, 1, 1.0), "1 x 1 x 1")]
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 512), _randint(generator, 1, 512), _randint(generator, 1, 512),
                           [0.5, 1.0, 2.0, 4.0][_randint(generator, 0, 3)]), "random"))
    return cases


add_exercise(Exercise(
    name="compression.matmul_intensity",
    title="Memory-bound or compute-bound",
    goal="2*M*K*N FLOPs over K*N*weight_bytes + (M*K + M*N)*4 bytes (fp32 activations in and out)",
    make_cases=_intensity_cases,
    reference=_intensity_reference,
    atol=0.0, rtol=1e-9,
    signature="my_matmul_intensity(m, k, n, weight_bytes) -> float",
))
