"""Pruning: masks that zero weights, structured removal that shrinks layers, sparse updates and sparse storage.

003 §2.2.1 / §9.3 name sparsity ("set most parameters to 0, reducing memory and computation") and sparse updates
("only update the non-zero parameters") as ways to manage a model's parameters. This module builds them and keeps
apart what saves memory (sparse storage, compact optimizer state) from what saves time (smaller dense layers,
2:4 semi-structured kernels on GPUs that have them):

* masks -- :func:`magnitude_mask` (``torch.nn.utils.prune.l1_unstructured``), :func:`global_magnitude_masks`
  (``global_unstructured``), :func:`ln_structured_mask` (``ln_structured``), :func:`nm_mask` (N:M, e.g. 2:4);
* applying them to any module -- :func:`apply_mask` registers a parametrization ``weight = original * mask``
  (as ``torch.nn.utils.prune`` does with a forward pre-hook), :func:`remove` makes it permanent;
  :func:`magnitude_prune` prunes a whole model layer by layer or globally;
* schedules -- :func:`cubic_sparsity` (Zhu & Gupta 2017) and :func:`gradual_prune` interleaving pruning and
  fine-tuning;
* second-order saliency -- :func:`fisher_diagonal` and :func:`obd_saliency` (Optimal Brain Damage, LeCun et al.
  1990, with the empirical Fisher in place of the Hessian's diagonal);
* structured pruning -- :func:`shrink_feedforward` (FFN neurons) and :func:`shrink_attention` (attention heads)
  build smaller dense layers; :func:`shrink_model` does it to every layer of a model;
* sparse updates -- :func:`mask_gradients` and :class:`MaskedAdamW` (Adam state for the kept weights only);
* storage -- :func:`storage_bytes`, :func:`breakeven_sparsity`, :func:`to_bitmask` / :func:`from_bitmask`;
* CUDA -- :func:`semi_structured_supported`, :func:`to_semi_structured` (``torch.sparse.to_sparse_semi_structured``).

``torch.nn.utils.prune`` is the reference in the tests; labkit never calls it.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from labkit.attention import MultiHeadAttention, _attention
from labkit.layers import FeedForward
from labkit.optim import _adam_single_tensor, _LabkitOptimizer

__all__ = [
    "check_amount", "n_to_prune", "magnitude_mask", "global_magnitude_masks", "ln_structured_mask", "nm_mask",
    "is_nm_sparse", "Mask", "apply_mask", "get_mask", "is_pruned", "remove", "remove_all", "prunable_weights",
    "magnitude_prune", "sparsity", "model_sparsity", "cubic_sparsity", "gradual_prune", "fisher_diagonal",
    "obd_saliency", "ffn_neuron_scores", "attention_head_scores", "shrink_feedforward", "PrunedMultiHeadAttention",
    "shrink_attention", "shrink_model", "mask_gradients", "MaskedAdamW", "STORAGE_FORMATS", "storage_bytes",
    "breakeven_sparsity", "to_bitmask", "from_bitmask", "semi_structured_supported", "to_semi_structured",
]


# ----------------------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------------------


def check_amount(amount: Any, name: str = "amount") -> float:
    """``amount`` as a float in [0, 1] (the fraction to prune), else ValueError/TypeError."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1] (the fraction to prune), got {type(amount).__name__}")
    if not 0.0 <= float(amount) <= 1.0 or math.isnan(amount):
        raise ValueError(f"{name} must be in [0, 1] (the fraction to prune), got {amount!r}")
    return float(amount)


def n_to_prune(amount: float, n: int) -> int:
    """How many of ``n`` entries a fraction ``amount`` prunes: ``round(amount * n)``, as torch.nn.utils.prune."""
    return round(check_amount(amount) * n)


def _check_tensor(name: str, t: Any) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _mask_smallest(scores: Tensor, k: int) -> Tensor:
    """A mask of the shape of ``scores``: 0 at the ``k`` smallest scores, 1 elsewhere (dtype of scores)."""
    mask = torch.ones_like(scores)
    if k > 0:
        smallest = torch.topk(scores.reshape(-1), k, largest=False).indices
        mask.view(-1)[smallest] = 0
    return mask


