"""Knowledge distillation: a small student trained to imitate a large, frozen teacher.

* :func:`softened_softmax` -- ``p_T = softmax(z / T)``: a temperature ``T > 1`` flattens the distribution and
  shows the teacher's "dark knowledge" (how it ranks the wrong classes).
* :func:`kd_loss` -- ``alpha * CE(z_s, y) + (1 - alpha) * T^2 * KL(p_T(z_t) || p_T(z_s))`` (Hinton et al. 2015);
  :func:`kd_logit_gradient` is its gradient with respect to the student logits in closed form.
* :func:`capture_layers`, :class:`IntermediateDistillation` -- hidden states and attention maps of every layer,
  read with forward hooks, matched through a learned projection when the widths differ (FitNets, TinyBERT).
* :func:`distill_classifier`, :func:`distill_language_model` -- the training loops: the teacher in eval mode, its
  parameters frozen and its forward pass without gradients; progress bar and :class:`labkit.train.History` as in
  :mod:`labkit.train`; :func:`train_or_load_distilled_classifier` / :func:`train_or_load_distilled_gpt` cache the
  result like :mod:`labkit.zoo` does for the book's models.

The paper (Mei et al. 2024) puts distillation beside quantization and pruning as a way to compress a trained
model. The formulas here follow Hinton, Vinyals and Dean (2015).
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from labkit.train import History, _default_optimizer, _model_device, evaluate_classifier, evaluate_lm, fit

__all__ = [
    "softened_softmax",
    "kd_loss",
    "kd_logit_gradient",
    "transformer_layers",
    "LayerStates",
    "capture_layers",
    "frozen",
    "uniform_layer_map",
    "hidden_state_loss",
    "attention_map_loss",
    "IntermediateDistillation",
    "distill_classifier",
    "distill_language_model",
    "student_overrides",
    "model_fingerprint",
    "train_or_load_distilled_classifier",
    "train_or_load_distilled_gpt",
]

REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_logits(name: str, logits: Any) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of logits (..., C), got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.size(-1) < 1:
        raise ValueError(f"{name} must have shape (..., C) with C >= 1 classes, got {tuple(logits.shape)}")


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (the weight of the hard-label loss), got {alpha!r}")
    return float(alpha)


def _check_kd_inputs(student_logits: Any, teacher_logits: Any, targets: Any, alpha: float) -> None:
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)} (teacher and student must share the classes)")
    if targets is None:
        if alpha > 0:
            raise ValueError(f"targets are needed when alpha > 0 (the hard-label term), got None with alpha={alpha}")
        return
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        got = targets.dtype if isinstance(targets, Tensor) else type(targets).__name__
        raise TypeError(f"targets must be an integer tensor of class ids, got {got}")
    if targets.shape != student_logits.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(student_logits.shape[:-1])} (the logits without the class "
                         f"dim), got {tuple(targets.shape)}")
    n_classes = student_logits.size(-1)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
        raise ValueError(f"targets must be class ids in [0, {n_classes}), got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")


# ----------------------------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------------------------


def softened_softmax(logits: Tensor, temperature: float = 1.0, dim: int = -1) -> Tensor:
    """``p_T = softmax(z / T)`` along ``dim``: T = 1 is the ordinary softmax, T -> inf the uniform distribution,
    T -> 0 the one-hot of the argmax (Hinton et al. 2015, eq. 1)."""
    _check_logits("logits", logits)
    return torch.softmax(logits / _check_temperature(temperature), dim=dim)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None, temperature: float = 2.0,
            alpha: float = 0.5, reduction: str = "mean") -> Tensor:
    """``alpha * CE(z_s, y) + (1 - alpha) * T^2 * KL(p_T(z_t) || p_T(z_s))`` per example (Hinton et al. 2015).

    Logits are (..., C), ``targets`` (...) integer class ids (None allowed when ``alpha == 0``). The KL divergence
    ``sum_i p_i^t (log p_i^t - log p_i^s)`` is summed over classes; ``reduction`` "mean" averages over all leading
    positions (``F.kl_div(..., reduction="batchmean")`` on flattened logits), "sum" adds them, "none" returns
    the loss of each position. ``T^2`` keeps the soft term's gradient, ``T (p_T^s - p_T^t)``, comparable across T.
    The teacher's logits are used as constants (detached).
    """
    temperature, alpha = _check_temperature(temperature), _check_alpha(alpha)
    _check_kd_inputs(student_logits, teacher_logits, targets, alpha)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    teacher_logits = teacher_logits.detach()
    log_p_student = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # sum_i p_i^t log(p_i^t / p_i^s)
    loss = (1.0 - alpha) * temperature**2 * kl
    if alpha > 0:
        log_p_hard = torch.log_softmax(student_logits, dim=-1)
        cross_entropy = -log_p_hard.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
        loss = loss + alpha * cross_entropy
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def kd_logit_gradient(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None,
                      temperature: float = 2.0, alpha: float = 0.5) -> Tensor:
    """The gradient of ``kd_loss(..., reduction="mean")`` with respect to the student logits, in closed form:
    ``[alpha (softmax(z_s) - onehot(y)) + (1 - alpha) T (p_T^s - p_T^t)] / N`` with N the number of positions."""
    temperature, alpha = _check_temperature(temperature), _check_alpha(alpha)
    _check_kd_inputs(student_logits, teacher_logits, targets, alpha)
    soft = temperature * (softened_softmax(student_logits, temperature) - softened_softmax(teacher_logits, temperature))
    gradient = (1.0 - alpha) * soft
    if alpha > 0:
        onehot = torch.zeros_like(student_logits).scatter_(-1, targets.long().unsqueeze(-1), 1.0)
        gradient = gradient + alpha * (torch.softmax(student_logits, dim=-1) - onehot)
    n_positions = max(1, student_logits.numel() // student_logits.size(-1))
    return gradient / n_positions


# ----------------------------------------------------------------------------------------------------------
# reading hidden states and attention maps
# ----------------------------------------------------------------------------------------------------------


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The layer stack of a book model: ``model.encoder.layers`` (EncoderClassifier) or ``model.blocks.layers``
    (GPT)."""
    for stack in ("encoder", "blocks"):
        layers = getattr(getattr(model, stack, None), "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"expected a labkit EncoderClassifier or GPT (with .encoder.layers or .blocks.layers), "
                    f"got {type(model).__name__}")


