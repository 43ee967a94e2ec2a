"""Parameter sharing: one tensor used in several places, stored and trained once (003 §9.3: "reduce the number of
model parameters through parameter sharing").

* :func:`share_layers` -- cross-layer sharing as in ALBERT (Lan et al. 2020): the ``n`` layers of a stack reuse
  the weights of ``n_unique`` of them (``n_unique=1``: all layers are one layer applied ``n`` times). Parameters
  drop by the factor ``n / n_unique``; compute per token does not change.
* :func:`tie_output_embedding` -- the output projection reuses the token-embedding matrix (Press & Wolf 2017),
  saving ``V * d`` parameters.
* :func:`parameter_counts` -- unique tensors counted once, against the count with every use repeated.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["share_layers", "tie_output_embedding", "untie_output_embedding", "shared_groups", "parameter_counts"]


def _layer_lists(model: nn.Module) -> list[nn.ModuleList]:
    return [m.layers for m in model.modules() if isinstance(getattr(m, "layers", None), nn.ModuleList)]


def share_layers(model: nn.Module, n_unique: int = 1) -> nn.Module:
    """ALBERT-style cross-layer sharing, in place: in every ``layers`` ModuleList of ``model`` (labkit's Encoder
    and Decoder stacks), layer ``i`` becomes layer ``(i * n_unique) // n`` of ``n_unique`` consecutive groups,
    so consecutive layers share one set of weights. Returns ``model``."""
    if isinstance(n_unique, bool) or not isinstance(n_unique, int) or n_unique < 1:
        raise ValueError(f"n_unique must be a positive int, got {n_unique!r}")
    stacks = _layer_lists(model)
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no 'layers' ModuleList to share")
    for layers in stacks:
        n = len(layers)
        if n_unique > n:
            raise ValueError(f"n_unique ({n_unique}) cannot exceed the number of layers ({n})")
        firsts = {}
        for i in range(n):
            group = (i * n_unique) // n
            firsts.setdefault(group, layers[i])
            layers[i] = firsts[group]
    return model


def tie_output_embedding(model: nn.Module, output: str = "lm_head", embedding: str = "embed.tokens") -> nn.Module:
    """Make ``model.<output>.weight`` the same tensor as ``model.<embedding>.weight`` (both (V, d)), in place."""
    head, table = model.get_submodule(output), model.get_submodule(embedding)
    if head.weight.shape != table.weight.shape:
        raise ValueError(f"{output}.weight {tuple(head.weight.shape)} and {embedding}.weight "
                         f"{tuple(table.weight.shape)} must have the same shape to be tied")
    head.weight = table.weight
    return model


def untie_output_embedding(model: nn.Module, output: str = "lm_head") -> nn.Module:
    """Give ``model.<output>`` its own copy of the weight it shares, in place."""
    head = model.get_submodule(output)
    head.weight = nn.Parameter(head.weight.detach().clone())
    return model


def shared_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters that are one and the same tensor, one list per shared tensor (unshared ones left out)."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """``{"unique": values stored once, "with_repeats": values counted at every use, "saved": the difference}``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    unique = sum(p.numel() for p in model.parameters())
    repeated = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    return {"unique": unique, "with_repeats": repeated, "saved": repeated - unique}
