"""Training loops for the book's models, and "train it or load it" checkpoints.

* :func:`train_language_model` -- next-token cross-entropy on random windows of a token stream (AdamW).
* :func:`train_classifier` -- cross-entropy on labelled, padded sequences.
* :func:`evaluate_lm` / :func:`evaluate_classifier` -- mean loss (and accuracy) without gradients, in eval mode.
* :func:`save_checkpoint` / :func:`load_checkpoint` -- atomic writes; loads with ``weights_only=True``.
* :func:`cached_train` -- a checkpoint named by a hash of what defines the model, so that any chapter starts
  from a trained model in seconds the second time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.bench import progress_bar
from labkit.cache import atomic_write, cache_dir as default_cache_dir
from labkit.device import resolve_device

__all__ = [
    "History",
    "train_language_model",
    "train_classifier",
    "evaluate_lm",
    "evaluate_classifier",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "cache_key",
    "cached_train",
]


@dataclass
class History:
    """What a training run recorded: per step the training loss, throughput and elapsed time; at evaluation
    steps the validation loss (and accuracy for classifiers), as ``{step: value}``."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)
    val_loss: dict[int, float] = field(default_factory=dict)
    val_accuracy: dict[int, float] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """The last recorded training loss (NaN before any step)."""
        return self.loss[-1] if self.loss else math.nan

    @property
    def final_val_loss(self) -> float:
        """The validation loss at the last evaluation (NaN when none ran)."""
        return self.val_loss[max(self.val_loss)] if self.val_loss else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts (loadable with ``torch.load(weights_only=True)`` and JSON-friendly)."""
        return {"step": list(self.step), "loss": list(self.loss), "tokens_per_s": list(self.tokens_per_s),
                "wall_s": list(self.wall_s), "val_loss": dict(self.val_loss), "val_accuracy": dict(self.val_accuracy)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        """The inverse of :meth:`to_dict` (keys of the step dicts may be strings after a JSON round trip)."""
        if not isinstance(data, dict):
            raise TypeError(f"expected a dict from History.to_dict(), got {type(data).__name__}")
        steps = {name: {int(k): float(v) for k, v in data.get(name, {}).items()} for name in ("val_loss", "val_accuracy")}
        return cls([int(s) for s in data["step"]], [float(x) for x in data["loss"]],
                   [float(x) for x in data.get("tokens_per_s", [])], [float(x) for x in data.get("wall_s", [])],
                   steps["val_loss"], steps["val_accuracy"])


# ----------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------


def _check_positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _default_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``torch.optim.AdamW``; weight decay on matrices only (not on biases, norm gains or 1-D parameters)."""
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def fit(model: nn.Module, batches: Iterator[tuple[Any, Tensor]], loss_fn: Callable[[nn.Module, Any, Tensor], Tensor], *,
        steps: int, optimizer: torch.optim.Optimizer, evaluate: Callable[[], dict[str, float]] | None = None,
        eval_every: int | None = None, grad_clip: float | None = 1.0, progress: bool = True,
        desc: str = "training") -> History:
    """The training loop every trainer shares: ``steps`` optimizer steps on ``(inputs, targets)`` from ``batches``.

    ``loss_fn(model, inputs, targets)`` gives a scalar loss; gradients are clipped to norm ``grad_clip`` (None: no
    clipping). ``evaluate()`` returns ``{"loss": ..., "accuracy": ...}`` (accuracy optional); it runs every
    ``eval_every`` steps and after the last one. Throughput counts ``targets.numel()`` tokens per step.
    """
    steps = _check_positive("steps", steps)
    if eval_every is not None:
        eval_every = _check_positive("eval_every", eval_every)
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be a positive number or None, got {grad_clip!r}")
    history = History()
    model.train()
    start = time.perf_counter()
    bar = progress_bar(range(1, steps + 1), desc=desc, enabled=progress, unit="step")
    for step in bar:
        inputs, targets = next(batches)
        step_start = time.perf_counter()
        loss = loss_fn(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        value = float(loss.detach())  # synchronises, so the step time below is the real one
        now = time.perf_counter()
        history.step.append(step)
        history.loss.append(value)
        history.tokens_per_s.append(targets.numel() / max(now - step_start, 1e-9))
        history.wall_s.append(now - start)
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}: lower lr or enable grad_clip")
        if evaluate is not None and ((eval_every is not None and step % eval_every == 0) or step == steps):
            metrics = evaluate()
            history.val_loss[step] = float(metrics["loss"])
            if "accuracy" in metrics:
                history.val_accuracy[step] = float(metrics["accuracy"])
        postfix = {"loss": f"{value:.3f}"}
        if history.val_loss:
            postfix["val"] = f"{history.final_val_loss:.3f}"
        bar.set_postfix(postfix, refresh=False)
    bar.close()
    return history


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the model's previous mode restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` if given (the model is moved there), else where the model's parameters are."""
    if device is not None:
        dev = resolve_device(device)
        model.to(dev)
        return dev
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------
# language models
# ----------------------------------------------------------------------------------------------------------


def _lm_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy: ``-1/(BT) sum log p(y_t | x_<=t)`` over logits (B, T, V)."""
    logits = model(inputs)
    if logits.dim() != 3 or logits.shape[:2] != inputs.shape:
        raise ValueError(f"model(x) must return logits of shape (B, T, vocab) = {tuple(inputs.shape)} + (V,), "
                         f"got {tuple(logits.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def evaluate_lm(model: nn.Module, tokens: Tensor, batch_size: int, seq_len: int, n_batches: int | None = None,
                device: str | torch.device | None = None) -> float:
    """Mean next-token loss over the first ``n_batches`` consecutive windows of ``tokens`` (all when None),
    weighted by token count; in eval mode without gradients, the model's mode restored afterwards."""
    from labkit.data import batch_windows

    dev = _model_device(model, device)
    total, count = 0.0, 0
    with _evaluating(model):
        for inputs, targets in batch_windows(tokens, batch_size, seq_len, max_batches=n_batches, device=dev):
            total += float(_lm_loss(model, inputs, targets)) * targets.numel()
            count += targets.numel()
    return total / count


