"""Choosing a compression: measure every compressed variant of one model the same way, then compare.

The paper (Mei et al. 2024) compares quantization, pruning and distillation "in different scenarios". This
module holds only the comparison machinery; the compressions themselves come from :mod:`labkit.quant`,
:mod:`labkit.prune` and :mod:`labkit.distill`.

* size model -- :func:`bytes_per_weight`: bytes a stored weight costs in a format, scales and sparse indices
  included (quantized: ``b/8 + 4/g`` for ``b`` bits and one fp32 scale per group of ``g``; sparse formats from
  :func:`labkit.prune.storage_bytes`); :func:`stored_bytes`: the bytes of a whole model as it would be stored
  (quantized linears' real bytes from :func:`labkit.quant.linear_weight_bytes`, each float linear in its smallest
  sparse format, everything else dense, shared tensors once);
* latency model -- :func:`matmul_intensity` and :func:`roofline_seconds`: a ``(M, K) x (K, N)`` product moves
  ``K N b_w + (M K + M N) b_a`` bytes for ``2 M K N`` FLOPs; below the machine balance ``peak / bandwidth`` it is
  memory-bound (batch 1), above it compute-bound (large batches);
* measurement -- :func:`measure_classifier` returns a :class:`Measurement` (validation accuracy through
  :func:`labkit.train.evaluate_classifier`, stored bytes, CPU latency at batch 1 and throughput at a large batch
  through :func:`labkit.bench.time_fn` under :func:`labkit.bench.cpu_threads`);
* choice -- :func:`pareto_front` (cost down, accuracy up), :func:`best_under_budget` (the scenario question "most
  accurate within a latency / size budget") and :func:`cheapest_above` (the least cost above an accuracy floor);
* :func:`cached_finetune` -- fine-tune a compressed copy of a model with :func:`labkit.train.train_classifier`,
  cached by :func:`labkit.train.cached_train`, on all or part of the training data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from labkit import bench, prune, quant, train

__all__ = [
    "SPARSE_FORMATS", "bytes_per_weight", "linear_stored_bytes", "stored_bytes", "matmul_intensity",
    "roofline_seconds", "Measurement", "measure_classifier", "pareto_front", "best_under_budget", "cheapest_above",
    "cached_finetune", "COSTS",
]

SPARSE_FORMATS = ("dense", "csr", "bitmask", "2:4")
COSTS = ("size_bytes", "latency_s", "seconds_per_example")


# ----------------------------------------------------------------------------------------------------------
# size model
# ----------------------------------------------------------------------------------------------------------


def bytes_per_weight(fmt: str, *, bits: int = 8, group_size: int | None = None, sparsity: float = 0.0,
                     value_bytes: int = 4, index_bytes: int = 4, shape: tuple[int, int] = (1024, 1024)) -> float:
    """Bytes a stored weight costs on average in a ``(rows, cols)`` matrix.

    ``"float"``: ``value_bytes``; ``"int"``: ``bits/8 + 4/g`` (integers plus one fp32 scale per group of ``g``
    inputs; ``group_size=None`` means one scale per row, ``g = cols``); a sparse format of :data:`SPARSE_FORMATS`
    at ``sparsity``: :func:`labkit.prune.storage_bytes` divided by ``rows * cols``."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (rows, cols) of positive ints, got {shape!r}")
    rows, cols = shape
    if fmt == "float":
        return float(value_bytes)
    if fmt == "int":
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an int in [1, 8], got {bits!r}")
        group = cols if group_size is None else group_size
        if not isinstance(group, int) or group < 1:
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        return bits / 8 + 4 / group
    if fmt in SPARSE_FORMATS:
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
        nnz = rows * cols - prune.n_to_prune(sparsity, rows * cols)
        if fmt == "2:4":
            nnz = rows * cols // 2
        return prune.storage_bytes(shape, nnz, fmt, value_bytes, index_bytes) / (rows * cols)
    raise ValueError(f"fmt must be 'float', 'int' or one of {SPARSE_FORMATS}, got {fmt!r}")


def _is_quantized(module: nn.Module) -> bool:
    return isinstance(module, (quant.Int8DynamicLinear, quant.WeightOnlyLinear))


def linear_stored_bytes(module: nn.Module, formats: Sequence[str] = SPARSE_FORMATS) -> tuple[int, str]:
    """``(bytes, format)`` of a linear's weight as stored plus its bias: a quantized linear's real bytes
    (:func:`labkit.quant.linear_weight_bytes`, integers and scales); a float one in the smallest of ``formats``
    (:func:`labkit.prune.storage_bytes`; "2:4" only when the weight is 2:4 sparse)."""
    bias = getattr(module, "bias", None)
    bias_bytes = 0 if bias is None else bias.numel() * bias.element_size()
    if _is_quantized(module):
        return quant.linear_weight_bytes(module) + bias_bytes, "int"
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected a linear module, got {type(module).__name__}")
    unknown = set(formats) - set(SPARSE_FORMATS)
    if unknown or not formats:
        raise ValueError(f"formats must be some of {SPARSE_FORMATS}, got {tuple(formats)!r}")
    weight = module.weight.detach()
    shape, nnz, size = tuple(weight.shape), int(torch.count_nonzero(weight)), weight.element_size()
    options = []
    for fmt in formats:
        if fmt == "2:4" and (shape[1] % 4 or not prune.is_nm_sparse(weight, 2, 4)):
            continue
        options.append((prune.storage_bytes(shape, nnz, fmt, value_bytes=size), fmt))
    best, fmt = min(options)
    return best + bias_bytes, fmt