@dataclass
class LayerStates:
    """What :func:`capture_layers` recorded in the last forward pass: per layer the output hidden states
    (B, T, d_model) and, when asked for, the attention weights (B, H, T, T)."""

    hidden: list[Tensor] = field(default_factory=list)
    attention: list[Tensor] = field(default_factory=list)

    def clear(self) -> None:
        self.hidden.clear()
        self.attention.clear()


@contextmanager
def capture_layers(model: nn.Module, attention: bool = False) -> Iterator[LayerStates]:
    """Record every layer's output (and attention weights) while inside, through forward hooks.

    For the attention maps a pre-hook asks each layer's self-attention for its per-head weights
    (``need_weights=True, average_attn_weights=False``): the output is unchanged, since labkit's attention computes
    the weights anyway. The hooks are removed on exit. Each forward pass replaces what the previous one recorded.
    """
    layers = transformer_layers(model)
    states = LayerStates()
    handles = []

    def start(module: nn.Module, args: tuple) -> None:  # a new forward pass of the first layer: forget the old one
        states.clear()

    def keep_hidden(module: nn.Module, args: tuple, output: Any) -> None:
        states.hidden.append(output[0] if isinstance(output, tuple) else output)

    def ask_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep_weights(module: nn.Module, args: tuple, output: Any) -> None:
        states.attention.append(output[1])

    try:
        handles.append(layers[0].register_forward_pre_hook(start))
        for layer in layers:
            handles.append(layer.register_forward_hook(keep_hidden))
            if attention:
                handles.append(layer.self_attn.register_forward_pre_hook(ask_weights, with_kwargs=True))
                handles.append(layer.self_attn.register_forward_hook(keep_weights))
        yield states
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def frozen(teacher: nn.Module) -> Iterator[nn.Module]:
    """The teacher in eval mode with ``requires_grad=False`` on every parameter; mode and flags restored on exit."""
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
    was_training = teacher.training
    flags = [(p, p.requires_grad) for p in teacher.parameters()]
    teacher.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield teacher
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        teacher.train(was_training)


