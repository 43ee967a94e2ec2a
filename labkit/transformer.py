"""The Transformer: encoder and decoder layers, the stacks, and the book's two models (GPT and a classifier).

003 §2.1 describes the architecture (an encoder and a decoder of stacked layers, each with multi-head
attention and an FFN) and §3.2 lists the steps: embed the tokens, add positions, self-attention, FFN,
layer norm, residual connections; the decoder adds cross-attention to the encoder output.

003 §4.1 writes an encoder layer as ``LayerNorm(x + SelfAttention(x) + FFN(SelfAttention(x)))``. That is
not the standard block: the FFN reads the attention output without its residual, and one norm covers both.
The standard block (Vaswani et al. 2017, §3.1; ``nn.TransformerEncoderLayer``) has **two residual sub-layers,
each with its own LayerNorm**::

    post-norm (norm_first=False):  h = LN_1(x + SA(x));        y = LN_2(h + FFN(h))
    pre-norm  (norm_first=True):   h = x + SA(LN_1(x));        y = h + FFN(LN_2(h))

003's decoder formula ``LayerNorm(y + MaskedCrossAttention(Encoder(x), y) + ...)`` (and its step list in
§3.2.2) also leaves out the decoder's *masked self-attention*: the standard decoder layer has three residual
sub-layers -- causal self-attention, cross-attention to the encoder output, FFN -- each with its own norm.

003 §2.1 says the encoder turns text into a "fixed-length vector": it produces one vector per token,
shape (B, T, d_model); a fixed-size vector only appears if one pools them (as :class:`EncoderClassifier` does).

The source paper is Mei et al. 2024, arXiv:2405.11704 (seed documents 000/001/002).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.attention import KVCache, MultiHeadAttention, _check_float_tensor, _positive_int, _probability
from labkit.layers import (
    ACTIVATIONS,
    FeedForward,
    LayerNorm,
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
)

__all__ = [
    "init_weights",
    "TransformerConfig",
    "EncoderLayer",
    "DecoderLayer",
    "Encoder",
    "Decoder",
    "InputEmbedding",
    "EncoderDecoder",
    "GPT",
    "EncoderClassifier",
    "count_parameters",
    "encoder_layer_parameter_count",
    "decoder_layer_parameter_count",
    "gpt_parameter_count",
    "layer_forward_flops",
    "gpt_forward_flops",
]

POSITIONAL = ("learned", "sinusoidal")


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class TransformerConfig:
    """Sizes and choices of the book's model family. ``d_model`` must be divisible by ``n_heads``."""

    vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 512
    max_len: int = 256
    dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True
    positional: str = "learned"
    tie_embeddings: bool = True
    n_classes: int | None = None
    bias: bool = True
    pad_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len"):
            _positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        _probability("dropout", self.dropout)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.positional not in POSITIONAL:
            raise ValueError(f"positional must be one of {POSITIONAL}, got {self.positional!r}")
        if self.n_classes is not None:
            _positive_int("n_classes", self.n_classes)
        valid_pad_id = isinstance(self.pad_id, numbers.Integral) and 0 <= self.pad_id < self.vocab_size
        if self.pad_id is not None and not valid_pad_id:
            raise ValueError(f"pad_id must be None or an int in [0, {self.vocab_size}), got {self.pad_id!r}")

    @classmethod
    def from_profile(cls, profile, vocab_size: int, **overrides) -> "TransformerConfig":
        """A config with d_model, n_heads, n_layers, d_ff from ``profile`` and max_len = profile.seq_len."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown TransformerConfig field(s) {unknown}; expected some of {sorted(names)}")
        values = {
            "vocab_size": vocab_size,
            "d_model": profile.d_model,
            "n_heads": profile.n_heads,
            "n_layers": profile.n_layers,
            "d_ff": profile.d_ff,
            "max_len": profile.seq_len,
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# layers


def _check_sequence(name: str, x: Tensor, d_model: int) -> None:
    _check_float_tensor(name, x)
    if x.dim() != 3 or x.size(-1) != d_model:
        raise ValueError(f"{name} must have shape (B, T, {d_model}), got {tuple(x.shape)}")


def _activation_name(fn) -> str:
    """'relu' or 'gelu' for the activation stored in an nn.Transformer*Layer."""
    if fn is F.relu or isinstance(fn, nn.ReLU):
        return "relu"
    if fn is F.gelu or (isinstance(fn, nn.GELU) and fn.approximate == "none"):
        return "gelu"
    raise ValueError(f"only relu and (exact) gelu activations can be copied, got {fn!r}")


def _copy_linear(target: nn.Linear, source: nn.Linear) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight)
        if source.bias is not None:
            target.bias.copy_(source.bias)


def _copied_attention(module: nn.MultiheadAttention) -> MultiHeadAttention:
    attention = MultiHeadAttention.from_torch(module)
    attention.batch_first = True  # labkit's layers are batch-first; the weights do not depend on the layout
    return attention


class _ResidualLayer(nn.Module):
    """What encoder and decoder layers share: self-attention and FFN sub-layers, their LayerNorms and dropouts."""

    torch_type: type[nn.Module] = nn.Module
    has_cross_attention = False

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias, batch_first=True)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, dropout=dropout, bias=bias)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        if self.has_cross_attention:  # the decoder's third sub-layer
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias, batch_first=True)
            self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
            self.dropout3 = nn.Dropout(dropout)

    def _self_attention(self, x, mask, key_padding_mask, is_causal, need_weights=False, kv_cache=None, layer_index=0):
        if kv_cache is not None:  # generation: attend over the cached tokens too (mask already offset)
            if need_weights:
                raise ValueError("need_weights is not supported together with kv_cache")
            out = self.self_attn.cached_self_attention(x, kv_cache, layer_index, mask, key_padding_mask)
            return self.dropout1(out), None
        out, weights = self.self_attn(
            x, x, x, key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=mask,
            average_attn_weights=False, is_causal=is_causal,
        )
        return self.dropout1(out), weights

    @classmethod
    def from_torch(cls, layer: nn.Module):
        """A layer with the (copied) weights of the matching ``nn.Transformer*Layer`` (relu or exact gelu, either
        norm order, any ``batch_first``: labkit's layer is batch-first, the weights are the same)."""
        if not isinstance(layer, cls.torch_type):
            raise TypeError(f"expected an nn.{cls.torch_type.__name__}, got {type(layer).__name__}")
        new = cls(
            layer.self_attn.embed_dim,
            layer.self_attn.num_heads,
            layer.linear1.out_features,
            dropout=layer.dropout.p,
            activation=_activation_name(layer.activation),
            norm_first=layer.norm_first,
            layer_norm_eps=layer.norm1.eps,
            bias=layer.linear1.bias is not None,
        ).to(layer.linear1.weight)
        new.self_attn = _copied_attention(layer.self_attn)
        if cls.has_cross_attention:
            new.cross_attn = _copied_attention(layer.multihead_attn)
        _copy_linear(new.ffn.up, layer.linear1)
        _copy_linear(new.ffn.down, layer.linear2)
        new.norm1 = LayerNorm.from_torch(layer.norm1)
        new.norm2 = LayerNorm.from_torch(layer.norm2)
        if cls.has_cross_attention:
            new.norm3 = LayerNorm.from_torch(layer.norm3)
        return new.train(layer.training)


class EncoderLayer(_ResidualLayer):
    """One encoder layer: self-attention and FFN sub-layers, each with a residual and its own LayerNorm.

    Post-norm (``norm_first=False``, Vaswani et al. 2017): ``h = LN1(x + SA(x)); y = LN2(h + FFN(h))``.
    Pre-norm (``norm_first=True``): ``h = x + SA(LN1(x)); y = h + FFN(LN2(h))``. Same structure, parameter
    names (plus ``ffn``) and masks as ``nn.TransformerEncoderLayer(batch_first=True)``: ``src_mask`` (T, T)
    bool True = not allowed or float added; ``src_key_padding_mask`` (B, T) True = padding. This is the
    corrected form of 003 §4.1's single-norm formula (see the module docstring); ``from_torch`` copies weights.
    """

    torch_type = nn.TransformerEncoderLayer

    def forward(
        self,
        x: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        kv_cache: KVCache | None = None,
        layer_index: int = 0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, d_model) -> same shape; with ``need_weights`` also the per-head weights (B, H, T, T).
        ``is_causal`` without ``src_mask`` applies the causal mask. With ``kv_cache`` the self-attention reads
        and extends the cache at ``layer_index``: ``src_mask`` (T, S) and ``src_key_padding_mask`` (B, S) then
        cover the S cached + new keys (see :meth:`MultiHeadAttention.cached_self_attention`)."""
        _check_sequence("x", x, self.d_model)
        cache = {"kv_cache": kv_cache, "layer_index": layer_index}
        if self.norm_first:
            attended, weights = self._self_attention(
                self.norm1(x), src_mask, src_key_padding_mask, is_causal, need_weights, **cache
            )
            x = x + attended
            x = x + self.dropout2(self.ffn(self.norm2(x)))
        else:
            attended, weights = self._self_attention(x, src_mask, src_key_padding_mask, is_causal, need_weights,
                                                     **cache)
            x = self.norm1(x + attended)
            x = self.norm2(x + self.dropout2(self.ffn(x)))
        return (x, weights) if need_weights else x


class DecoderLayer(_ResidualLayer):
    """One decoder layer: masked self-attention, cross-attention to the encoder output (``memory``), FFN;
    each sub-layer with a residual and its own LayerNorm (Vaswani et al. 2017, §3.1; 003 §2.1.2, §3.2.2).

    Post-norm: ``h = LN1(y + SA(y)); g = LN2(h + CA(h, m)); out = LN3(g + FFN(g))``; pre-norm puts each LN
    inside its residual branch. Same structure and masks as ``nn.TransformerDecoderLayer(batch_first=True)``
    (``multihead_attn`` is called ``cross_attn`` here); ``from_torch`` copies weights. ``tgt_is_causal``
    without ``tgt_mask`` applies the causal mask -- the masked self-attention 003 §4.1's decoder formula
    leaves out.
    """

    torch_type = nn.TransformerDecoderLayer
    has_cross_attention = True

    def _cross_attention(self, x, memory, mask, key_padding_mask, is_causal):
        out, _ = self.cross_attn(
            x, memory, memory, key_padding_mask=key_padding_mask, attn_mask=mask, is_causal=is_causal
        )
        return self.dropout2(out)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """x (B, T, d_model), memory (B, S, d_model) -> (B, T, d_model)."""
        _check_sequence("x", x, self.d_model)
        _check_sequence("memory", memory, self.d_model)
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)[0]
            x = x + self._cross_attention(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            x = x + self.dropout3(self.ffn(self.norm3(x)))
        else:
            x = self.norm1(x + self._self_attention(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)[0])
            x = self.norm2(x + self._cross_attention(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            x = self.norm3(x + self.dropout3(self.ffn(x)))
        return x


class _Stack(nn.Module):
    """``config.n_layers`` layers of ``layer_type``, then a final LayerNorm when ``norm_first`` (pre-norm leaves
    the residual stream un-normalised otherwise)."""

    layer_type: type[_ResidualLayer] = _ResidualLayer

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.layers = nn.ModuleList(
            self.layer_type(
                config.d_model, config.n_heads, config.d_ff, dropout=config.dropout, activation=config.activation,
                norm_first=config.norm_first, bias=config.bias,
            )
            for _ in range(config.n_layers)
        )
        self.norm = LayerNorm(config.d_model, bias=config.bias) if config.norm_first else None

    def _final_norm(self, x: Tensor) -> Tensor:
        return x if self.norm is None else self.norm(x)


class Encoder(_Stack):
    """A stack of :class:`EncoderLayer` s (+ final norm when pre-norm; 003 §2.1.2, §3.2.1). Maps (B, T, d_model)
    to one vector per token, (B, T, d_model) -- not to the "fixed-length vector" of 003 §2.1."""

    layer_type = EncoderLayer

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        kv_cache: KVCache | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """With ``need_weights`` also the list of per-layer attention weights, each (B, H, T, T). With
        ``kv_cache`` layer i reads and extends the cache's layer i (masks then span the cached keys too)."""
        maps = []
        for index, layer in enumerate(self.layers):
            extra = {} if kv_cache is None else {"kv_cache": kv_cache, "layer_index": index}
            out = layer(x, mask, key_padding_mask, is_causal=is_causal, need_weights=need_weights, **extra)
            if need_weights:
                out, weights = out
                maps.append(weights)
            x = out
        x = self._final_norm(x)
        return (x, maps) if need_weights else x


class Decoder(_Stack):
    """A stack of :class:`DecoderLayer` s (+ final norm when pre-norm; 003 §2.1.2, §3.2.2); the self-attention is
    causal unless ``tgt_is_causal=False``."""

    layer_type = DecoderLayer

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = True,
    ) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, tgt_mask, memory_mask, tgt_key_padding_mask, memory_key_padding_mask, tgt_is_causal)
        return self._final_norm(x)


