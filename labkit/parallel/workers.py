"""The chapter's experiments as worker functions: each runs on every rank of a launched group.

They live in a module (not a notebook cell) because spawned workers import them by name. Tests, the notebook and
the benchmarks call them through :func:`labkit.parallel.launch` or a :class:`~labkit.parallel.Cluster`; each
returns plain numbers (or small tensors) so that the parent can compare and plot.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.parallel.collectives import naive_all_reduce, ring_all_reduce
from labkit.parallel.ddp import DistributedDataParallel, allreduce_gradients_per_parameter
from labkit.parallel.launch import rank_device
from labkit.parallel.pipeline import run_pipeline_step
from labkit.parallel.tensor_parallel import TensorParallelMLP
from labkit.parallel.zero import ZeroRedundancyOptimizer, optimizer_state_bytes

__all__ = ["build_model", "model_batches", "check_ring_all_reduce", "compare_ddp", "compare_zero",
           "compare_tensor_parallel", "compare_pipeline", "fail_on_rank", "time_ddp_variants", "ddp_timeline",
           "report_environment"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "int64": torch.int64, "int32": torch.int32}


def _max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x.detach().double() - y.detach().double()).abs().max()) if x.numel() else 0.0
               for x, y in zip(a, b))


def report_environment() -> dict[str, Any]:
    """What each rank sees: rank, world size, backend, its device and its process id."""
    import os

    return {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
            "device": str(rank_device()), "pid": os.getpid(), "threads": torch.get_num_threads()}


def fail_on_rank(failing_rank: int, message: str = "deliberate failure") -> None:
    """``failing_rank`` raises; every other rank waits in a barrier that can never complete."""
    if dist.get_rank() == failing_rank:
        raise RuntimeError(f"{message} on rank {failing_rank}")
    dist.barrier()


# ----------------------------------------------------------------------------------------------------------
# collectives
# ----------------------------------------------------------------------------------------------------------


def check_ring_all_reduce(sizes: list[int], dtype_names: list[str]) -> dict[str, tuple[float, float]]:
    """Ring and naive all-reduce against ``dist.all_reduce`` on rank-dependent data: max abs differences."""
    device, rank = rank_device(), dist.get_rank()
    out = {}
    for name in dtype_names:
        dtype = _DTYPES[name]
        for size in sizes:
            generator = torch.Generator().manual_seed(1000 * rank + size)
            if dtype.is_floating_point:
                data = torch.randn(size, generator=generator).to(dtype)
            else:
                data = torch.randint(-1000, 1000, (size,), generator=generator).to(dtype)
            data = data.to(device).reshape(-1, 1) if size % 2 else data.to(device).reshape(2, -1) if size else data
            expected, ring, naive = data.clone(), data.clone(), data.clone()
            dist.all_reduce(expected)
            ring_all_reduce(ring)
            naive_all_reduce(naive)
            out[f"{name}:{size}"] = (_max_diff([ring], [expected]), _max_diff([naive], [expected]))
    return out


# ----------------------------------------------------------------------------------------------------------
# models and data shared by the DDP, ZeRO and benchmark workers
# ----------------------------------------------------------------------------------------------------------


class _ManySmall(nn.Module):
    """A deep, narrow MLP: many small parameter tensors (2 per layer), plus a buffer that DDP must broadcast."""

    def __init__(self, width: int, depth: int, n_in: int = 8, n_out: int = 4):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(n_in, width)] + [nn.Linear(width, width) for _ in range(depth - 2)]
                                    + [nn.Linear(width, n_out)])
        self.register_buffer("input_scale", torch.ones(n_in))

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.input_scale
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


def build_model(spec: dict[str, Any], seed: int = 0) -> nn.Module:
    """``{"kind": "mlp", "width", "depth"}`` or ``{"kind": "gpt", **TransformerConfig fields}`` (+ "dtype")."""
    torch.manual_seed(seed)
    kind = spec.get("kind", "mlp")
    if kind == "mlp":
        model: nn.Module = _ManySmall(spec.get("width", 16), spec.get("depth", 6))
        with torch.no_grad():  # a rank-dependent buffer: only the broadcast from rank 0 makes the ranks agree
            model.input_scale.fill_(1.0 + 0.1 * seed)
    elif kind == "gpt":
        from labkit.transformer import GPT, TransformerConfig

        fields = {k: v for k, v in spec.items() if k not in ("kind", "dtype")}
        model = GPT(TransformerConfig(**fields))
    else:
        raise ValueError(f"model kind must be 'mlp' or 'gpt', got {kind!r}")
    return model.to(_DTYPES[spec.get("dtype", "float32")]).to(rank_device() if dist.is_initialized() else "cpu")


def model_batches(spec: dict[str, Any], batch_size: int, n_batches: int, seed: int = 1,
                  tokens: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
    """``n_batches`` global batches for ``spec``'s model, the same on every rank (random, or windows of ``tokens``)."""
    generator = torch.Generator().manual_seed(seed)
    dtype = _DTYPES[spec.get("dtype", "float32")]
    batches = []
    for _ in range(n_batches):
        if spec.get("kind", "mlp") == "mlp":
            x = torch.randn(batch_size, 8, generator=generator).to(dtype)
            batches.append((x, torch.sin(x[:, :4] * 2).to(dtype)))
        else:
            seq_len = spec.get("max_len", 32)
            if tokens is None:
                x = torch.randint(0, spec["vocab_size"], (batch_size, seq_len + 1), generator=generator)
            else:
                starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
                x = torch.stack([tokens[s: s + seq_len + 1] for s in starts.tolist()])
            batches.append((x[:, :-1], x[:, 1:]))
    return batches


