"""FlashAttention forward as a Triton kernel (Dao et al. 2022, arXiv:2205.14135; FlashAttention-2, Dao 2023).

One program takes ``BLOCK_M`` query rows of one (batch, head), keeps them in registers, and streams the key and
value blocks past them with the online softmax of :mod:`labkit.flash_attention`::

    m_new = max(m, rowmax(S_j)),  l = 2^(m - m_new) l + rowsum(2^(S_j - m_new)),  A = 2^(m - m_new) A + P_j V_j

(in base 2: the scores are pre-multiplied by ``scale * log2(e)`` so that ``exp2`` does the work). It writes
``O = A / l`` and ``logsumexp = (m + log2 l) * ln 2``; the (L, S) score matrix never leaves on-chip memory --
the memory wall of attention that Mei et al. 2024 (arXiv:2405.11704) point to. Inputs are float16, bfloat16 or
float32, accumulation is float32, head dims are powers of two from 16 to 128. Causal blocks above the diagonal
are skipped; only blocks that cross it (or the end of the keys) are masked.

The backward reuses the PyTorch FlashAttention-2 backward of :mod:`labkit.flash_attention` (the same
autograd.Function, with this kernel as its forward). ``triton`` is imported on the first launch, so this module
imports without it; on a CPU the kernel runs under ``TRITON_INTERPRET=1`` (set before ``triton`` is imported).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from labkit.flash_attention import FlashAttentionFunction, _prepare

__all__ = ["flash_attention_triton", "triton_forward", "supports", "compile_for_gpu", "SUPPORTED_DTYPES",
           "SUPPORTED_HEAD_DIMS"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
BACKWARD_BLOCK = 128  # tile size of the PyTorch backward when called from here
LOG2E = 1.0 / math.log(2.0)

tl = None  # triton.language, bound by _kernel() on first use; the kernel bodies read it from this module's globals
_compiled = None


def _attend_tile(q, k_base, v_base, stride_kn, stride_vn, start_n, rows, n_keys, unmasked_end, qk_scale,
                 row_max, row_sum, acc, IS_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """One online-softmax step: fold keys/values ``start_n .. start_n + BLOCK_N`` into (row_max, row_sum, acc)."""
    keys = start_n + tl.arange(0, BLOCK_N)
    key_ok = keys < n_keys
    k = tl.load(k_base + keys[None, :] * stride_kn, mask=key_ok[None, :], other=0.0)
    scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # log2-domain scores
    if start_n + BLOCK_N > unmasked_end:  # a block crossing the diagonal or the end of the keys
        visible = key_ok[None, :]
        if IS_CAUSAL:
            visible = visible & (keys[None, :] <= rows[:, None])
        scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    correction = tl.exp2(row_max - new_max)
    probs = tl.exp2(scores - new_max[:, None])
    row_sum = row_sum * correction + tl.sum(probs, 1)
    v = tl.load(v_base + keys[:, None] * stride_vn, mask=key_ok[:, None], other=0.0)
    acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
    return new_max, row_sum, acc


def _flash_forward_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qm, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vd,
    stride_ob, stride_om, stride_od,
    n_queries, n_keys, qk_scale,
    IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, DOT_PRECISION: tl.constexpr, PIPELINED: tl.constexpr,
):
    """Rows ``program_id(0) * BLOCK_M ...`` of batch-head ``program_id(1)`` against every key block they see."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    dims_v = tl.arange(0, HEAD_DIM_V)
    row_ok = rows < n_queries
    q = tl.load(Q + bh * stride_qb + rows[:, None] * stride_qm + dims[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    k_base = K + bh * stride_kb + dims[:, None] * stride_kd  # K^T tile: (HEAD_DIM, BLOCK_N)
    v_base = V + bh * stride_vb + dims_v[None, :] * stride_vd

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], tl.float32)
    if IS_CAUSAL:  # keys after the block's last row are never visible; those before its first row always are
        key_end = tl.minimum((start_m + 1) * BLOCK_M, n_keys)
        unmasked_end = tl.minimum(start_m * BLOCK_M, n_keys)
    else:
        key_end = n_keys
        unmasked_end = n_keys
    if PIPELINED:  # a for loop, which the compiler software-pipelines (loads of block j+1 overlap block j's math)
        for start_n in range(0, key_end, BLOCK_N):
            row_max, row_sum, acc = _attend_tile(q, k_base, v_base, stride_kn, stride_vn, start_n, rows, n_keys,
                                                 unmasked_end, qk_scale, row_max, row_sum, acc,
                                                 IS_CAUSAL, BLOCK_N, DOT_PRECISION)
    else:  # the interpreter of triton 3.6 cannot take a run-time bound in range() under NumPy 2.4
        start_n = 0
        while start_n < key_end:
            row_max, row_sum, acc = _attend_tile(q, k_base, v_base, stride_kn, stride_vn, start_n, rows, n_keys,
                                                 unmasked_end, qk_scale, row_max, row_sum, acc,
                                                 IS_CAUSAL, BLOCK_N, DOT_PRECISION)
            start_n += BLOCK_N

    out = acc / row_sum[:, None]
    tl.store(Out + bh * stride_ob + rows[:, None] * stride_om + dims_v[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    tl.store(Lse + bh * n_queries + rows, (row_max + tl.log2(row_sum)) * 0.6931471805599453, mask=row_ok)


def _kernel():
    """The jitted kernel, built on first use (this is where ``triton`` is imported)."""
    global tl, _attend_tile, _compiled
    if _compiled is None:
        try:
            import triton
            import triton.language as language
        except ImportError as err:
            raise RuntimeError("the Triton FlashAttention kernel needs the 'triton' package "
                               "(pip install triton); use labkit.flash_attention.flash_attention instead") from err
        tl = language
        _attend_tile = triton.jit(_attend_tile)  # the kernel calls the jitted helper through this global
        _compiled = triton.jit(_flash_forward_kernel)
    return _compiled


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "yes", "on"}


def supports(query: Tensor, key: Tensor, value: Tensor) -> bool:
    """Whether the kernel handles these inputs: tensors of one dtype in :data:`SUPPORTED_DTYPES` and head dims
    E and Ev in :data:`SUPPORTED_HEAD_DIMS` (the device is checked when launching). Does not import triton."""
    tensors = (query, key, value)
    if not all(isinstance(t, Tensor) and t.dim() >= 2 for t in tensors):
        return False
    if query.dtype not in SUPPORTED_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return False
    return query.size(-1) == key.size(-1) and {query.size(-1), value.size(-1)} <= set(SUPPORTED_HEAD_DIMS)


def _launch_config(head_dim: int, dtype: torch.dtype, capability: tuple[int, int] | None) -> dict:
    """Tile sizes and launch options. ``capability`` is the GPU's compute capability (None: the interpreter, small
    tiles). FlashAttention-2-like tiles on Ampere and newer; smaller ones for float32 (twice the shared memory
    a tile) and for older GPUs (64 KiB of shared memory a block on a T4)."""
    if capability is None:
        return {"BLOCK_M": 16, "BLOCK_N": 16}
    if dtype == torch.float32 or capability < (8, 0):
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    if head_dim <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}