def stored_bytes(model: nn.Module, formats: Sequence[str] = SPARSE_FORMATS) -> int:
    """Bytes of ``model`` as stored: :func:`labkit.quant.model_bytes` (every parameter and buffer once), with each
    linear counted by :func:`linear_stored_bytes` instead (a masked linear by its effective weight, so neither the
    original values nor the mask count; a linear whose weight is shared with another module, a tied head, stays
    dense). The model is not changed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    owners: dict[int, int] = {}
    for _, t in model.named_parameters(remove_duplicate=False):
        owners[t.data_ptr()] = owners.get(t.data_ptr(), 0) + 1
    total = quant.model_bytes(model)
    for module in model.modules():
        if not (_is_quantized(module) or isinstance(module, nn.Linear)):
            continue
        if isinstance(module, nn.Linear) and owners.get(module.weight.data_ptr(), 0) > 1:
            continue
        total += linear_stored_bytes(module, formats)[0] - quant.model_bytes(module)
    return total


# ----------------------------------------------------------------------------------------------------------
# latency model
# ----------------------------------------------------------------------------------------------------------


def matmul_intensity(m: int, k: int, n: int, weight_bytes: float = 4.0, activation_bytes: float = 4.0) -> float:
    """Arithmetic intensity (FLOPs per byte moved) of ``(M, K) x (K, N)``: ``2 M K N / (K N b_w + (M K + M N) b_a)``.
    At M = 1 it is about ``2 / b_w``: the weights' bytes decide the time (memory-bound)."""
    for name, value in (("m", m), ("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not weight_bytes > 0 or not activation_bytes > 0:
        raise ValueError(f"byte sizes must be positive, got {weight_bytes!r}, {activation_bytes!r}")
    return 2 * m * k * n / (k * n * weight_bytes + (m * k + m * n) * activation_bytes)


def roofline_seconds(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """Roofline time ``max(flops / peak, bytes / bandwidth)``: the slower of computing and moving the data."""
    if not peak_flops > 0 or not bandwidth > 0:
        raise ValueError(f"peak_flops and bandwidth must be positive, got {peak_flops!r}, {bandwidth!r}")
    if flops < 0 or bytes_moved < 0:
        raise ValueError(f"flops and bytes_moved must be >= 0, got {flops!r}, {bytes_moved!r}")
    return max(flops / peak_flops, bytes_moved / bandwidth)


# ----------------------------------------------------------------------------------------------------------
# measuring one model
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One compressed model, measured: validation accuracy and loss, parameters, stored bytes, median CPU latency
    at batch 1 (seconds), and at ``batch`` examples a call the time per example and examples per second."""

    name: str
    family: str
    accuracy: float
    val_loss: float
    parameters: int
    size_bytes: int
    latency_s: float
    seconds_per_example: float
    batch: int
    threads: int
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Examples per second at the large batch."""
        return 1.0 / self.seconds_per_example

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": self.throughput}


def _count_weights(model: nn.Module) -> int:
    """Parameters, counting a quantized linear's integer weights and bias as parameters (they are the same
    numbers, stored smaller) and shared tensors once; pruned zeros are still counted (see ``size_bytes``)."""
    seen, total = set(), 0
    for t in model.parameters():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel()
    for module in model.modules():
        if _is_quantized(module):
            total += module.in_features * module.out_features + (0 if module.bias is None else module.bias.numel())
    return total


def measure_classifier(name: str, model: nn.Module, task: Any, *, family: str = "", batch: int = 64,
                       warmup: int = 2, repeats: int = 7, threads: int = 1, notes: str = "",
                       formats: Sequence[str] = SPARSE_FORMATS) -> Measurement:
    """Measure a classifier on ``task`` (a :class:`labkit.zoo.ClassifierData`) on the CPU: accuracy and loss on the
    validation set, :func:`stored_bytes`, the median of ``repeats`` timed calls on one example (batch 1) and on
    ``batch`` examples, on ``threads`` CPU threads."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for what, value in (("batch", batch), ("repeats", repeats), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    model = model.cpu().eval()
    metrics = train.evaluate_classifier(model, task.val_ids, task.val_labels, task.val_padding)
    reps = math.ceil(batch / task.val_ids.size(0))
    ids, pad = task.val_ids.repeat(reps, 1)[:batch], task.val_padding.repeat(reps, 1)[:batch]
    one_ids, one_pad = ids[:1], pad[:1]

    def run_one() -> Tensor:
        return model(one_ids, padding_mask=one_pad)

    def run_batch() -> Tensor:
        return model(ids, padding_mask=pad)

    with torch.inference_mode(), bench.cpu_threads(threads):
        one = bench.time_fn(run_one, warmup=warmup, repeats=repeats, device="cpu")
        many = bench.time_fn(run_batch, warmup=warmup, repeats=repeats, device="cpu")
    return Measurement(name=name, family=family, accuracy=float(metrics["accuracy"]), val_loss=float(metrics["loss"]),
                       parameters=_count_weights(model), size_bytes=stored_bytes(model, formats),
                       latency_s=one.median_s, seconds_per_example=many.median_s / batch, batch=batch,
                       threads=threads, notes=notes)


# ----------------------------------------------------------------------------------------------------------
# choosing
# ----------------------------------------------------------------------------------------------------------


def _as_floats(values: Iterable[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{name} must not contain NaN")
    return out


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (cost lower or equal and score higher or equal, one of them
    strictly), sorted by cost: the only candidates worth choosing when lower cost and higher score are wanted.
    Equal points are all kept. Sort by cost, then sweep keeping each point that beats the best score so far."""
    costs, scores = _as_floats(costs, "costs"), _as_floats(scores, "scores")
    if len(costs) != len(scores):
        raise ValueError(f"costs and scores must have the same length, got {len(costs)} and {len(scores)}")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    front: list[int] = []
    best_score, best_cost = -math.inf, None
    for i in order:
        if scores[i] > best_score:
            front.append(i)
            best_score, best_cost = scores[i], costs[i]
        elif scores[i] == best_score and costs[i] == best_cost:
            front.append(i)  # an exact duplicate of a front point
    return front


def _cost(m: Measurement, cost: str) -> float:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    return float(getattr(m, cost))


def best_under_budget(measurements: Sequence[Measurement], cost: str, budget: float) -> Measurement | None:
    """The most accurate measurement whose ``cost`` (one of :data:`COSTS`) is at most ``budget`` (ties: the
    cheaper one), or None when none fits: "the best model for an edge CPU / a memory cap"."""
    fitting = [m for m in measurements if _cost(m, cost) <= budget]
    return max(fitting, key=lambda m: (m.accuracy, -_cost(m, cost)), default=None)


def cheapest_above(measurements: Sequence[Measurement], cost: str, accuracy_floor: float) -> Measurement | None:
    """The measurement of least ``cost`` whose accuracy is at least ``accuracy_floor`` (ties: the more accurate),
    or None when none reaches the floor."""
    good = [m for m in measurements if m.accuracy >= accuracy_floor]
    return min(good, key=lambda m: (_cost(m, cost), -m.accuracy), default=None)


# ----------------------------------------------------------------------------------------------------------
# fine-tuning a compressed model, cached
# ----------------------------------------------------------------------------------------------------------


def cached_finetune(name: str, build: Callable[[], nn.Module], task: Any, *, steps: int, lr: float,
                    batch_size: int, weight_decay: float = 0.01, n_train: int | None = None, seed: int = 0,
                    eval_every: int | None = None, key: dict[str, Any] | None = None, profile: Any = None,
                    progress: bool = True) -> tuple[nn.Module, train.History, bool]:
    """Fine-tune ``build()`` (a compressed copy of a trained model: masks stay applied, QAT fake quantizers stay in)
    on ``n_train`` training examples of ``task`` drawn at random with ``seed`` (all when None) with
    :func:`labkit.train.train_classifier`, or load it: :func:`labkit.train.cached_train`. ``key`` must describe
    what ``build`` makes (e.g. the teacher's :func:`labkit.distill.model_fingerprint` and the compression)."""
    n_all = task.train_ids.size(0)
    n_train = n_all if n_train is None else n_train
    if isinstance(n_train, bool) or not isinstance(n_train, int) or not 1 <= n_train <= n_all:
        raise ValueError(f"n_train must be an int in [1, {n_all}] or None, got {n_train!r}")
    settings = {"steps": steps, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
                "n_train": n_train, "seed": seed, "eval_every": eval_every}
    full_key = {"name": name, "data": task.key, "profile": getattr(profile, "name", profile), **settings,
                "build": key or {}}

    rows = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:n_train]

    def run(model: nn.Module) -> train.History:
        return train.train_classifier(
            model, task.train_ids[rows], task.train_labels[rows], padding_mask=task.train_padding[rows],
            steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, val_ids=task.val_ids,
            val_labels=task.val_labels, val_padding_mask=task.val_padding, eval_every=eval_every,
            progress=progress, seed=seed)

    return train.cached_train(full_key, build, run)