def train_language_model(model: nn.Module, train_tokens: Tensor, *, steps: int, batch_size: int, seq_len: int,
                         lr: float, weight_decay: float = 0.1, val_tokens: Tensor | None = None,
                         eval_every: int | None = None, eval_batches: int | None = 8,
                         optimizer: torch.optim.Optimizer | None = None, device: str | torch.device | None = None,
                         progress: bool = True, seed: int = 0, grad_clip: float | None = 1.0) -> History:
    """Train a causal LM (``model(x) -> logits (B, T, V)``) for ``steps`` AdamW steps on random windows of
    ``train_tokens``; validation loss on ``val_tokens`` every ``eval_every`` steps and at the end.

    Deterministic given ``seed``: it seeds torch's global RNG (dropout) and the window sampler.
    """
    from labkit.data import lm_batches

    torch.manual_seed(seed)
    dev = _model_device(model, device)
    batches = lm_batches(train_tokens, batch_size, seq_len, generator=torch.Generator().manual_seed(seed), device=dev)
    optimizer = optimizer or _default_optimizer(model, lr, weight_decay)
    evaluate = None
    if val_tokens is not None:
        def evaluate() -> dict[str, float]:
            return {"loss": evaluate_lm(model, val_tokens, batch_size, seq_len, eval_batches)}
    return fit(model, batches, _lm_loss, steps=steps, optimizer=optimizer, evaluate=evaluate, eval_every=eval_every,
               grad_clip=grad_clip, progress=progress, desc="training LM")


# ----------------------------------------------------------------------------------------------------------
# classifiers
# ----------------------------------------------------------------------------------------------------------


def _check_classification(ids: Tensor, labels: Tensor, padding_mask: Tensor | None) -> None:
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise ValueError(f"ids must be a (N, T) integer tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
    if not isinstance(labels, Tensor) or labels.shape != ids.shape[:1]:
        raise ValueError(f"labels must have shape (N,) = ({ids.size(0)},), got {getattr(labels, 'shape', labels)}")
    if padding_mask is not None and (not isinstance(padding_mask, Tensor) or padding_mask.shape != ids.shape):
        raise ValueError(f"padding_mask must have the shape of ids {tuple(ids.shape)}, "
                         f"got {getattr(padding_mask, 'shape', padding_mask)}")


def _classifier_logits(model: nn.Module, ids: Tensor, padding_mask: Tensor | None) -> Tensor:
    return model(ids) if padding_mask is None else model(ids, padding_mask=padding_mask)


def evaluate_classifier(model: nn.Module, ids: Tensor, labels: Tensor, padding_mask: Tensor | None = None, *,
                        batch_size: int = 64, device: str | torch.device | None = None) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy": fraction correct}`` over all examples, without gradients."""
    _check_classification(ids, labels, padding_mask)
    dev = _model_device(model, device)
    total_loss, correct = 0.0, 0
    with _evaluating(model):
        for start in range(0, ids.size(0), batch_size):
            part = slice(start, start + batch_size)
            mask = None if padding_mask is None else padding_mask[part].to(dev)
            logits = _classifier_logits(model, ids[part].to(dev), mask)
            target = labels[part].to(dev)
            total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == target).sum())
    return {"loss": total_loss / ids.size(0), "accuracy": correct / ids.size(0)}