def triton_forward(query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """``(output (..., L, Ev), logsumexp (..., L) float32)`` from the kernel; inputs share their batch dims
    (as :func:`labkit.flash_attention._prepare` returns them) and satisfy :func:`supports`."""
    if not supports(query, key, value):
        raise ValueError(
            f"the Triton kernel needs one dtype of {[str(d) for d in SUPPORTED_DTYPES]} and head dims in "
            f"{SUPPORTED_HEAD_DIMS}, got {query.dtype}, E={query.size(-1)}, Ev={value.size(-1)}"
        )
    if not query.is_cuda and not _interpreting():
        raise ValueError(f"the Triton kernel runs on CUDA tensors (or on the CPU under TRITON_INTERPRET=1), "
                         f"got tensors on {query.device}")
    batch, (n_queries, head_dim), (n_keys, head_dim_v) = query.shape[:-2], query.shape[-2:], value.shape[-2:]
    q, k, v = (t.reshape(-1, *t.shape[-2:]) for t in (query, key, value))
    if query.dtype == torch.bfloat16 and not query.is_cuda:  # the interpreter's tl.dot is wrong on bfloat16
        q, k, v = q.float(), k.float(), v.float()
    n_heads = q.size(0)
    out = torch.zeros(n_heads, n_queries, head_dim_v, dtype=query.dtype, device=query.device)
    logsumexp = torch.full((n_heads, n_queries), float("-inf"), dtype=torch.float32, device=query.device)
    if n_heads and n_queries and n_keys:  # otherwise: zero output, as torch returns for S = 0
        capability = torch.cuda.get_device_capability(query.device) if query.is_cuda else None
        config = _launch_config(head_dim, q.dtype, capability)
        grid = (math.ceil(n_queries / config["BLOCK_M"]), n_heads)
        _kernel()[grid](
            q, k, v, out, logsumexp, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            n_queries, n_keys, scale * LOG2E,
            IS_CAUSAL=is_causal, HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PIPELINED=query.is_cuda, **config,
        )
    return out.reshape(*batch, n_queries, head_dim_v), logsumexp.reshape(*batch, n_queries)


def compile_for_gpu(capability: tuple[int, int] = (9, 0), dtype: torch.dtype = torch.float16, head_dim: int = 64,
                    is_causal: bool = False):
    """Compile the kernel ahead of time for a GPU of compute ``capability`` (no GPU needed) and return Triton's
    compiled kernel: ``.asm["ptx"]`` is the generated code, ``.metadata.shared`` the shared memory a block uses."""
    if dtype not in SUPPORTED_DTYPES or head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES} and head_dim one of {SUPPORTED_HEAD_DIMS}, "
                         f"got {dtype} and {head_dim}")
    kernel = _kernel()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    config = _launch_config(head_dim, dtype, tuple(capability))
    pointer = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}[dtype]
    constants = {"IS_CAUSAL": is_causal, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
                 "HEAD_DIM": head_dim, "HEAD_DIM_V": head_dim, "PIPELINED": True,
                 "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32"}
    names = list(kernel.arg_names)
    signature = {name: "constexpr" if name in constants else
                 pointer if name in ("Q", "K", "V", "Out") else
                 "*fp32" if name == "Lse" else "fp32" if name == "qk_scale" else "i32" for name in names}
    source = ASTSource(kernel, signature, {(names.index(name),): value for name, value in constants.items()})
    target = GPUTarget("cuda", 10 * capability[0] + capability[1], 32)
    return triton.compile(source, target=target,
                          options={"num_warps": config["num_warps"], "num_stages": config["num_stages"]})


class _TritonFlashAttentionFunction(FlashAttentionFunction):
    """The Triton kernel's forward with :class:`FlashAttentionFunction`'s saved tensors and tiled backward."""

    @staticmethod
    def forward(query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float,
                block_q: int, block_k: int) -> tuple[Tensor, Tensor]:
        return triton_forward(query, key, value, is_causal, scale)


def flash_attention_triton(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False,
                           scale: float | None = None) -> Tensor:
    """softmax(Q K^T * scale) V by the Triton kernel, with the arguments and result of
    ``F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scale)``; differentiable
    (the backward is :func:`labkit.flash_attention.tiled_backward`). CUDA tensors, or CPU under TRITON_INTERPRET=1."""
    q, k, v, scale = _prepare(query, key, value, is_causal, scale)
    out, _ = _TritonFlashAttentionFunction.apply(q, k, v, is_causal, scale, BACKWARD_BLOCK, BACKWARD_BLOCK)
    return out