def magnitude_mask(weight: Tensor, amount: float, scores: Tensor | None = None) -> Tensor:
    """Unstructured magnitude pruning: zero the ``round(amount * numel)`` entries with the smallest ``|w|``
    (or the smallest ``scores``, e.g. an OBD saliency). Returns a 0/1 mask of ``weight``'s shape and dtype."""
    _check_tensor("weight", weight)
    amount = check_amount(amount)
    scores = weight.detach().abs() if scores is None else scores.detach()
    if scores.shape != weight.shape:
        raise ValueError(f"scores must have the shape of weight {tuple(weight.shape)}, got {tuple(scores.shape)}")
    return _mask_smallest(scores, n_to_prune(amount, weight.numel())).to(weight.dtype)


def global_magnitude_masks(weights: Mapping[str, Tensor], amount: float,
                           scores: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Global magnitude pruning: one threshold for all tensors, zeroing the ``round(amount * total)``
    smallest ``|w|`` (or ``scores``) across them. ``{name: mask}`` like ``prune.global_unstructured``."""
    amount = check_amount(amount)
    if not weights:
        raise ValueError("weights must be a non-empty mapping of name -> tensor")
    scores = {name: w.detach().abs() for name, w in weights.items()} if scores is None else scores
    missing = set(weights) - set(scores)
    if missing:
        raise ValueError(f"scores is missing entries for {sorted(missing)}")
    flat = torch.cat([scores[name].detach().reshape(-1).float() for name in weights])
    mask = _mask_smallest(flat, n_to_prune(amount, flat.numel()))
    masks, start = {}, 0
    for name, weight in weights.items():
        masks[name] = mask[start:start + weight.numel()].view_as(weight).to(weight.dtype)
        start += weight.numel()
    return masks


def ln_structured_mask(weight: Tensor, amount: float, n: float = 2, dim: int = 0) -> Tensor:
    """Structured pruning: zero the ``round(amount * weight.size(dim))`` slices along ``dim`` with the smallest
    L_n norm (``dim=0`` of a Linear weight: whole output units), like ``prune.ln_structured``."""
    _check_tensor("weight", weight)
    amount = check_amount(amount)
    if weight.dim() < 1 or not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"dim must index a dimension of weight with shape {tuple(weight.shape)}, got {dim}")
    dim = dim % weight.dim()
    other = [d for d in range(weight.dim()) if d != dim]
    norms = torch.linalg.vector_norm(weight.detach(), ord=n, dim=other) if other else weight.detach().abs()
    keep = _mask_smallest(norms, n_to_prune(amount, weight.size(dim)))
    shape = [1] * weight.dim()
    shape[dim] = -1
    return keep.view(shape).expand_as(weight).to(weight.dtype).clone()


def nm_mask(weight: Tensor, n: int = 2, m: int = 4, scores: Tensor | None = None) -> Tensor:
    """N:M semi-structured sparsity: in every group of ``m`` consecutive entries along the last dim (a Linear's
    input dim), keep the ``n`` largest ``|w|`` (or ``scores``) and zero the rest; 2:4 is NVIDIA's pattern."""
    _check_tensor("weight", weight)
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n > m:
        raise ValueError(f"N:M sparsity needs n <= m (keep n of every m), got n={n} > m={m}")
    if weight.dim() < 1 or weight.size(-1) % m != 0:
        raise ValueError(f"the last dim of weight must be divisible by m={m}, got shape {tuple(weight.shape)}")
    scores = weight.detach().abs() if scores is None else scores.detach()
    groups = scores.reshape(-1, m)
    kept = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=weight.dtype).scatter_(1, kept, 1.0)
    return mask.view_as(weight)


def is_nm_sparse(weight: Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive entries along the last dim has at most ``n`` non-zeros."""
    _check_tensor("weight", weight)
    if weight.size(-1) % m != 0:
        return False
    return bool(((weight.reshape(-1, m) != 0).sum(dim=1) <= n).all())


# ----------------------------------------------------------------------------------------------------------
# applying masks to modules
# ----------------------------------------------------------------------------------------------------------


class Mask(nn.Module):
    """The parametrization ``weight = original * mask``: the mask is a buffer (saved with the model, moved with
    it); the gradient reaching ``original`` is masked too, so pruned entries never receive a gradient."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, original: Tensor) -> Tensor:
        return original * self.mask


def _parametrization(module: nn.Module, name: str) -> Mask | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, Mask):
            return p
    return None