def _local(batch: tuple[Tensor, Tensor], rank: int, world_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return tuple(t.chunk(world_size)[rank].to(device) for t in batch)  # type: ignore[return-value]


def _make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


# ----------------------------------------------------------------------------------------------------------
# DDP: labkit vs torch vs one process on the whole batch
# ----------------------------------------------------------------------------------------------------------


def _train(model: nn.Module, loss_owner: Any, batches: list[list[tuple[Tensor, Tensor]]], optimizer_name: str,
           lr: float, no_sync: Callable[[], Any] | None) -> list[Tensor]:
    """Train over ``batches`` (each a list of micro-batches, accumulated with ``no_sync`` except the last)."""
    import contextlib

    optimizer = _make_optimizer(optimizer_name, model.parameters(), lr)
    for micro_batches in batches:
        optimizer.zero_grad(set_to_none=True)
        for k, (x, y) in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            with context:
                (loss_owner(x, y) / len(micro_batches)).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def compare_ddp(spec: dict[str, Any], steps: int = 20, batch_size: int = 8, accumulation: int = 1,
                bucket_cap_mb: float = 25.0, optimizer: str = "sgd", lr: float = 0.05, with_torch: bool = True,
                overlap: bool = True) -> dict[str, Any]:
    """Train ``steps`` steps three ways from the same start: labkit DDP, torch DDP, and (on every rank, locally) one
    process on the concatenated global batch. Returns max abs parameter differences and the bucket count."""
    rank, world_size, device = dist.get_rank(), dist.get_world_size(), rank_device()
    data = model_batches(spec, batch_size * world_size, steps * accumulation)
    global_batches = [[tuple(t.to(device) for t in data[s * accumulation + k]) for k in range(accumulation)]
                      for s in range(steps)]
    local_batches = [[_local(b, rank, world_size, device) for b in step] for step in global_batches]

    single = build_model(spec, seed=0)  # rank 0's initial model, as DDP broadcasts it
    single_params = _train(single, lambda x, y: _forward_loss(single, spec, x, y), global_batches, optimizer, lr,
                           None)

    ours = DistributedDataParallel(build_model(spec, seed=rank), bucket_cap_mb=bucket_cap_mb, overlap=overlap)
    ours_params = _train(ours.module, lambda x, y: _forward_loss(ours, spec, x, y), local_batches, optimizer, lr,
                         ours.no_sync)
    result = {"labkit_vs_single": _max_diff(ours_params, single_params), "n_buckets": len(ours.buckets),
              "n_params": len(ours_params)}
    ours.remove_hooks()
    if with_torch:
        theirs = nn.parallel.DistributedDataParallel(build_model(spec, seed=rank), bucket_cap_mb=bucket_cap_mb)
        theirs_params = _train(theirs.module, lambda x, y: _forward_loss(theirs, spec, x, y), local_batches,
                               optimizer, lr, theirs.no_sync)
        result["labkit_vs_torch"] = _max_diff(ours_params, theirs_params)
        result["torch_vs_single"] = _max_diff(theirs_params, single_params)
    return result


def _gpt_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# ----------------------------------------------------------------------------------------------------------
# ZeRO-1
# ----------------------------------------------------------------------------------------------------------


def compare_zero(spec: dict[str, Any], steps: int = 20, batch_size: int = 8, lr: float = 1e-2) -> dict[str, Any]:
    """labkit DDP + ZeRO-1 AdamW against labkit DDP + plain AdamW: max parameter difference after ``steps``, and
    the optimizer-state bytes on this rank in both cases."""
    rank, world_size, device = dist.get_rank(), dist.get_world_size(), rank_device()
    data = [_local(tuple(t.to(device) for t in b), rank, world_size, device)
            for b in model_batches(spec, batch_size * world_size, steps)]
    results = {}
    for name in ("plain", "zero1"):
        model = DistributedDataParallel(build_model(spec, seed=rank))
        params = list(model.module.parameters())
        if name == "plain":
            optimizer: Any = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        else:
            optimizer = ZeroRedundancyOptimizer(params, torch.optim.AdamW, lr=lr, weight_decay=0.01)
        for x, y in data:
            optimizer.zero_grad()
            _forward_loss(model, spec, x, y).backward()
            optimizer.step()
        state = optimizer.state_bytes() if name == "zero1" else optimizer_state_bytes(optimizer)
        results[name] = ([p.detach().clone() for p in params], state)
        model.remove_hooks()
    n_params = sum(p.numel() for p in results["plain"][0])
    return {"max_diff": _max_diff(results["zero1"][0], results["plain"][0]), "n_params": n_params,
            "plain_state_bytes": results["plain"][1], "zero1_state_bytes": results["zero1"][1],
            "element_size": results["plain"][0][0].element_size()}


# ----------------------------------------------------------------------------------------------------------
# tensor and pipeline parallelism
# ----------------------------------------------------------------------------------------------------------


def compare_tensor_parallel(d_model: int = 16, d_ff: int = 64, batch: int = 6, dtype_name: str = "float64",
                            seed: int = 0) -> dict[str, float]:
    """A Megatron MLP on this rank's shards against the full single-process MLP: forward output, input gradient,
    and the gradients of this rank's weight slices."""
    from labkit.parallel.tensor_parallel import shard_range

    dtype, rank, p = _DTYPES[dtype_name], dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)
    up, down = nn.Linear(d_model, d_ff).to(dtype), nn.Linear(d_ff, d_model).to(dtype)
    x = torch.randn(batch, 3, d_model, dtype=dtype)
    target = torch.randn(batch, 3, d_model, dtype=dtype)
    x_full = x.clone().requires_grad_()
    out_full = down(F.gelu(up(x_full)))
    F.mse_loss(out_full, target).backward()

    mlp = TensorParallelMLP.from_dense(up, down)
    x_tp = x.clone().requires_grad_()
    out_tp = mlp(x_tp)
    F.mse_loss(out_tp, target).backward()
    lo, hi = shard_range(d_ff, rank, p)
    return {"forward": _max_diff([out_tp], [out_full]), "input_grad": _max_diff([x_tp.grad], [x_full.grad]),
            "weight_grads": _max_diff([mlp.up.weight.grad, mlp.up.bias.grad, mlp.down.weight.grad, mlp.down.bias.grad],
                                      [up.weight.grad[lo:hi], up.bias.grad[lo:hi], down.weight.grad[:, lo:hi],
                                       down.bias.grad])}


