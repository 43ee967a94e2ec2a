"""Data parallelism from scratch: a ``DistributedDataParallel`` with gradient buckets and overlap.

Every rank holds the whole model and a different slice of the batch. With the same parameters everywhere and the
loss of each rank a mean over an equal share B/p of the global batch, the gradient of the global mean loss is the
average of the ranks' gradients, g = (1/p) sum_r g_r, so after an all-reduce and a division by p every rank takes
the same optimizer step as one process on the whole batch (Li et al. 2020, PyTorch DDP).

:class:`DistributedDataParallel` (same arguments as torch's for what it implements):

1. broadcasts parameters and buffers from rank 0 at construction (and buffers before every forward);
2. groups parameters into buckets of at most ``bucket_cap_mb`` megabytes, in reverse registration order (the
   order backward produces their gradients);
3. a post-accumulate-grad hook on each parameter counts it ready; when its bucket is complete, the bucket's
   gradients are copied into one flat buffer and an asynchronous all-reduce is launched while backward still computes the earlier layers' gradients (buckets are
   launched in index order, the same order on every rank);
4. at the end of backward waits for the all-reduces, divides by p and writes the averages back to ``.grad``;
5. ``no_sync()`` skips steps 3-4, so gradients accumulate locally over micro-batches and are averaged once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistributedDataParallel", "assign_buckets", "Bucket", "allreduce_gradients_per_parameter"]


def assign_buckets(sizes_bytes: Sequence[int], cap_bytes: float) -> list[list[int]]:
    """Indices of parameters, grouped into buckets in reverse order: a new bucket starts when adding the next
    parameter would exceed ``cap_bytes`` (a parameter larger than the cap gets a bucket of its own; a cap of 0
    gives one bucket per parameter)."""
    if cap_bytes < 0:
        raise ValueError(f"cap_bytes must be >= 0, got {cap_bytes}")
    buckets: list[list[int]] = []
    filled = 0.0
    for index in reversed(range(len(sizes_bytes))):
        size = sizes_bytes[index]
        if size < 0:
            raise ValueError(f"sizes must be >= 0, got {size} at index {index}")
        if buckets and filled + size <= cap_bytes:
            buckets[-1].append(index)
            filled += size
        else:
            buckets.append([index])
            filled = size
    return buckets


@dataclass
class Bucket:
    """A flat buffer for the gradients of some parameters, and the state of its all-reduce in this backward."""

    params: list[nn.Parameter]
    buffer: Tensor
    offsets: list[int]
    index: int = 0
    views: list[Tensor] = field(default_factory=list)  # the buffer seen as each parameter's gradient
    pending: int = 0
    work: Any = None
    # times (perf_counter) of the last backward, for the overlap timeline
    launched_s: float | None = None
    done_s: float | None = None

    @property
    def n_bytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()


@dataclass
class StepTimeline:
    """When things happened in the last synchronised backward (seconds since its first gradient hook)."""

    backward_end_s: float = 0.0
    buckets: list[tuple[int, float, float]] = field(default_factory=list)  # (bytes, launched, all-reduce done)
    wait_end_s: float = 0.0


class DistributedDataParallel(nn.Module):
    """Wrap ``module`` for data-parallel training over the default (or given) process group.

    ``bucket_cap_mb``: largest bucket in MB (10^6 bytes as in torch; 0 = one all-reduce per parameter).
    ``overlap``: launch each bucket's all-reduce as soon as it fills (True), or all of them after backward (False).
    """

    def __init__(self, module: nn.Module, *, bucket_cap_mb: float = 25.0, broadcast_buffers: bool = True,
                 overlap: bool = True, process_group=None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(bucket_cap_mb, (int, float)) or bucket_cap_mb < 0:
            raise ValueError(f"bucket_cap_mb must be a number >= 0, got {bucket_cap_mb!r}")
        if not dist.is_initialized():
            raise RuntimeError("DistributedDataParallel needs a process group: call labkit.parallel.init_from_env() "
                               "or run under labkit.parallel.launch")
        self.module = module
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.broadcast_buffers = broadcast_buffers
        self.overlap = overlap
        self.require_backward_grad_sync = True
        self._src = dist.get_global_rank(process_group, 0) if process_group is not None else 0
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, self._src, group=process_group)
        self.bucket_cap_mb = bucket_cap_mb
        self.buckets = self._build_buckets(bucket_cap_mb * 1e6)
        self._bucket_of: dict[int, Bucket] = {id(param): bucket for bucket in self.buckets for param in bucket.params}
        self._next_to_launch = 0
        self._in_backward = False
        self._t0 = 0.0
        self.timeline = StepTimeline()
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready)
                       for p in module.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------------- buckets
    def _build_buckets(self, cap_bytes: float) -> list[Bucket]:
        params = [p for p in self.module.parameters() if p.requires_grad]
        buckets: list[Bucket] = []
        # one bucket holds one dtype on one device: group them, then fill buckets within each group
        groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
        for p in params:
            groups.setdefault((p.dtype, p.device), []).append(p)
        for (dtype, device), members in groups.items():
            for indices in assign_buckets([p.numel() * p.element_size() for p in members], cap_bytes):
                chosen = [members[i] for i in indices]
                offsets, total = [], 0
                for p in chosen:
                    offsets.append(total)
                    total += p.numel()
                buffer = torch.zeros(total, dtype=dtype, device=device)
                views = [buffer[o: o + p.numel()].view_as(p) for p, o in zip(chosen, offsets)]
                buckets.append(Bucket(chosen, buffer, offsets, len(buckets), views))
        return buckets

    def _on_grad_ready(self, param: Tensor) -> None:
        if not self.require_backward_grad_sync:
            return
        if not self._in_backward:  # the first gradient of this backward
            self._in_backward = True
            self._t0 = time.perf_counter()
            for bucket in self.buckets:
                bucket.pending, bucket.work, bucket.launched_s, bucket.done_s = len(bucket.params), None, None, None
            self._next_to_launch = 0
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)
        bucket = self._bucket_of[id(param)]
        bucket.pending -= 1
        if bucket.pending == 0 and self.overlap:
            self._launch_ready_buckets()

    def _launch(self, bucket: Bucket) -> None:
        """Copy the bucket's gradients into its flat buffer (one op) and start their all-reduce."""
        torch.cat([p.grad.reshape(-1) for p in bucket.params], out=bucket.buffer)
        bucket.launched_s = time.perf_counter() - self._t0
        bucket.work = dist.all_reduce(bucket.buffer, group=self.process_group, async_op=True)

        def mark_done(_future: Any, bucket: Bucket = bucket) -> None:
            bucket.done_s = time.perf_counter() - self._t0

        bucket.work.get_future().then(mark_done)

    def _launch_ready_buckets(self) -> None:
        """Launch buckets in index order: bucket i only after buckets 0..i-1, so every rank issues the same order."""
        while self._next_to_launch < len(self.buckets) and self.buckets[self._next_to_launch].pending == 0:
            self._launch(self.buckets[self._next_to_launch])
            self._next_to_launch += 1

    def _finish_backward(self) -> None:
        """End of backward: launch what is left, wait, average, write the gradients back."""
        self._in_backward = False
        backward_end = time.perf_counter() - self._t0
        if any(b.pending > 0 for b in self.buckets):
            names = {id(p): n for n, p in self.module.named_parameters()}
            unused = [names[id(p)] for b in self.buckets if b.pending > 0 for p in b.params if p.grad is None]
            raise RuntimeError(f"parameters received no gradient in this backward ({unused[:5]}...): every "
                               "trainable parameter must take part in the loss for DistributedDataParallel")
        self._launch_ready_buckets()
        for bucket in self.buckets:
            bucket.work.wait()
            bucket.buffer.div_(self.world_size)
            torch._foreach_copy_([p.grad for p in bucket.params], bucket.views)
        wait_end = time.perf_counter() - self._t0
        self.timeline = StepTimeline(backward_end, [(b.n_bytes, b.launched_s or 0.0,
                                                     b.done_s if b.done_s is not None else wait_end)
                                                    for b in self.buckets], wait_end)

    # ------------------------------------------------------------------------------------------- module API
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.broadcast_buffers:  # as torch does, also inside no_sync()
            with torch.no_grad():
                for buffer in self.module.buffers():
                    dist.broadcast(buffer.data, self._src, group=self.process_group)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside: backward accumulates gradients locally, no communication. The next backward outside averages
        the accumulated sum across ranks."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)  # e.g. model.loss(...) on the wrapped GPT

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def allreduce_gradients_per_parameter(module: nn.Module, group=None) -> None:
    """The baseline: after backward, one blocking all-reduce per parameter, then divide by p."""
    world_size = dist.get_world_size(group)
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, group=group)
            param.grad.div_(world_size)
