"""Scaled dot-product attention and multi-head attention, from scratch.

The formula is the one in 003 §4.1 (and Vaswani et al. 2017, "Attention Is All You Need", §3.2.1)::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V

where ``M`` is an optional mask (``-inf`` where a query may not look at a key). 003 §4.2 derives it in
four steps: dot products ``QK^T``, scaling by ``1/sqrt(d_k)``, softmax over the keys, weighted sum of the
values. Multi-head attention (Vaswani et al. 2017, §3.2.2; 003 §2.1.1) runs ``h`` such attentions on
learned projections of width ``d_model / h`` and mixes them with an output projection.

Only tensor arithmetic, ``matmul`` and ``softmax`` are used here; ``torch.nn.functional.
scaled_dot_product_attention`` and ``torch.nn.MultiheadAttention`` are the references in the tests.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "causal_mask",
    "scaled_dot_product_attention",
    "attention_weights",
    "MultiHeadAttention",
    "KVCache",
]


def causal_mask(n_queries: int, n_keys: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean (L, S) mask, True = may attend: query ``i`` sees keys ``j <= i`` (top-left aligned, like torch)."""
    n_keys = n_queries if n_keys is None else n_keys
    for name, value in (("n_queries", n_queries), ("n_keys", n_keys)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril()


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


# argument checks shared by labkit.attention, labkit.layers and labkit.transformer
def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _probability(name: str, value: object) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")
    return float(value)


def _check_float_tensor(name: str, t: object) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _check_query_key(query: Tensor, key: Tensor) -> None:
    _check_float_tensor("query", query)
    _check_float_tensor("key", key)
    if query.dim() < 2:
        raise ValueError(f"query must have shape (..., L, E), got {_shape(query)}")
    if key.dim() < 2:
        raise ValueError(f"key must have shape (..., S, E), got {_shape(key)}")
    if key.dtype != query.dtype:
        raise TypeError(f"query and key must have the same dtype, got {query.dtype} and {key.dtype}")
    if key.size(-1) != query.size(-1):
        raise ValueError(
            f"query and key must have the same last dim E, got query {_shape(query)} and key {_shape(key)}"
        )


def _check_value(query: Tensor, key: Tensor, value: Tensor) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"value must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != query.dtype:
        raise TypeError(f"query and value must have the same dtype, got {query.dtype} and {value.dtype}")
    if value.dim() < 2:
        raise ValueError(f"value must have shape (..., S, Ev), got {_shape(value)}")
    if value.size(-2) != key.size(-2):
        raise ValueError(
            f"key and value must have the same length S, got key {_shape(key)} and value {_shape(value)}"
        )
    try:
        torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            "batch dims of query, key and value must broadcast, got "
            f"{_shape(query)}, {_shape(key)} and {_shape(value)}"
        ) from err


def _masked_scores(
    query: Tensor, key: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float | None
) -> Tensor:
    """Q K^T * scale, with -inf (bool mask) or the mask's values (float mask) added."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.size(-1))
    elif not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if is_causal and attn_mask is not None:
        raise ValueError("attn_mask must be None when is_causal=True (torch raises here too): pass one or the other")
    n_queries, n_keys = query.size(-2), key.size(-2)
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale  # (..., L, S)
    minus_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    if is_causal:
        scores = torch.where(causal_mask(n_queries, n_keys, device=scores.device), scores, minus_inf)
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        try:
            torch.broadcast_shapes(attn_mask.shape, scores.shape)
        except RuntimeError as err:
            raise ValueError(
                f"attn_mask must broadcast to (..., L, S) = {_shape(scores)}, got {_shape(attn_mask)}"
            ) from err
        if attn_mask.dtype == torch.bool:
            scores = torch.where(attn_mask, scores, minus_inf)
        elif attn_mask.is_floating_point():
            scores = scores + attn_mask.to(scores.dtype)
        else:
            raise TypeError(f"attn_mask must be bool (True = attend) or floating (added), got dtype {attn_mask.dtype}")
    return scores


def _safe_softmax(scores: Tensor) -> Tensor:
    """softmax over the last dim; a row whose scores are all -inf gives all-zero weights (as torch's SDPA)."""
    fully_masked = (scores == float("-inf")).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(fully_masked, 0.0), dim=-1)
    return weights.masked_fill(fully_masked, 0.0)


