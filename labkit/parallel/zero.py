"""ZeRO stage 1: shard the optimizer state across data-parallel ranks (Rajbhandari et al. 2020, §5.1).

With Adam in mixed precision each parameter costs 2 (fp16 weight) + 2 (fp16 gradient) + K = 12 bytes of optimizer
state (fp32 master weight, m, v): 16 Psi bytes per rank for Psi parameters. Partitioning across N_d ranks:

    stage 0 (plain DP): (2 + 2 + K) Psi          stage 2 (+ gradients):   2 Psi + (2 + K) Psi / N_d
    stage 1 (optimizer): (2 + 2) Psi + K Psi / N_d   stage 3 (+ parameters): (2 + 2 + K) Psi / N_d

:class:`ZeroRedundancyOptimizer` is stage 1 for any element-wise optimizer (SGD, Adam, AdamW): the parameters are
viewed as one flat vector, split into p equal shards (the last padded); rank r keeps an fp32 copy of shard r and
the optimizer state of that shard only. ``step()`` takes the (already averaged, e.g. by DDP) gradients of its shard,
updates it, and an all-gather gives every rank all the updated parameters. Element-wise updates make the result
identical to the unsharded optimizer's.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["ZeroRedundancyOptimizer", "zero_memory_per_rank", "optimizer_state_bytes"]


def zero_memory_per_rank(n_params: int, world_size: int, stage: int, *, param_bytes: int = 2, grad_bytes: int = 2,
                         state_bytes: int = 12) -> float:
    """Model-state bytes per rank under ZeRO ``stage`` (0-3): parameters, gradients and optimizer state (``K``)
    for ``n_params`` parameters over ``world_size`` ranks (mixed-precision Adam: 2 + 2 + 12 bytes)."""
    if n_params < 0 or world_size < 1:
        raise ValueError(f"need n_params >= 0 and world_size >= 1, got {n_params} and {world_size}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    shard = 1.0 / world_size
    parts = (param_bytes * (shard if stage >= 3 else 1), grad_bytes * (shard if stage >= 2 else 1),
             state_bytes * (shard if stage >= 1 else 1))
    return float(n_params * sum(parts))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in tensors of ``optimizer.state`` (moments, master copies; scalar step counters included)."""
    seen, total = set(), 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
    return total


class ZeroRedundancyOptimizer:
    """``optimizer_class(**defaults)`` run on this rank's 1/p shard of the flattened parameters (ZeRO-1)."""

    def __init__(self, params: Iterable[nn.Parameter], optimizer_class: type = torch.optim.AdamW, *, group=None,
                 **defaults: Any):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("params is empty: nothing to optimize")
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise TypeError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.numel = sum(p.numel() for p in self.params)
        self.shard_size = -(-self.numel // self.world_size)  # ceil: equal shards, the last one padded
        start = self.rank * self.shard_size
        self.shard_range = (min(start, self.numel), min(start + self.shard_size, self.numel))
        flat = self._flatten([p.detach() for p in self.params])
        self.shard = nn.Parameter(flat[self.shard_range[0]: self.shard_range[1]].clone())
        self.optimizer = optimizer_class([self.shard], **defaults)

    def _flatten(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Update this rank's shard from its slice of the gradients, then all-gather the shards into the params."""
        missing = [i for i, p in enumerate(self.params) if p.grad is None]
        if missing:
            raise RuntimeError(f"parameters {missing[:5]} have no gradient: call backward() before step()")
        lo, hi = self.shard_range
        self.shard.grad = self._flatten([p.grad for p in self.params])[lo:hi].clone()
        self.optimizer.step()
        padded = torch.zeros(self.shard_size, dtype=self.shard.dtype, device=self.shard.device)
        padded[: hi - lo] = self.shard
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded, group=self.group)
        flat = torch.cat(gathered)[: self.numel]
        offset = 0
        for p in self.params:
            p.copy_(flat[offset: offset + p.numel()].view_as(p))
            offset += p.numel()

    def state_bytes(self) -> int:
        """Optimizer-state bytes on this rank (the 1/p that ZeRO-1 keeps)."""
        return optimizer_state_bytes(self.optimizer)
