"""The building blocks around attention: normalisation, the feed-forward network, positions, embeddings.

* LayerNorm (Ba et al. 2016; 003 §3.2.1 step 5): ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` over the
  last dims, with the *biased* variance.
* RMSNorm (Zhang & Sennrich 2019): ``y = x / sqrt(mean(x^2) + eps) * gamma``.
* FFN (003 §4.1; Vaswani et al. 2017, §3.3): ``FFN(X) = max(0, X W_1 + b_1) W_2 + b_2``, also with GELU, and
  SwiGLU (Shazeer 2020): ``(silu(X W_g) * X W_u) W_d``.
* Sinusoidal positions (Vaswani et al. 2017, §3.5; 003 §3.2.1 step 2):
  ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``.

From scratch: ``F.layer_norm``, ``nn.LayerNorm``, ``F.rms_norm`` and ``nn.Embedding`` are references for the
tests only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.attention import _check_float_tensor, _positive_int, _probability

__all__ = [
    "layer_norm",
    "LayerNorm",
    "rms_norm",
    "RMSNorm",
    "ACTIVATIONS",
    "FeedForward",
    "sinusoidal_encoding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "TokenEmbedding",
]

ACTIVATIONS = ("relu", "gelu", "swiglu")


def _as_shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (int(normalized_shape),)
    try:
        shape = tuple(normalized_shape)
    except TypeError as err:
        raise TypeError(f"normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}") from err
    if not shape or not all(isinstance(n, numbers.Integral) and n > 0 for n in shape):
        raise ValueError(
            f"normalized_shape must be a positive int or a non-empty tuple of them, got {normalized_shape!r}"
        )
    return tuple(int(n) for n in shape)


def _shape_tail(x: Tensor, n: int) -> tuple[int, ...]:
    return tuple(x.shape[-n:]) if x.dim() >= n else ()


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing ``normalized_shape`` dims (biased variance),
    the same result as ``F.layer_norm``."""
    _check_float_tensor("x", x)
    shape = _as_shape(normalized_shape)
    if _shape_tail(x, len(shape)) != shape:
        raise ValueError(f"x must end with normalized_shape {shape}, got shape {tuple(x.shape)}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(param.shape)}")
    dims = tuple(range(-len(shape), 0))
    mean = x.mean(dim=dims, keepdim=True)
    centered = x - mean
    variance = centered.pow(2).mean(dim=dims, keepdim=True)  # biased: divide by N, not N - 1
    y = centered * torch.rsqrt(variance + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.Module):
    """Layer normalisation with ``nn.LayerNorm``'s interface and parameter names (weight = gamma, bias = beta)."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = float(eps)
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape, **factory))
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    @classmethod
    def from_torch(cls, module: nn.LayerNorm) -> "LayerNorm":
        """A LayerNorm with the (copied) parameters of an ``nn.LayerNorm``."""
        if not isinstance(module, nn.LayerNorm):
            raise TypeError(f"expected an nn.LayerNorm, got {type(module).__name__}")
        has_bias = getattr(module, "bias", None) is not None
        new = cls(module.normalized_shape, eps=module.eps, elementwise_affine=module.elementwise_affine, bias=has_bias)
        if module.elementwise_affine:
            new = new.to(module.weight)
            with torch.no_grad():
                new.weight.copy_(module.weight)
                if has_bias:
                    new.bias.copy_(module.bias)
        return new


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim (Zhang & Sennrich 2019): no centering, no bias."""
    _check_float_tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dim, got shape {tuple(x.shape)}")
    if weight is not None and tuple(weight.shape) != (x.size(-1),):
        raise ValueError(f"weight must have shape ({x.size(-1)},), got {tuple(weight.shape)}")
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dim with a learned gain ``weight`` (initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(self.dim))

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class FeedForward(nn.Module):
    """The position-wise FFN of 003 §4.1: ``FFN(X) = max(0, X W_1 + b_1) W_2 + b_2`` (Vaswani et al. 2017, §3.3).

    ``activation="relu"`` is that formula, ``"gelu"`` replaces max(0, .) by GELU (exact, erf form), and
    ``"swiglu"`` is ``(silu(X W_g) * X W_u) W_d`` (Shazeer 2020), with a third matrix ``gate``.
    Sub-modules: ``up`` (W_1 / W_u, d_model -> d_ff), ``gate`` (W_g, SwiGLU only), ``down`` (W_2 / W_d).
    Dropout is applied to the hidden activation, as in ``nn.TransformerEncoderLayer``.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "relu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.d_model = _positive_int("d_model", d_model)
        self.d_ff = _positive_int("d_ff", d_ff)
        self.activation = activation
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(_probability("dropout", dropout))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def hidden(self, x: Tensor) -> Tensor:
        """The d_ff-wide activation before ``down``: relu(xW_1+b_1), gelu(xW_1+b_1) or silu(xW_g) * xW_u."""
        if self.activation == "relu":
            return F.relu(self.up(x))
        if self.activation == "gelu":
            return F.gelu(self.up(x))
        return F.silu(self.gate(x)) * self.up(x)

    def forward(self, x: Tensor) -> Tensor:
        _check_float_tensor("x", x)
        if x.dim() < 1 or x.size(-1) != self.d_model:
            raise ValueError(f"x must have shape (..., {self.d_model}), got {tuple(x.shape)}")
        return self.down(self.dropout(self.hidden(x)))


def sinusoidal_encoding(
    n_positions: int,
    d_model: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n_positions, d_model) table ``PE[p, 2i] = sin(p / base^(2i/d))``, ``PE[p, 2i+1] = cos(p / base^(2i/d))``
    (Vaswani et al. 2017, §3.5). Computed in float64, returned as ``dtype``. An odd ``d_model`` ends on a sine."""
    if not isinstance(n_positions, numbers.Integral) or isinstance(n_positions, bool) or n_positions < 0:
        raise ValueError(f"n_positions must be a non-negative int, got {n_positions!r}")
    _positive_int("d_model", d_model)
    position = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # 2i = 0, 2, 4, ...
    angle = position / base ** (two_i / d_model)  # (P, ceil(d/2))
    table = torch.empty(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table.to(dtype=dtype, device=device)


def _check_positions(x: Tensor, d_model: int, offset: int, max_len: int) -> int:
    _check_float_tensor("x", x)
    if x.dim() < 2 or x.size(-1) != d_model:
        raise ValueError(f"x must have shape (..., T, {d_model}), got {tuple(x.shape)}")
    if not isinstance(offset, numbers.Integral) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    length = x.size(-2)
    if offset + length > max_len:
        raise ValueError(f"positions {offset}..{offset + length - 1} exceed max_len {max_len}")
    return length


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed :func:`sinusoidal_encoding` to token embeddings, then dropout (Vaswani et al. 2017, §3.5,
    §5.4; 003 §3.2.1 step 2). No parameters; the table is a non-persistent buffer."""

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model = _positive_int("d_model", d_model)
        self.max_len = _positive_int("max_len", max_len)
        self.dropout = nn.Dropout(_probability("dropout", dropout))
        self.register_buffer("table", sinusoidal_encoding(max_len, d_model), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (..., T, d_model) + PE[offset : offset + T]."""
        length = _check_positions(x, self.d_model, offset, self.max_len)
        return self.dropout(x + self.table[offset : offset + length].to(x.dtype))


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned vector per position, ``weight`` (max_len, d_model), initialised N(0, 0.02^2) (GPT-2 style)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = _positive_int("max_len", max_len)
        self.d_model = _positive_int("d_model", d_model)
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (..., T, d_model) + weight[offset : offset + T]."""
        length = _check_positions(x, self.d_model, offset, self.max_len)
        return x + self.weight[offset : offset + length]


class TokenEmbedding(nn.Module):
    """Token ids (...) -> vectors (..., d_model) by row lookup in ``weight`` (vocab_size, d_model).

    ``scale=True`` multiplies by sqrt(d_model) as in Vaswani et al. 2017, §3.4. ``weight`` starts N(0, 0.02^2)
    so it can be tied to an output layer. Ids must be integers in [0, vocab_size) (checked).
    """

    def __init__(self, vocab_size: int, d_model: int, scale: bool = False) -> None:
        super().__init__()
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        self.d_model = _positive_int("d_model", d_model)
        self.scale = bool(scale)
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.d_model}, scale={self.scale}"

    def forward(self, idx: Tensor) -> Tensor:
        if not isinstance(idx, Tensor):
            raise TypeError(f"token ids must be a torch.Tensor, got {type(idx).__name__}")
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"token ids must be an integer tensor (torch.long), got dtype {idx.dtype}")
        if idx.numel() > 0:
            low, high = int(idx.min()), int(idx.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.vocab_size}), got values in [{low}, {high}]")
        vectors = self.weight[idx.long()]
        return vectors * math.sqrt(self.d_model) if self.scale else vectors
