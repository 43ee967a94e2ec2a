"""Chapter "Pruning": which sparsity saves time. Every comparison is ``ratio = pruned time / dense time``.

* ``prune.ffn`` -- the book classifier's FFN (``d_model -> d_ff -> d_model``) on ``batch * cls_seq_len`` tokens:
  ``structured``: ``ch8_ffn_amount`` of the neurons removed (a smaller dense layer, :func:`labkit.prune.
  shrink_feedforward`); ``unstructured``: 50 % of the weights zeroed but stored dense (the same kernels, so no
  speed-up is expected); ``csr_s``: the first linear as a torch sparse CSR matrix at sparsity ``s``. On the CPU
  with one thread (:func:`labkit.bench.cpu_threads`), the setting the book quotes.
* ``prune.semi_structured`` -- CUDA only: a large fp16 linear, 2:4 sparse via
  ``torch.sparse.to_sparse_semi_structured``, against the same linear dense in fp16. Empty where unsupported.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from labkit.bench import Comparison, compare, cpu_threads, register
from labkit.config import Profile


def _ffn_inputs(profile: Profile, device: torch.device, seed: int = 0):
    from labkit.layers import FeedForward

    torch.manual_seed(seed)
    ffn = FeedForward(profile.d_model, profile.d_ff, activation="gelu").to(device).eval()
    tokens = profile.get("cls_batch_size", profile.batch_size) * profile.get("cls_seq_len", profile.seq_len)
    x = torch.randn(tokens, profile.d_model, device=device)
    return ffn, x


def ffn_comparisons(profile: Profile, device: torch.device, *, amount: float | None = None,
                    csr_sparsities: tuple[float, ...] | None = None, threads: int = 1) -> list[Comparison]:
    """Time a dense FFN against its structured, unstructured and CSR versions (see the module docstring)."""
    from labkit import prune

    amount = profile.get("ch8_ffn_amount", 0.3) if amount is None else amount
    csr_sparsities = profile.get("ch8_csr_sparsities", (0.5, 0.9, 0.99)) if csr_sparsities is None else csr_sparsities
    ffn, x = _ffn_inputs(profile, device)
    small = prune.shrink_feedforward(ffn, amount=amount)
    ffn_copy = copy.deepcopy(ffn)
    prune.magnitude_prune(ffn_copy, 0.5, weights=prune.prunable_weights(ffn_copy))
    prune.remove_all(ffn_copy)  # plain dense weights, half of them zero
    warmup, repeats = profile.bench_warmup, profile.get("ch8_bench_repeats", profile.bench_repeats)
    params = {"d_model": profile.d_model, "d_ff": profile.d_ff, "tokens": x.size(0), "threads": threads}
    results = []
    with torch.inference_mode(), cpu_threads(threads):
        results.append(compare(lambda: small(x), lambda: ffn(x), name=f"prune.ffn[structured {amount:.0%} neurons]",
                               warmup=warmup, repeats=repeats, device=device, memory=False,
                               mode="forward", params={**params, "d_ff_kept": small.d_ff}))
        results.append(compare(lambda: ffn_copy(x), lambda: ffn(x), name="prune.ffn[unstructured 50%, dense storage]",
                               warmup=warmup, repeats=repeats, device=device, memory=False, mode="forward",
                               params=params))
        if device.type == "cpu":
            weight = ffn.up.weight.detach()
            x_t = x.t().contiguous()
            for level in csr_sparsities:
                sparse = (weight * prune.magnitude_mask(weight, level)).to_sparse_csr()
                results.append(compare(lambda sparse=sparse: torch.sparse.mm(sparse, x_t), lambda: weight @ x_t,
                                       name=f"prune.ffn[csr up-projection, sparsity {level:.0%}]", warmup=warmup,
                                       repeats=repeats, device=device, memory=False, mode="forward",
                                       params={**params, "sparsity": level}))
    return results


@register("prune.ffn")
def ffn(device: torch.device, profile: Profile) -> list[Comparison]:
    """Book-classifier FFN: structured (fewer neurons), unstructured (zeros, dense kernels) and CSR vs dense."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return ffn_comparisons(profile, device)


def semi_structured_comparisons(profile: Profile, device: torch.device) -> list[Comparison]:
    """2:4 sparse fp16 linears vs dense fp16 on CUDA, for square sizes ``ch8_semi_sizes``; [] where unsupported."""
    from labkit import prune

    if device.type != "cuda" or not prune.semi_structured_supported(device):
        return []
    results = []
    repeats = profile.get("ch8_bench_repeats", profile.bench_repeats)
    for size in profile.get("ch8_semi_sizes", (4096, 8192)):
        torch.manual_seed(0)
        dense = nn.Linear(size, size, bias=False).half().to(device).eval()
        with torch.no_grad():
            dense.weight.mul_(prune.nm_mask(dense.weight, 2, 4))
        sparse = prune.to_semi_structured(dense)
        x = torch.randn(size, size, device=device, dtype=torch.float16)
        with torch.inference_mode():
            results.append(compare(lambda: sparse(x), lambda: dense(x), name=f"prune.semi_structured[{size}]",
                                   warmup=profile.bench_warmup, repeats=repeats, device=device,
                                   memory=True, mode="forward", params={"size": size, "tokens": size}))
    return results


@register("prune.semi_structured")
def semi_structured(device: torch.device, profile: Profile) -> list[Comparison]:
    """2:4 semi-structured sparse fp16 linear vs dense fp16 (CUDA, compute capability >= 8.0 only)."""
    return semi_structured_comparisons(profile, device)
