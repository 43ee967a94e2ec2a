"""Derivative attention architectures: sliding-window, linear, grouped-query; and a long-range classifier.

The paper (Mei et al. 2024, arXiv:2405.11704, abstract) speaks of "Transformer and its derivative architectures"
that trade long-range reach against computing efficiency; 003 §2.1.1 credits the global weighting of every token
by every other token with capturing long-distance dependencies. Each variant below changes that global weighting:

* **Sliding-window attention** (Beltagy et al. 2020, Longformer): query ``i`` sees only keys ``i - w < j <= i``
  (causal) or ``|i - j| < w``. Computed block by block, skipping the blocks outside the band: time O(n w d),
  memory O(n w) instead of O(n^2 d) and O(n^2). A stack of L such layers reaches back L (w - 1) positions.
* **Linear attention** (Katharopoulos et al. 2020): replace ``exp(q.k)`` by ``phi(q).phi(k)`` with the positive
  feature map ``phi(x) = elu(x) + 1``; associativity turns ``(phi(Q) phi(K)^T) V`` (O(n^2 d)) into
  ``phi(Q) (phi(K)^T V)`` (O(n d^2)). Causal: prefix sums of ``phi(k_j) v_j^T``, here in chunks.
* **Grouped-query attention** (Ainslie et al. 2023; multi-query attention, Shazeer 2019, is one K/V head): H query
  heads share H_kv key/value heads, which shrinks the KV cache by H / H_kv (:func:`kv_cache_bytes`).

:class:`LongRangeClassifier` puts each kind (and a GRU baseline) in the same small model for
:func:`labkit.data.long_range_task`. ``F.scaled_dot_product_attention`` is only the reference of the tests.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.attention import (
    MultiHeadAttention,
    _check_float_tensor,
    _check_query_key,
    _check_value,
    _positive_int,
    attention_weights,
    scaled_dot_product_attention,
)
from labkit.layers import FeedForward, LayerNorm

__all__ = [
    "sliding_window_mask",
    "sliding_window_attention",
    "elu_feature_map",
    "linear_attention",
    "linear_attention_quadratic",
    "GroupedQueryAttention",
    "kv_cache_bytes",
    "ATTENTION_KINDS",
    "VariantSelfAttention",
    "LongRangeClassifier",
]

ATTENTION_KINDS = ("full", "window", "linear")
MODEL_KINDS = (*ATTENTION_KINDS, "gru")


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _nonnegative_int(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _check_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    return float(scale)


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    _check_query_key(query, key)
    _check_value(query, key, value)


# ----------------------------------------------------------------------------------------------------------
# sliding-window attention
# ----------------------------------------------------------------------------------------------------------


def sliding_window_mask(n: int, window: int, causal: bool = True, device: torch.device | str | None = None) -> Tensor:
    """Boolean (n, n) mask, True = may attend: ``0 <= i - j < window`` (causal) or ``|i - j| < window``.

    Each query sees at most ``window`` keys back, itself included (and as many ahead when not causal); with
    ``window >= n`` it is the causal mask (or all True). Use it as ``attn_mask`` of a scaled dot-product attention.
    """
    n = _nonnegative_int("n", n)
    window = _positive_int("window", window)
    _check_bool("causal", causal)
    offset = torch.arange(n, device=device)[:, None] - torch.arange(n, device=device)[None, :]  # i - j
    if causal:
        return (offset >= 0) & (offset < window)
    return offset.abs() < window


def sliding_window_attention(query: Tensor, key: Tensor, value: Tensor, window: int, causal: bool = True,
                             scale: float | None = None) -> Tensor:
    """Self-attention restricted to a band: equals ``scaled_dot_product_attention(q, k, v,
    attn_mask=sliding_window_mask(n, window, causal))`` (Beltagy et al. 2020), without the (n, n) matrix.

    Shapes ``(..., n, E) x (..., n, E) x (..., n, Ev) -> (..., n, Ev)``, batch dims broadcast. The queries are cut
    into blocks of ``w = min(window, n)`` rows; block ``b`` only meets the key blocks ``b - 1, b`` (and ``b + 1``
    when not causal), so the work is O(n w d) and the score memory O(n w) -- the blocks a kernel may skip are never
    computed. Every query sees at least itself, so no row is fully masked.
    """
    _check_qkv(query, key, value)
    window = _positive_int("window", window)
    _check_bool("causal", causal)
    n = query.size(-2)
    if key.size(-2) != n:
        raise ValueError(f"sliding-window attention is self-attention: query and key must have the same length n, "
                         f"got query {tuple(query.shape)} and key {tuple(key.shape)}")
    scale = _check_scale(scale, query.size(-1))
    if n == 0:
        return query.new_zeros(*torch.broadcast_shapes(query.shape[:-2], value.shape[:-2]), 0, value.size(-1))
    w = min(window, n)
    n_blocks = -(-n // w)
    padded = n_blocks * w
    after = 1 if not causal else 0  # key blocks after the query's own block
    span = (2 + after) * w  # keys a query block meets: blocks b-1, b (, b+1)

    def key_windows(t: Tensor) -> Tensor:  # (..., n, E) -> (..., n_blocks, span, E), block b-1 first
        t = F.pad(t, (0, 0, w, padded - n + after * w))
        return t.unfold(-2, span, w).transpose(-2, -1)

    q_blocks = F.pad(query, (0, 0, 0, padded - n)).unflatten(-2, (n_blocks, w))  # (..., n_blocks, w, E)
    scores = torch.matmul(q_blocks, key_windows(key).transpose(-2, -1)) * scale  # (..., n_blocks, w, span)
    rows = torch.arange(padded, device=query.device).view(n_blocks, w, 1)  # absolute query index i
    cols = (torch.arange(n_blocks, device=query.device).view(n_blocks, 1, 1) - 1) * w + torch.arange(
        span, device=query.device)  # absolute key index j
    offset = rows - cols
    visible = (cols >= 0) & (cols < n) & (offset < window) & ((offset >= 0) if causal else (offset > -window))
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, key_windows(value))  # (..., n_blocks, w, Ev)
    return out.flatten(-3, -2)[..., :n, :]


# ----------------------------------------------------------------------------------------------------------
# linear attention
# ----------------------------------------------------------------------------------------------------------


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0, the feature map of Katharopoulos et al. 2020 (§3.2.1)."""
    return F.elu(x) + 1.0