def _attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
) -> tuple[Tensor, Tensor]:
    """(softmax(QK^T*scale + M) V, the weights after dropout) -- the single place the formula lives."""
    _check_query_key(query, key)
    _check_value(query, key, value)
    _probability("dropout_p", dropout_p)
    weights = _safe_softmax(_masked_scores(query, key, attn_mask, is_causal, scale))
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return torch.matmul(weights, value), weights


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(Q K^T * scale + M) V with PyTorch's semantics (003 §4.1; Vaswani et al. 2017, §3.2.1).

    Shapes ``(..., L, E) x (..., S, E) x (..., S, Ev) -> (..., L, Ev)``; batch dims broadcast.
    ``scale`` defaults to ``1/sqrt(E)``. ``attn_mask`` is bool (True = may attend) or floating (added to the
    scores) and broadcasts to ``(..., L, S)``. ``is_causal`` applies the top-left aligned ``(L, S)`` mask
    ``j <= i`` and may not be combined with ``attn_mask``. ``dropout_p`` drops attention weights (scaling the
    kept ones by ``1/(1-p)``) whenever it is > 0, as ``F.scaled_dot_product_attention`` does -- pass 0.0 in
    evaluation. A query whose keys are all masked gets zero weights, so its output row is 0 (torch does the same).
    """
    output, _ = _attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
    return output


def attention_weights(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """The attention probabilities softmax(Q K^T * scale + M), shape (..., L, S); masks as in
    :func:`scaled_dot_product_attention` (no dropout). Each row sums to 1 (0 for a fully masked row)."""
    _check_query_key(query, key)
    return _safe_softmax(_masked_scores(query, key, attn_mask, is_causal, scale))


def _additive_mask(mask: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    """nn.MultiheadAttention convention: bool True = *not* allowed -> -inf; a float mask is added as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if mask.is_floating_point():
        return mask.to(dtype)
    raise TypeError(f"{name} must be bool (True = ignore) or floating (added), got dtype {mask.dtype}")