def train_classifier(model: nn.Module, ids: Tensor, labels: Tensor, *, padding_mask: Tensor | None = None,
                     steps: int, batch_size: int, lr: float, weight_decay: float = 0.01,
                     val_ids: Tensor | None = None, val_labels: Tensor | None = None,
                     val_padding_mask: Tensor | None = None, eval_every: int | None = None,
                     optimizer: torch.optim.Optimizer | None = None, device: str | torch.device | None = None,
                     progress: bool = True, seed: int = 0, grad_clip: float | None = 1.0) -> History:
    """Train ``model(ids, padding_mask=...) -> logits (N, C)`` with cross-entropy on random mini-batches;
    validation loss and accuracy on ``val_ids``/``val_labels`` every ``eval_every`` steps and at the end."""
    _check_classification(ids, labels, padding_mask)
    batch_size = _check_positive("batch_size", batch_size)
    if (val_ids is None) != (val_labels is None):
        raise ValueError("give both val_ids and val_labels, or neither")
    torch.manual_seed(seed)
    dev = _model_device(model, device)
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[tuple[tuple[Tensor, Tensor | None], Tensor]]:
        while True:
            rows = torch.randint(ids.size(0), (batch_size,), generator=generator)
            mask = None if padding_mask is None else padding_mask[rows].to(dev)
            yield (ids[rows].to(dev), mask), labels[rows].to(dev)

    def loss_fn(module: nn.Module, inputs: tuple[Tensor, Tensor | None], targets: Tensor) -> Tensor:
        return F.cross_entropy(_classifier_logits(module, *inputs), targets)

    evaluate = None
    if val_ids is not None:
        def evaluate() -> dict[str, float]:
            return evaluate_classifier(model, val_ids, val_labels, val_padding_mask, batch_size=batch_size)
    optimizer = optimizer or _default_optimizer(model, lr, weight_decay)
    return fit(model, batches(), loss_fn, steps=steps, optimizer=optimizer, evaluate=evaluate, eval_every=eval_every,
               grad_clip=grad_clip, progress=progress, desc="training classifier")


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"state_dict": ..., "extra": ...}`` with :func:`atomic_write` (a crash never leaves half a
    checkpoint). Tensors are saved on the CPU."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": extra or {}}
    return atomic_write(path, lambda handle: torch.save(payload, handle), binary=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"state_dict": ..., "extra": ...}`` from :func:`save_checkpoint`, read with ``weights_only=True``
    (no arbitrary code runs). Raises ValueError for a file that is not such a checkpoint."""
    checkpoint = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path} is not a labkit checkpoint: expected a dict with a 'state_dict'")
    checkpoint.setdefault("extra", {})
    return checkpoint


def cache_key(key: dict[str, Any]) -> str:
    """sha256 of ``json.dumps(key, sort_keys=True)`` together with labkit's version (a new version retrains)."""
    from labkit import __version__

    if not isinstance(key, dict):
        raise TypeError(f"key must be a dict describing the model, data and profile, got {type(key).__name__}")
    try:
        text = json.dumps({"key": key, "labkit": __version__}, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"key must hold JSON values only (str, numbers, bools, None, lists, dicts): {err}") from err
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_train(key: dict[str, Any], build: Callable[[], nn.Module], train: Callable[[nn.Module], History],
                 cache_dir: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
                 ) -> tuple[nn.Module, History, bool]:
    """Train it or load it: ``(model, history, loaded_from_cache)``.

    The checkpoint ``<cache_dir>/checkpoints/<name>-<hash>.pt`` is named by :func:`cache_key` of ``key`` (model
    config, data description, profile name). If it loads into ``build()``, training is skipped; if it is missing,
    unreadable or does not fit the model, ``train(build())`` runs (a warning says why) and the result is saved.
    ``cache_dir`` defaults to :func:`labkit.cache.cache_dir`. The model comes back in eval mode, on ``device``
    when given.
    """
    if not callable(build) or not callable(train):
        raise TypeError("build and train must be callables: build() -> nn.Module, train(model) -> History")
    digest = cache_key(key)
    if cache_dir is None:
        cache_dir = default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(key.get("name", "model")))[:40] or "model"
    path = Path(cache_dir) / "checkpoints" / f"{name}-{digest[:16]}.pt"

    def finish(model: nn.Module) -> nn.Module:
        if device is not None:
            model.to(resolve_device(device))
        return model.eval()

    if path.exists():
        try:
            checkpoint = load_checkpoint(path)
            if checkpoint["extra"].get("key_hash") != digest:
                raise ValueError("it was saved for a different key")
            model = build()
            model.load_state_dict(checkpoint["state_dict"])
            history = History.from_dict(checkpoint["extra"]["history"])
            return finish(model), history, True
        except Exception as err:  # noqa: BLE001 - any unreadable cache means: train again
            warnings.warn(f"could not load cached checkpoint {path} ({type(err).__name__}: {err}); training again",
                          RuntimeWarning, stacklevel=2)
    model = build()
    history = train(model)
    if not isinstance(history, History):
        raise TypeError(f"train(model) must return a labkit.train.History, got {type(history).__name__}")
    save_checkpoint(path, model, {"key_hash": digest, "key": key, "history": history.to_dict()})
    return finish(model), history, False