def _check_eps(eps: object) -> float:
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    return float(eps)


def linear_attention_quadratic(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False,
                               eps: float = 1e-6) -> Tensor:
    """The O(n^2) form of linear attention, the reference of :func:`linear_attention`:
    ``out_i = sum_j A_ij v_j / (sum_j A_ij + eps)`` with ``A = phi(Q) phi(K)^T`` (lower triangle when causal)."""
    _check_qkv(query, key, value)
    _check_bool("is_causal", is_causal)
    eps = _check_eps(eps)
    similarity = torch.matmul(elu_feature_map(query), elu_feature_map(key).transpose(-2, -1))  # (..., L, S)
    if is_causal:
        keep = torch.ones(similarity.shape[-2:], dtype=torch.bool, device=similarity.device).tril()
        similarity = similarity * keep
    return torch.matmul(similarity, value) / (similarity.sum(dim=-1, keepdim=True) + eps)


def linear_attention(query: Tensor, key: Tensor, value: Tensor, is_causal: bool = False, eps: float = 1e-6,
                     chunk_size: int = 64) -> Tensor:
    """Linear attention (Katharopoulos et al. 2020): ``phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps)``, with
    ``phi = elu + 1``; time O(n d Ev) and no (n, n) matrix. Equals :func:`linear_attention_quadratic`.

    Shapes ``(..., L, E) x (..., S, E) x (..., S, Ev) -> (..., L, Ev)``. Non-causal: one state
    ``phi(K)^T V`` (E x Ev) and normaliser ``phi(K)^T 1``. Causal (L == S, query ``i`` sees ``j <= i``): the
    sequence is cut into chunks of ``chunk_size``; inside a chunk the masked quadratic form (``chunk_size^2``),
    across chunks the prefix sums ``S_c = sum_{j < chunk c} phi(k_j) v_j^T`` -- the recurrent view of the paper.
    float16/bfloat16 inputs are computed in float32 (the sums over n tokens overflow half precision).
    """
    _check_qkv(query, key, value)
    _check_bool("is_causal", is_causal)
    eps = _check_eps(eps)
    chunk_size = _positive_int("chunk_size", chunk_size)
    out_dtype = query.dtype
    if out_dtype in (torch.float16, torch.bfloat16):  # sums over n tokens overflow half precision: use float32
        query, key, value = query.float(), key.float(), value.float()
    phi_q, phi_k = elu_feature_map(query), elu_feature_map(key)
    if not is_causal:
        state = torch.matmul(phi_k.transpose(-2, -1), value)  # (..., E, Ev)
        normaliser = phi_k.sum(dim=-2).unsqueeze(-1)  # (..., E, 1)
        return (torch.matmul(phi_q, state) / (torch.matmul(phi_q, normaliser) + eps)).to(out_dtype)
    n = query.size(-2)
    if key.size(-2) != n:
        raise ValueError(f"causal linear attention needs query and key of the same length, got query "
                         f"{tuple(query.shape)} and key {tuple(key.shape)}")
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    if n == 0:
        return value.new_zeros(*batch, 0, value.size(-1), dtype=out_dtype)
    c = min(chunk_size, n)
    n_chunks = -(-n // c)

    def chunks(t: Tensor) -> Tensor:  # zero padding: a padded key adds nothing, a padded query is dropped
        return F.pad(t, (0, 0, 0, n_chunks * c - n)).unflatten(-2, (n_chunks, c))

    q_c, k_c, v_c = chunks(phi_q), chunks(phi_k), chunks(value)  # (..., n_chunks, c, *)
    within = torch.matmul(q_c, k_c.transpose(-2, -1))  # (..., n_chunks, c, c)
    within = within * torch.ones(c, c, dtype=torch.bool, device=within.device).tril()
    states = torch.matmul(k_c.transpose(-2, -1), v_c)  # (..., n_chunks, E, Ev): phi(K_c)^T V_c
    sums = k_c.sum(dim=-2)  # (..., n_chunks, E)
    before_states = torch.cumsum(states, dim=-3) - states  # exclusive prefix sums over chunks
    before_sums = (torch.cumsum(sums, dim=-2) - sums).unsqueeze(-1)  # (..., n_chunks, E, 1)
    numerator = torch.matmul(within, v_c) + torch.matmul(q_c, before_states)
    denominator = within.sum(dim=-1, keepdim=True) + torch.matmul(q_c, before_sums)
    out = numerator / (denominator + eps)
    return out.flatten(-3, -2)[..., :n, :].expand(*batch, n, value.size(-1)).to(out_dtype)


# ----------------------------------------------------------------------------------------------------------
# grouped-query attention and the KV cache
# ----------------------------------------------------------------------------------------------------------


class GroupedQueryAttention(MultiHeadAttention):
    """Multi-head attention whose ``num_heads`` query heads share ``num_kv_heads`` key/value heads
    (Ainslie et al. 2023): query head ``h`` uses K/V head ``h // (num_heads // num_kv_heads)``.

    ``num_kv_heads == num_heads`` is multi-head attention (same parameters and result as
    :class:`~labkit.attention.MultiHeadAttention`), ``num_kv_heads == 1`` multi-query attention (Shazeer 2019).
    ``k_proj`` and ``v_proj`` map to ``num_kv_heads * head_dim`` features, so the K/V projections and the KV
    cache shrink by ``num_heads / num_kv_heads``; the attention FLOPs stay the same. Interface, masks and
    ``need_weights`` as :class:`~labkit.attention.MultiHeadAttention`.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None, dropout: float = 0.0,
                 bias: bool = True, kdim: int | None = None, vdim: int | None = None, batch_first: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim,
                         batch_first=batch_first, device=device, dtype=dtype)
        self.num_kv_heads = num_heads if num_kv_heads is None else _positive_int("num_kv_heads", num_kv_heads)
        if num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        kv_dim = self.num_kv_heads * self.head_dim
        factory = {"device": device, "dtype": dtype}
        self.k_proj = nn.Linear(self.kdim, kv_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, kv_dim, bias=bias, **factory)
        self._reset_parameters()

    @property
    def group_size(self) -> int:
        """Query heads per K/V head."""
        return self.num_heads // self.num_kv_heads

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_kv_heads={self.num_kv_heads}"

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, T, heads * Dh) -> (B, num_heads, T, Dh); K/V heads are repeated for the queries of their group."""
        batch, length, features = x.shape
        heads = features // self.head_dim
        x = x.view(batch, length, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, Dh)
        if heads == self.num_heads:
            return x
        group = self.num_heads // heads
        return x.unsqueeze(2).expand(batch, heads, group, length, self.head_dim).reshape(
            batch, self.num_heads, length, self.head_dim)

    @classmethod
    def from_multi_head(cls, module: MultiHeadAttention, num_kv_heads: int) -> "GroupedQueryAttention":
        """Convert multi-head attention to ``num_kv_heads`` K/V heads by mean-pooling the K and V projections of
        each group of heads (the checkpoint conversion of Ainslie et al. 2023, §2.1); Q and output are copied."""
        if not isinstance(module, MultiHeadAttention):
            raise TypeError(f"expected a labkit MultiHeadAttention, got {type(module).__name__}")
        if getattr(module, "num_kv_heads", module.num_heads) != module.num_heads:
            raise ValueError("module must have one K/V head per query head (a plain MultiHeadAttention)")
        weight = module.out_proj.weight
        new = cls(module.embed_dim, module.num_heads, num_kv_heads, dropout=module.dropout,
                  bias=module.q_proj.bias is not None, kdim=module.kdim, vdim=module.vdim,
                  batch_first=module.batch_first, device=weight.device, dtype=weight.dtype)
        group, dh = new.group_size, module.head_dim
        with torch.no_grad():
            for name in ("q_proj", "out_proj"):
                getattr(new, name).load_state_dict(getattr(module, name).state_dict())
            for name in ("k_proj", "v_proj"):
                source, target = getattr(module, name), getattr(new, name)
                target.weight.copy_(source.weight.view(new.num_kv_heads, group, dh, -1).mean(dim=1).flatten(0, 1))
                if source.bias is not None:
                    target.bias.copy_(source.bias.view(new.num_kv_heads, group, dh).mean(dim=1).flatten())
        new.train(module.training)
        return new


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int = 1,
                   dtype: torch.dtype | int = torch.float16) -> int:
    """Bytes of the KV cache of a decoder: ``2 * L * H_kv * d_head * T * B * bytes`` (a key and a value vector per
    layer, K/V head, token and sequence). ``dtype`` is a floating dtype or a number of bytes per element."""
    n_layers = _positive_int("n_layers", n_layers)
    n_kv_heads = _positive_int("n_kv_heads", n_kv_heads)
    head_dim = _positive_int("head_dim", head_dim)
    seq_len = _nonnegative_int("seq_len", seq_len)
    batch_size = _positive_int("batch_size", batch_size)
    if isinstance(dtype, torch.dtype):
        element = torch.empty((), dtype=dtype).element_size()
    else:
        element = _positive_int("dtype (bytes per element)", dtype)
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * element