def _check_param(module: nn.Module, name: str) -> Tensor:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"{type(module).__name__} has no tensor called {name!r}")
    return weight


def apply_mask(module: nn.Module, name: str, mask: Tensor) -> nn.Module:
    """Make ``module.<name>`` equal ``original * mask`` from now on (a parametrization; the original values stay
    in ``module.parametrizations.<name>.original``). A second call replaces the mask. Returns ``module``."""
    weight = _check_param(module, name)
    _check_tensor("mask", mask)
    if mask.shape != weight.shape:
        raise ValueError(f"mask must have the shape of {name} {tuple(weight.shape)}, got {tuple(mask.shape)}")
    mask = mask.to(device=weight.device, dtype=weight.dtype)
    existing = _parametrization(module, name)
    if existing is not None:
        existing.mask.copy_(mask)
    else:
        parametrize.register_parametrization(module, name, Mask(mask))
    return module


def get_mask(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The mask applied to ``module.<name>``, or None when it is not pruned."""
    p = _parametrization(module, name)
    return None if p is None else p.mask


def is_pruned(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a pruning mask."""
    return _parametrization(module, name) is not None


def remove(module: nn.Module, name: str = "weight") -> nn.Module:
    """Make the pruning permanent: ``module.<name>`` becomes a plain parameter holding ``original * mask``
    (the zeros stay; the mask is gone), like ``torch.nn.utils.prune.remove``."""
    if not is_pruned(module, name):
        raise ValueError(f"{type(module).__name__}.{name} is not pruned: nothing to remove")
    # torch makes one parametrized class per module and copy.deepcopy shares it between the copies; removing
    # deletes the class's property, which would break every other copy. Give this module its own class first.
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module


def remove_all(model: nn.Module) -> nn.Module:
    """:func:`remove` on every pruned tensor of ``model``."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                if _parametrization(module, name) is not None:
                    remove(module, name)
    return model


def prunable_weights(model: nn.Module, exclude: Sequence[str] = ("head", "lm_head"),
                     types: tuple[type, ...] = (nn.Linear,)) -> dict[str, tuple[nn.Module, str]]:
    """``{qualified name: (module, "weight")}`` for the weights of every ``types`` module (default nn.Linear)
    whose qualified name does not end with one of ``exclude`` (the classifier / LM head by default)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = {}
    for qualified, module in model.named_modules():
        if isinstance(module, types) and not any(qualified.split(".")[-1] == e for e in exclude):
            found[f"{qualified}.weight" if qualified else "weight"] = (module, "weight")
    return found


def magnitude_prune(model: nn.Module, amount: float, *, scope: str = "layer",
                    weights: Mapping[str, tuple[nn.Module, str]] | None = None,
                    scores: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Prune ``model`` to ``amount`` of its prunable weights (:func:`prunable_weights` unless ``weights`` is
    given): ``scope="layer"`` prunes each tensor to ``amount``, ``"global"`` uses one threshold over all.
    Scores default to ``|w|`` of the current (masked) weights, so what is pruned stays pruned when ``amount``
    grows. Returns ``{name: mask}``; the masks are applied with :func:`apply_mask`."""
    amount = check_amount(amount)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    weights = prunable_weights(model) if weights is None else weights
    tensors = {name: getattr(module, attr) for name, (module, attr) in weights.items()}
    if scores is None:
        scores = {name: t.detach().abs() for name, t in tensors.items()}
    if scope == "global":
        masks = global_magnitude_masks(tensors, amount, scores)
    else:
        masks = {name: magnitude_mask(t, amount, scores[name]) for name, t in tensors.items()}
    for name, (module, attr) in weights.items():
        apply_mask(module, attr, masks[name])
    return masks


def sparsity(t: Tensor) -> float:
    """Fraction of exact zeros in ``t``."""
    _check_tensor("t", t)
    return float((t == 0).sum()) / max(t.numel(), 1)


def model_sparsity(model: nn.Module, weights: Mapping[str, tuple[nn.Module, str]] | None = None) -> float:
    """Fraction of zeros over the prunable weights of ``model`` (effective, masked values)."""
    weights = prunable_weights(model) if weights is None else weights
    zeros = sum(int((getattr(m, a) == 0).sum()) for m, a in weights.values())
    total = sum(getattr(m, a).numel() for m, a in weights.values())
    return zeros / max(total, 1)


# ----------------------------------------------------------------------------------------------------------
# gradual pruning
# ----------------------------------------------------------------------------------------------------------


def cubic_sparsity(step: int, final_sparsity: float, total_steps: int, initial_sparsity: float = 0.0,
                   start_step: int = 0) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) (1 - (t - t_0)/n)^3`` for ``t_0 <= t <= t_0 + n``; fast
    pruning while many redundant weights remain, slow near the end. ``s_i`` before ``t_0``, ``s_f`` after."""
    final_sparsity = check_amount(final_sparsity, "final_sparsity")
    initial_sparsity = check_amount(initial_sparsity, "initial_sparsity")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    progress = min(max((step - start_step) / total_steps, 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3


def gradual_prune(model: nn.Module, final_sparsity: float, n_stages: int,
                  fine_tune: Callable[[nn.Module, int], Any], *, scope: str = "global",
                  weights: Mapping[str, tuple[nn.Module, str]] | None = None,
                  score_fn: Callable[[nn.Module, Mapping[str, tuple[nn.Module, str]]], Mapping[str, Tensor]] | None = None,
                  ) -> list[float]:
    """Gradual magnitude pruning: for stage ``k = 1..n_stages`` prune to ``cubic_sparsity(k, final, n_stages)``,
    then call ``fine_tune(model, k)`` (which trains the masked model for a while). ``score_fn(model, weights)``
    may supply saliencies instead of ``|w|``. Returns the sparsity of each stage."""
    if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 1:
        raise ValueError(f"n_stages must be a positive int, got {n_stages!r}")
    weights = prunable_weights(model) if weights is None else weights
    levels = []
    for stage in range(1, n_stages + 1):
        level = cubic_sparsity(stage, final_sparsity, n_stages)
        scores = score_fn(model, weights) if score_fn is not None else None
        magnitude_prune(model, level, scope=scope, weights=weights, scores=scores)
        levels.append(level)
        fine_tune(model, stage)
    return levels


# ----------------------------------------------------------------------------------------------------------
# second-order saliency: Optimal Brain Damage with a diagonal Fisher
# ----------------------------------------------------------------------------------------------------------


def fisher_diagonal(model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], Tensor],
                    weights: Mapping[str, tuple[nn.Module, str]] | None = None) -> dict[str, Tensor]:
    """Empirical Fisher diagonal ``F_ii = mean_b (dL_b/dw_i)^2`` over the mini-batches ``batches``
    (``loss_fn(model, batch)`` gives each batch's mean loss). Approximates the Hessian's diagonal near a
    minimum of a log-likelihood loss. Returned per prunable weight, w.r.t. the effective (masked) weight."""
    weights = prunable_weights(model) if weights is None else weights
    tensors = {name: getattr(module, attr) for name, (module, attr) in weights.items()}
    fisher = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in tensors.items()}
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for batch in batches:
            # the effective weights are recomputed in every forward when parametrized: take fresh handles
            with parametrize.cached():
                current = {name: getattr(module, attr) for name, (module, attr) in weights.items()}
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, list(current.values()), allow_unused=True)
            for name, grad in zip(current, grads):
                if grad is not None:
                    fisher[name] += grad.detach().float() ** 2
            n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("batches gave no batch: the Fisher needs at least one")
    return {name: f / n_batches for name, f in fisher.items()}


