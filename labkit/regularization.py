"""Regularisers the source paper's method list names (001: "Dropout", "Label Smoothing"), from scratch.

* Inverted dropout (Srivastava et al. 2014): keep each element with probability ``1−p`` and scale the kept ones
  by ``1/(1−p)``, so that ``E[dropout(x)] = x`` and evaluation needs no rescaling.
* Label smoothing (Szegedy et al. 2016): cross-entropy against the mixed target ``q = (1−ε)·onehot(y) + ε/K``
  instead of the one-hot ``y``: ``loss = −Σ_k q_k log softmax(z)_k = (1−ε)·(−log p_y) + ε·mean_k(−log p_k)``.

References in the tests: ``F.dropout`` (statistics only: its random stream is not ours) and
``F.cross_entropy(label_smoothing=ε)`` (equal values and gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["dropout", "Dropout", "dropout_mask", "label_smoothing_cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """The keep mask of :func:`dropout`: ``u < 1 − p`` with ``u ~ U[0, 1)`` drawn by ``torch.rand`` in float32,
    so element ``i`` is kept with probability ``1−p`` (boolean tensor of ``shape``)."""
    p = _check_probability("p", p)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32) < 1.0 - p


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout: ``x · mask / (1−p)`` with ``mask ~ Bernoulli(1−p)`` elementwise, so ``E[output] = x``.

    Identity when ``training`` is false or ``p == 0``; all zeros when ``p == 1`` (as ``F.dropout``).
    ``generator`` (on ``x``'s device) makes the mask reproducible: it is :func:`dropout_mask` of the same generator.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    p = _check_probability("p", p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0  # keeps the graph (zero gradient), as F.dropout does
    keep = dropout_mask(x.shape, p, generator=generator, device=x.device)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Module form of :func:`dropout`: active in ``train()`` mode, the identity in ``eval()`` mode."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = _check_probability("p", p)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def label_smoothing_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.0, ignore_index: int = -100,
                                  reduction: str = "mean") -> Tensor:
    """Cross-entropy against the mixed target ``q = (1−ε)·onehot(target) + ε/K`` (``ε = smoothing``, ``K`` classes):
    ``loss_i = −Σ_k q_k log softmax(logits_i)_k``.

    Shapes as ``F.cross_entropy`` with class indices: ``logits`` (N, K) or (N, K, d1, ...) or (K,), ``target`` the
    same without the class dimension. Targets equal to ``ignore_index`` contribute 0 and are left out of the mean
    (a mean over no targets is NaN, as in torch). Equals ``F.cross_entropy(logits, target, label_smoothing=ε)``.
    """
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"logits and target must be Tensors, got {type(logits).__name__} and {type(target).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer tensor), got dtype {target.dtype}")
    smoothing = _check_probability("smoothing", smoothing)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dim() == 0:
        raise ValueError("logits must have shape (K,), (N, K) or (N, K, d1, ...), got a scalar")
    class_dim = 0 if logits.dim() == 1 else 1
    expected = logits.shape[:class_dim] + logits.shape[class_dim + 1:]
    if target.shape != expected:
        raise ValueError(f"target must have shape {tuple(expected)} for logits of shape {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    n_classes = logits.shape[class_dim]
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    if valid.any() and (safe_target[valid].min() < 0 or safe_target[valid].max() >= n_classes):
        raise ValueError(f"target values must be in [0, {n_classes}) or equal ignore_index={ignore_index}, "
                         f"got values in [{int(target[valid].min())}, {int(target[valid].max())}]")

    log_probs = logits - torch.logsumexp(logits, dim=class_dim, keepdim=True)  # log softmax
    one_hot = torch.zeros_like(log_probs).scatter_(class_dim, safe_target.unsqueeze(class_dim), 1.0)
    mixed_target = (1.0 - smoothing) * one_hot + smoothing / n_classes
    loss = -(mixed_target * log_probs).sum(dim=class_dim)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()