# ---------------------------------------------------------------------------------------------------------------
# models


class InputEmbedding(nn.Module):
    """Token embedding plus positions, then dropout (003 §3.2.1 steps 1-2): ids (B, T) -> (B, T, d_model)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.max_len = config.max_len
        self.tokens = TokenEmbedding(config.vocab_size, config.d_model)
        if config.positional == "learned":
            self.positions = LearnedPositionalEmbedding(config.max_len, config.d_model)
        else:
            self.positions = SinusoidalPositionalEncoding(config.d_model, config.max_len)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, idx: Tensor, positions: Tensor | None = None) -> Tensor:
        """``positions`` (B, T) int: the position of every token (default 0..T-1 in every row); generation with
        padding or a KV cache passes them, since a token's position is then not its column."""
        if not isinstance(idx, Tensor):
            raise TypeError(f"token ids must be a torch.Tensor, got {type(idx).__name__}")
        if idx.dim() != 2:
            raise ValueError(f"token ids must have shape (B, T), got {tuple(idx.shape)}")
        if idx.size(1) > self.max_len:
            raise ValueError(f"sequence length {idx.size(1)} exceeds max_len {self.max_len}")
        if positions is None:
            return self.dropout(self.positions(self.tokens(idx)))
        if not isinstance(positions, Tensor) or positions.shape != idx.shape or positions.is_floating_point():
            got = f"{getattr(positions, 'dtype', type(positions).__name__)} {tuple(getattr(positions, 'shape', ()))}"
            raise ValueError(f"positions must be an integer tensor of the shape of idx {tuple(idx.shape)}, got {got}")
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.max_len):
            raise ValueError(f"positions must be in [0, {self.max_len}), got values in "
                             f"[{int(positions.min())}, {int(positions.max())}]")
        if isinstance(self.positions, LearnedPositionalEmbedding):
            x = self.tokens(idx) + self.positions.weight[positions]
        else:
            x = self.positions.dropout(self.tokens(idx) + self.positions.table[positions].to(self.tokens.weight.dtype))
        return self.dropout(x)


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2 style: Linear weights N(0, 0.02^2), zero biases; residual output projections scaled by 1/sqrt(2L)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("out_proj", "ffn.down")) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _padding_mask(idx: Tensor, padding_mask: Tensor | None, pad_id: int | None, name: str) -> Tensor | None:
    """The given (B, T) bool mask (True = pad), else ``idx == pad_id`` when the config has a pad_id."""
    if padding_mask is None:
        return None if pad_id is None else idx == pad_id
    if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool:
        got = getattr(padding_mask, "dtype", type(padding_mask).__name__)
        raise TypeError(f"{name} must be a bool tensor (True = pad), got {got}")
    if padding_mask.shape != idx.shape:
        raise ValueError(
            f"{name} must have the shape of the token ids {tuple(idx.shape)}, got {tuple(padding_mask.shape)}"
        )
    return padding_mask