def obd_saliency(weight: Tensor, hessian_diagonal: Tensor) -> Tensor:
    """Optimal Brain Damage: the loss increase from zeroing ``w_i`` alone, to second order at a minimum
    (gradient ≈ 0, off-diagonal terms dropped): ``s_i = ½ H_ii w_i²`` (LeCun et al. 1990)."""
    _check_tensor("weight", weight)
    _check_tensor("hessian_diagonal", hessian_diagonal)
    if weight.shape != hessian_diagonal.shape:
        raise ValueError(f"hessian_diagonal must have the shape of weight {tuple(weight.shape)}, "
                         f"got {tuple(hessian_diagonal.shape)}")
    return 0.5 * hessian_diagonal * weight.detach() ** 2


# ----------------------------------------------------------------------------------------------------------
# structured pruning: smaller dense layers
# ----------------------------------------------------------------------------------------------------------


def _weight(linear: nn.Linear) -> Tensor:
    return linear.weight.detach()


def ffn_neuron_scores(ffn: FeedForward) -> Tensor:
    """Importance of each of the ``d_ff`` hidden neurons: ``||W_up[j, :]|| * ||W_down[:, j]||`` (times
    ``||W_gate[j, :]||`` for SwiGLU), a magnitude proxy for how much the neuron can move the output."""
    if not isinstance(ffn, FeedForward):
        raise TypeError(f"ffn must be a labkit.layers.FeedForward, got {type(ffn).__name__}")
    score = _weight(ffn.up).norm(dim=1) * _weight(ffn.down).norm(dim=0)
    if ffn.gate is not None:
        score = score * _weight(ffn.gate).norm(dim=1)
    return score