def uniform_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student layer ``i`` learns from teacher layer ``ceil((i + 1) n_teacher / n_student) - 1``: layers spread
    evenly, the last student layer matched with the last teacher layer (TinyBERT's uniform strategy)."""
    for name, value in (("n_student", n_student), ("n_teacher", n_teacher)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_student > n_teacher:
        raise ValueError(f"a student with more layers ({n_student}) than the teacher ({n_teacher}) has no "
                         "teacher layer for each of its layers")
    return [(i, math.ceil((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def _token_weights(padding_mask: Tensor | None, shape: torch.Size, device: torch.device) -> Tensor:
    """(B, T) float weights, 1 at real tokens and 0 at pads."""
    if padding_mask is None:
        return torch.ones(shape, device=device)
    if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool or padding_mask.shape != shape:
        raise ValueError(f"padding_mask must be a bool tensor of shape {tuple(shape)} (True = pad), got "
                         f"{getattr(padding_mask, 'dtype', type(padding_mask).__name__)} "
                         f"{tuple(getattr(padding_mask, 'shape', ()))}")
    return (~padding_mask).to(device=device, dtype=torch.float32)


def hidden_state_loss(student_hidden: Tensor, teacher_hidden: Tensor, projection: nn.Module | None = None,
                      padding_mask: Tensor | None = None) -> Tensor:
    """``mean over real tokens of ||W h_s + b - h_t||^2 / d_t`` (FitNets' hint loss; W, b learned when the widths
    differ, none when equal). Hidden states are (B, T, d); ``padding_mask`` (B, T) True at pads."""
    for name, h in (("student_hidden", student_hidden), ("teacher_hidden", teacher_hidden)):
        _check_logits(name, h)
        if h.dim() != 3:
            raise ValueError(f"{name} must have shape (B, T, d), got {tuple(h.shape)}")
    if student_hidden.shape[:2] != teacher_hidden.shape[:2]:
        raise ValueError(f"student and teacher hidden states must share (B, T), got {tuple(student_hidden.shape)} "
                         f"and {tuple(teacher_hidden.shape)}")
    projected = student_hidden if projection is None else projection(student_hidden)
    if projected.shape != teacher_hidden.shape:
        raise ValueError(f"the projected student states {tuple(projected.shape)} must match the teacher's "
                         f"{tuple(teacher_hidden.shape)}: give a projection d_student -> d_teacher")
    weights = _token_weights(padding_mask, teacher_hidden.shape[:2], teacher_hidden.device)
    per_token = (projected - teacher_hidden.detach()).pow(2).mean(-1)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def attention_map_loss(student_attention: Tensor, teacher_attention: Tensor,
                       padding_mask: Tensor | None = None) -> Tensor:
    """``mean over heads and real query tokens of KL(A_t[q] || A_s[q])``, each row A[q] a distribution over keys
    (MiniLM's attention transfer). Maps are (B, H, T, T); with different head counts both are averaged over
    heads first."""
    for name, a in (("student_attention", student_attention), ("teacher_attention", teacher_attention)):
        _check_logits(name, a)
        if a.dim() != 4 or a.size(-1) != a.size(-2):
            raise ValueError(f"{name} must have shape (B, H, T, T), got {tuple(a.shape)}")
    if student_attention.shape[0] != teacher_attention.shape[0] or \
            student_attention.shape[2:] != teacher_attention.shape[2:]:
        raise ValueError(f"attention maps must share B and T, got {tuple(student_attention.shape)} and "
                         f"{tuple(teacher_attention.shape)}")
    teacher_attention = teacher_attention.detach()
    if student_attention.size(1) != teacher_attention.size(1):
        student_attention = student_attention.mean(1, keepdim=True)
        teacher_attention = teacher_attention.mean(1, keepdim=True)
    tiny = torch.finfo(student_attention.dtype).tiny
    kl = (torch.xlogy(teacher_attention, teacher_attention)
          - teacher_attention * student_attention.clamp(min=tiny).log()).sum(-1)  # (B, H, T)
    shape = (teacher_attention.size(0), teacher_attention.size(2))
    weights = _token_weights(padding_mask, torch.Size(shape), kl.device).unsqueeze(1)
    return (kl * weights).sum() / (weights.sum() * kl.size(1)).clamp(min=1.0)


class IntermediateDistillation(nn.Module):
    """Hidden-state and attention-map distillation between pairs of layers ``layer_map = [(student_layer,
    teacher_layer), ...]``: ``hidden_weight * mean_pairs hidden_state_loss + attention_weight * mean_pairs
    attention_map_loss``. Holds one learned projection ``nn.Linear(d_student, d_teacher)`` per pair when the
    widths differ (trained with the student, thrown away afterwards)."""

    def __init__(self, student_dim: int, teacher_dim: int, layer_map: Sequence[tuple[int, int]], *,
                 hidden_weight: float = 1.0, attention_weight: float = 0.0) -> None:
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        pairs = [tuple(pair) for pair in layer_map]
        if not pairs or any(len(p) != 2 or not all(isinstance(i, int) and i >= 0 for i in p) for p in pairs):
            raise ValueError(f"layer_map must be a non-empty list of (student_layer, teacher_layer) index pairs, "
                             f"got {layer_map!r}")
        for name, value in (("hidden_weight", hidden_weight), ("attention_weight", attention_weight)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if hidden_weight == 0 and attention_weight == 0:
            raise ValueError("hidden_weight and attention_weight are both 0: nothing to distil")
        self.layer_map = pairs
        self.hidden_weight, self.attention_weight = float(hidden_weight), float(attention_weight)
        self.projections = nn.ModuleList(
            nn.Linear(student_dim, teacher_dim) if student_dim != teacher_dim else nn.Identity() for _ in pairs)

    @classmethod
    def between(cls, student: nn.Module, teacher: nn.Module, *, hidden_weight: float = 1.0,
                attention_weight: float = 0.0, layer_map: Sequence[tuple[int, int]] | None = None,
                ) -> "IntermediateDistillation":
        """Sized for two book models (their ``config.d_model``), with :func:`uniform_layer_map` by default."""
        n_student, n_teacher = len(transformer_layers(student)), len(transformer_layers(teacher))
        layer_map = uniform_layer_map(n_student, n_teacher) if layer_map is None else layer_map
        for s, t in layer_map:
            if s >= n_student or t >= n_teacher:
                raise ValueError(f"layer pair ({s}, {t}) out of range: the student has {n_student} layers, "
                                 f"the teacher {n_teacher}")
        return cls(student.config.d_model, teacher.config.d_model, layer_map, hidden_weight=hidden_weight,
                   attention_weight=attention_weight)

    @property
    def needs_attention(self) -> bool:
        return self.attention_weight > 0

    def forward(self, student: LayerStates, teacher: LayerStates, padding_mask: Tensor | None = None) -> Tensor:
        total = 0.0
        for (s, t), projection in zip(self.layer_map, self.projections):
            if self.hidden_weight > 0:
                total = total + self.hidden_weight * hidden_state_loss(
                    student.hidden[s], teacher.hidden[t], projection, padding_mask) / len(self.layer_map)
            if self.attention_weight > 0:
                total = total + self.attention_weight * attention_map_loss(
                    student.attention[s], teacher.attention[t], padding_mask) / len(self.layer_map)
        return total


# ----------------------------------------------------------------------------------------------------------
# training loops
# ----------------------------------------------------------------------------------------------------------


class _Trainable(nn.Module):
    """The student and the intermediate-distillation projections: what the optimizer updates (never the teacher)."""

    def __init__(self, student: nn.Module, intermediate: IntermediateDistillation | None) -> None:
        super().__init__()
        self.student = student
        self.intermediate = intermediate


def _check_models(student: Any, teacher: Any, intermediate: Any) -> None:
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    if student is teacher:
        raise ValueError("student and teacher must be different modules (the teacher stays frozen)")
    if intermediate is not None and not isinstance(intermediate, IntermediateDistillation):
        raise TypeError(f"intermediate must be an IntermediateDistillation or None, got {type(intermediate).__name__}")


class _Distiller:
    """One distillation step's loss: student forward (hooked when distilling layers), teacher forward without
    gradients, :func:`kd_loss` on the logits plus the intermediate loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module, intermediate: IntermediateDistillation | None,
                 temperature: float, alpha: float) -> None:
        self.student, self.teacher, self.intermediate = student, teacher, intermediate
        self.temperature, self.alpha = _check_temperature(temperature), _check_alpha(alpha)

    def teacher_forward(self, *inputs: Any) -> tuple[Tensor, LayerStates | None]:
        with torch.no_grad():
            if self.intermediate is None:
                return self.teacher(*inputs), None
            with capture_layers(self.teacher, self.intermediate.needs_attention) as states:
                logits = self.teacher(*inputs)
            return logits, states

    def loss(self, inputs: tuple, targets: Tensor, padding_mask: Tensor | None = None,
             teacher_logits: Tensor | None = None) -> Tensor:
        if self.intermediate is None:
            if teacher_logits is None:
                teacher_logits, _ = self.teacher_forward(*inputs)
            return kd_loss(self.student(*inputs), teacher_logits, targets, self.temperature, self.alpha)
        teacher_logits, teacher_states = self.teacher_forward(*inputs)
        with capture_layers(self.student, self.intermediate.needs_attention) as student_states:
            student_logits = self.student(*inputs)
        return (kd_loss(student_logits, teacher_logits, targets, self.temperature, self.alpha)
                + self.intermediate(student_states, teacher_states, padding_mask))


def _teacher_logits_table(teacher: nn.Module, ids: Tensor, padding_mask: Tensor | None, batch_size: int,
                          device: torch.device) -> Tensor:
    """The (frozen) teacher's logits on every training example, computed once: offline distillation."""
    rows = []
    with torch.no_grad():
        for start in range(0, ids.size(0), batch_size):
            part = slice(start, start + batch_size)
            mask = None if padding_mask is None else padding_mask[part].to(device)
            rows.append(teacher(ids[part].to(device), mask))
    return torch.cat(rows)


def distill_classifier(student: nn.Module, teacher: nn.Module, ids: Tensor, labels: Tensor, *,
                       padding_mask: Tensor | None = None, steps: int, batch_size: int, lr: float,
                       temperature: float = 2.0, alpha: float = 0.5,
                       intermediate: IntermediateDistillation | None = None, weight_decay: float = 0.01,
                       val_ids: Tensor | None = None, val_labels: Tensor | None = None,
                       val_padding_mask: Tensor | None = None, eval_every: int | None = None,
                       precompute_teacher: bool = True, device: str | torch.device | None = None,
                       progress: bool = True, seed: int = 0, grad_clip: float | None = 1.0) -> History:
    """Train ``student`` on :func:`kd_loss` against the frozen ``teacher`` (+ ``intermediate`` layer losses), with
    AdamW on random mini-batches as :func:`labkit.train.train_classifier` does (same batches for the same seed).

    The teacher runs in eval mode under ``torch.no_grad`` with its parameters frozen; its weights, mode and
    ``requires_grad`` flags are as before afterwards (it is moved to the student's device). With ``precompute_teacher`` and no intermediate losses its
    logits on all training examples are computed once up front (the same numbers, a forward pass per example
    instead of per step). Validation loss and accuracy of the student every ``eval_every`` steps and at the end.
    """
    from labkit.train import _check_classification, _check_positive

    _check_models(student, teacher, intermediate)
    _check_classification(ids, labels, padding_mask)
    batch_size = _check_positive("batch_size", batch_size)
    if (val_ids is None) != (val_labels is None):
        raise ValueError("give both val_ids and val_labels, or neither")
    torch.manual_seed(seed)
    dev = _model_device(student, device)
    teacher.to(dev)
    trainable = _Trainable(student, intermediate).to(dev)
    distiller = _Distiller(student, teacher, intermediate, temperature, alpha)
    generator = torch.Generator().manual_seed(seed)
    with frozen(teacher):
        table = None
        if precompute_teacher and intermediate is None:
            table = _teacher_logits_table(teacher, ids, padding_mask, max(batch_size, 64), dev)

        def batches() -> Iterator[tuple[tuple[Tensor, Tensor | None, Tensor], Tensor]]:
            while True:
                rows = torch.randint(ids.size(0), (batch_size,), generator=generator)
                mask = None if padding_mask is None else padding_mask[rows].to(dev)
                yield (ids[rows].to(dev), mask, rows), labels[rows].to(dev)

        def loss_fn(module: nn.Module, inputs: tuple[Tensor, Tensor | None, Tensor], targets: Tensor) -> Tensor:
            batch_ids, mask, rows = inputs
            teacher_logits = None if table is None else table[rows.to(table.device)]
            return distiller.loss((batch_ids, mask), targets, mask, teacher_logits)

        evaluate = None
        if val_ids is not None:
            def evaluate() -> dict[str, float]:
                return evaluate_classifier(student, val_ids, val_labels, val_padding_mask, batch_size=batch_size)
        optimizer = _default_optimizer(trainable, lr, weight_decay)
        return fit(trainable, batches(), loss_fn, steps=steps, optimizer=optimizer, evaluate=evaluate,
                   eval_every=eval_every, grad_clip=grad_clip, progress=progress, desc="distilling classifier")


def distill_language_model(student: nn.Module, teacher: nn.Module, train_tokens: Tensor, *, steps: int,
                           batch_size: int, seq_len: int, lr: float, temperature: float = 2.0, alpha: float = 0.5,
                           intermediate: IntermediateDistillation | None = None, weight_decay: float = 0.1,
                           val_tokens: Tensor | None = None, eval_every: int | None = None,
                           eval_batches: int | None = 8, device: str | torch.device | None = None,
                           progress: bool = True, seed: int = 0, grad_clip: float | None = 1.0) -> History:
    """Train a causal-LM ``student`` on :func:`kd_loss` per token against the frozen ``teacher``'s next-token
    distributions, on the random windows :func:`labkit.train.train_language_model` draws (same seed, same
    windows). Teacher and student must share the vocabulary. Validation: the student's next-token loss."""
    from labkit.data import lm_batches

    _check_models(student, teacher, intermediate)
    torch.manual_seed(seed)
    dev = _model_device(student, device)
    teacher.to(dev)
    trainable = _Trainable(student, intermediate).to(dev)
    distiller = _Distiller(student, teacher, intermediate, temperature, alpha)
    batches = lm_batches(train_tokens, batch_size, seq_len, generator=torch.Generator().manual_seed(seed), device=dev)
    with frozen(teacher):
        def loss_fn(module: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
            return distiller.loss((inputs,), targets)

        evaluate = None
        if val_tokens is not None:
            def evaluate() -> dict[str, float]:
                return {"loss": evaluate_lm(student, val_tokens, batch_size, seq_len, eval_batches)}
        optimizer = _default_optimizer(trainable, lr, weight_decay)
        return fit(trainable, batches, loss_fn, steps=steps, optimizer=optimizer, evaluate=evaluate,
                   eval_every=eval_every, grad_clip=grad_clip, progress=progress, desc="distilling LM")


# ----------------------------------------------------------------------------------------------------------
# train it or load it
# ----------------------------------------------------------------------------------------------------------


def student_overrides(profile: Any) -> dict[str, int]:
    """The chapter's student sizes in a profile (``ch9_student_*``; defaults: half the width, one layer), as
    overrides for :func:`labkit.zoo.classifier_config` or :func:`labkit.zoo.gpt_config`."""
    d_model = int(profile.get("ch9_student_d_model", max(profile.n_heads, profile.d_model // 2)))
    return {"d_model": d_model, "n_layers": int(profile.get("ch9_student_layers", 1)),
            "d_ff": int(profile.get("ch9_student_d_ff", 4 * d_model)),
            "n_heads": int(profile.get("ch9_student_heads", profile.n_heads))}


def model_fingerprint(model: nn.Module) -> str:
    """A short fingerprint of a model's weights (sum and sum of squares of every tensor, in float64), so that
    a cached student is retrained when its teacher changes."""
    total = sum(float(t.double().sum()) + float(t.double().pow(2).sum()) for t in model.state_dict().values()
                if t.is_floating_point())
    return f"{total:.10e}"


def _cached_distillation(model_class: type, distil: Any, data_key: dict, teacher: nn.Module, config: Any,
                         settings: dict[str, Any], name: str, distillation: dict[str, float], profile: Any,
                         device: str | torch.device | None) -> tuple[nn.Module, History, bool]:
    """``cached_train`` of ``distil(student, layers)`` on a fresh ``model_class(config)`` (seeded), with the layer
    losses of ``distillation`` when its weights are positive; the key fingerprints the teacher."""
    from labkit.config import get_profile
    from labkit.train import cached_train

    profile = profile or get_profile()
    key = {"name": name, "config": config.to_dict(), "data": data_key, "profile": profile.name, **settings,
           "teacher": model_fingerprint(teacher), "distillation": distillation}

    def build() -> nn.Module:
        torch.manual_seed(settings["seed"])
        return model_class(config)

    def run(student: nn.Module) -> History:
        layers = None
        if distillation["hidden_weight"] > 0 or distillation["attention_weight"] > 0:
            layers = IntermediateDistillation.between(student, teacher, hidden_weight=distillation["hidden_weight"],
                                                      attention_weight=distillation["attention_weight"])
        return distil(student, layers)

    return cached_train(key, build, run, device=device)


def train_or_load_distilled_classifier(task: Any, teacher: nn.Module, config: Any, settings: dict[str, Any], *,
                                       name: str, temperature: float = 2.0, alpha: float = 0.5,
                                       hidden_weight: float = 0.0, attention_weight: float = 0.0,
                                       profile: Any = None, device: str | torch.device | None = None,
                                       progress: bool = True) -> tuple[nn.Module, History, bool]:
    """Distil ``teacher`` into an EncoderClassifier(``config``) on a :class:`labkit.zoo.ClassifierData` task with
    :func:`labkit.zoo.classifier_settings`, or load the result: ``(student, history, loaded_from_cache)``.
    Layer losses are added when ``hidden_weight`` or ``attention_weight`` is positive. The checkpoint key holds the
    config, data, profile, settings, the distillation settings and a fingerprint of the teacher's weights."""
    from labkit.transformer import EncoderClassifier

    def distil(student: nn.Module, layers: IntermediateDistillation | None) -> History:
        return distill_classifier(
            student, teacher, task.train_ids, task.train_labels, padding_mask=task.train_padding,
            steps=settings["steps"], batch_size=settings["batch_size"], lr=settings["lr"], temperature=temperature,
            alpha=alpha, intermediate=layers, val_ids=task.val_ids, val_labels=task.val_labels,
            val_padding_mask=task.val_padding, eval_every=settings["eval_every"], device=device, progress=progress,
            seed=settings["seed"])

    distillation = {"temperature": temperature, "alpha": alpha, "hidden_weight": hidden_weight,
                    "attention_weight": attention_weight}
    return _cached_distillation(EncoderClassifier, distil, task.key, teacher, config, settings, name, distillation,
                                profile, device)


def train_or_load_distilled_gpt(lm: Any, teacher: nn.Module, config: Any, settings: dict[str, Any], *, name: str,
                                temperature: float = 2.0, alpha: float = 0.5, hidden_weight: float = 0.0,
                                attention_weight: float = 0.0, profile: Any = None,
                                device: str | torch.device | None = None, progress: bool = True,
                                ) -> tuple[nn.Module, History, bool]:
    """Distil a GPT ``teacher`` into GPT(``config``) on :class:`labkit.zoo.LMData` with
    :func:`labkit.zoo.train_settings`, or load the result; as :func:`train_or_load_distilled_classifier`."""
    from labkit.transformer import GPT

    def distil(student: nn.Module, layers: IntermediateDistillation | None) -> History:
        return distill_language_model(
            student, teacher, lm.train_tokens, steps=settings["steps"], batch_size=settings["batch_size"],
            seq_len=settings["seq_len"], lr=settings["lr"], temperature=temperature, alpha=alpha,
            intermediate=layers, val_tokens=lm.val_tokens, eval_every=settings["eval_every"],
            eval_batches=settings["eval_batches"], device=device, progress=progress, seed=settings["seed"])

    distillation = {"temperature": temperature, "alpha": alpha, "hidden_weight": hidden_weight,
                    "attention_weight": attention_weight}
    return _cached_distillation(GPT, distil, lm.key, teacher, config, settings, name, distillation, profile, device)
