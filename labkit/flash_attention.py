"""Tiled attention with an online softmax: exact softmax(Q K^T * scale) V in memory linear in the length.

The source paper (Mei et al. 2024, arXiv:2405.11704, abstract) says the Transformer captures long-range
dependencies while attention "restricts computing efficiency": the scores ``Q K^T`` form an ``L x S`` matrix,
so naive attention needs O(L S) memory. FlashAttention (Dao et al. 2022, "FlashAttention: Fast and
Memory-Efficient Exact Attention with IO-Awareness", arXiv:2205.14135, Algorithm 1; Dao 2023, FlashAttention-2,
arXiv:2307.08691, Algorithm 2) computes the same result block by block and never holds that matrix.

Online softmax. Take a block of query rows and visit the key blocks ``j = 1, 2, ...`` in turn, with the block's
scores ``S_j = Q K_j^T * scale``. Keep a running row maximum ``m``, running sum ``l`` and unnormalised output ``A``::

    m_new = max(m, rowmax(S_j))
    P_j   = exp(S_j - m_new)
    l     = exp(m - m_new) * l + rowsum(P_j)
    A     = exp(m - m_new) * A + P_j V_j
    m     = m_new

Starting from ``m = -inf, l = 0, A = 0``, after the last block ``A / l = softmax(Q K^T * scale) V`` exactly (every
earlier term is rescaled to the final maximum) and ``logsumexp = m + log l`` is the log of the softmax denominator.

Backward (FlashAttention-2) keeps only ``Q, K, V, O`` and ``logsumexp`` and recomputes ``P = exp(S - logsumexp)``
block by block: ``dV = P^T dO``, ``dP = dO V^T``, ``D = rowsum(dO * O)``, ``dS = P * (dP - D)``,
``dQ = dS K * scale``, ``dK = dS^T Q * scale``.

:func:`flash_attention` is the plain PyTorch path (any device); :func:`efficient_attention` uses the Triton kernel
of :mod:`labkit.kernels.flash_attention_triton` on CUDA when it can, and the PyTorch path otherwise.
``F.scaled_dot_product_attention`` is only the reference of the tests and benchmarks.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from labkit.attention import _check_query_key, _check_value, _positive_int

__all__ = [
    "flash_attention",
    "efficient_attention",
    "efficient_attention_backend",
    "FlashAttentionFunction",
    "tiled_forward",
    "tiled_backward",
    "PYTORCH_BLOCK",
]

PYTORCH_BLOCK = 256  # tile size of efficient_attention's PyTorch path: few Python steps, memory still linear


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32 (as the GPU kernels do)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _key_blocks(q_block: Tensor, key: Tensor, q_start: int, is_causal: bool,
                block_k: int) -> Iterator[tuple[slice, Tensor]]:
    """For the query rows ``q_start .. q_start + len(q_block)`` (``q_block`` already multiplied by the scale),
    yield ``(key slice, scores)`` for every key block they may see; scores are -inf where causality forbids.

    Causal masking is top-left aligned (query ``i`` sees keys ``j <= i``, as torch's ``is_causal``): key blocks
    that start after the last query row are skipped entirely, and only blocks crossing the diagonal are masked.
    The first block holds key 0, which every query sees, so no row is ever fully masked.
    """
    q_end = q_start + q_block.size(-2)
    n_keys = min(key.size(-2), q_end) if is_causal else key.size(-2)
    for k_start in range(0, n_keys, block_k):
        k_end = min(k_start + block_k, n_keys)
        scores = torch.matmul(q_block, key[..., k_start:k_end, :].transpose(-2, -1))
        if is_causal and k_end - 1 > q_start:  # the block crosses the diagonal
            hidden = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device)
            scores.masked_fill_(hidden.triu_(q_start - k_start + 1), float("-inf"))  # key j > query i
        yield slice(k_start, k_end), scores


def tiled_forward(query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float,
                  block_q: int, block_k: int) -> tuple[Tensor, Tensor]:
    """``(output, logsumexp)`` of attention by the online-softmax recurrence (module docstring), one
    ``block_q x block_k`` score tile at a time. Inputs share their batch dims; ``logsumexp`` has shape (..., L) and
    the accumulation dtype (float32, or float64 for float64 inputs). No (L, S) tensor is ever allocated."""
    n_queries, n_keys = query.size(-2), key.size(-2)
    acc_dtype = _accumulation_dtype(query.dtype)
    q, k, v = (t.to(acc_dtype) for t in (query, key, value))
    batch = q.shape[:-2]
    out = q.new_zeros(*batch, n_queries, v.size(-1))
    logsumexp = q.new_full((*batch, n_queries), float("-inf"))
    if n_keys == 0:  # nothing to attend to: zero output, as torch returns
        return out.to(query.dtype), logsumexp
    for q_start in range(0, n_queries, block_q):
        rows = slice(q_start, min(q_start + block_q, n_queries))
        q_block = q[..., rows, :] * scale
        row_max = q.new_full(q_block.shape[:-1], float("-inf"))
        row_sum = q.new_zeros(q_block.shape[:-1])
        acc = q.new_zeros(*q_block.shape[:-1], v.size(-1))
        for keys, scores in _key_blocks(q_block, k, q_start, is_causal, block_k):
            new_max = torch.maximum(row_max, scores.amax(dim=-1))
            correction = torch.exp(row_max - new_max)
            probs = scores.sub_(new_max.unsqueeze(-1)).exp_()  # in place: the tile is not needed again
            row_sum.mul_(correction).add_(probs.sum(dim=-1))
            acc.mul_(correction.unsqueeze(-1)).add_(torch.matmul(probs, v[..., keys, :]))
            row_max = new_max
        out[..., rows, :] = acc / row_sum.unsqueeze(-1)
        logsumexp[..., rows] = row_max + torch.log(row_sum)
    return out.to(query.dtype), logsumexp


def tiled_backward(query: Tensor, key: Tensor, value: Tensor, out: Tensor, logsumexp: Tensor, grad_out: Tensor,
                   is_causal: bool, scale: float, block_q: int, block_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(dQ, dK, dV)`` by the FlashAttention-2 backward, recomputing ``P = exp(S - logsumexp)`` tile by tile:
    ``dV = P^T dO, dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D), dQ = dS K * scale, dK = dS^T Q * scale``."""
    acc_dtype = _accumulation_dtype(query.dtype)
    q, k, v, o, grad_o = (t.to(acc_dtype) for t in (query, key, value, out, grad_out))
    logsumexp = logsumexp.to(acc_dtype)
    delta = (grad_o * o).sum(dim=-1)  # D, shape (..., L)
    grad_q = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
    grad_k = torch.zeros(k.shape, dtype=acc_dtype, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)
    for q_start in range(0, q.size(-2), block_q):
        rows = slice(q_start, min(q_start + block_q, q.size(-2)))
        q_block = q[..., rows, :] * scale
        grad_o_block = grad_o[..., rows, :]
        lse_block = logsumexp[..., rows].unsqueeze(-1)
        delta_block = delta[..., rows].unsqueeze(-1)
        grad_q_block = torch.zeros_like(q_block)
        for keys, scores in _key_blocks(q_block, k, q_start, is_causal, block_k):
            probs = scores.sub_(lse_block).exp_()
            grad_v[..., keys, :] += torch.matmul(probs.transpose(-2, -1), grad_o_block)
            grad_probs = torch.matmul(grad_o_block, v[..., keys, :].transpose(-2, -1))
            grad_scores = grad_probs.sub_(delta_block).mul_(probs)
            grad_q_block += torch.matmul(grad_scores, k[..., keys, :])
            grad_k[..., keys, :] += torch.matmul(grad_scores.transpose(-2, -1), q_block)  # q_block holds the scale
        grad_q[..., rows, :] = grad_q_block * scale
    return grad_q.to(query.dtype), grad_k.to(key.dtype), grad_v.to(value.dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """``apply(query, key, value, is_causal, scale, block_q, block_k) -> (output, logsumexp)``.

    Saves only ``(Q, K, V, O, logsumexp)`` and recomputes the score tiles in backward (:func:`tiled_backward`).
    Subclasses replace :meth:`forward` only (the Triton kernel does) and share this backward.
    """

    @staticmethod
    def forward(query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float,
                block_q: int, block_k: int) -> tuple[Tensor, Tensor]:
        return tiled_forward(query, key, value, is_causal, scale, block_q, block_k)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        query, key, value, is_causal, scale, block_q, block_k = inputs
        out, logsumexp = output
        ctx.save_for_backward(query, key, value, out, logsumexp)
        ctx.mark_non_differentiable(logsumexp)
        ctx.options = (is_causal, scale, block_q, block_k)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor, _grad_logsumexp: Tensor | None):
        query, key, value, out, logsumexp = ctx.saved_tensors
        is_causal, scale, block_q, block_k = ctx.options
        grads = tiled_backward(query, key, value, out, logsumexp, grad_out, is_causal, scale, block_q, block_k)
        return (*grads, None, None, None, None)


def _prepare(query: Tensor, key: Tensor, value: Tensor, is_causal: bool,
             scale: float | None) -> tuple[Tensor, Tensor, Tensor, float]:
    """Validate the arguments; return query, key and value expanded to their common batch dims, and the scale."""
    _check_query_key(query, key)
    _check_value(query, key, value)
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on the same device, got {query.device}, {key.device} and {value.device}"
        )
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(query.size(-1))
    elif not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    expanded = tuple(t.expand(*batch, *t.shape[-2:]) for t in (query, key, value))
    return (*expanded, float(scale))


