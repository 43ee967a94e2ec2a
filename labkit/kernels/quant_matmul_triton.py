"""Weight-only int8/int4 dequantize-and-matmul in Triton: ``y = x · (Δ ⊙ q)ᵀ`` without a float copy of ``W``.

At batch 1 a linear layer is a matrix-vector product: each weight is read once and used once, so its time is the
bytes of ``W`` divided by memory bandwidth. Reading 4-bit integers instead of fp16 values moves a quarter of the
bytes; the dequantization (a subtract and a multiply in registers) is free next to the load. Each program computes
a ``BLOCK_M × BLOCK_N`` tile of ``y``, looping over ``K`` in steps of ``BLOCK_K``: it loads the integers of a
``BLOCK_N × BLOCK_K`` weight tile (int4: ``BLOCK_K/2`` bytes a row, two values a byte, stored ``q + 8``), multiplies
them by their group's scale, and accumulates ``x_tile · w_tileᵀ`` in fp32. For int4 the even and odd columns of
``K`` come from the low and high nibbles, so the tile is two half-width products: ``x[:, 0::2]·lowᵀ +
x[:, 1::2]·highᵀ``. Symmetric weights (zero point 0), a scale per row and group of ``group_size`` columns. ``K`` is a compile-time
constant (one compiled kernel per layer width), so the K loop has a static trip count.

``triton`` is imported on first use; under ``TRITON_INTERPRET=1`` (set before ``triton`` is imported) the kernel
runs on CPU tensors, which the tests use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

__all__ = ["weight_only_matmul", "supports", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_M, BLOCK_N = 16, 64


@lru_cache(maxsize=None)
def _kernel() -> Any:
    try:
        import triton
        import triton.language as tl
    except ImportError as err:
        raise RuntimeError("the weight-only kernel needs the `triton` package (pip install triton)") from err

    @triton.jit
    def weight_only_kernel(x_ptr, w_ptr, scale_ptr, y_ptr, M, N, n_groups,
                           stride_xm, stride_wn, stride_ym, K: tl.constexpr, GROUP_SIZE: tl.constexpr, BITS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           DOT_PRECISION: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows < M, cols < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            scale = tl.load(scale_ptr + cols * n_groups + k0 // GROUP_SIZE, mask=col_ok, other=0.0)  # (BLOCK_N,)
            if BITS == 8:
                ks = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None], other=0.0)
                q = tl.load(w_ptr + cols[:, None] * stride_wn + ks[None, :], mask=col_ok[:, None], other=0)
                w = (q.to(tl.float32) * scale[:, None]).to(x.dtype)
                acc += tl.dot(x, tl.trans(w), input_precision=DOT_PRECISION)
            else:
                half = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # byte j holds columns 2j (low) and 2j + 1 (high)
                x_even = tl.load(x_ptr + rows[:, None] * stride_xm + 2 * half[None, :], mask=row_ok[:, None],
                                 other=0.0)
                x_odd = tl.load(x_ptr + rows[:, None] * stride_xm + 2 * half[None, :] + 1, mask=row_ok[:, None],
                                other=0.0)
                packed = tl.load(w_ptr + cols[:, None] * stride_wn + half[None, :], mask=col_ok[:, None], other=0)
                packed = packed.to(tl.int32)
                low = ((packed & 0xF) - 8).to(tl.float32) * scale[:, None]
                high = ((packed >> 4) - 8).to(tl.float32) * scale[:, None]
                acc += tl.dot(x_even, tl.trans(low.to(x_even.dtype)), input_precision=DOT_PRECISION)
                acc += tl.dot(x_odd, tl.trans(high.to(x_odd.dtype)), input_precision=DOT_PRECISION)
        tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    return weight_only_kernel


def _block_k(in_features: int, group_size: int) -> int | None:
    """The widest K tile (64, 32) that divides both the group and K (int4 tiles need ≥ 32 for two 16-wide dots)."""
    for block in (64, 32):
        if group_size % block == 0 and in_features % block == 0:
            return block
    return None


def supports(x: Tensor, qdata: Tensor, scale: Tensor, bits: int) -> bool:
    """Whether :func:`weight_only_matmul` takes these operands (else the caller dequantizes and uses matmul)."""
    if not (isinstance(x, Tensor) and isinstance(qdata, Tensor) and isinstance(scale, Tensor)):
        return False
    if x.dtype not in SUPPORTED_DTYPES or bits not in (4, 8) or qdata.dim() != 2 or scale.dim() != 2:
        return False
    in_features = x.size(-1)
    expected = torch.uint8 if bits == 4 else torch.int8
    width = in_features // 2 if bits == 4 else in_features
    if qdata.dtype != expected or qdata.size(1) != width or scale.size(0) not in (1, qdata.size(0)):
        return False
    if in_features % scale.size(1):
        return False
    return _block_k(in_features, in_features // scale.size(1)) is not None


def weight_only_matmul(x: Tensor, qdata: Tensor, scale: Tensor, bits: int) -> Tensor:
    """``x (M, K) · dequant(W)ᵀ -> (M, N)`` in ``x``'s dtype, fp32 accumulation; ``qdata`` int8 (N, K) for 8 bits or
    uint8 (N, K/2) packed for 4 bits (:func:`labkit.quant.pack_int4`), ``scale`` (N, K/group_size) float."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    if not supports(x, qdata, scale, bits):
        raise ValueError(f"unsupported operands: x {x.dtype} {tuple(x.shape)}, qdata {qdata.dtype} "
                         f"{tuple(qdata.shape)}, scale {tuple(scale.shape)}, bits {bits} (need 4 or 8 bits, "
                         "a group size and K divisible by 32)")
    import os

    if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("weight_only_matmul runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1)")
    (M, K), N = x.shape, qdata.size(0)
    scale = scale.expand(N, scale.size(1)).float().contiguous()
    x, qdata = x.contiguous(), qdata.contiguous()
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    group_size = K // scale.size(1)
    grid = (triton_cdiv(M, BLOCK_M), triton_cdiv(N, BLOCK_N))
    _kernel()[grid](x, qdata, scale, y, M, N, scale.size(1), x.stride(0), qdata.stride(0), y.stride(0),
                    K=K, GROUP_SIZE=group_size, BITS=bits, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                    BLOCK_K=_block_k(K, group_size),
                    DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32")
    return y


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