def _head_of(attention: nn.Module) -> tuple[int, int]:
    return attention.num_heads, attention.head_dim


def attention_head_scores(attention: MultiHeadAttention) -> Tensor:
    """Importance of each head: ``||W_v^h|| * ||W_o^h||`` (Frobenius norms of the head's value rows and of its
    output-projection columns), the magnitude proxy of how much the head adds to the output."""
    if not isinstance(attention, (MultiHeadAttention, PrunedMultiHeadAttention)):
        raise TypeError(f"attention must be a labkit MultiHeadAttention, got {type(attention).__name__}")
    heads, head_dim = _head_of(attention)
    value = _weight(attention.v_proj).reshape(heads, head_dim, -1).flatten(1).norm(dim=1)
    out = _weight(attention.out_proj).reshape(-1, heads, head_dim).transpose(0, 1).flatten(1).norm(dim=1)
    return value * out


def _keep_indices(n_units: int, keep: Tensor | Sequence[int] | None, amount: float | None,
                  scores: Tensor | None, what: str) -> Tensor:
    """Sorted indices of the units to keep: given directly, or the ``n_units - round(amount * n_units)`` with
    the largest ``scores``."""
    if (keep is None) == (amount is None):
        raise ValueError(f"give exactly one of keep (the {what} to keep) and amount (the fraction to remove)")
    if keep is None:
        n_keep = n_units - n_to_prune(amount, n_units)
        keep = torch.topk(scores, n_keep).indices
    keep = torch.as_tensor(keep, dtype=torch.long).reshape(-1)
    if keep.numel() == 0:
        raise ValueError(f"at least one of the {n_units} {what} must be kept")
    if keep.min() < 0 or keep.max() >= n_units or keep.unique().numel() != keep.numel():
        raise ValueError(f"keep must hold distinct {what} indices in [0, {n_units}), got {keep.tolist()}")
    return keep.sort().values


def _sliced_linear(linear: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new nn.Linear holding ``linear.weight[rows][:, cols]`` (and ``bias[rows]``)."""
    weight = _weight(linear)
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    new = nn.Linear(weight.size(1), weight.size(0), bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach() if rows is None else linear.bias.detach()[rows])
    return new


def shrink_feedforward(ffn: FeedForward, *, keep: Tensor | Sequence[int] | None = None,
                       amount: float | None = None, scores: Tensor | None = None) -> FeedForward:
    """A new, smaller :class:`~labkit.layers.FeedForward` with only the kept hidden neurons: rows of ``up``
    (and ``gate``), columns of ``down``. Its output equals ``ffn``'s with the removed neurons masked to zero.
    Give ``keep`` (indices) or ``amount`` (fraction to remove, by ``scores``, default :func:`ffn_neuron_scores`)."""
    if not isinstance(ffn, FeedForward):
        raise TypeError(f"ffn must be a labkit.layers.FeedForward, got {type(ffn).__name__}")
    scores = ffn_neuron_scores(ffn) if scores is None and amount is not None else scores
    kept = _keep_indices(ffn.d_ff, keep, amount, scores, "neurons")
    new = FeedForward(ffn.d_model, kept.numel(), activation=ffn.activation, dropout=ffn.dropout.p,
                      bias=ffn.up.bias is not None)
    new.up = _sliced_linear(ffn.up, rows=kept)
    if ffn.gate is not None:
        new.gate = _sliced_linear(ffn.gate, rows=kept)
    new.down = _sliced_linear(ffn.down, cols=kept)
    return new.train(ffn.training)


class PrunedMultiHeadAttention(nn.Module):
    """Multi-head self/cross-attention with some heads removed: ``q/k/v_proj`` map ``embed_dim -> num_heads *
    head_dim`` (fewer heads than ``embed_dim / head_dim``), ``out_proj`` maps back to ``embed_dim``. Same
    forward as :class:`~labkit.attention.MultiHeadAttention` (batched, batch-first inputs)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0,
                 bias: bool = True, kdim: int | None = None, vdim: int | None = None) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = dropout
        self.batch_first = True
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    _merged_mask = MultiHeadAttention._merged_mask  # the masks of MultiHeadAttention, for this many heads

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = False, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """(output (B, L, embed_dim), weights or None) as MultiHeadAttention.forward, for batched inputs."""
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3 or query.size(-1) != self.embed_dim:
            raise ValueError(f"query, key and value must be batched (B, L, E) with E = {self.embed_dim}, got "
                             f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}")
        batch, n_queries, _ = query.shape
        q, k, v = (self._split_heads(p(x)) for p, x in ((self.q_proj, query), (self.k_proj, key),
                                                         (self.v_proj, value)))
        mask = self._merged_mask(attn_mask, key_padding_mask, is_causal, batch, n_queries, key.size(1),
                                 q.dtype, q.device)
        heads, weights = _attention(q, k, v, mask, self.dropout if self.training else 0.0, False, None)
        output = self.out_proj(heads.transpose(1, 2).reshape(batch, n_queries, self.num_heads * self.head_dim))
        if not need_weights:
            return output, None
        return output, weights.mean(dim=1) if average_attn_weights else weights


