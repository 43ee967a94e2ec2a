"""Autoregressive generation for the book's GPT, from scratch: greedy, temperature, top-k and top-p sampling,
a KV cache with its prefill and decode phases, and batched generation with padding.

A causal language model gives ``p(x_{t+1} | x_1..x_t)``; generation appends one token at a time. Without a
cache, step t runs the model on all t tokens again: ``sum_t O(t)`` token-layer passes, quadratic in the output
length. Causal attention never lets a token look ahead, so the keys and values of earlier tokens never change:
keep them (the **KV cache**) and each **decode** step only runs the new token, after one **prefill** pass over
the prompt. The cache costs ``2 * n_layers * n_heads * head_dim * tokens * bytes_per_value`` bytes per
sequence (keys and values). 003 §2.2.2 and §9.2 list inference optimizations (static graphs, quantization,
compression, distribution) but not this one, which is the first any LLM server applies.

Sampling (Holtzman et al. 2020): ``softmax(z / T)`` with temperature T; top-k keeps the k largest logits
(Fan et al. 2018); top-p ("nucleus") keeps the smallest set of most probable tokens whose probability reaches p.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from labkit.attention import KVCache
from labkit.transformer import TransformerConfig

__all__ = [
    "KVCache",
    "kv_cache_bytes",
    "top_k_filter",
    "top_p_filter",
    "sample_next",
    "pad_prompts",
    "generate",
    "generate_timed",
    "GenerationResult",
]


def _nonnegative_int(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def kv_cache_bytes(n_layers: int, n_heads: int, head_dim: int, n_tokens: int, bytes_per_value: int = 4,
                   batch_size: int = 1) -> int:
    """Bytes of a KV cache: ``2 * n_layers * n_heads * head_dim * n_tokens * bytes_per_value * batch_size``
    (a key and a value vector of ``n_heads * head_dim = d_model`` numbers per token and layer)."""
    for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("head_dim", head_dim),
                        ("bytes_per_value", bytes_per_value), ("batch_size", batch_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return 2 * n_layers * n_heads * head_dim * _nonnegative_int("n_tokens", n_tokens) * bytes_per_value * batch_size


# ---------------------------------------------------------------------------------------------------------------
# choosing the next token


def _check_logits(logits: object) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.size(-1) == 0:
        raise ValueError(f"logits must have shape (..., V) with V > 0, got {tuple(logits.shape)}")
    return logits


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Logits with every entry below the k-th largest of its row set to -inf (ties with the k-th are kept)."""
    _check_logits(logits)
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"top_k must be a positive int, got {k!r}")
    if k >= logits.size(-1):
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the most probable tokens, in order, until their probability reaches ``p``
    (the token that crosses ``p`` is kept, so the top token always is); the rest become -inf."""
    _check_logits(logits)
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1], got {p!r}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """The next token of every row of ``logits`` (B, V) -> (B,) int64.

    Greedy (``do_sample=False``): ``argmax``. Sampling: ``z / temperature``, then top-k, then top-p, then one
    draw from ``softmax`` by inverting its cumulative distribution at ``u ~ U[0, 1)`` from ``generator``
    (so a seeded generator gives the same tokens every run).
    """
    _check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, V), got {tuple(logits.shape)}")
    if not do_sample:
        return logits.argmax(dim=-1)
    if not isinstance(temperature, numbers.Real) or isinstance(temperature, bool) or temperature <= 0:
        raise ValueError(f"temperature must be a float > 0 when sampling (use do_sample=False for greedy), "
                         f"got {temperature!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    scores = logits.float() / float(temperature)
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None:
        scores = top_p_filter(scores, top_p)
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    gen_device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.size(0), 1, generator=generator, device=gen_device).to(cdf.device)
    u = u * cdf[:, -1:]  # the last entry is 1 up to rounding
    choice = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return choice.clamp(max=logits.size(-1) - 1)


# ---------------------------------------------------------------------------------------------------------------
# generation


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, side: str = "left",
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Token lists of different lengths -> ``(ids (B, T), padding_mask (B, T) True = pad)``, padded on the
    ``"left"`` (the usual choice for generation: every row's last column is its newest token) or ``"right"``."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if isinstance(prompts, Tensor) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token lists")
    rows = [list(map(int, p)) for p in prompts]
    if any(len(row) == 0 for row in rows):
        raise ValueError(f"every prompt needs at least one token, got lengths {[len(r) for r in rows]}")
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), int(pad_id), dtype=torch.long)
    padding = torch.ones(len(rows), longest, dtype=torch.bool)
    for i, row in enumerate(rows):
        cols = slice(longest - len(row), longest) if side == "left" else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        padding[i, cols] = False
    return ids.to(device), padding.to(device)


@dataclass
class GenerationResult:
    """Tokens (B, T_prompt + n_new: the prompt, pads included, then the new tokens) and the time of each phase:
    ``prefill_s`` (the prompt's forward pass and the first token) and ``decode_s`` (the other n_new - 1)."""

    tokens: Tensor
    prefill_s: float
    decode_s: float
    n_prompt: int
    n_new: int

    @property
    def new_tokens(self) -> Tensor:
        return self.tokens[:, self.n_prompt:]

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second in the decode phase, over the whole batch."""
        steps = self.tokens.size(0) * max(self.n_new - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else float("inf")


def _config_of(model: nn.Module) -> TransformerConfig:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (labkit's GPT), got {type(model).__name__}")
    config = getattr(model, "config", None)
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"model must be labkit's GPT (with a TransformerConfig .config), got {type(model).__name__}")
    return config


def _check_prompt(idx: object, padding_mask: object) -> None:
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"idx must be an integer tensor of shape (B, T), got "
                         f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
    if idx.size(1) == 0:
        raise ValueError(f"the prompt must have at least one token, got shape {tuple(idx.shape)}")
    if padding_mask is not None:
        if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool:
            raise TypeError(f"padding_mask must be a bool tensor (True = pad), got "
                            f"{getattr(padding_mask, 'dtype', type(padding_mask).__name__)}")
        if padding_mask.shape != idx.shape:
            raise ValueError(f"padding_mask must have the shape of idx {tuple(idx.shape)}, got "
                             f"{tuple(padding_mask.shape)}")
        if bool(padding_mask.all(dim=1).any()):
            raise ValueError("every row of the prompt needs at least one non-pad token")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_timed(model: nn.Module, idx: Tensor, max_new_tokens: int, *, use_cache: bool = True,
                   padding_mask: Tensor | None = None, do_sample: bool = False, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None,
                   generator: torch.Generator | None = None) -> GenerationResult:
    """:func:`generate`, and the time of its prefill and decode phases."""
    config = _config_of(model)
    _check_prompt(idx, padding_mask)
    n_new = _nonnegative_int("max_new_tokens", max_new_tokens)
    batch, n_prompt = idx.shape
    if n_prompt + n_new > config.max_len:
        raise ValueError(f"prompt ({n_prompt}) + max_new_tokens ({n_new}) = {n_prompt + n_new} exceeds the model's "
                         f"max_len {config.max_len} (its learned positions end there)")
    choose = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    parameter = next(model.parameters())
    device = parameter.device
    idx = idx.to(device)
    pad = (torch.zeros_like(idx, dtype=torch.bool) if padding_mask is None else padding_mask.to(device))
    last_real = (torch.arange(n_prompt, device=device) * (~pad)).argmax(dim=1)  # the last non-pad column
    cache = None
    if use_cache:
        cache = KVCache(config.n_layers, batch, config.n_heads, config.d_model // config.n_heads,
                        n_prompt + max(n_new, 1), dtype=parameter.dtype, device=device)
    was_training = model.training
    model.eval()
    tokens, times = idx, []
    try:
        _synchronize(device)
        start = time.perf_counter()
        for step in range(n_new):
            masked = pad if padding_mask is not None else None
            if use_cache and step > 0:
                logits = model(tokens[:, -1:], padding_mask=masked, kv_cache=cache)[:, -1]
            else:
                logits = model(tokens, padding_mask=masked, kv_cache=cache)
                logits = logits[torch.arange(batch, device=device), last_real] if step == 0 else logits[:, -1]
            next_token = sample_next(logits, **choose)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            pad = torch.cat([pad, torch.zeros(batch, 1, dtype=torch.bool, device=device)], dim=1)
            if step == 0:
                _synchronize(device)
                times.append(time.perf_counter())
        _synchronize(device)
        end = time.perf_counter()
    finally:
        model.train(was_training)
    prefill_s = (times[0] - start) if times else 0.0
    decode_s = (end - times[0]) if times else 0.0
    return GenerationResult(tokens, prefill_s, decode_s, n_prompt, n_new)


def generate(model: nn.Module, idx: Tensor, max_new_tokens: int, *, use_cache: bool = True,
             padding_mask: Tensor | None = None, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None) -> Tensor:
    """Append ``max_new_tokens`` tokens to each row of ``idx`` (B, T): (B, T + max_new_tokens) int64.

    ``use_cache``: one prefill pass over the prompt fills a :class:`KVCache`, then each decode step runs the
    model on the newest token only; without it, every step runs the model on the whole sequence again. Both
    give the same tokens (same logits up to rounding). ``padding_mask`` (B, T) True marks pads of a batch of
    prompts padded on either side (see :func:`pad_prompts`): pads are never attended to and positions count
    real tokens only, so a row's tokens equal those it would get alone. Token choice as in :func:`sample_next`.
    The model runs in eval mode (dropout off) and is put back in its mode afterwards.
    """
    return generate_timed(model, idx, max_new_tokens, use_cache=use_cache, padding_mask=padding_mask,
                          do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                          generator=generator).tokens
