"""Chapter "Inference optimization" exercises: KV-cache memory, top-k and top-p filtering, arithmetic intensity."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn

# ----------------------------------------------------------------------------------------------------------
# the memory of a KV cache
# ----------------------------------------------------------------------------------------------------------


def _kv_cache_bytes_reference(n_layers: int, n_heads: int, head_dim: int, n_tokens: int, bytes_per_value: int,
                              batch_size: int) -> int:
    from labkit.generate import kv_cache_bytes

    return kv_cache_bytes(n_layers, n_heads, head_dim, n_tokens, bytes_per_value, batch_size)


def _kv_cache_bytes_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((2, 4, 32, 128, 4, 1), "the book's cpu GPT, 128 tokens, fp32"),
        Case((32, 32, 128, 4096, 2, 1), "a 7B-class model, 4096 tokens, fp16"),
        Case((12, 12, 64, 1024, 2, 8), "batch of 8"),
        Case((1, 1, 1, 0, 4, 3), "empty cache"),
        Case((80, 8, 128, 32768, 1, 4), "8 KV heads, 32k tokens, int8"),
    ]
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 48), _randint(generator, 1, 32), 2 ** _randint(generator, 4, 7),
                           _randint(generator, 0, 8192), 2 ** _randint(generator, 0, 2), _randint(generator, 1, 16)),
                          "random"))
    return cases


# ----------------------------------------------------------------------------------------------------------
# top-k and top-p
# ----------------------------------------------------------------------------------------------------------


def _top_k_reference(logits: Tensor, k: int) -> Tensor:
    from labkit.generate import top_k_filter

    return top_k_filter(logits, k)


def _top_p_reference(logits: Tensor, p: float) -> Tensor:
    from labkit.generate import top_p_filter

    return top_p_filter(logits, p)


def _logits(generator: torch.Generator, rows: int, vocab: int, scale: float = 2.0) -> Tensor:
    return _randn(generator, rows, vocab) * scale


def _top_k_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((_logits(generator, 2, 10), 3), "k = 3 of 10"),
        Case((_logits(generator, 3, 8), 1), "k = 1: greedy"),
        Case((_logits(generator, 2, 6), 6), "k = V keeps everything"),
        Case((_logits(generator, 1, 5), 9), "k > V keeps everything"),
        Case((torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]]), 2), "a tie at the k-th place: keep both"),
        Case((torch.tensor([[0.5, -1.0, 2.0, 2.0, 2.0, 1.0]]), 1), "three tied maxima, k = 1"),
    ]
    for _ in range(n_random):
        vocab = _randint(generator, 2, 60)
        cases.append(Case((_logits(generator, _randint(generator, 1, 5), vocab), _randint(generator, 1, vocab)),
                          "random"))
    return cases


def _top_p_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((_logits(generator, 2, 10), 0.9), "p = 0.9"),
        Case((_logits(generator, 2, 10, 4.0), 0.5), "p = 0.5, peaked"),
        Case((_logits(generator, 3, 8), 0.01), "tiny p: only the top token"),
        Case((_logits(generator, 2, 8), 1.0), "p = 1 keeps everything"),
        Case((torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), 0.79), "0.5 + 0.3 crosses 0.79: keep two"),
        Case((torch.log(torch.tensor([[0.05, 0.15, 0.3, 0.5]])), 0.81), "unsorted: keep the three largest"),
    ]
    for _ in range(n_random):
        p = float(torch.rand(1, generator=generator)) * 0.98 + 0.01
        cases.append(Case((_logits(generator, _randint(generator, 1, 5), _randint(generator, 2, 60)), p), "random"))
    return cases


# ----------------------------------------------------------------------------------------------------------
# arithmetic intensity of a linear layer
# ----------------------------------------------------------------------------------------------------------


def _linear_intensity_reference(n_tokens: int, d_in: int, d_out: int, bytes_per_value: int) -> float:
    from labkit.inference import linear_cost

    return linear_cost(n_tokens, d_in, d_out, bytes_per_value)["intensity"]


def _linear_intensity_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((1, 4096, 4096, 2), "decoding one token, fp16: memory-bound"),
        Case((1, 128, 512, 4), "the book's FFN, one token, fp32"),
        Case((4096, 4096, 4096, 2), "a large batch: compute-bound"),
        Case((64, 1024, 256, 1), "int8 weights and activations"),
        Case((512, 64, 64, 4), "tokens outnumber the weights' rows"),
    ]
    for _ in range(n_random):
        cases.append(Case((2 ** _randint(generator, 0, 12), 2 ** _randint(generator, 5, 13),
                           2 ** _randint(generator, 5, 13), 2 ** _randint(generator, 0, 2)), "random"))
    return cases


for _exercise in (
    Exercise(
        name="inference.kv_cache_bytes",
        title="The memory of a KV cache",
        goal="A key and a value vector of n_heads·head_dim numbers per token, layer and sequence: "
             "2·n_layers·n_heads·head_dim·n_tokens·bytes_per_value·batch_size bytes.",
        make_cases=_kv_cache_bytes_cases,
        reference=_kv_cache_bytes_reference,
        atol=0.0,
        rtol=0.0,
        signature="kv_cache_bytes(n_layers, n_heads, head_dim, n_tokens, bytes_per_value, batch_size) -> int",
    ),
    Exercise(
        name="inference.top_k",
        title="Top-k filtering",
        goal="Set every logit below the k-th largest of its row to -inf; ties with the k-th are kept; "
             "k >= V keeps the row.",
        make_cases=_top_k_cases,
        reference=_top_k_reference,
        atol=0.0,
        rtol=0.0,
        signature="top_k(logits: (B, V) float tensor, k: int) -> (B, V) float tensor",
    ),
    Exercise(
        name="inference.top_p",
        title="Nucleus (top-p) filtering",
        goal="Keep the most probable tokens, in order, until their softmax probability reaches p (the token "
             "that crosses p is kept); set the rest to -inf.",
        make_cases=_top_p_cases,
        reference=_top_p_reference,
        atol=0.0,
        rtol=0.0,
        signature="top_p(logits: (B, V) float tensor, p: float in (0, 1]) -> (B, V) float tensor",
    ),
    Exercise(
        name="inference.linear_intensity",
        title="Arithmetic intensity of a linear layer",
        goal="FLOPs 2·n·d_in·d_out over the bytes moved (weights d_in·d_out, inputs n·d_in, outputs n·d_out, "
             "each bytes_per_value bytes).",
        make_cases=_linear_intensity_cases,
        reference=_linear_intensity_reference,
        atol=0.0,
        rtol=1e-9,
        signature="linear_intensity(n_tokens, d_in, d_out, bytes_per_value) -> float (FLOP per byte)",
    ),
):
    add_exercise(_exercise)