def shrink_attention(attention: MultiHeadAttention | PrunedMultiHeadAttention, *,
                     keep: Tensor | Sequence[int] | None = None, amount: float | None = None,
                     scores: Tensor | None = None) -> PrunedMultiHeadAttention:
    """A :class:`PrunedMultiHeadAttention` with only the kept heads: their rows of ``q/k/v_proj`` and columns
    of ``out_proj``. Its output equals ``attention``'s with the removed heads' outputs masked to zero. Give
    ``keep`` (head indices) or ``amount`` (fraction to remove, by ``scores``, default
    :func:`attention_head_scores`)."""
    if not isinstance(attention, (MultiHeadAttention, PrunedMultiHeadAttention)):
        raise TypeError(f"attention must be a labkit MultiHeadAttention, got {type(attention).__name__}")
    heads, head_dim = _head_of(attention)
    scores = attention_head_scores(attention) if scores is None and amount is not None else scores
    kept = _keep_indices(heads, keep, amount, scores, "heads")
    channels = (kept[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    new = PrunedMultiHeadAttention(attention.embed_dim, kept.numel(), head_dim, dropout=attention.dropout,
                                   bias=attention.q_proj.bias is not None, kdim=attention.kdim, vdim=attention.vdim)
    new.q_proj = _sliced_linear(attention.q_proj, rows=channels)
    new.k_proj = _sliced_linear(attention.k_proj, rows=channels)
    new.v_proj = _sliced_linear(attention.v_proj, rows=channels)
    new.out_proj = _sliced_linear(attention.out_proj, cols=channels)
    return new.train(attention.training)


def _set_submodule(model: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def shrink_model(model: nn.Module, *, ffn_amount: float = 0.0, head_amount: float = 0.0,
                 ffn_scores: Mapping[str, Tensor] | None = None, head_scores: Mapping[str, Tensor] | None = None,
                 inplace: bool = False) -> nn.Module:
    """Structured pruning of a whole model: every :class:`FeedForward` loses ``ffn_amount`` of its neurons and
    every attention module ``head_amount`` of its heads (at least one kept), each by its own importance
    (``ffn_scores`` / ``head_scores``: ``{qualified module name: per-unit scores}``, default magnitudes).
    Returns the shrunk model (a copy unless ``inplace``)."""
    ffn_amount, head_amount = check_amount(ffn_amount, "ffn_amount"), check_amount(head_amount, "head_amount")
    model = model if inplace else copy.deepcopy(model)
    for qualified, module in list(model.named_modules()):
        if isinstance(module, FeedForward) and ffn_amount > 0:
            scores = (ffn_scores or {}).get(qualified)
            n_keep = max(1, module.d_ff - n_to_prune(ffn_amount, module.d_ff))
            scores = ffn_neuron_scores(module) if scores is None else scores
            _set_submodule(model, qualified, shrink_feedforward(module, keep=torch.topk(scores, n_keep).indices))
        elif isinstance(module, (MultiHeadAttention, PrunedMultiHeadAttention)) and head_amount > 0:
            scores = (head_scores or {}).get(qualified)
            n_keep = max(1, module.num_heads - n_to_prune(head_amount, module.num_heads))
            scores = attention_head_scores(module) if scores is None else scores
            _set_submodule(model, qualified, shrink_attention(module, keep=torch.topk(scores, n_keep).indices))
    return model


# ----------------------------------------------------------------------------------------------------------
# sparse updates
# ----------------------------------------------------------------------------------------------------------


def mask_gradients(params_and_masks: Iterable[tuple[Tensor, Tensor]]) -> list[Any]:
    """Register a gradient hook ``grad * mask`` on each plain parameter, so that pruned entries receive no
    gradient (003 §2.2.1: "only update the non-zero parameters"). Returns the hook handles (``.remove()``).
    With an optimizer that has momentum or weight decay on the pruned entries, re-zero them after each step or
    use :class:`MaskedAdamW`."""
    handles = []
    for param, mask in params_and_masks:
        _check_tensor("param", param)
        if mask.shape != param.shape:
            raise ValueError(f"mask must have the parameter's shape {tuple(param.shape)}, got {tuple(mask.shape)}")
        mask = mask.detach().to(param)
        handles.append(param.register_hook(lambda grad, mask=mask: grad * mask))
    return handles


class MaskedAdamW(_LabkitOptimizer):
    """AdamW that updates only the kept entries of masked parameters and keeps its moments for those entries
    only: ``2 * nnz`` state values instead of ``2 * numel`` (the optimizer-state saving of sparse updates).

    ``masks`` maps a parameter to its 0/1 mask (parameters not in it are updated densely). Pruned entries are
    never touched, so they stay exactly zero. The update is AdamW's (``labkit.optim``), on the gathered
    ``param.view(-1)[kept]``; it equals ``torch.optim.AdamW`` on the kept entries when the pruned gradients are 0.
    """

    def __init__(self, params: Iterable[Any], masks: Mapping[Tensor, Tensor] | Sequence[tuple[Tensor, Tensor]],
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        pairs = masks.items() if isinstance(masks, Mapping) else masks
        self._kept: dict[int, Tensor] = {}
        for param, mask in pairs:
            if mask.shape != param.shape:
                raise ValueError(f"mask must have the parameter's shape {tuple(param.shape)}, "
                                 f"got {tuple(mask.shape)}")
            self._kept[id(param)] = mask.detach().reshape(-1).nonzero().squeeze(1).to(param.device)

    def state_numel(self) -> int:
        """Number of values held in the moment buffers (``exp_avg`` + ``exp_avg_sq``) over all parameters."""
        return sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in self.state.values() if "exp_avg" in s)

    def _update_group(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        for param in group["params"]:
            if param.grad is None:
                continue
            kept = self._kept.get(id(param))
            values = param.view(-1)[kept] if kept is not None else param
            grad = param.grad.reshape(-1)[kept] if kept is not None else param.grad
            state = self.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(values)
                state["exp_avg_sq"] = torch.zeros_like(values)
            _adam_single_tensor([values], [grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
                                amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                weight_decay=group["weight_decay"], decoupled=True, maximize=False)
            if kept is not None:
                param.view(-1)[kept] = values


# ----------------------------------------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------------------------------------

STORAGE_FORMATS = ("dense", "csr", "coo", "bitmask", "2:4")


def storage_bytes(shape: tuple[int, int], nnz: int, fmt: str, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes to store an ``(rows, cols)`` matrix with ``nnz`` non-zeros:
    dense ``r c b_v``; CSR ``nnz (b_v + b_i) + (r + 1) b_i``; COO ``nnz (b_v + 2 b_i)``;
    bitmask ``nnz b_v + ceil(r c / 8)``; 2:4 ``(r c / 2) b_v + r c / 8`` (half the values, 2 bits of position
    per kept value, NVIDIA's metadata)."""
    if fmt not in STORAGE_FORMATS:
        raise ValueError(f"fmt must be one of {STORAGE_FORMATS}, got {fmt!r}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (rows, cols) of positive ints, got {shape!r}")
    rows, cols = shape
    n = rows * cols
    if not 0 <= nnz <= n:
        raise ValueError(f"nnz must be in [0, {n}] for shape {shape}, got {nnz}")
    if fmt == "dense":
        return n * value_bytes
    if fmt == "csr":
        return nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes
    if fmt == "coo":
        return nnz * (value_bytes + 2 * index_bytes)
    if fmt == "bitmask":
        return nnz * value_bytes + math.ceil(n / 8)
    if cols % 4:
        raise ValueError(f"2:4 storage needs cols divisible by 4, got shape {shape}")
    return (n // 2) * value_bytes + n // 8


def breakeven_sparsity(fmt: str, value_bytes: int = 4, index_bytes: int = 4) -> float:
    """The sparsity above which ``fmt`` is smaller than dense, for a large matrix (row pointers negligible):
    CSR ``b_i / (b_v + b_i)``; COO ``2 b_i / (b_v + 2 b_i)``; bitmask ``1 / (8 b_v)``."""
    if fmt == "csr":
        return index_bytes / (value_bytes + index_bytes)
    if fmt == "coo":
        return 2 * index_bytes / (value_bytes + 2 * index_bytes)
    if fmt == "bitmask":
        return 1 / (8 * value_bytes)
    raise ValueError(f"fmt must be 'csr', 'coo' or 'bitmask', got {fmt!r}")


def to_bitmask(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(values, bits)``: the non-zeros of ``t`` in row-major order and a packed uint8 bitmask (bit ``i % 8`` of
    byte ``i // 8`` is 1 where ``t.view(-1)[i] != 0``)."""
    _check_tensor("t", t)
    flat = t.reshape(-1)
    present = (flat != 0).to(torch.uint8)
    padded = torch.cat([present, present.new_zeros((-present.numel()) % 8)]).view(-1, 8)
    weights = 2 ** torch.arange(8, dtype=torch.uint8, device=t.device)
    return flat[present.bool()].clone(), (padded * weights).sum(dim=1, dtype=torch.uint8)


def from_bitmask(values: Tensor, bits: Tensor, shape: Sequence[int]) -> Tensor:
    """The dense tensor of ``shape`` that :func:`to_bitmask` encoded."""
    n = math.prod(shape)
    if bits.numel() != math.ceil(n / 8):
        raise ValueError(f"bits must hold ceil({n}/8) = {math.ceil(n / 8)} bytes for shape {tuple(shape)}, "
                         f"got {bits.numel()}")
    unpacked = (bits.view(-1, 1) >> torch.arange(8, dtype=torch.uint8, device=bits.device)) & 1
    present = unpacked.view(-1)[:n].bool()
    if int(present.sum()) != values.numel():
        raise ValueError(f"the bitmask has {int(present.sum())} set bits but {values.numel()} values were given")
    out = values.new_zeros(n)
    out[present] = values
    return out.view(*shape)


# ----------------------------------------------------------------------------------------------------------
# CUDA: 2:4 semi-structured sparsity
# ----------------------------------------------------------------------------------------------------------


def semi_structured_supported(device: str | torch.device | None = None) -> bool:
    """Whether ``torch.sparse.to_sparse_semi_structured`` can run here: a CUDA GPU of compute capability 8.0+
    (Ampere or newer; the sparse tensor cores)."""
    if not torch.cuda.is_available() or not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def to_semi_structured(linear: nn.Linear) -> nn.Linear:
    """A copy of a CUDA fp16/bf16 ``nn.Linear`` whose weight (which must be 2:4 sparse, e.g. masked with
    :func:`nm_mask`) is stored compressed with ``torch.sparse.to_sparse_semi_structured``; its matmuls then use
    the sparse tensor cores. Raises RuntimeError where the GPU cannot (see :func:`semi_structured_supported`)."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    weight = linear.weight.detach()
    if not semi_structured_supported(weight.device):
        raise RuntimeError("2:4 semi-structured sparsity needs a CUDA GPU with compute capability >= 8.0 and the "
                           f"weight on it; this weight is on {weight.device}")
    if weight.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"2:4 sparse kernels take float16 or bfloat16 weights, got {weight.dtype}")
    if not is_nm_sparse(weight, 2, 4):
        raise ValueError("the weight is not 2:4 sparse: apply nm_mask(weight, 2, 4) first")
    new = copy.deepcopy(linear)
    new.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(weight), requires_grad=False)
    return new
