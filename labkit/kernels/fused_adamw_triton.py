"""A fused AdamW step in Triton: one kernel reads ``θ, g, m, v`` once and writes ``θ, m, v``.

Per element, in fp32 (Loshchilov & Hutter 2019; Adam's bias correction from Kingma & Ba 2015)::

    θ ← θ·(1 − lr·λ)                       (decoupled weight decay; Adam + L2 instead adds λθ to g)
    m ← β1·m + (1 − β1)·g                  v ← β2·v + (1 − β2)·g²
    θ ← θ − (lr/(1 − β1^t)) · m / (√v/√(1 − β2^t) + ε)

The unfused multi-tensor path runs about a dozen passes over memory (one per ``torch._foreach_*`` call, each
reading and writing whole tensors); this kernel moves the minimum: ``2·|θ| + |g| + 2·(|m| + |v|)`` bytes, i.e. 28
bytes a parameter for fp32 parameters and 22 for bf16/fp16 parameters (the moments stay fp32).

It is a *multi-tensor* kernel: one launch updates every tensor of a list. A table on the device holds each tensor's
four addresses and length, and each program updates one ``BLOCK`` of one tensor, so a model of a hundred tensors
costs one launch instead of a hundred. ``triton`` is imported when the first step runs; under
``TRITON_INTERPRET=1`` (set before ``triton`` is imported) the kernel runs on CPU tensors, which the tests use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["fused_adamw_step_", "bytes_per_step", "BLOCK"]

BLOCK = 1024  # elements per program
NUM_WARPS = 4
_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TABLE_CACHE: dict[tuple, tuple[Tensor, ...]] = {}
_TABLE_CACHE_SIZE = 8


@lru_cache(maxsize=None)
def _kernel() -> Any:
    """Compile-on-first-use: import triton and define the kernel (so ``import labkit`` never needs triton)."""
    try:
        import triton
        import triton.language as tl
    except ImportError as err:
        raise RuntimeError("the fused AdamW step needs the `triton` package (pip install triton); "
                           "use foreach=True instead") from err

    @triton.jit
    def fused_adamw_kernel(addresses_ptr, numels_ptr, block_tensor_ptr, block_start_ptr, scalars_ptr,
                           step_size, bias_correction2_sqrt, lr, weight_decay, beta1, beta2, eps,
                           PARAM_DTYPE: tl.constexpr, PER_TENSOR_SCALARS: tl.constexpr,
                           DECOUPLED: tl.constexpr, MAXIMIZE: tl.constexpr, BLOCK: tl.constexpr):
        block = tl.program_id(0)
        tensor = tl.load(block_tensor_ptr + block).to(tl.int64)
        offsets = tl.load(block_start_ptr + block) + tl.arange(0, BLOCK)
        mask = offsets < tl.load(numels_ptr + tensor)
        # this block's tensor: four addresses from the table, turned into typed pointers
        param_ptr = tl.load(addresses_ptr + 4 * tensor).to(tl.pointer_type(PARAM_DTYPE))
        grad_ptr = tl.load(addresses_ptr + 4 * tensor + 1).to(tl.pointer_type(PARAM_DTYPE))
        exp_avg_ptr = tl.load(addresses_ptr + 4 * tensor + 2).to(tl.pointer_type(tl.float32))
        exp_avg_sq_ptr = tl.load(addresses_ptr + 4 * tensor + 3).to(tl.pointer_type(tl.float32))
        if PER_TENSOR_SCALARS:  # tensors at different step counts (rare): per-tensor bias corrections
            step_size = tl.load(scalars_ptr + 2 * tensor)
            bias_correction2_sqrt = tl.load(scalars_ptr + 2 * tensor + 1)

        param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
        grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
        exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask)
        exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask)
        if MAXIMIZE:
            grad = -grad
        if DECOUPLED:
            param = param * (1.0 - lr * weight_decay)  # AdamW: θ ← θ − lr·λ·θ
        else:
            grad = grad + weight_decay * param  # Adam + L2: g ← g + λθ
        exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)  # m ← β1 m + (1−β1) g
        exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad  # v ← β2 v + (1−β2) g²
        denom = tl.sqrt_rn(exp_avg_sq) / bias_correction2_sqrt + eps  # √v̂ + ε
        param = param - step_size * tl.div_rn(exp_avg, denom)  # θ ← θ − lr·m̂/(√v̂ + ε)

        tl.store(param_ptr + offsets, param.to(PARAM_DTYPE), mask=mask)
        tl.store(exp_avg_ptr + offsets, exp_avg, mask=mask)
        tl.store(exp_avg_sq_ptr + offsets, exp_avg_sq, mask=mask)

    type_of = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
    return fused_adamw_kernel, type_of


def bytes_per_step(params: Sequence[Tensor]) -> int:
    """DRAM bytes one fused step must move: read θ, g, m, v and write θ, m, v (fp32 moments)."""
    return sum(p.numel() * (3 * p.element_size() + 4 * 4) for p in params)


def _check_lists(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
                 exp_avg_sqs: Sequence[Tensor]) -> None:
    if not (len(params) == len(grads) == len(exp_avgs) == len(exp_avg_sqs)):
        raise ValueError(f"params, grads, exp_avgs and exp_avg_sqs must have equal lengths, got "
                         f"{len(params)}, {len(grads)}, {len(exp_avgs)}, {len(exp_avg_sqs)}")
    device, dtype = params[0].device, params[0].dtype
    if dtype not in _PARAM_DTYPES:
        raise TypeError(f"fused AdamW updates float32, bfloat16 or float16 parameters, got {dtype}")
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if p.dtype != dtype or g.dtype != dtype:
            raise TypeError(f"tensor {i}: parameter and gradient must both be {dtype}, got {p.dtype} and {g.dtype}")
        if m.dtype != torch.float32 or v.dtype != torch.float32:
            raise TypeError(f"tensor {i}: exp_avg and exp_avg_sq must be float32, got {m.dtype} and {v.dtype}")
        if any(t.device != device for t in (p, g, m, v)):
            raise ValueError(f"tensor {i}: every tensor must be on {device}")
        if any(t.shape != p.shape for t in (g, m, v)):
            raise ValueError(f"tensor {i}: gradient and moments must have the parameter's shape {tuple(p.shape)}")
        if not all(t.is_contiguous() for t in (p, g, m, v)):
            raise ValueError(f"tensor {i}: the fused kernel needs contiguous tensors")


def _tables(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
            exp_avg_sqs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Device tables: addresses (n, 4) and numels (n,) per tensor; tensor index and start offset per block.
    Cached by the addresses, which stay the same from step to step (the allocator reuses gradient memory)."""
    addresses = [t.data_ptr() for group in zip(params, grads, exp_avgs, exp_avg_sqs) for t in group]
    numels = [p.numel() for p in params]
    key = (params[0].device, *addresses, *numels)
    cached = _TABLE_CACHE.get(key)
    if cached is not None:
        return cached
    blocks = [-(-n // BLOCK) for n in numels]
    block_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), torch.tensor(blocks))
    block_start = torch.cat([torch.arange(b, dtype=torch.int64) * BLOCK for b in blocks])
    device = params[0].device
    tables = (torch.tensor(addresses, dtype=torch.int64).to(device), torch.tensor(numels, dtype=torch.int64).to(device),
              block_tensor.to(device), block_start.to(device))
    if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
        _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
    _TABLE_CACHE[key] = tables
    return tables


