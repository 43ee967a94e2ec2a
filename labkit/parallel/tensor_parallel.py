"""Tensor parallelism, Megatron style (Shoeybi et al. 2019, §3): split the MLP's matrices across ranks.

The MLP Y = GeLU(X A) B with A of shape (d, h) and B of shape (h, d):

* column-parallel A = [A_1 ... A_p] (split the output features): rank r computes Y_r = GeLU(X A_r) with no
  communication, because GeLU acts element-wise on its own columns;
* row-parallel B = [B_1; ...; B_p] (split the input features): rank r computes Y_r B_r, and the output is the
  sum over ranks, one all-reduce: Z = sum_r GeLU(X A_r) B_r.

Autograd needs the conjugate operators: ``f`` (identity forward, all-reduce of dL/dX backward) before the
column-parallel layer, since every rank's X feeds a different A_r; ``g`` (all-reduce forward, identity backward)
after the row-parallel layer. One all-reduce forward and one backward per MLP.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["copy_to_parallel", "reduce_from_parallel", "ColumnParallelLinear", "RowParallelLinear",
           "TensorParallelMLP", "shard_range"]


class _CopyToParallel(torch.autograd.Function):
    """f: identity forward; all-reduce (sum) of the gradient backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # noqa: D102
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromParallel(torch.autograd.Function):
    """g: all-reduce (sum) forward; identity backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # noqa: D102
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return grad, None


def copy_to_parallel(x: Tensor, group=None) -> Tensor:
    """Megatron's f: the same ``x`` on every rank forward, gradients summed over ranks backward."""
    return _CopyToParallel.apply(x, group)


def reduce_from_parallel(x: Tensor, group=None) -> Tensor:
    """Megatron's g: partial results summed over ranks forward, the gradient passed through backward."""
    return _ReduceFromParallel.apply(x, group)


def shard_range(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The slice [start, stop) of ``size`` features that ``rank`` owns (``size`` must divide evenly)."""
    if size % world_size:
        raise ValueError(f"a dimension of {size} features does not split evenly over {world_size} ranks")
    per_rank = size // world_size
    return rank * per_rank, (rank + 1) * per_rank


def _init_linear(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """nn.Linear's default initialisation, with the full layer's fan-in."""
    bound = 1 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


class ColumnParallelLinear(nn.Module):
    """y_r = x A_r^T + b_r: this rank's out_features/p output features (``gather_output`` all-gathers them)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, gather_output: bool = False,
                 group=None, dtype: torch.dtype | None = None):
        super().__init__()
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.in_features, self.out_features, self.gather_output = in_features, out_features, gather_output
        start, stop = shard_range(out_features, self.rank, self.world_size)
        self.weight = nn.Parameter(torch.empty(stop - start, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(stop - start, dtype=dtype)) if bias else None
        _init_linear(self.weight, self.bias, in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, gather_output: bool = False, group=None) -> "ColumnParallelLinear":
        """This rank's rows of a full ``nn.Linear`` (same result as the full layer, split by output feature)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, gather_output=gather_output,
                    group=group, dtype=linear.weight.dtype)
        start, stop = shard_range(linear.out_features, layer.rank, layer.world_size)
        with torch.no_grad():
            layer.weight.copy_(linear.weight[start:stop])
            if layer.bias is not None:
                layer.bias.copy_(linear.bias[start:stop])
        return layer

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must have {self.in_features} features in its last dim, got shape {tuple(x.shape)}")
        y = F.linear(copy_to_parallel(x, self.group), self.weight, self.bias)
        if not self.gather_output:
            return y
        parts = [torch.empty_like(y) for _ in range(self.world_size)]
        dist.all_gather(parts, y.contiguous(), group=self.group)
        parts[self.rank] = y  # keep this rank's own part in the graph (all_gather has no autograd)
        return torch.cat(parts, dim=-1)


class RowParallelLinear(nn.Module):
    """z = sum_r x_r B_r^T + b: this rank's in_features/p input features, outputs summed by one all-reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group=None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.in_features, self.out_features = in_features, out_features
        start, stop = shard_range(in_features, self.rank, self.world_size)
        self.weight = nn.Parameter(torch.empty(out_features, stop - start, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        _init_linear(self.weight, self.bias, in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, group=None) -> "RowParallelLinear":
        """This rank's columns of a full ``nn.Linear`` (the bias, added once after the sum, is kept whole)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group=group,
                    dtype=linear.weight.dtype)
        start, stop = shard_range(linear.in_features, layer.rank, layer.world_size)
        with torch.no_grad():
            layer.weight.copy_(linear.weight[:, start:stop])
            if layer.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x_parallel: Tensor) -> Tensor:
        if x_parallel.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"input must hold this rank's {self.weight.shape[1]} of {self.in_features} features in "
                             f"its last dim, got shape {tuple(x_parallel.shape)}")
        z = reduce_from_parallel(F.linear(x_parallel, self.weight), self.group)
        return z + self.bias if self.bias is not None else z


class TensorParallelMLP(nn.Module):
    """Z = GeLU(X A) B with A column-parallel and B row-parallel: one all-reduce forward, one backward."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, *, group=None, dtype: torch.dtype | None = None):
        super().__init__()
        self.up = ColumnParallelLinear(d_model, d_ff, bias, group=group, dtype=dtype)
        self.down = RowParallelLinear(d_ff, d_model, bias, group=group, dtype=dtype)

    @classmethod
    def from_dense(cls, up: nn.Linear, down: nn.Linear, *, group=None) -> "TensorParallelMLP":
        """Shard a single-process MLP ``down(gelu(up(x)))`` onto this rank."""
        mlp = cls.__new__(cls)
        nn.Module.__init__(mlp)
        mlp.up = ColumnParallelLinear.from_linear(up, group=group)
        mlp.down = RowParallelLinear.from_linear(down, group=group)
        return mlp

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))
