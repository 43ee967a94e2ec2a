"""Ring and naive all-reduce from isend/irecv against dist.all_reduce (3 ranks), and the alpha-beta model."""

from __future__ import annotations

import pytest
import torch

from labkit import parallel
from labkit.parallel import collectives, workers

SIZES = [0, 1, 2, 3, 5, 7, 64, 1001]


@pytest.fixture(scope="module")
def results_3_ranks():
    return parallel.launch(workers.check_ring_all_reduce, 3, SIZES, ["float32", "float64", "int64", "int32"],
                           timeout=60)


def test_ring_and_naive_equal_dist_all_reduce_on_every_rank(results_3_ranks):
    for rank_result in results_3_ranks:
        assert len(rank_result) == 4 * len(SIZES)
        for key, (ring_err, naive_err) in rank_result.items():
            exact = not key.startswith("float")
            tolerance = 0.0 if exact else (1e-5 if key.startswith("float32") else 1e-12)  # summation order
            assert ring_err <= tolerance, (key, ring_err)
            assert naive_err <= tolerance, (key, naive_err)


def test_ring_schedule_sends_each_chunk_once_per_phase():
    for p in (2, 3, 5):
        for rank in range(p):
            reduce_scatter, all_gather = collectives.ring_chunk_schedule(rank, p)
            assert len(reduce_scatter) == len(all_gather) == p - 1
            # after the reduce-scatter, rank r owns chunk r+1: the first chunk it sends in the all-gather
            assert all_gather[0][0] == (rank + 1) % p
            assert reduce_scatter[-1][1] == (rank + 1) % p
            # a rank receives the chunk its left neighbour sends in the same step
            left = collectives.ring_chunk_schedule((rank - 1) % p, p)
            assert [r for _, r in reduce_scatter] == [s for s, _ in left[0]]
            assert [r for _, r in all_gather] == [s for s, _ in left[1]]


def test_simulated_reduce_scatter_leaves_each_rank_one_full_sum():
    p, n = 4, 3
    data = torch.randn(p, p, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    final = collectives.simulate_ring_reduce_scatter(data)
    for r in range(p):
        torch.testing.assert_close(final[r, (r + 1) % p], data[:, (r + 1) % p].sum(0))
    assert torch.equal(collectives.simulate_ring_reduce_scatter(data, 0), data)
    one_step = collectives.simulate_ring_reduce_scatter(data, 1)
    torch.testing.assert_close(one_step[1, 0], data[0, 0] + data[1, 0])  # rank 0 sent chunk 0 to rank 1
    with pytest.raises(ValueError, match=r"shape \(p, p, n\)"):
        collectives.simulate_ring_reduce_scatter(torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="steps must be in"):
        collectives.simulate_ring_reduce_scatter(data, 4)


def test_cost_model_formulas():
    n = 1e6
    assert collectives.ring_bytes_per_rank(n, 1) == 0
    assert collectives.ring_bytes_per_rank(n, 2) == pytest.approx(n)
    assert collectives.ring_bytes_per_rank(n, 8) == pytest.approx(2 * 7 / 8 * n)
    assert collectives.ring_all_reduce_time(n, 4, 1e-5, 1e-9) == pytest.approx(6e-5 + 1.5e-3)
    assert collectives.naive_all_reduce_time(n, 4, 1e-5, 1e-9) == pytest.approx(6 * (1e-5 + 1e-3))
    # the ring sends about the same bytes for any p; the naive root's traffic grows with p
    assert collectives.naive_all_reduce_time(n, 16, 0, 1e-9) / collectives.ring_all_reduce_time(n, 16, 0, 1e-9) == \
        pytest.approx(16)
    assert collectives.bus_bandwidth(n, 1e-3, 2) == pytest.approx(1e9)
    with pytest.raises(ValueError, match="n_bytes must be >= 0"):
        collectives.ring_all_reduce_time(-1, 2, 0, 0)
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        collectives.ring_bytes_per_rank(1, 0)


def test_fit_alpha_beta_recovers_the_parameters_of_exact_times():
    sizes = [1e3, 1e4, 1e5, 1e6, 1e7]
    for algorithm, model in (("ring", collectives.ring_all_reduce_time), ("naive", collectives.naive_all_reduce_time)):
        times = [model(n, 3, 2e-5, 5e-10) for n in sizes]
        alpha, beta = collectives.fit_alpha_beta(sizes, times, 3, algorithm)
        assert alpha == pytest.approx(2e-5, rel=1e-6) and beta == pytest.approx(5e-10, rel=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        collectives.fit_alpha_beta([1], [1], 2)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        collectives.fit_alpha_beta([1, 2], [1, 2], 2, "tree")


def test_bad_arguments_without_a_group():
    with pytest.raises(TypeError, match="torch.Tensor"):
        collectives.ring_all_reduce([1.0, 2.0])
    with pytest.raises(ValueError, match="op must be one of"):
        collectives.ring_all_reduce(torch.ones(2), op="max")
    with pytest.raises(TypeError, match="floating-point"):
        collectives.naive_all_reduce(torch.ones(2, dtype=torch.int64), op="mean")


@pytest.mark.cuda
def test_nccl_ring_all_reduce_on_every_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gpus = torch.cuda.device_count()
    results = parallel.launch(workers.check_ring_all_reduce, gpus, [1, 7, 4097], ["float32"], backend="nccl", timeout=120)
    for rank_result in results:
        assert all(ring <= 1e-5 and naive <= 1e-5 for ring, naive in rank_result.values())
    times = parallel.launch(collectives.measure_all_reduce, gpus, [2**20], ("torch",), 3, backend="nccl", timeout=120)[0]
    assert times["torch"][0] > 0