class GPT(nn.Module):
    """Decoder-only causal language model (the book's running model): embeddings + positions, ``n_layers``
    causally masked :class:`EncoderLayer` s (pre-norm by default), final LayerNorm, linear head over the vocabulary
    (its weight tied to the token embedding when ``tie_embeddings``). idx (B, T) -> logits (B, T, vocab)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = InputEmbedding(config)
        self.blocks = Encoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config.n_layers)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight

    def forward(
        self,
        idx: Tensor,
        return_attention: bool = False,
        *,
        padding_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, vocab); with ``return_attention`` also one (B, H, T, T) weight tensor per layer.

        For generation (see :mod:`labkit.generate`): ``kv_cache`` holds the keys and values of the S_past tokens
        seen so far and receives those of ``idx``; ``padding_mask`` (B, S_past + T) bool marks pad slots (True),
        which no query attends to; ``positions`` (B, T) are the tokens' positions, by default counted over the
        non-pad slots (``cumsum(~padding_mask) - 1``), else ``S_past + 0..T-1``.
        """
        if kv_cache is None and padding_mask is None and positions is None:
            out = self.blocks(self.embed(idx), is_causal=True, need_weights=return_attention)
        else:
            out = self._generation_forward(idx, return_attention, padding_mask, positions, kv_cache)
        if return_attention:
            hidden, maps = out
            return self.lm_head(hidden), maps
        return self.lm_head(out)

    def _generation_forward(self, idx, return_attention, padding_mask, positions, kv_cache):
        if not isinstance(idx, Tensor) or idx.dim() != 2:
            raise ValueError(f"token ids must have shape (B, T), got {tuple(getattr(idx, 'shape', ()))}")
        batch, length = idx.shape
        past = 0
        if kv_cache is not None:
            if not isinstance(kv_cache, KVCache):
                raise TypeError(f"kv_cache must be a labkit.attention.KVCache, got {type(kv_cache).__name__}")
            if return_attention:
                raise ValueError("return_attention is not supported together with kv_cache")
            if kv_cache.keys.size(1) != batch:
                raise ValueError(
                    f"kv_cache was made for batch size {kv_cache.keys.size(1)}, got idx {tuple(idx.shape)}"
                )
            past = kv_cache.length
        total = past + length
        if padding_mask is not None:
            if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool:
                got = getattr(padding_mask, "dtype", type(padding_mask).__name__)
                raise TypeError(f"padding_mask must be a bool tensor (True = pad), got {got}")
            if tuple(padding_mask.shape) != (batch, total):
                raise ValueError(f"padding_mask must have shape (B, S_past + T) = {(batch, total)}, "
                                 f"got {tuple(padding_mask.shape)}")
        if positions is None:
            if padding_mask is None:
                positions = torch.arange(past, total, device=idx.device).expand(batch, length)
            else:
                positions = ((~padding_mask).long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]
        hidden = self.embed(idx, positions)
        if kv_cache is None:
            return self.blocks(hidden, key_padding_mask=padding_mask, is_causal=True, need_weights=return_attention)
        slots = torch.arange(total, device=idx.device)
        not_allowed = slots[None, :] > (past + torch.arange(length, device=idx.device))[:, None]  # (T, S), causal
        return self.blocks(hidden, not_allowed, padding_mask, kv_cache=kv_cache)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy; targets (B, T) are usually idx shifted by one (-100 = ignored)."""
        if not isinstance(targets, Tensor) or targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(getattr(targets, 'shape', ()))}"
            )
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise TypeError(f"targets must be integer class ids, got dtype {targets.dtype}")
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1).long())


class EncoderClassifier(nn.Module):
    """Encoder + mean pooling over non-pad tokens + linear head (003 §4.3 case 1, text classification; there
    the article says "decoder", but a classifier needs only the encoder). idx (B, T) -> logits (B, n_classes).

    ``padding_mask`` (B, T) is True at pads (default: ``idx == config.pad_id`` when set). Pads are ignored twice:
    as attention keys (key padding mask) and in the pooled mean, so changing pad tokens leaves the logits
    unchanged. A row that is all padding pools to the zero vector.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.n_classes is None:
            raise ValueError("EncoderClassifier needs config.n_classes (an int > 0), got None")
        self.config = config
        self.embed = InputEmbedding(config)
        self.encoder = Encoder(config)
        self.head = nn.Linear(config.d_model, config.n_classes)
        init_weights(self, config.n_layers)

    def forward(self, idx: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        hidden = self.embed(idx)
        padding_mask = _padding_mask(idx, padding_mask, self.config.pad_id, "padding_mask")
        hidden = self.encoder(hidden, key_padding_mask=padding_mask)
        if padding_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


class EncoderDecoder(nn.Module):
    """The encoder-decoder Transformer of 003 §2.1 / §3.2 (Vaswani et al. 2017): src (B, S) and tgt (B, T) ids
    -> logits (B, T, vocab) for the next target token. Source and target share the vocabulary, the embedding
    and (if ``tie_embeddings``) the output projection. The decoder's self-attention is causal."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = InputEmbedding(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config.n_layers)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.tokens.weight

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
    ) -> Tensor:
        memory_input = self.embed(src)
        target_input = self.embed(tgt)
        src_padding_mask = _padding_mask(src, src_padding_mask, self.config.pad_id, "src_padding_mask")
        tgt_padding_mask = _padding_mask(tgt, tgt_padding_mask, self.config.pad_id, "tgt_padding_mask")
        if src.size(0) != tgt.size(0):
            raise ValueError(
                f"src and tgt must have the same batch size, got {tuple(src.shape)} and {tuple(tgt.shape)}"
            )
        memory = self.encoder(memory_input, key_padding_mask=src_padding_mask)
        hidden = self.decoder(
            target_input,
            memory,
            tgt_key_padding_mask=tgt_padding_mask,
            memory_key_padding_mask=src_padding_mask,
            tgt_is_causal=True,
        )
        return self.lm_head(hidden)


# ---------------------------------------------------------------------------------------------------------------
# parameter counts


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``module``; a tied (shared) tensor is counted once."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _attention_parameter_count(d_model: int, bias: bool) -> int:
    return 4 * d_model * d_model + (4 * d_model if bias else 0)  # W_q, W_k, W_v, W_o (+ biases)


def _ffn_parameter_count(d_model: int, d_ff: int, bias: bool, activation: str) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation == "swiglu":  # W_g, W_u (d -> d_ff), W_d (d_ff -> d)
        return 3 * d_model * d_ff + ((2 * d_ff + d_model) if bias else 0)
    return 2 * d_model * d_ff + ((d_ff + d_model) if bias else 0)  # W_1, W_2 (+ b_1, b_2)


def _norm_parameter_count(d_model: int, bias: bool) -> int:
    return 2 * d_model if bias else d_model  # gamma (+ beta)


def encoder_layer_parameter_count(d_model: int, d_ff: int, bias: bool = True, activation: str = "relu") -> int:
    """``4d^2 + 4d`` (attention) ``+ 2 d d_ff + d_ff + d`` (FFN) ``+ 2 * 2d`` (two LayerNorms); without biases
    drop the linear terms except one ``d`` per norm; SwiGLU has ``3 d d_ff (+ 2 d_ff + d)`` in the FFN."""
    _positive_int("d_model", d_model)
    _positive_int("d_ff", d_ff)
    return (
        _attention_parameter_count(d_model, bias)
        + _ffn_parameter_count(d_model, d_ff, bias, activation)
        + 2 * _norm_parameter_count(d_model, bias)
    )


def decoder_layer_parameter_count(d_model: int, d_ff: int, bias: bool = True, activation: str = "relu") -> int:
    """An encoder layer plus a cross-attention block and a third LayerNorm."""
    return (
        encoder_layer_parameter_count(d_model, d_ff, bias, activation)
        + _attention_parameter_count(d_model, bias)
        + _norm_parameter_count(d_model, bias)
    )


def gpt_parameter_count(config: TransformerConfig) -> int:
    """``V d`` (token embedding) ``+ max_len d`` (learned positions only) ``+ L * layer`` ``+ final norm``
    (pre-norm only) ``+ V d`` (output head, only if not tied). Equals ``count_parameters(GPT(config))``."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    d = config.d_model
    total = config.vocab_size * d
    if config.positional == "learned":
        total += config.max_len * d
    total += config.n_layers * encoder_layer_parameter_count(d, config.d_ff, config.bias, config.activation)
    if config.norm_first:
        total += _norm_parameter_count(d, config.bias)
    if not config.tie_embeddings:
        total += config.vocab_size * d
    return total


# ---------------------------------------------------------------------------------------------------------------
# FLOPs


def layer_forward_flops(
    d_model: int,
    d_ff: int,
    seq_len: int,
    n_heads: int | None = None,
    causal: bool = False,
    activation: str = "relu",
) -> dict[str, int]:
    """Forward FLOPs of one encoder layer on one sequence of length T, counting **matrix multiplications only**
    at 2 FLOPs per multiply-add (softmax, norms, activations, bias adds, residuals and masking are not counted;
    they are O(T d) or O(T^2 h) and small next to these).

    ``qkv_proj = 3 * 2 T d^2``, ``attention_scores = 2 T^2 d`` (QK^T summed over heads), ``attention_values =
    2 T^2 d`` (weights times V), ``out_proj = 2 T d^2``, ``ffn = 2 * 2 T d d_ff`` (relu/gelu) or ``3 * 2 T d d_ff``
    (SwiGLU). This is exactly what ``torch.utils.flop_counter.FlopCounterMode`` reports for labkit's
    :class:`EncoderLayer`. ``causal=True`` counts only the T(T+1)/2 unmasked query-key pairs in the two attention
    terms (what a kernel that skips masked entries needs); labkit's from-scratch forward computes the full
    T x T square and masks afterwards, so its measured count is the ``causal=False`` one. The count does not
    depend on ``n_heads`` (h heads of width d/h cost the same as one of width d); it is only checked.
    """
    d = _positive_int("d_model", d_model)
    _positive_int("d_ff", d_ff)
    t = _positive_int("seq_len", seq_len)
    if n_heads is not None and d % _positive_int("n_heads", n_heads) != 0:
        raise ValueError(f"d_model ({d}) must be divisible by n_heads ({n_heads})")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    pairs = t * (t + 1) // 2 if causal else t * t  # query-key pairs computed
    flops = {
        "qkv_proj": 3 * 2 * t * d * d,
        "attention_scores": 2 * pairs * d,
        "attention_values": 2 * pairs * d,
        "out_proj": 2 * t * d * d,
        "ffn": (3 if activation == "swiglu" else 2) * 2 * t * d * d_ff,
    }
    flops["total"] = sum(flops.values())
    return flops


def gpt_forward_flops(config: TransformerConfig, seq_len: int, causal: bool = False) -> int:
    """Matmul FLOPs (2 per multiply-add) of one GPT forward on one sequence of length T:
    ``n_layers * layer_forward_flops(...)["total"] + 2 T d V`` (the output head; the embedding lookup is free).
    ``causal`` as in :func:`layer_forward_flops`: the default matches FlopCounterMode on labkit's GPT."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    if _positive_int("seq_len", seq_len) > config.max_len:
        raise ValueError(f"seq_len {seq_len} exceeds max_len {config.max_len}")
    per_layer = layer_forward_flops(
        config.d_model, config.d_ff, seq_len, config.n_heads, causal=causal, activation=config.activation
    )["total"]
    return config.n_layers * per_layer + 2 * seq_len * config.d_model * config.vocab_size