# ----------------------------------------------------------------------------------------------------------
# the long-range classifier
# ----------------------------------------------------------------------------------------------------------


class VariantSelfAttention(GroupedQueryAttention):
    """Causal self-attention of one ``kind``: ``"full"`` (softmax over all earlier keys), ``"window"``
    (:func:`sliding_window_attention`, ``window`` keys back) or ``"linear"`` (causal :func:`linear_attention`);
    ``num_kv_heads`` < ``num_heads`` shares K/V heads as in :class:`GroupedQueryAttention`."""

    def __init__(self, embed_dim: int, num_heads: int, kind: str = "full", window: int | None = None,
                 num_kv_heads: int | None = None, bias: bool = True) -> None:
        super().__init__(embed_dim, num_heads, num_kv_heads, bias=bias)
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        if kind == "window":
            if window is None:
                raise ValueError("kind='window' needs a window (how many keys back a query sees), got None")
            window = _positive_int("window", window)
        elif window is not None:
            raise ValueError(f"window only applies to kind='window', got window={window!r} with kind={kind!r}")
        self.kind, self.window = kind, window

    def extra_repr(self) -> str:
        window = f", window={self.window}" if self.window is not None else ""
        return f"{super().extra_repr()}, kind={self.kind!r}{window}"

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x`` (B, T, E) -> (output (B, T, E), per-head weights (B, H, T, T) or None). Weights exist for
        ``kind='full'`` only (the other kinds never form them)."""
        _check_float_tensor("x", x)
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(f"x must have shape (B, T, {self.embed_dim}), got {tuple(x.shape)}")
        if need_weights and self.kind != "full":
            raise ValueError(f"need_weights=True needs kind='full': kind={self.kind!r} never forms the T x T weights")
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        weights = None
        if self.kind == "full" and need_weights:
            weights = attention_weights(q, k, is_causal=True)
            heads = torch.matmul(weights, v)
        elif self.kind == "full":
            heads = scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.kind == "window":
            heads = sliding_window_attention(q, k, v, self.window, causal=True)
        else:
            heads = linear_attention(q, k, v, is_causal=True)
        return self.out_proj(heads.transpose(1, 2).flatten(2)), weights


class _Block(nn.Module):
    """Pre-norm residual block: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, kind: str, window: int | None,
                 num_kv_heads: int | None) -> None:
        super().__init__()
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)
        self.attn = VariantSelfAttention(d_model, n_heads, kind, window, num_kv_heads)
        self.ffn = FeedForward(d_model, d_ff, activation="gelu")

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.norm1(x), need_weights=need_weights)
        x = x + attended
        return x + self.ffn(self.norm2(x)), weights


