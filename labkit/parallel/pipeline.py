"""Pipeline parallelism with the GPipe schedule (Huang et al. 2019): stages on ranks, micro-batches in flight.

The model is cut into p stages, one a rank. A batch is split into m micro-batches; stage s runs the forward of
micro-batch i at time slot s + i, and after all forwards the backwards run in reverse. With a forward taking t_f
and a backward t_b per micro-batch and stage, one step lasts (m + p - 1)(t_f + t_b), of which each stage computes
m (t_f + t_b): the idle share, the *bubble*, is

    bubble = (p - 1) / (m + p - 1),

small only when m >> p. :func:`gpipe_schedule` lays the schedule out as a timeline; :func:`run_pipeline_step`
runs it for real, sending activations forward and their gradients back with ``send``/``recv``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["bubble_fraction", "PipelineEvent", "gpipe_schedule", "timeline_bubble", "draw_timeline",
           "run_pipeline_step"]

_MAX_DIMS = 8


def bubble_fraction(n_stages: int, n_micro: int) -> float:
    """Idle share of a GPipe step: (p - 1) / (m + p - 1)."""
    if n_stages < 1 or n_micro < 1:
        raise ValueError(f"need n_stages >= 1 and n_micro >= 1, got {n_stages} and {n_micro}")
    return (n_stages - 1) / (n_micro + n_stages - 1)


@dataclass(frozen=True)
class PipelineEvent:
    """One stage computing one micro-batch: ``kind`` 'F' (forward) or 'B' (backward), from ``start`` to ``end``."""

    stage: int
    micro: int
    kind: str
    start: float
    end: float


def gpipe_schedule(n_stages: int, n_micro: int, t_forward: float = 1.0, t_backward: float = 2.0) -> list[PipelineEvent]:
    """The GPipe timeline: every event starts as soon as its stage is free and its input has arrived
    (forward of micro i at stage s after stage s-1's; backward after stage s+1's), communication free."""
    bubble_fraction(n_stages, n_micro)  # validates
    free = [0.0] * n_stages
    done_f: dict[tuple[int, int], float] = {}
    events = []
    for i in range(n_micro):
        for s in range(n_stages):
            start = max(free[s], done_f.get((s - 1, i), 0.0))
            done_f[(s, i)] = free[s] = start + t_forward
            events.append(PipelineEvent(s, i, "F", start, start + t_forward))
    flush = max(free)  # GPipe: the backwards start after the last forward (a synchronous flush)
    done_b: dict[tuple[int, int], float] = {}
    free = [flush] * n_stages
    for i in reversed(range(n_micro)):
        for s in reversed(range(n_stages)):
            start = max(free[s], done_b.get((s + 1, i), flush))
            done_b[(s, i)] = free[s] = start + t_backward
            events.append(PipelineEvent(s, i, "B", start, start + t_backward))
    return events


def timeline_bubble(events: list[PipelineEvent]) -> float:
    """Measured idle share of a timeline: 1 - busy time / (stages x makespan)."""
    if not events:
        raise ValueError("events is empty")
    stages = {e.stage for e in events}
    span = max(e.end for e in events) - min(e.start for e in events)
    busy = sum(e.end - e.start for e in events)
    return 1.0 - busy / (len(stages) * span)


def draw_timeline(events: list[PipelineEvent], ax: Any = None, *, title: str | None = None,
                  unit: str = "time slots") -> Any:
    """Gantt chart of a pipeline timeline: one row a stage, forwards light, backwards dark, micro-batch numbers."""
    from labkit import plot

    if ax is None:
        _, ax = plot.figure(figsize=(9, 2.6))
    colors = {"F": plot.COLORS[0], "B": plot.COLORS[1]}
    origin = min(e.start for e in events)
    for e in events:
        ax.barh(e.stage, e.end - e.start, left=e.start - origin, color=colors[e.kind], edgecolor="white",
                alpha=0.55 if e.kind == "F" else 0.9)
        ax.text((e.start + e.end) / 2 - origin, e.stage, str(e.micro), ha="center", va="center", fontsize=7)
    n_stages = max(e.stage for e in events) + 1
    ax.set_yticks(range(n_stages), [f"stage {s}" for s in range(n_stages)])
    ax.invert_yaxis()
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colors["F"], alpha=0.55, label="forward"),
                       Patch(color=colors["B"], alpha=0.9, label="backward")],
              loc="lower right", fontsize=7, framealpha=0.9)
    ax.set_xlabel(unit)
    ax.set_title(title or f"GPipe: bubble {timeline_bubble(events):.0%}")
    return ax


def _send_tensor(tensor: Tensor, to_rank: int) -> None:
    """Send the shape first (a fixed-size int64 header), then the data."""
    header = torch.full((_MAX_DIMS + 1,), -1, dtype=torch.int64)
    header[0] = tensor.dim()
    header[1: 1 + tensor.dim()] = torch.tensor(tensor.shape)
    dist.send(header.to(tensor.device), to_rank)
    dist.send(tensor.contiguous(), to_rank)


def _recv_tensor(from_rank: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    header = torch.empty(_MAX_DIMS + 1, dtype=torch.int64, device=device)
    dist.recv(header, from_rank)
    shape = tuple(int(d) for d in header[1: 1 + int(header[0])])
    tensor = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(tensor, from_rank)
    return tensor


def run_pipeline_step(stage: nn.Module, micro_inputs: list[Tensor] | None, micro_targets: list[Tensor] | None,
                      loss_fn: Callable[[Tensor, Tensor], Tensor], n_micro: int) -> dict[str, Any]:
    """One GPipe training step on this rank's ``stage`` (rank r = stage r): all m forwards, then all m backwards.

    Rank 0 gives ``micro_inputs``, the last rank ``micro_targets``; the loss is the mean of the micro-batch losses
    (so gradients equal one process on the whole batch). Gradients accumulate in ``stage``'s parameters. Returns
    ``{"loss": float (last rank) or None, "events": [PipelineEvent]}`` with ``time.perf_counter()`` times, which
    on one machine share a clock across processes (Linux: CLOCK_MONOTONIC), so the stages' events line up.
    """
    rank, p = dist.get_rank(), dist.get_world_size()
    first, last = rank == 0, rank == p - 1
    if first and (micro_inputs is None or len(micro_inputs) != n_micro):
        raise ValueError(f"rank 0 needs {n_micro} micro-batch inputs, got {None if micro_inputs is None else len(micro_inputs)}")
    if last and (micro_targets is None or len(micro_targets) != n_micro):
        raise ValueError(f"the last rank needs {n_micro} micro-batch targets")
    param = next(stage.parameters())
    dtype, device = param.dtype, param.device
    inputs, outputs, events, losses = [], [], [], []
    t0 = 0.0  # absolute perf_counter times: comparable between the processes of one machine
    for i in range(n_micro):
        x = micro_inputs[i] if first else _recv_tensor(rank - 1, dtype, device).requires_grad_()
        start = time.perf_counter() - t0
        y = stage(x)
        if last:
            loss = loss_fn(y, micro_targets[i]) / n_micro
            losses.append(loss.detach())
            y = loss
        events.append(PipelineEvent(rank, i, "F", start, time.perf_counter() - t0))
        if not last:
            _send_tensor(y.detach(), rank + 1)
        inputs.append(x)
        outputs.append(y)
    for i in reversed(range(n_micro)):
        grad = None if last else _recv_tensor(rank + 1, outputs[i].dtype, device)
        start = time.perf_counter() - t0
        outputs[i].backward(grad)
        events.append(PipelineEvent(rank, i, "B", start, time.perf_counter() - t0))
        if not first:
            _send_tensor(inputs[i].grad, rank - 1)
    return {"loss": float(sum(losses)) if last else None, "events": events}