def compare_pipeline(n_micro: int = 4, batch: int = 8, width: int = 32, depth_per_stage: int = 2,
                     dtype_name: str = "float64", repeats: int = 1) -> dict[str, Any]:
    """A GPipe step of an MLP cut into one stage per rank, against one process on the whole batch: max gradient
    difference of this rank's stage, and the wall-clock events of the last repeat."""
    dtype, rank, p = _DTYPES[dtype_name], dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(p * depth_per_stage)]
    full = nn.Sequential(*layers).to(dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, width, generator=generator).to(dtype)
    y = torch.randn(batch, width, generator=generator).to(dtype)
    F.mse_loss(full(x), y).backward()
    stage = full[rank * depth_per_stage: (rank + 1) * depth_per_stage]
    expected = [q.grad.clone() for q in stage.parameters()]
    micro_x, micro_y = list(x.chunk(n_micro)), list(y.chunk(n_micro))
    for _ in range(repeats):
        stage.zero_grad()
        out = run_pipeline_step(stage, micro_x if rank == 0 else None, micro_y if rank == p - 1 else None,
                                F.mse_loss, n_micro)
    got = [q.grad for q in stage.parameters()]
    return {"grad_diff": _max_diff(got, expected), "loss": out["loss"], "events": out["events"]}


