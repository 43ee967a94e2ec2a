"""DDP, ZeRO-1, tensor and pipeline parallelism on 2 gloo processes against torch DDP and one process."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit import parallel
from labkit.parallel import ddp, pipeline, tensor_parallel, train_ddp, workers, zero

MLP64 = {"kind": "mlp", "width": 16, "depth": 6, "dtype": "float64"}
MLP32 = {"kind": "mlp", "width": 16, "depth": 6, "dtype": "float32"}


@pytest.fixture(scope="module")
def cluster():
    with parallel.Cluster(2, timeout=60) as c:
        yield c


@pytest.mark.parametrize("bucket_cap_mb", [0.0, 0.0015, 25.0])
def test_ddp_equals_torch_ddp_and_one_process_float64(cluster, bucket_cap_mb):
    results = cluster.run(workers.compare_ddp, MLP64, steps=20, bucket_cap_mb=bucket_cap_mb)
    for r in results:
        assert r["labkit_vs_single"] < 1e-10 and r["labkit_vs_torch"] < 1e-10 and r["torch_vs_single"] < 1e-10
    expected_buckets = {0.0: 12, 25.0: 1}.get(bucket_cap_mb)
    if expected_buckets is None:
        assert 1 < results[0]["n_buckets"] < 12  # 1.5 kB: several parameters a bucket, several buckets
    else:
        assert results[0]["n_buckets"] == expected_buckets


def test_ddp_with_no_sync_accumulation_float32_and_adamw(cluster):
    results = cluster.run(workers.compare_ddp, MLP32, steps=20, accumulation=3, bucket_cap_mb=0.001,
                          optimizer="adamw", lr=1e-3)
    for r in results:
        assert r["labkit_vs_single"] < 1e-6 and r["labkit_vs_torch"] < 1e-6


def test_ddp_without_overlap_and_on_the_book_gpt(cluster):
    gpt = {"kind": "gpt", "vocab_size": 50, "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "max_len": 8,
           "dtype": "float64"}
    r = cluster.run(workers.compare_ddp, gpt, steps=4, batch_size=2, bucket_cap_mb=0.002, overlap=False)[0]
    assert r["labkit_vs_single"] < 1e-10 and r["labkit_vs_torch"] < 1e-10 and r["n_buckets"] > 1


def test_ring_all_reduce_two_ranks(cluster):
    for key, (ring_err, naive_err) in cluster.run(workers.check_ring_all_reduce, [0, 1, 3, 10], ["float32"])[1].items():
        assert ring_err == 0.0 and naive_err == 0.0, key  # two terms: the sum does not depend on the order


def test_zero1_equals_unsharded_adamw_and_halves_the_state(cluster):
    for dtype in ("float64", "float32"):
        results = cluster.run(workers.compare_zero, {**MLP64, "dtype": dtype}, steps=20)
        for r in results:
            assert r["max_diff"] < (1e-12 if dtype == "float64" else 1e-6)
            # AdamW keeps m and v (2 values a parameter) and a step counter per tensor
            moments = 2 * r["n_params"] * r["element_size"]
            assert r["plain_state_bytes"] >= moments
            assert r["zero1_state_bytes"] == pytest.approx(moments / 2, abs=16 + r["element_size"] * 2)


def test_tensor_parallel_mlp_equals_the_dense_mlp(cluster):
    for dtype, tolerance in (("float64", 1e-12), ("float32", 1e-5)):
        for r in cluster.run(workers.compare_tensor_parallel, 16, 64, 6, dtype):
            assert r["forward"] < tolerance and r["input_grad"] < tolerance and r["weight_grads"] < tolerance


def test_pipeline_two_stages_equals_one_process(cluster):
    results = cluster.run(workers.compare_pipeline, n_micro=4, batch=8)
    assert all(r["grad_diff"] < 1e-12 for r in results)
    assert results[0]["loss"] is None and results[1]["loss"] > 0
    kinds = [e.kind for e in results[0]["events"]]
    assert kinds == ["F"] * 4 + ["B"] * 4  # GPipe: all forwards, then all backwards


def test_time_ddp_variants_reports_every_variant(cluster):
    times = cluster.run(workers.time_ddp_variants, MLP32, ["local", "per_param", "labkit", "torch"], warmup=1,
                        repeats=2)
    assert times[0] == times[1]  # the max over ranks, the same everywhere
    assert set(times[0]) == {"local", "per_param", "labkit", "torch"}
    assert all(len(t) == 2 and min(t) > 0 for t in times[0].values())


# ---------------------------------------------------------------------------------------------- one process


def test_assign_buckets():
    assert ddp.assign_buckets([4, 4, 4, 4], 8) == [[3, 2], [1, 0]]
    assert ddp.assign_buckets([4, 4, 4, 4], 0) == [[3], [2], [1], [0]]
    assert ddp.assign_buckets([4, 20, 4], 8) == [[2], [1], [0]]  # a big one alone; no filling around it
    assert ddp.assign_buckets([1, 2, 3], 100) == [[2, 1, 0]]
    assert ddp.assign_buckets([], 10) == []
    with pytest.raises(ValueError, match="cap_bytes must be >= 0"):
        ddp.assign_buckets([1], -1)


def test_ddp_needs_a_process_group():
    with pytest.raises(RuntimeError, match="needs a process group"):
        ddp.DistributedDataParallel(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        ddp.DistributedDataParallel("model")


@pytest.mark.parametrize("p,m", [(1, 1), (2, 1), (2, 4), (4, 8), (8, 32), (3, 5)])
def test_gpipe_schedule_bubble_matches_the_formula(p, m):
    for t_forward, t_backward in ((1.0, 2.0), (1.0, 1.0), (0.5, 3.0)):
        events = pipeline.gpipe_schedule(p, m, t_forward, t_backward)
        assert len(events) == 2 * p * m
        assert pipeline.timeline_bubble(events) == pytest.approx(pipeline.bubble_fraction(p, m))
        span = max(e.end for e in events)
        assert span == pytest.approx((m + p - 1) * (t_forward + t_backward))
    with pytest.raises(ValueError, match="n_stages >= 1"):
        pipeline.bubble_fraction(0, 4)


def test_zero_memory_formula_matches_the_paper():
    psi, n = 7.5e9, 64  # ZeRO paper, Figure 1: 7.5B parameters on 64 GPUs
    assert zero.zero_memory_per_rank(psi, n, 0) / 1e9 == pytest.approx(120)
    assert zero.zero_memory_per_rank(psi, n, 1) / 1e9 == pytest.approx(31.4, abs=0.05)
    assert zero.zero_memory_per_rank(psi, n, 2) / 1e9 == pytest.approx(16.6, abs=0.05)
    assert zero.zero_memory_per_rank(psi, n, 3) / 1e9 == pytest.approx(1.875)
    with pytest.raises(ValueError, match="stage must be"):
        zero.zero_memory_per_rank(1, 1, 4)


def test_shard_range():
    assert tensor_parallel.shard_range(8, 1, 2) == (4, 8)
    with pytest.raises(ValueError, match="does not split evenly"):
        tensor_parallel.shard_range(10, 0, 3)


def test_train_ddp_script_function_with_and_without_zero(cluster):
    tokens = torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(0))
    options = {"profile": "smoke", "steps": 3, "batch_size": 4, "seq_len": 8, "tokens": tokens, "vocab_size": 64,
               "verbose": False}
    plain = cluster.run(train_ddp.train, options)
    sharded = cluster.run(train_ddp.train, dict(options, zero=True))
    assert plain[0]["losses"] == plain[1]["losses"] and len(plain[0]["losses"]) == 3
    assert max(abs(a - b) for a, b in zip(plain[0]["losses"], sharded[0]["losses"])) < 1e-5
    assert sharded[0]["optimizer_state_bytes"] < 0.6 * plain[0]["optimizer_state_bytes"]
    with pytest.raises(parallel.WorkerError, match="does not split evenly"):
        parallel.launch(train_ddp.train, 2, dict(options, batch_size=3), timeout=60)


def test_parallel_benchmarks_run_at_tiny_size():
    from labkit import bench
    from labkit.config import get_profile

    smoke = get_profile("smoke")
    profile = smoke.replace(bench_warmup=0, bench_repeats=1, extra=dict(smoke.extra, ch6_bench_depth=4,
                                                                        ch6_allreduce_sizes=(16, 1000), ch6_repeats=1))
    results = bench.run(["parallel"], "cpu", profile, progress=False)
    ddp_step = {c.name: c for c in results["parallel.ddp_step"]}
    assert len(ddp_step) == 4 and all(c.ratio > 0 for c in ddp_step.values())
    assert ddp_step["parallel.ddp_step[many_small] bucketed_vs_per_param"].params["target_ratio_at_most"] == 0.667
    assert "target_ratio_at_most" not in ddp_step["parallel.ddp_step[gpt] bucketed_vs_per_param"].params
    all_reduce = results["parallel.all_reduce"]
    assert [c.params["bytes"] for c in all_reduce] == [64, 4000] and all(c.params["ring_bus_GBps"] > 0 for c in all_reduce)
