"""Chapter "The cost of attention": exact attention without the n x n matrix, measured.

Naive attention stores the (n, n) scores, O(n^2) memory -- the efficiency limit of attention that Mei et al. 2024
(arXiv:2405.11704) point to; tiled attention with an online softmax (Dao et al. 2022) keeps O(n) memory and the
same O(n^2 d) arithmetic. Forward passes only: the memory wall shows up already there.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labkit.bench import Comparison, compare, register
from labkit.benchmarks.transformer import _check_same
from labkit.config import Profile

MODE = "forward"
MEMORY_SEQ_LEN_LIMIT = 8192  # the chapter's claim is about n = 8192 (fp32, d = 64, one head)


def _attention_flops(batch: int, heads: int, n: int, head_dim: int, causal: bool) -> int:
    """2 matmuls (Q K^T and P V) of 2 n^2 d FLOPs each per head; a causal mask halves the useful work."""
    flops = 4 * batch * heads * n * n * head_dim
    return flops // 2 if causal else flops


def _random_qkv(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(device, dtype) for _ in range(3)]


def _no_grad(fn):
    def call() -> Any:
        with torch.no_grad():
            return fn()

    return call


@register("attention.flash_forward")
def flash_forward(device: torch.device, profile: Profile) -> list[Comparison]:
    """Attention forward over profile.bench_seq_lens, causal and not: labkit.flash_attention.efficient_attention
    (Triton on CUDA, tiled PyTorch elsewhere) vs F.scaled_dot_product_attention; time, peak memory, TFLOP/s."""
    from labkit.flash_attention import efficient_attention, efficient_attention_backend

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    batch, heads = int(profile.get("bench_batch_size", 4)), profile.n_heads
    head_dims = (64, 128) if device.type == "cuda" else (64,)
    comparisons = []
    for head_dim in head_dims:
        for seq_len in profile.bench_seq_lens:
            q, k, v = _random_qkv((batch, heads, seq_len, head_dim), device, dtype, seed=seq_len)
            for causal in (False, True):
                name = f"attention.flash_forward[seq_len={seq_len},head_dim={head_dim},causal={causal}]"
                ours = _no_grad(lambda: efficient_attention(q, k, v, is_causal=causal))
                reference = _no_grad(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                _check_same(name, ours(), reference())
                flops = _attention_flops(batch, heads, seq_len, head_dim, causal)
                comparison = compare(ours, reference, name=name, warmup=profile.bench_warmup,
                                     repeats=profile.bench_repeats, device=device, mode=MODE, params={
                                         "batch": batch, "heads": heads, "seq_len": seq_len, "head_dim": head_dim,
                                         "dtype": str(dtype).removeprefix("torch."), "causal": causal,
                                         "backend": efficient_attention_backend(q, k, v), "flops": flops})
                comparison.params["labkit_tflop_s"] = flops / comparison.labkit.median_s / 1e12
                comparison.params["reference_tflop_s"] = flops / comparison.reference.median_s / 1e12
                comparisons.append(comparison)
            del q, k, v
    return comparisons


def _memory_seq_lens(profile: Profile) -> tuple[int, ...]:
    """``profile.extra["attention_memory_seq_lens"]`` if set; else bench_seq_lens, doubled up to n = 8192 for the
    cpu and gpu profiles (smoke keeps its short list)."""
    lengths = list(profile.get("attention_memory_seq_lens", profile.bench_seq_lens))
    if "attention_memory_seq_lens" not in profile.extra and profile.name != "smoke":
        while lengths[-1] < MEMORY_SEQ_LEN_LIMIT:
            lengths.append(lengths[-1] * 2)
    return tuple(lengths)


@register("attention.naive_vs_flash_memory")
def naive_vs_flash_memory(device: torch.device, profile: Profile) -> list[Comparison]:
    """One head, d = 64, float32 forward: labkit.flash_attention.efficient_attention (tiled) vs labkit's naive
    scaled_dot_product_attention (the reference here); memory_ratio = tiled peak / naive peak."""
    from labkit.attention import scaled_dot_product_attention
    from labkit.flash_attention import efficient_attention, efficient_attention_backend

    head_dim, dtype = 64, torch.float32
    comparisons = []
    for seq_len in _memory_seq_lens(profile):
        q, k, v = _random_qkv((1, 1, seq_len, head_dim), device, dtype, seed=seq_len)
        name = f"attention.naive_vs_flash_memory[seq_len={seq_len}]"
        tiled = _no_grad(lambda: efficient_attention(q, k, v))
        naive = _no_grad(lambda: scaled_dot_product_attention(q, k, v))
        _check_same(name, tiled(), naive())
        comparisons.append(compare(tiled, naive, name=name, warmup=1, repeats=max(1, profile.bench_repeats // 2),
                                   device=device, mode=MODE, params={
                                       "seq_len": seq_len, "head_dim": head_dim, "heads": 1,
                                       "dtype": str(dtype).removeprefix("torch."),
                                       "backend": efficient_attention_backend(q, k, v),
                                       "score_matrix_bytes": seq_len * seq_len * dtype.itemsize}))
        del q, k, v
    return comparisons
