"""Chapter "Parallel training": gradient synchronisation and all-reduce, labkit against torch, same processes.

* ``parallel.ddp_step`` -- one data-parallel training step (forward, backward, gradient sync, SGD) on 2 ranks
  (``ch6_ranks``), for a deep narrow MLP with many small parameter tensors and for the book's GPT at the profile's
  size. Two comparisons per model, from the same interleaved repeats:
  ``bucketed_vs_per_param`` (labkit DDP, bucketed and overlapped, vs one blocking all-reduce per parameter;
  target ratio <= 1/1.5) and ``labkit_vs_torch`` (labkit DDP vs ``torch.nn.parallel.DistributedDataParallel``;
  target ratio <= 1.3). Step times are the slowest rank's.
* ``parallel.all_reduce`` -- labkit's ring all-reduce (isend/irecv) vs ``dist.all_reduce`` over message sizes,
  gloo on CPU processes; with CUDA also NCCL ``dist.all_reduce`` on all local GPUs, its algorithm and bus
  bandwidth in ``params`` (bus bandwidth = size / time * 2(p-1)/p, zero traffic with one GPU).
"""

from __future__ import annotations

from typing import Any

import torch

from labkit.bench import Comparison, Timing, register
from labkit.config import Profile

__all__ = ["many_small_spec", "gpt_spec"]


def many_small_spec(profile: Profile) -> dict[str, Any]:
    """The deep narrow MLP: ``ch6_bench_depth`` layers of width ``ch6_bench_width`` (2 tensors a layer)."""
    return {"kind": "mlp", "width": int(profile.get("ch6_bench_width", 32)),
            "depth": int(profile.get("ch6_bench_depth", 64))}


def gpt_spec(profile: Profile, vocab_size: int | None = None) -> dict[str, Any]:
    """The book's GPT at the profile's size (random tokens unless the caller passes real ones)."""
    return {"kind": "gpt", "vocab_size": vocab_size or profile.vocab_size, "d_model": profile.d_model,
            "n_heads": profile.n_heads, "n_layers": profile.n_layers, "d_ff": profile.d_ff,
            "max_len": int(profile.get("ch6_seq_len", profile.seq_len))}


def ddp_comparisons(times: dict[str, list[float]], model: str, params: dict[str, Any]) -> list[Comparison]:
    """``bucketed_vs_per_param`` and ``labkit_vs_torch`` from the step times of :func:`time_ddp_variants`."""
    timing = {name: Timing.from_times(samples) for name, samples in times.items()}
    mode = "forward+backward+allreduce+step"
    # the 1.5x target is stated for a model with many small parameter tensors, not for the GPT
    bucket_target = {"target_ratio_at_most": round(1 / 1.5, 3)} if model == "many_small" else {}
    return [Comparison(f"parallel.ddp_step[{model}] bucketed_vs_per_param", timing["labkit"], timing["per_param"],
                       mode=mode, params=dict(params, **bucket_target)),
            Comparison(f"parallel.ddp_step[{model}] labkit_vs_torch", timing["labkit"], timing["torch"], mode=mode,
                       params=dict(params, target_ratio_at_most=1.3))]


@register("parallel.ddp_step")
def ddp_step(device: torch.device, profile: Profile) -> list[Comparison]:
    """labkit DDP (bucketed, overlapped) vs per-parameter all-reduce and vs torch DDP, 2 processes, 2 models."""
    from labkit.parallel import Cluster
    from labkit.parallel.workers import build_model, time_ddp_variants

    ranks = int(profile.get("ch6_ranks", 2))
    batch = int(profile.get("ch6_batch_size", 8))
    comparisons = []
    with Cluster(ranks) as cluster:
        for model, spec in (("many_small", many_small_spec(profile)), ("gpt", gpt_spec(profile))):
            n_tensors = len(list(build_model(spec).parameters()))
            times = cluster.run(time_ddp_variants, spec, ["per_param", "labkit", "torch"], batch_size=batch * ranks,
                                warmup=profile.bench_warmup, repeats=max(5, profile.bench_repeats))[0]
            comparisons += ddp_comparisons(times, model, {"ranks": ranks, "backend": cluster.backend,
                                                          "parameter_tensors": n_tensors, "global_batch": batch * ranks,
                                                          "bucket_cap_mb": 25.0})
    return comparisons


@register("parallel.all_reduce")
def all_reduce(device: torch.device, profile: Profile) -> list[Comparison]:
    """Ring all-reduce from isend/irecv vs dist.all_reduce (gloo, CPU processes); NCCL bandwidth with CUDA."""
    from labkit.parallel import Cluster, collectives

    ranks = int(profile.get("ch6_ranks", 2))
    sizes = list(profile.get("ch6_allreduce_sizes", (2**10, 2**16, 2**20)))
    repeats = int(profile.get("ch6_repeats", 5))
    comparisons = []
    with Cluster(ranks, backend="gloo") as cluster:
        times = cluster.run(collectives.measure_all_reduce, sizes, ("ring", "torch"), repeats)[0]
    for size, ring_s, torch_s in zip(sizes, times["ring"], times["torch"]):
        n_bytes = 4 * size
        comparisons.append(Comparison(f"parallel.all_reduce[gloo,{n_bytes}B] ring_vs_torch", Timing.from_times([ring_s]),
                                      Timing.from_times([torch_s]), mode="all_reduce float32",
                                      params={"ranks": ranks, "bytes": n_bytes,
                                              "ring_bus_GBps": collectives.bus_bandwidth(n_bytes, ring_s, ranks) / 1e9,
                                              "torch_bus_GBps": collectives.bus_bandwidth(n_bytes, torch_s, ranks) / 1e9}))
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        big = [2**20, 2**24, 2**26]
        with Cluster(gpus, backend="nccl") as cluster:
            times = cluster.run(collectives.measure_all_reduce, big, ("ring", "torch"), repeats)[0]
        for size, ring_s, torch_s in zip(big, times["ring"], times["torch"]):
            n_bytes = 4 * size
            comparisons.append(Comparison(
                f"parallel.all_reduce[nccl,{n_bytes}B] ring_vs_torch", Timing.from_times([ring_s]),
                Timing.from_times([torch_s]), mode="all_reduce float32",
                params={"ranks": gpus, "bytes": n_bytes, "torch_alg_GBps": n_bytes / torch_s / 1e9,
                        "torch_bus_GBps": collectives.bus_bandwidth(n_bytes, torch_s, gpus) / 1e9,
                        "ring_bus_GBps": collectives.bus_bandwidth(n_bytes, ring_s, gpus) / 1e9,
                        "note": "one GPU: an all-reduce moves no bytes, bus bandwidth is 0" if gpus == 1 else ""}))
    return comparisons