class LongRangeClassifier(nn.Module):
    """A small causal model for :func:`labkit.data.long_range_task`: token + learned position embeddings,
    ``n_layers`` pre-norm blocks with attention of ``kind`` (``"full"``, ``"window"``, ``"linear"``), or a
    ``"gru"`` baseline (an ``n_layers`` GRU of width ``d_model``); the class is read out at the last position.

    ``forward(idx (B, T)) -> logits (B, n_classes)``; ``n_classes`` defaults to ``vocab_size`` (the target is a
    token). With ``return_attention=True`` (``kind="full"`` only) also the per-layer weights, each (B, H, T, T).
    A causal window of ``w`` keys lets the last position reach ``n_layers * (w - 1)`` positions back.
    """

    def __init__(self, vocab_size: int, seq_len: int, kind: str = "full", *, d_model: int = 32, n_heads: int = 2,
                 n_layers: int = 2, d_ff: int | None = None, window: int | None = None,
                 num_kv_heads: int | None = None, n_classes: int | None = None) -> None:
        super().__init__()
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        self.seq_len = _positive_int("seq_len", seq_len)
        self.kind = kind
        d_model = _positive_int("d_model", d_model)
        n_layers = _positive_int("n_layers", n_layers)
        n_classes = self.vocab_size if n_classes is None else _positive_int("n_classes", n_classes)
        self.token_embedding = nn.Embedding(self.vocab_size, d_model)
        if kind == "gru":
            if window is not None or num_kv_heads is not None:
                raise ValueError("window and num_kv_heads do not apply to kind='gru'")
            self.position_embedding = None
            self.recurrent = nn.GRU(d_model, d_model, num_layers=n_layers, batch_first=True)
            self.blocks = nn.ModuleList()
        else:
            self.position_embedding = nn.Embedding(self.seq_len, d_model)
            d_ff = 4 * d_model if d_ff is None else _positive_int("d_ff", d_ff)
            self.recurrent = None
            self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff, kind, window, num_kv_heads)
                                        for _ in range(n_layers))
        self.norm = LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    @property
    def receptive_field(self) -> int | None:
        """How many positions back the last position can see: ``n_layers * (window - 1)`` for windows, else None
        (unbounded within the sequence)."""
        if self.kind != "window":
            return None
        return sum(block.attn.window - 1 for block in self.blocks)

    def forward(self, idx: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 2:
            raise TypeError(f"idx must be an int64 tensor of shape (B, T), got "
                            f"{getattr(idx, 'dtype', type(idx).__name__)} {tuple(getattr(idx, 'shape', ()))}")
        if not 1 <= idx.size(1) <= self.seq_len:
            raise ValueError(f"idx must have 1 to seq_len = {self.seq_len} positions, got {idx.size(1)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{int(idx.min())}, {int(idx.max())}]")
        if return_attention and self.kind != "full":
            raise ValueError(f"return_attention=True needs kind='full', got kind={self.kind!r}")
        x = self.token_embedding(idx)
        maps: list[Tensor] = []
        if self.recurrent is not None:
            x, _ = self.recurrent(x)
        else:
            x = x + self.position_embedding(torch.arange(idx.size(1), device=idx.device))
            for block in self.blocks:
                x, weights = block(x, need_weights=return_attention)
                if weights is not None:
                    maps.append(weights)
        logits = self.head(self.norm(x[:, -1]))
        return (logits, maps) if return_attention else logits
