"""Optimizer benchmarks: one AdamW step, labkit against torch.optim.AdamW, on a model-sized list of tensors.

* ``optim.adamw_step[foreach]``: labkit ``AdamW(foreach=True)`` vs ``torch.optim.AdamW(foreach=True)`` (any device).
* ``optim.adamw_step[fused]`` (CUDA with triton): labkit's fused Triton kernel vs ``torch.optim.AdamW(fused=True)``;
  ``params`` records the achieved bandwidth of both (bytes a step must move / time) and the fraction of the
  device's copy bandwidth, measured in the same run.

Sizes: ``profile.get("optim_bench_params")`` parameters (default 10M; 100k for ``smoke``) split evenly into
``profile.get("optim_bench_tensors", 100)`` tensors. Gradients are fixed, so every step does the same work.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from labkit.bench import Comparison, compare, register, time_fn
from labkit.config import Profile

MODE = "optimizer step"
HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def _sizes(profile: Profile) -> tuple[int, int]:
    default = 100_000 if profile.name == "smoke" else 10_000_000
    n_params = int(profile.get("optim_bench_params", default))
    n_tensors = int(profile.get("optim_bench_tensors", 100))
    if n_params < n_tensors or n_tensors < 1:
        raise ValueError(f"optim_bench_params must be >= optim_bench_tensors >= 1, got {n_params} and {n_tensors}")
    return n_params, n_tensors


def _make_params(n_params: int, n_tensors: int, device: torch.device) -> list[Tensor]:
    """``n_tensors`` fp32 parameters of (nearly) equal size totalling ``n_params``, each with a fixed gradient."""
    generator = torch.Generator().manual_seed(0)
    sizes = [n_params // n_tensors + (1 if i < n_params % n_tensors else 0) for i in range(n_tensors)]
    params = []
    for size in sizes:
        p = torch.randn(size, generator=generator).to(device).requires_grad_()
        p.grad = torch.randn(size, generator=generator).to(device)
        params.append(p)
    return params


def _clone(params: list[Tensor]) -> list[Tensor]:
    clones = []
    for p in params:
        q = p.detach().clone().requires_grad_()
        q.grad = p.grad.clone()
        clones.append(q)
    return clones


def _check_same(name: str, ours: list[Tensor], theirs: list[Tensor]) -> None:
    """Refuse to time two optimizers that do not compute the same update."""
    for i, (p, q) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{name}: labkit and reference disagree on tensor {i}: {m}")


def _step_comparison(name: str, make_ours: Callable[[list[Tensor]], torch.optim.Optimizer],
                     make_theirs: Callable[[list[Tensor]], torch.optim.Optimizer], params: list[Tensor],
                     device: torch.device, profile: Profile, info: dict) -> Comparison:
    ours_params, theirs_params = _clone(params), _clone(params)
    ours, theirs = make_ours(ours_params), make_theirs(theirs_params)
    ours.step()
    theirs.step()
    _check_same(name, ours_params, theirs_params)
    return compare(ours.step, theirs.step, name=name, warmup=profile.bench_warmup, repeats=profile.bench_repeats,
                   device=device, mode=MODE, params=info)


def _copy_bandwidth(device: torch.device, profile: Profile, n_bytes: int = 1 << 30) -> float:
    """Measured device memory bandwidth in bytes/s: a large device-to-device copy reads and writes ``n_bytes``."""
    src = torch.empty(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    timing = time_fn(lambda: dst.copy_(src), warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device)
    return 2 * n_bytes / timing.median_s


@register("optim.adamw_step")
def adamw_step(device: torch.device, profile: Profile) -> list[Comparison]:
    """One AdamW step over many tensors: labkit AdamW(foreach=True) vs torch AdamW(foreach=True); on CUDA also
    labkit's fused Triton kernel vs torch AdamW(fused=True), with achieved GB/s."""
    from labkit.optim import AdamW

    n_params, n_tensors = _sizes(profile)
    params = _make_params(n_params, n_tensors, device)
    info = {"n_params": n_params, "n_tensors": n_tensors, "dtype": "float32", "lr": HYPER["lr"],
            "weight_decay": HYPER["weight_decay"]}
    comparisons = [_step_comparison(
        f"optim.adamw_step[foreach,n={n_params}]",
        lambda ps: AdamW(ps, foreach=True, **HYPER), lambda ps: torch.optim.AdamW(ps, foreach=True, **HYPER),
        params, device, profile, dict(info, path="foreach"))]

    from labkit.device import triton_available

    if device.type == "cuda" and triton_available():
        from labkit.kernels.fused_adamw_triton import bytes_per_step

        fused = _step_comparison(
            f"optim.adamw_step[fused,n={n_params}]",
            lambda ps: AdamW(ps, fused=True, **HYPER), lambda ps: torch.optim.AdamW(ps, fused=True, **HYPER),
            params, device, profile, dict(info, path="fused"))
        moved = bytes_per_step(params)
        bandwidth = _copy_bandwidth(device, profile)
        fused.params.update(
            bytes_per_step=moved,
            labkit_GBps=moved / fused.labkit.median_s / 1e9,
            reference_GBps=moved / fused.reference.median_s / 1e9,
            copy_bandwidth_GBps=bandwidth / 1e9,
            labkit_fraction_of_bandwidth=moved / fused.labkit.median_s / bandwidth,
        )
        comparisons.append(fused)
    return comparisons
