"""Chapter "Parallel training" exercises: references pass, independent right answers pass, plausible wrong ones fail."""

from __future__ import annotations

import pytest
import torch

from labkit import exercises
from labkit.exercises import ExerciseError, check

CHAPTER = ["parallel.ring_reduce_scatter", "parallel.ring_all_reduce_time", "parallel.assign_buckets",
           "parallel.zero_memory"]


def ring_right(data, steps):
    p = data.shape[0]
    state = data.clone()
    for s in range(steps):
        outgoing = torch.stack([state[r, (r - s) % p] for r in range(p)])
        for r in range(p):
            state[(r + 1) % p, (r - s) % p] += outgoing[r]
    return state


def ring_off_by_one(data, steps):
    """Wrong: starts with chunk r - 1, the chunk a rank should end up receiving, not sending."""
    p = data.shape[0]
    state = data.clone()
    for s in range(steps):
        outgoing = [state[r, (r - s - 1) % p].clone() for r in range(p)]
        for r in range(p):
            state[(r + 1) % p, (r - s - 1) % p] += outgoing[r]
    return state


def ring_wrong_direction(data, steps):
    """Wrong: sends chunk (r + s) instead of (r - s)."""
    p = data.shape[0]
    state = data.clone()
    for s in range(steps):
        outgoing = [state[r, (r + s) % p].clone() for r in range(p)]
        for r in range(p):
            state[(r + 1) % p, (r + s) % p] += outgoing[r]
    return state


def time_right(n_bytes, world_size, alpha, beta):
    p = world_size
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n_bytes * beta


def time_without_latency(n_bytes, world_size, alpha, beta):
    return 2 * (world_size - 1) / world_size * n_bytes * beta


def time_naive(n_bytes, world_size, alpha, beta):
    """Wrong: the all-to-one algorithm's cost."""
    return 2 * (world_size - 1) * (alpha + n_bytes * beta)


def buckets_right(sizes_bytes, cap_bytes):
    buckets, filled = [], 0
    for i in range(len(sizes_bytes) - 1, -1, -1):
        if buckets and filled + sizes_bytes[i] <= cap_bytes:
            buckets[-1].append(i)
            filled += sizes_bytes[i]
        else:
            buckets.append([i])
            filled = sizes_bytes[i]
    return buckets


def buckets_forward_order(sizes_bytes, cap_bytes):
    """Wrong: fills from the first parameter (backward produces the last ones first)."""
    buckets, filled = [], 0
    for i, size in enumerate(sizes_bytes):
        if buckets and filled + size <= cap_bytes:
            buckets[-1].append(i)
            filled += size
        else:
            buckets.append([i])
            filled = size
    return buckets


def buckets_strict_cap(sizes_bytes, cap_bytes):
    """Wrong: a bucket may not reach the cap exactly."""
    buckets, filled = [], 0
    for i in range(len(sizes_bytes) - 1, -1, -1):
        if buckets and filled + sizes_bytes[i] < cap_bytes:
            buckets[-1].append(i)
            filled += sizes_bytes[i]
        else:
            buckets.append([i])
            filled = sizes_bytes[i]
    return buckets


def zero_right(n_params, world_size, stage):
    per_param = {0: 16, 1: 4 + 12 / world_size, 2: 2 + 14 / world_size, 3: 16 / world_size}[stage]
    return n_params * per_param


def zero_stage2_forgets_gradients(n_params, world_size, stage):
    per_param = {0: 16, 1: 4 + 12 / world_size, 2: 4 + 12 / world_size, 3: 16 / world_size}[stage]
    return n_params * per_param


def zero_fp32_weights(n_params, world_size, stage):
    """Wrong: counts the weights as 4 bytes (they are fp16; the fp32 copy is part of the 12 bytes of state)."""
    per_param = {0: 18, 1: 6 + 12 / world_size, 2: 4 + 14 / world_size, 3: 18 / world_size}[stage]
    return n_params * per_param


RIGHT = {"parallel.ring_reduce_scatter": ring_right, "parallel.ring_all_reduce_time": time_right,
         "parallel.assign_buckets": buckets_right, "parallel.zero_memory": zero_right}
WRONG = [("parallel.ring_reduce_scatter", ring_off_by_one), ("parallel.ring_reduce_scatter", ring_wrong_direction),
         ("parallel.ring_all_reduce_time", time_without_latency), ("parallel.ring_all_reduce_time", time_naive),
         ("parallel.assign_buckets", buckets_forward_order), ("parallel.assign_buckets", buckets_strict_cap),
         ("parallel.zero_memory", zero_stage2_forgets_gradients), ("parallel.zero_memory", zero_fp32_weights)]


def test_chapter_exercises_are_registered():
    names = [e.name for e in exercises.list_exercises("parallel.")]
    assert names == sorted(CHAPTER) or sorted(names) == sorted(CHAPTER)


@pytest.mark.parametrize("name", CHAPTER)
def test_reference_passes_its_own_check(name):
    assert check(name, exercises.get_exercise(name).reference, verbose=False).n_cases >= 8


@pytest.mark.parametrize("name", CHAPTER)
def test_independent_right_answer_passes(name):
    check(name, RIGHT[name], verbose=False)


@pytest.mark.parametrize("name,wrong", WRONG, ids=[f"{n}-{w.__name__}" for n, w in WRONG])
def test_plausible_wrong_answers_fail(name, wrong):
    with pytest.raises(ExerciseError, match="case"):
        check(name, wrong, verbose=False)


@pytest.mark.parametrize("name", CHAPTER)
def test_not_implemented_says_so(name):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(ExerciseError, match="not implemented"):
        check(name, stub, verbose=False)
