"""Chapter "Parallel training" exercises, checked against labkit.parallel (all in one process, no group needed).

* ``parallel.ring_reduce_scatter`` -- the buffers of a ring reduce-scatter after k steps
  (:func:`labkit.parallel.collectives.simulate_ring_reduce_scatter`).
* ``parallel.ring_all_reduce_time`` -- the alpha-beta time of a ring all-reduce
  (:func:`labkit.parallel.collectives.ring_all_reduce_time`).
* ``parallel.assign_buckets`` -- DDP's gradient buckets, filled in reverse order up to a cap
  (:func:`labkit.parallel.ddp.assign_buckets`).
* ``parallel.zero_memory`` -- model-state bytes per rank under ZeRO stages 0-3, mixed-precision Adam
  (:func:`labkit.parallel.zero.zero_memory_per_rank`, Rajbhandari et al. 2020, §5).
"""

from __future__ import annotations

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn
from labkit.parallel.collectives import ring_all_reduce_time, simulate_ring_reduce_scatter
from labkit.parallel.ddp import assign_buckets
from labkit.parallel.zero import zero_memory_per_rank

__all__: list[str] = []


def _ring_cases(generator, n_random: int) -> list[Case]:
    import torch

    ones = torch.ones(3, 3, 2)
    cases = [Case((ones, 0), "p = 3, no step yet: unchanged"), Case((ones, 1), "p = 3, one step: one chunk doubled per rank"),
             Case((ones, 2), "p = 3, all p - 1 steps"),
             Case((torch.arange(8.0).reshape(2, 2, 2), 1), "p = 2: a single step"),
             Case((torch.arange(64.0).reshape(4, 4, 4), 2), "p = 4, two of three steps"),
             Case((torch.arange(64.0).reshape(4, 4, 4), 3), "p = 4, done: rank r holds the sum of chunk r+1")]
    for _ in range(n_random):
        p = _randint(generator, 2, 6)
        cases.append(Case((_randn(generator, p, p, _randint(generator, 1, 4)), _randint(generator, 0, p - 1)), "random"))
    return cases


def _time_cases(generator, n_random: int) -> list[Case]:
    cases = [Case((1e6, 2, 1e-5, 1e-9), "p = 2: each rank sends N bytes"), Case((1e6, 1, 1e-5, 1e-9), "p = 1: nothing to do"),
             Case((1e8, 8, 5e-6, 1e-10), "p = 8, bandwidth-bound"), Case((64.0, 16, 2e-5, 1e-9), "tiny message: latency-bound"),
             Case((0.0, 4, 1e-5, 1e-9), "empty message: latency only")]
    for _ in range(n_random):
        cases.append(Case((float(2 ** _randint(generator, 0, 30)), _randint(generator, 1, 64),
                           10.0 ** -_randint(generator, 4, 6), 10.0 ** -_randint(generator, 9, 11)), "random"))
    return cases


def _bucket_cases(generator, n_random: int) -> list[Case]:
    cases = [Case(([4, 4, 4, 4], 8), "two per bucket, from the last parameter"),
             Case(([4, 4, 4, 4], 0), "cap 0: one bucket per parameter"),
             Case(([4, 20, 4], 8), "a parameter larger than the cap gets its own bucket"),
             Case(([1, 2, 3], 100), "everything fits in one bucket"), Case(([5], 1), "a single parameter"),
             Case(([3, 3, 3], 6), "exactly at the cap: it still fits")]
    for _ in range(n_random):
        sizes = [4 * _randint(generator, 1, 300) for _ in range(_randint(generator, 1, 12))]
        cases.append(Case((sizes, 4 * _randint(generator, 0, 600)), "random"))
    return cases


def _zero_cases(generator, n_random: int) -> list[Case]:
    cases = [Case((7_500_000_000, 64, stage), f"7.5B parameters, 64 GPUs, stage {stage} (the ZeRO paper's Figure 1)")
             for stage in range(4)]
    cases += [Case((1000, 1, 2), "one rank: nothing to partition"), Case((1000, 4, 1), "stage 1 on 4 ranks")]
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 10**9), _randint(generator, 1, 1024), _randint(generator, 0, 3)),
                          "random"))
    return cases


for _exercise in (
    Exercise(
        name="parallel.ring_reduce_scatter",
        title="A ring reduce-scatter, step by step",
        goal="data[r, c] is rank r's copy of chunk c. In step s, every rank r sends chunk (r - s) mod p to rank "
             "(r + 1) mod p, which adds it to its own copy; all sends of a step happen at once.",
        make_cases=_ring_cases,
        reference=simulate_ring_reduce_scatter,
        atol=1e-5, rtol=1e-5,
        signature="ring_reduce_scatter(data: Tensor (p, p, n), steps: int in [0, p-1]) -> Tensor (p, p, n) (a new one)",
    ),
    Exercise(
        name="parallel.ring_all_reduce_time",
        title="What a ring all-reduce costs",
        goal="2(p-1) messages per rank, each paying the latency alpha, and 2(p-1)/p * N bytes per rank at beta "
             "seconds a byte.",
        make_cases=_time_cases,
        reference=ring_all_reduce_time,
        atol=1e-12, rtol=1e-9,
        signature="ring_all_reduce_time(n_bytes: float, world_size: int, alpha: float, beta: float) -> float seconds",
    ),
    Exercise(
        name="parallel.assign_buckets",
        title="Filling DDP's gradient buckets",
        goal="Walk the parameters from last to first; start a new bucket when the next one would push the bucket "
             "past cap_bytes (a first parameter always fits in an empty bucket).",
        make_cases=_bucket_cases,
        reference=assign_buckets,
        signature="assign_buckets(sizes_bytes: list[int], cap_bytes: int) -> list[list[int]] of parameter indices",
    ),
    Exercise(
        name="parallel.zero_memory",
        title="ZeRO's memory per rank",
        goal="Mixed-precision Adam: 2 bytes of fp16 weights, 2 of fp16 gradients, 12 of optimizer state per "
             "parameter; stage 1 splits the optimizer state over the ranks, stage 2 also the gradients, stage 3 "
             "also the weights.",
        make_cases=_zero_cases,
        reference=zero_memory_per_rank,
        atol=1e-6, rtol=1e-9,
        signature="zero_memory(n_params: int, world_size: int, stage: int in 0..3) -> float bytes per rank",
    ),
):
    add_exercise(_exercise)
