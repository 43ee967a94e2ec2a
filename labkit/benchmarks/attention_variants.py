"""Chapter "The cost of attention": the derivative architectures against full attention, measured.

Sliding-window attention (Beltagy et al. 2020) costs O(n w d) time and O(n w) memory, linear attention
(Katharopoulos et al. 2020) O(n d^2) and O(n d); full causal attention (the reference here is
``F.scaled_dot_product_attention``) costs O(n^2 d). Forward passes, causal, one head width for all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit.bench import Comparison, compare, register
from labkit.benchmarks.attention_cost import MODE, _no_grad, _random_qkv
from labkit.benchmarks.transformer import _check_same
from labkit.config import Profile

HEAD_DIM = 64
DEFAULT_WINDOW = 64
CHECK_SEQ_LEN_LIMIT = 2048  # check against the quadratic references only where those are cheap


def _bound(kernel, qkv: list[torch.Tensor]):
    """``kernel(q, k, v)`` as a function of no arguments, run without autograd."""
    return _no_grad(lambda: kernel(*qkv))


def _check_variant(name: str, variant: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> None:
    """The variant computes what it claims to: window vs masked SDPA, linear vs its quadratic form."""
    from labkit.attention_variants import linear_attention, linear_attention_quadratic, sliding_window_attention
    from labkit.attention_variants import sliding_window_mask

    with torch.no_grad():
        if variant == "window":
            mask = sliding_window_mask(q.size(-2), window, device=q.device)
            _check_same(name, sliding_window_attention(q, k, v, window),
                        F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        else:
            _check_same(name, linear_attention(q, k, v, is_causal=True),
                        linear_attention_quadratic(q, k, v, is_causal=True))


@register("attention.variants")
def variants(device: torch.device, profile: Profile) -> list[Comparison]:
    """Causal forward over profile.bench_seq_lens: labkit's sliding-window attention (window
    ``profile.get("ch2_bench_window", 64)``) and causal linear attention vs full causal
    F.scaled_dot_product_attention; time ratio and peak-memory ratio per variant and length."""
    from labkit.attention_variants import linear_attention, sliding_window_attention

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    batch, heads = int(profile.get("bench_batch_size", 4)), profile.n_heads
    window = int(profile.get("ch2_bench_window", DEFAULT_WINDOW))
    kernels = {
        "window": lambda q, k, v: sliding_window_attention(q, k, v, window, causal=True),
        "linear": lambda q, k, v: linear_attention(q, k, v, is_causal=True),
    }
    comparisons = []
    for seq_len in profile.bench_seq_lens:
        qkv = _random_qkv((batch, heads, seq_len, HEAD_DIM), device, dtype, seed=seq_len)
        reference = _bound(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), qkv)
        for variant, kernel in kernels.items():
            name = f"attention.variants[variant={variant},seq_len={seq_len}]"
            if seq_len <= CHECK_SEQ_LEN_LIMIT:
                _check_variant(name, variant, *(t.double() for t in qkv), window)
            comparisons.append(compare(
                _bound(kernel, qkv), reference, name=name, warmup=profile.bench_warmup,
                repeats=profile.bench_repeats, device=device, mode=MODE, params={
                    "variant": variant, "reference": "full causal F.scaled_dot_product_attention",
                    "batch": batch, "heads": heads, "seq_len": seq_len, "head_dim": HEAD_DIM,
                    "window": window if variant == "window" else None,
                    "dtype": str(dtype).removeprefix("torch.")}))
        del qkv, reference
    return comparisons