def fused_adamw_step_(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
                      exp_avg_sqs: Sequence[Tensor], *, step_sizes: Sequence[float],
                      bias_correction2_sqrts: Sequence[float], lr: float, beta1: float, beta2: float, eps: float,
                      weight_decay: float, decoupled: bool = True, maximize: bool = False) -> None:
    """One AdamW (``decoupled=True``) or Adam+L2 step on every tensor of the lists, in place, in one launch.

    ``step_sizes[i] = lr/(1 − β1^t_i)`` and ``bias_correction2_sqrts[i] = √(1 − β2^t_i)`` come from the caller,
    which owns the step counters. Parameters and gradients share one dtype (fp32, bf16 or fp16) and device;
    moments are fp32.
    """
    if not params:
        return
    _check_lists(params, grads, exp_avgs, exp_avg_sqs)
    if not len(step_sizes) == len(bias_correction2_sqrts) == len(params):
        raise ValueError("step_sizes and bias_correction2_sqrts need one value per parameter")
    kernel, type_of = _kernel()
    addresses, numels, block_tensor, block_start = _tables(params, grads, exp_avgs, exp_avg_sqs)
    pairs = set(zip(step_sizes, bias_correction2_sqrts))
    per_tensor = len(pairs) > 1
    if per_tensor:
        scalars = torch.tensor(list(zip(step_sizes, bias_correction2_sqrts)), dtype=torch.float32).to(params[0].device)
    else:
        scalars = numels  # unused by the kernel: any device tensor will do
    step_size, bias_correction2_sqrt = (float(x) for x in next(iter(pairs)))
    kernel[(block_tensor.numel(),)](
        addresses, numels, block_tensor, block_start, scalars,
        step_size, bias_correction2_sqrt, float(lr), float(weight_decay), float(beta1), float(beta2), float(eps),
        PARAM_DTYPE=type_of[params[0].dtype], PER_TENSOR_SCALARS=per_tensor, DECOUPLED=bool(decoupled),
        MAXIMIZE=bool(maximize), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