# ----------------------------------------------------------------------------------------------------------
# timing: gradient synchronisation variants, and the overlap timeline
# ----------------------------------------------------------------------------------------------------------


def _slowest(times: list[float]) -> list[float]:
    """Each repeat's time on the slowest rank (a step ends when every rank has its gradients)."""
    value = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.tolist()


def time_ddp_variants(spec: dict[str, Any], variants: list[str], batch_size: int = 8, warmup: int = 2,
                      repeats: int = 10, bucket_caps_mb: tuple[float, ...] = (25.0,),
                      tokens: Tensor | None = None) -> dict[str, float]:
    """Seconds of each repeat of one training step (forward, backward, gradient sync, SGD step) per variant,
    repeats interleaved across variants; each the max over ranks. Variants: ``'local'`` (no communication), ``'per_param'``
    (one blocking all-reduce per parameter after backward), ``'labkit'`` (labkit DDP at each cap, overlapped),
    ``'labkit_no_overlap'``, ``'torch'`` (torch DDP at the first cap)."""
    rank, world_size, device = dist.get_rank(), dist.get_world_size(), rank_device()
    x, y = _local(tuple(t.to(device) for t in model_batches(spec, batch_size * world_size, 1, tokens=tokens)[0]),
                  rank, world_size, device)
    steps: dict[str, Callable[[], None]] = {}

    def loss_of(model: nn.Module) -> Callable[[], Tensor]:
        return lambda: _forward_loss(model, spec, x, y)

    def make(model: nn.Module, forward_loss: Callable[[], Tensor], after_backward: Callable[[], None] | None):
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step() -> None:
            optimizer.zero_grad(set_to_none=False)
            forward_loss().backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
        return step

    for variant in variants:
        if variant == "local":
            model = build_model(spec)
            steps[variant] = make(model, loss_of(model), None)
        elif variant == "per_param":
            model = build_model(spec)
            steps[variant] = make(model, loss_of(model), lambda m=model: allreduce_gradients_per_parameter(m))
        elif variant in ("labkit", "labkit_no_overlap"):
            for cap in bucket_caps_mb:
                wrapped = DistributedDataParallel(build_model(spec), bucket_cap_mb=cap, overlap=variant == "labkit")
                name = variant if len(bucket_caps_mb) == 1 else f"{variant}@{cap}"
                steps[name] = make(wrapped.module, loss_of(wrapped), None)
        elif variant == "torch":
            wrapped = nn.parallel.DistributedDataParallel(build_model(spec), bucket_cap_mb=bucket_caps_mb[0])
            steps[variant] = make(wrapped.module, loss_of(wrapped), None)
        else:
            raise ValueError(f"unknown variant {variant!r}")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            dist.barrier()
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: _slowest(samples) for name, samples in times.items()}


def _forward_loss(wrapped: nn.Module, spec: dict[str, Any], x: Tensor, y: Tensor) -> Tensor:
    """Loss through the wrapper's forward (so that torch DDP's hooks and buffer broadcast run)."""
    out = wrapped(x)
    return F.mse_loss(out, y) if spec.get("kind", "mlp") == "mlp" else _gpt_loss(out, y)


def ddp_timeline(spec: dict[str, Any], bucket_cap_mb: float, batch_size: int = 8, warmup: int = 2,
                 tokens: Tensor | None = None) -> dict[str, Any]:
    """One overlapped labkit-DDP backward, recorded: when backward ended, when each bucket's all-reduce was
    launched and finished, when the wait ended (seconds from the first gradient), plus the forward time."""
    rank, world_size, device = dist.get_rank(), dist.get_world_size(), rank_device()
    x, y = _local(tuple(t.to(device) for t in model_batches(spec, batch_size * world_size, 1, tokens=tokens)[0]),
                  rank, world_size, device)
    model = DistributedDataParallel(build_model(spec), bucket_cap_mb=bucket_cap_mb)
    for _ in range(warmup + 1):
        model.zero_grad()
        dist.barrier()
        start = time.perf_counter()
        loss = _forward_loss(model, spec, x, y)
        forward_s = time.perf_counter() - start
        loss.backward()
    timeline = model.timeline
    return {"forward_s": forward_s, "backward_end_s": timeline.backward_end_s, "wait_end_s": timeline.wait_end_s,
            "buckets": timeline.buckets}
