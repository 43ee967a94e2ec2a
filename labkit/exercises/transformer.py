"""Chapter 1 exercises: the Transformer's parts, checked against labkit's references."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high] from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _randn(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def _attention_reference(q: Tensor, k: Tensor, v: Tensor, is_causal: bool) -> Tensor:
    from labkit.attention import scaled_dot_product_attention

    return scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def _attention_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def qkv(batch: tuple[int, ...], n_queries: int, n_keys: int, dim: int, dim_v: int,
            dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        return (_randn(generator, *batch, n_queries, dim, dtype=dtype), _randn(generator, *batch, n_keys, dim, dtype=dtype),
                _randn(generator, *batch, n_keys, dim_v, dtype=dtype))

    cases = [
        Case((*qkv((2, 3), 5, 5, 8, 8), False), "batch 2, 3 heads, no mask"),
        Case((*qkv((2, 3), 5, 5, 8, 8), True), "causal"),
        Case((*qkv((1, 1), 1, 1, 4, 4), True), "length 1"),
        Case((*qkv((2,), 3, 7, 16, 6), False), "3-D input, 3 queries on 7 keys, value width 6"),
        Case((*qkv((1, 2), 6, 6, 32, 32, torch.float64), True), "float64, d = 32"),
    ]
    for _ in range(n_random):
        length, dim = _randint(generator, 1, 12), 2 ** _randint(generator, 1, 5)
        causal = bool(_randint(generator, 0, 1))
        batch = (_randint(generator, 1, 3), _randint(generator, 1, 4))
        cases.append(Case((*qkv(batch, length, length, dim, dim), causal), "random"))
    return cases


def _sinusoidal_reference(n_positions: int, d_model: int) -> Tensor:
    from labkit.layers import sinusoidal_encoding

    return sinusoidal_encoding(n_positions, d_model)


def _sinusoidal_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((1, 4), "one position"), Case((10, 2), "d_model = 2"), Case((50, 16), "50 positions"),
             Case((7, 5), "odd d_model ends on a sine"), Case((128, 64), "128 positions, d_model 64")]
    cases += [Case((_randint(generator, 1, 100), 2 * _randint(generator, 1, 32)), "random") for _ in range(n_random)]
    return cases


def _layer_norm_reference(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    from labkit.layers import layer_norm

    return layer_norm(x, x.shape[-1], weight, bias, eps)


def _layer_norm_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def case(shape: tuple[int, ...], eps: float, label: str, dtype: torch.dtype = torch.float32,
             offset: float = 0.0) -> Case:
        x = _randn(generator, *shape, dtype=dtype) * 3 + offset
        weight = 1 + 0.5 * _randn(generator, shape[-1], dtype=dtype)
        bias = 0.5 * _randn(generator, shape[-1], dtype=dtype)
        return Case((x, weight, bias, eps), label)

    cases = [case((4, 8), 1e-5, "4 vectors of width 8"), case((2, 3, 16), 1e-5, "3-D input"),
             case((3, 1), 1e-5, "width 1: normalises to the bias"), case((2, 5), 1e-1, "large eps"),
             case((2, 6, 32), 1e-5, "float64, mean far from 0", torch.float64, offset=10.0)]
    for _ in range(n_random):
        shape = (_randint(generator, 1, 4), _randint(generator, 1, 6), _randint(generator, 2, 64))
        cases.append(case(shape, 1e-5, "random"))
    return cases


def _gpt_parameter_count_reference(vocab_size: int, d_model: int, n_layers: int, d_ff: int, max_len: int) -> int:
    from labkit.transformer import TransformerConfig, gpt_parameter_count

    config = TransformerConfig(vocab_size=vocab_size, d_model=d_model, n_heads=1, n_layers=n_layers, d_ff=d_ff,
                               max_len=max_len, activation="gelu", norm_first=True, positional="learned",
                               tie_embeddings=True, bias=True)
    return gpt_parameter_count(config)


def _gpt_parameter_count_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((100, 16, 1, 64, 32), "one layer"), Case((50_257, 768, 12, 3072, 1024), "GPT-2 small sizes"),
             Case((300, 32, 3, 32, 8), "d_ff = d_model")]
    for _ in range(n_random):
        d_model = 8 * _randint(generator, 1, 16)
        cases.append(Case((_randint(generator, 2, 5000), d_model, _randint(generator, 1, 6),
                           d_model * _randint(generator, 1, 4), _randint(generator, 1, 512)), "random"))
    return cases


for _exercise in (
    Exercise(
        name="transformer.attention",
        title="Scaled dot-product attention",
        goal="Compute softmax(QKᵀ/√d + M)V, with the causal mask M hiding future keys (003 §4.1).",
        make_cases=_attention_cases,
        reference=_attention_reference,
        signature="attention(q (..., L, d), k (..., S, d), v (..., S, d_v), is_causal: bool) -> (..., L, d_v)",
    ),
    Exercise(
        name="transformer.sinusoidal_encoding",
        title="Sinusoidal positional encoding",
        goal="Build PE[p, 2i] = sin(p/10000^(2i/d)), PE[p, 2i+1] = cos(p/10000^(2i/d)), interleaved by column.",
        make_cases=_sinusoidal_cases,
        reference=_sinusoidal_reference,
        signature="sinusoidal_encoding(n_positions: int, d_model: int) -> float32 (n_positions, d_model)",
    ),
    Exercise(
        name="transformer.layer_norm",
        title="Layer normalisation",
        goal="Normalise each vector over its last dimension with the biased variance, then scale and shift.",
        make_cases=_layer_norm_cases,
        reference=_layer_norm_reference,
        signature="layer_norm(x (..., d), weight (d,), bias (d,), eps: float) -> (..., d)",
    ),
    Exercise(
        name="transformer.gpt_parameter_count",
        title="Counting a GPT's parameters",
        goal="Add up embeddings, attention, FFN and norm parameters of a pre-norm GPT with tied embeddings.",
        make_cases=_gpt_parameter_count_cases,
        reference=_gpt_parameter_count_reference,
        signature="gpt_parameter_count(vocab_size, d_model, n_layers, d_ff, max_len) -> int",
        atol=0.0,
        rtol=0.0,
    ),
):
    add_exercise(_exercise)
del _exercise