def flash_attention(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False, scale: float | None = None,
                    block_q: int = 64, block_k: int = 64) -> Tensor:
    """softmax(Q K^T * scale) V computed tile by tile with an online softmax (Dao et al. 2022); plain PyTorch.

    Shapes ``(..., L, E) x (..., S, E) x (..., S, Ev) -> (..., L, Ev)``, batch dims broadcast; ``scale`` defaults
    to ``1/sqrt(E)``; ``is_causal`` is top-left aligned like torch's (query ``i`` sees keys ``j <= i``). The
    result equals ``F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scale)``;
    memory grows linearly in L and S (one ``block_q x block_k`` tile at a time), and the backward recomputes
    the tiles instead of storing the (L, S) probabilities. float16/bfloat16 inputs accumulate in float32.
    """
    q, k, v, scale = _prepare(query, key, value, is_causal, scale)
    block_q = _positive_int("block_q", block_q)
    block_k = _positive_int("block_k", block_k)
    out, _ = FlashAttentionFunction.apply(q, k, v, is_causal, scale, block_q, block_k)
    return out


def efficient_attention_backend(query: Tensor, key: Tensor, value: Tensor) -> str:
    """``'triton'`` when :func:`efficient_attention` would run the Triton kernel on these inputs (CUDA tensors,
    triton installed, a dtype and head dims the kernel supports), else ``'pytorch'`` (the tiled path)."""
    from labkit.device import triton_available
    from labkit.kernels.flash_attention_triton import supports

    if isinstance(query, Tensor) and query.is_cuda and supports(query, key, value) and triton_available():
        return "triton"
    return "pytorch"


def efficient_attention(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False,
                        scale: float | None = None) -> Tensor:
    """Exact attention without the (L, S) matrix: the Triton FlashAttention kernel on CUDA when it supports the
    inputs (:func:`efficient_attention_backend`), else :func:`flash_attention` with ``PYTORCH_BLOCK``-sized tiles. Same arguments and result as
    ``F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scale)``."""
    if efficient_attention_backend(query, key, value) == "triton":
        from labkit.kernels.flash_attention_triton import flash_attention_triton

        return flash_attention_triton(query, key, value, is_causal=is_causal, scale=scale)
    return flash_attention(query, key, value, is_causal=is_causal, scale=scale, block_q=PYTORCH_BLOCK,
                           block_k=PYTORCH_BLOCK)