class KVCache:
    """The keys and values of every layer's self-attention, kept between generation steps (a KV cache).

    During autoregressive decoding the keys and values of earlier tokens do not change (causal attention: a
    token never looks ahead), so each step only needs to project the new token and append its ``k`` and ``v``.
    Buffers of shape ``(n_layers, B, H, max_len, head_dim)`` are allocated once; ``update`` writes the new
    entries after the ones already stored and returns everything stored so far. Memory:
    ``2 * n_layers * H * head_dim * tokens * B * bytes_per_value`` (keys and values).
    """

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, head_dim: int, max_len: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size), ("n_heads", n_heads),
                            ("head_dim", head_dim), ("max_len", max_len)):
            _positive_int(name, value)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        shape = (n_layers, batch_size, n_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = int(max_len)
        self.lengths = [0] * int(n_layers)

    @property
    def length(self) -> int:
        """Tokens stored (the same in every layer after a complete forward pass)."""
        return self.lengths[0]

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values (all ``max_len`` slots)."""
        return self.keys.numel() * self.keys.element_size() * 2

    @property
    def used_bytes(self) -> int:
        """Bytes holding stored tokens: ``2 * n_layers * B * H * length * head_dim * bytes_per_value``."""
        n_layers, batch, heads, _, head_dim = self.keys.shape
        return 2 * n_layers * batch * heads * self.length * head_dim * self.keys.element_size()

    def update(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``key`` and ``value`` (B, H, T_new, head_dim) to layer ``layer``; return all stored ones,
        (B, H, S, head_dim)."""
        if not isinstance(layer, numbers.Integral) or not 0 <= layer < len(self.lengths):
            raise ValueError(f"layer must be an int in [0, {len(self.lengths)}), got {layer!r}")
        expected = self.keys.shape[1:3] + self.keys.shape[4:]
        for name, t in (("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4 or (t.size(0), t.size(1), t.size(3)) != tuple(expected):
                raise ValueError(f"{name} must have shape (B, H, T, head_dim) = ({expected[0]}, {expected[1]}, T, "
                                 f"{expected[2]}), got {_shape(t)}")
        start = self.lengths[layer]
        end = start + key.size(2)
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens; {start} stored + {key.size(2)} new exceed it")
        self.keys[layer, :, :, start:end] = key
        self.values[layer, :, :, start:end] = value
        self.lengths[layer] = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reset(self) -> None:
        """Forget every stored token (the buffers are kept)."""
        self.lengths = [0] * len(self.lengths)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with the interface of ``nn.MultiheadAttention`` (Vaswani et al. 2017, §3.2.2).

    ``head_i = Attention(Q W_q^i, K W_k^i, V W_v^i)`` (003 §4.1), ``MHA = Concat(head_1..head_h) W_o``.
    Self-attention when query, key and value are the same tensor; cross-attention (003 §2.1.2, the decoder
    reading the encoder's output) when key and value come from elsewhere.

    Masks follow ``nn.MultiheadAttention``, *not* :func:`scaled_dot_product_attention`: a bool
    ``key_padding_mask`` (B, S) or ``attn_mask`` (L, S) / (B*num_heads, L, S) is True where attention is
    *not* allowed; float masks are added to the scores. ``is_causal=True`` without ``attn_mask`` builds the
    causal mask (torch requires the mask as well; with a mask given, the mask is used as is).
    Dropout acts on the attention weights in training mode only. Fully masked rows give zero weights.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = _positive_int("embed_dim", embed_dim)
        self.num_heads = _positive_int("num_heads", num_heads)
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else _positive_int("kdim", kdim)
        self.vdim = embed_dim if vdim is None else _positive_int("vdim", vdim)
        self.dropout = _probability("dropout", dropout)
        self.batch_first = batch_first
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # as nn.MultiheadAttention: Xavier-uniform input projections, zero biases
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}"
        )

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def _merged_mask(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
        batch: int,
        n_queries: int,
        n_keys: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> Tensor | None:
        """One additive mask broadcastable to (B, H, L, S), or None."""
        mask = None
        if attn_mask is None and is_causal:
            attn_mask = ~causal_mask(n_queries, n_keys, device=device)
        if attn_mask is not None:
            if not isinstance(attn_mask, Tensor):
                raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
            if attn_mask.dim() == 2 and _shape(attn_mask) == (n_queries, n_keys):
                mask = _additive_mask(attn_mask, "attn_mask", dtype)
            elif attn_mask.dim() == 3 and _shape(attn_mask) == (batch * self.num_heads, n_queries, n_keys):
                mask = _additive_mask(attn_mask, "attn_mask", dtype).view(batch, self.num_heads, n_queries, n_keys)
            else:
                raise ValueError(
                    f"attn_mask must have shape (L, S) = {(n_queries, n_keys)} or (B*num_heads, L, S) = "
                    f"{(batch * self.num_heads, n_queries, n_keys)}, got {_shape(attn_mask)}"
                )
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor):
                raise TypeError(
                    f"key_padding_mask must be a torch.Tensor or None, got {type(key_padding_mask).__name__}"
                )
            if _shape(key_padding_mask) != (batch, n_keys):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S) = {(batch, n_keys)}, got {_shape(key_padding_mask)}"
                )
            padding = _additive_mask(key_padding_mask, "key_padding_mask", dtype).view(batch, 1, 1, n_keys)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """(output, weights): output (B, L, E) (or (L, B, E) if not batch_first); weights (B, L, S) averaged
        over heads, (B, H, L, S) per head, or None when ``need_weights`` is False. Unbatched (L, E) works too."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            _check_float_tensor(name, t)
        batched = query.dim() == 3
        layout = "(B, L, E)" if self.batch_first else "(L, B, E)"
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                f"query, key and value must all be batched {layout} or unbatched (L, E), got "
                f"{_shape(query)}, {_shape(key)} and {_shape(value)}"
            )
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if isinstance(key_padding_mask, Tensor):
                key_padding_mask = key_padding_mask.unsqueeze(0)  # (S,) -> (1, S); a 3-D attn_mask is (H, L, S)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, n_queries, _ = query.shape
        n_keys = key.size(1)
        expected = (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim))
        for name, t, dim in expected:
            if t.size(-1) != dim:
                raise ValueError(f"{name} must have last dim {dim}, got shape {_shape(t)}")
        if key.size(0) != batch or value.size(0) != batch or value.size(1) != n_keys:
            raise ValueError(
                f"key and value must be (B, S, *) with B = {batch} and the same S, "
                f"got {_shape(key)} and {_shape(value)}"
            )

        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        mask = self._merged_mask(
            attn_mask, key_padding_mask, is_causal, batch, n_queries, n_keys, q.dtype, q.device
        )
        dropout_p = self.dropout if self.training else 0.0
        heads, weights = _attention(q, k, v, mask, dropout_p, False, None)  # (B, H, L, Dh), (B, H, L, S)
        output = self.out_proj(heads.transpose(1, 2).reshape(batch, n_queries, self.embed_dim))

        if not batched:
            output = output.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        if not need_weights:
            return output, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            weights = weights.squeeze(0)
        return output, weights

    def cached_self_attention(
        self,
        x: Tensor,
        kv_cache: KVCache,
        layer: int,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Self-attention of the new tokens ``x`` (B, T, E) over the cached ones and themselves: project ``x`` to
        q, k, v, append k and v to ``kv_cache`` at ``layer``, attend q to all S stored keys. Masks as in
        :meth:`forward` (True = not allowed), ``attn_mask`` (T, S) and ``key_padding_mask`` (B, S), where S counts
        the cached and new tokens. Batch-first only; no attention weights are returned."""
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be a labkit.attention.KVCache, got {type(kv_cache).__name__}")
        _check_float_tensor("x", x)
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(f"x must have shape (B, T, {self.embed_dim}), got {_shape(x)}")
        batch, n_queries, _ = x.shape
        q = self._split_heads(self.q_proj(x))
        k, v = kv_cache.update(layer, self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x)))
        mask = self._merged_mask(attn_mask, key_padding_mask, False, batch, n_queries, k.size(2), q.dtype, q.device)
        dropout_p = self.dropout if self.training else 0.0
        heads, _ = _attention(q, k, v, mask, dropout_p, False, None)  # (B, H, T, Dh)
        return self.out_proj(heads.transpose(1, 2).reshape(batch, n_queries, self.embed_dim))

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> "MultiHeadAttention":
        """A MultiHeadAttention with the weights of ``module`` (copied, not shared)."""
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"expected an nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported by labkit's MultiHeadAttention")
        has_bias = module.in_proj_bias is not None
        reference = module.out_proj.weight
        new = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=has_bias,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
            device=reference.device,
            dtype=reference.dtype,
        )
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.chunk(3)
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = module.in_proj_bias.chunk(3) if has_bias else (None, None, None)
        with torch.no_grad():
            for proj, weight, bias in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight.copy_(weight)
                if bias is not None:
                    proj.bias.copy_(bias)
            new.out_proj.weight.copy_(module.out_proj.weight)
            if has_bias:
                new.out_proj.bias.copy_(module.out_proj.bias)
        new.train(module.training)
        return new
