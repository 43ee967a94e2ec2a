"""Chapter 1 benchmarks: labkit's from-scratch attention and encoder layer against PyTorch's.

Every benchmark times forward + backward (the cost of a training step), checks once that both sides compute
the same output, and records the sizes it used in ``params``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.bench import Comparison, compare, register
from labkit.config import Profile

MODE = "forward+backward"


def _dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (the precision attention runs at in practice), float32 elsewhere."""
    from labkit.device import supports_bf16

    return torch.bfloat16 if device.type == "cuda" and supports_bf16(device) else torch.float32


def _forward_backward(forward: Callable[[], Tensor], inputs: tuple[Tensor, ...], grad_output: Tensor) -> Callable[[], Any]:
    """A no-argument function running ``forward`` and the gradients with respect to ``inputs``
    (``autograd.grad``, so nothing accumulates between calls)."""

    def step() -> Any:
        output = forward()
        return torch.autograd.grad(output, inputs, grad_output)

    return step


def _check_same(name: str, ours: Tensor, theirs: Tensor) -> None:
    """Refuse to time two functions that do not compute the same thing."""
    tolerance = 2e-2 if ours.dtype in (torch.float16, torch.bfloat16) else 1e-4
    torch.testing.assert_close(ours.float(), theirs.float(), atol=tolerance, rtol=tolerance,
                               msg=lambda m: f"{name}: labkit and reference disagree: {m}")


def _module_comparison(name: str, ours: nn.Module, theirs: nn.Module, x: Tensor, device: torch.device,
                       profile: Profile, params: dict[str, Any], **forward_kwargs: Any) -> Comparison:
    """Compare two modules of the same function on input ``x``: gradients w.r.t. ``x`` and every parameter."""

    def run(module: nn.Module) -> Callable[[], Tensor]:
        def forward() -> Tensor:
            out = module(x, **forward_kwargs)
            return out[0] if isinstance(out, tuple) else out

        return forward

    forward_ours, forward_theirs = run(ours), run(theirs)
    with torch.no_grad():
        expected = forward_theirs()
        _check_same(name, forward_ours(), expected)
    grad_output = torch.randn_like(expected)
    return compare(
        _forward_backward(forward_ours, (x, *ours.parameters()), grad_output),
        _forward_backward(forward_theirs, (x, *theirs.parameters()), grad_output),
        name=name, warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device,
        mode=MODE, params=params,
    )


def _batch_size(profile: Profile) -> int:
    return int(profile.get("bench_batch_size", 4))


@register("transformer.sdpa")
def sdpa(device: torch.device, profile: Profile) -> list[Comparison]:
    """Causal scaled dot-product attention, forward+backward, over profile.bench_seq_lens:
    labkit.attention.scaled_dot_product_attention vs F.scaled_dot_product_attention."""
    from labkit.attention import scaled_dot_product_attention

    dtype = _dtype(device)
    batch, heads = _batch_size(profile), profile.n_heads
    head_dim = profile.d_model // profile.n_heads
    generator = torch.Generator().manual_seed(0)
    comparisons = []
    for seq_len in profile.bench_seq_lens:
        q, k, v = (
            torch.randn(batch, heads, seq_len, head_dim, generator=generator).to(device, dtype).requires_grad_()
            for _ in range(3)
        )
        name = f"transformer.sdpa[seq_len={seq_len}]"
        with torch.no_grad():
            expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            _check_same(name, scaled_dot_product_attention(q, k, v, is_causal=True), expected)
        grad_output = torch.randn_like(expected)
        comparisons.append(compare(
            _forward_backward(lambda: scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), grad_output),
            _forward_backward(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), grad_output),
            name=name, warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device, mode=MODE,
            params={"batch": batch, "heads": heads, "seq_len": seq_len, "head_dim": head_dim,
                    "dtype": str(dtype).removeprefix("torch."), "causal": True},
        ))
        del q, k, v, expected, grad_output
    return comparisons


@register("transformer.mha")
def mha(device: torch.device, profile: Profile) -> list[Comparison]:
    """Causal multi-head self-attention, forward+backward: labkit.attention.MultiHeadAttention vs
    nn.MultiheadAttention with the same weights."""
    from labkit.attention import MultiHeadAttention

    dtype = _dtype(device)
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(profile.d_model, profile.n_heads, batch_first=True).to(device, dtype)
    ours = MultiHeadAttention.from_torch(reference)
    x = torch.randn(profile.batch_size, profile.seq_len, profile.d_model, device=device, dtype=dtype,
                    requires_grad=True)
    mask = torch.full((profile.seq_len, profile.seq_len), float("-inf"), device=device, dtype=dtype).triu(1)

    class SelfAttention(nn.Module):
        def __init__(self, attention: nn.Module) -> None:
            super().__init__()
            self.attention = attention

        def forward(self, inputs: Tensor) -> Tensor:
            return self.attention(inputs, inputs, inputs, attn_mask=mask, need_weights=False)[0]

    params = {"batch": profile.batch_size, "seq_len": profile.seq_len, "d_model": profile.d_model,
              "heads": profile.n_heads, "dtype": str(dtype).removeprefix("torch."), "causal": True}
    return [_module_comparison(f"transformer.mha[seq_len={profile.seq_len}]", SelfAttention(ours),
                               SelfAttention(reference), x, device, profile, params)]


@register("transformer.encoder_layer")
def encoder_layer(device: torch.device, profile: Profile) -> list[Comparison]:
    """Pre-norm encoder layer, forward+backward: labkit.transformer.EncoderLayer.from_torch vs
    nn.TransformerEncoderLayer (batch_first, no dropout)."""
    from labkit.transformer import EncoderLayer

    dtype = _dtype(device)
    torch.manual_seed(0)
    reference = nn.TransformerEncoderLayer(profile.d_model, profile.n_heads, profile.d_ff, dropout=0.0,
                                           batch_first=True, norm_first=True).to(device, dtype)
    ours = EncoderLayer.from_torch(reference)
    x = torch.randn(profile.batch_size, profile.seq_len, profile.d_model, device=device, dtype=dtype,
                    requires_grad=True)
    params = {"batch": profile.batch_size, "seq_len": profile.seq_len, "d_model": profile.d_model,
              "heads": profile.n_heads, "d_ff": profile.d_ff, "dtype": str(dtype).removeprefix("torch."),
              "norm_first": True}
    return [_module_comparison(f"transformer.encoder_layer[seq_len={profile.seq_len}]", ours, reference, x,
                               device, profile, params)]
