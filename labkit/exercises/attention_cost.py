"""Chapter 2 exercises: the cost of attention -- online softmax, crossover length, causal block skip, KV cache."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn

# ---------------------------------------------------------------------------------------------- online softmax


def _online_softmax_update_reference(row_max: Tensor, row_sum: Tensor, acc: Tensor, scores: Tensor,
                                     values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the online softmax (Milakov & Gimelshein 2018; Dao et al. 2022, Alg. 1), the update inside
    :func:`labkit.flash_attention.tiled_forward`: ``m' = max(m, rowmax(S))``, ``c = exp(m - m')``,
    ``P = exp(S - m')``, ``l' = c l + rowsum(P)``, ``A' = c A + P V``."""
    new_max = torch.maximum(row_max, scores.amax(dim=-1))
    correction = torch.exp(row_max - new_max)
    probs = torch.exp(scores - new_max.unsqueeze(-1))
    return new_max, correction * row_sum + probs.sum(dim=-1), correction.unsqueeze(-1) * acc + probs @ values


def _online_softmax_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def case(rows: int, block: int, dim_v: int, label: str, *, first: bool = False, score_scale: float = 1.0,
             shift: float = 0.0, dtype: torch.dtype = torch.float32, masked: bool = False) -> Case:
        scores = _randn(generator, rows, block, dtype=dtype) * score_scale + shift
        if masked and block > 1:  # some keys hidden (a causal block): -inf, but never a whole row
            hide = torch.rand(rows, block, generator=generator) < 0.4
            hide[:, 0] = False
            scores = scores.masked_fill(hide, float("-inf"))
        values = _randn(generator, block, dim_v, dtype=dtype)
        if first:  # the state before any block
            state = (torch.full((rows,), float("-inf"), dtype=dtype), torch.zeros(rows, dtype=dtype),
                     torch.zeros(rows, dim_v, dtype=dtype))
        else:
            row_max = _randn(generator, rows, dtype=dtype) * score_scale + shift
            row_sum = torch.rand(rows, generator=generator, dtype=torch.float64).to(dtype) * 5 + 1
            state = (row_max, row_sum, _randn(generator, rows, dim_v, dtype=dtype) * row_sum.unsqueeze(-1))
        return Case((*state, scores, values), label)

    cases = [
        case(4, 8, 5, "the first block: m = -inf, l = 0, A = 0", first=True),
        case(4, 8, 5, "a later block"),
        case(3, 6, 4, "a new maximum in this block", shift=3.0),
        case(3, 6, 4, "scores near 1000: exp without the max overflows", shift=1000.0),
        case(5, 7, 3, "masked keys (-inf scores)", masked=True),
        case(2, 1, 8, "a block of one key", dtype=torch.float64),
    ]
    for _ in range(n_random):
        cases.append(case(_randint(generator, 1, 6), _randint(generator, 1, 16), _randint(generator, 1, 8), "random",
                          first=bool(_randint(generator, 0, 1)), score_scale=float(_randint(generator, 1, 8))))
    return cases


# ---------------------------------------------------------------------------------------------- crossover length


def _crossover_length_reference(d_model: int, d_ff: int, causal: bool, activation: str) -> int:
    """The smallest T at which attention's matmul FLOPs (scores + values) reach those of the projections and the
    FFN, as counted by :func:`labkit.transformer.layer_forward_flops` (found by bisection)."""
    from labkit.transformer import layer_forward_flops

    def attention_dominates(seq_len: int) -> bool:
        flops = layer_forward_flops(d_model, d_ff, seq_len, causal=causal, activation=activation)
        attention = flops["attention_scores"] + flops["attention_values"]
        return attention >= flops["total"] - attention

    low, high = 1, 2
    while not attention_dominates(high):
        high *= 2
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if attention_dominates(middle) else (middle + 1, high)
    return low


def _crossover_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((128, 512, False, "relu"), "the cpu profile's GPT: d_ff = 4d"),
             Case((64, 100, False, "gelu"), "d_ff not a multiple of d"),
             Case((128, 512, True, "gelu"), "causal: only T(T+1)/2 pairs"),
             Case((768, 2048, False, "swiglu"), "SwiGLU: three FFN matrices"),
             Case((4096, 11008, True, "swiglu"), "LLaMA-7B shape, causal"),
             Case((1, 1, False, "relu"), "tiny")]
    activations = ("relu", "gelu", "swiglu")
    for _ in range(n_random):
        d_model = 8 * _randint(generator, 1, 256)
        cases.append(Case((d_model, _randint(generator, 1, 8 * d_model), bool(_randint(generator, 0, 1)),
                           activations[_randint(generator, 0, 2)]), "random"))
    return cases


# ---------------------------------------------------------------------------------------------- causal block skip


def _causal_block_skip_reference(n_queries: int, n_keys: int, block_q: int, block_k: int) -> Tensor:
    """For each (query block, key block) tile of a causal attention (query i sees keys j <= i): 0 = every entry
    masked (skip the tile), 1 = no entry masked (compute without a mask), 2 = some masked (apply the mask)."""
    from labkit.attention import causal_mask

    pad_q, pad_k = -n_queries % block_q, -n_keys % block_k
    visible = torch.nn.functional.pad(causal_mask(n_queries, n_keys).long(), (0, pad_k, 0, pad_q))
    real = torch.nn.functional.pad(torch.ones(n_queries, n_keys, dtype=torch.long), (0, pad_k, 0, pad_q))
    tiles = (n_queries + pad_q) // block_q, block_q, (n_keys + pad_k) // block_k, block_k
    n_visible = visible.view(tiles).sum(dim=(1, 3))
    n_real = real.view(tiles).sum(dim=(1, 3))
    return torch.where(n_visible == 0, 0, torch.where(n_visible == n_real, 1, 2))


def _causal_block_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((8, 8, 4, 4), "2 x 2 tiles"), Case((10, 10, 4, 4), "lengths not multiples of the block"),
             Case((8, 8, 2, 4), "tall and wide tiles differ"), Case((6, 9, 3, 3), "more keys than queries"),
             Case((9, 4, 2, 2), "more queries than keys"), Case((5, 5, 1, 1), "one entry a tile"),
             Case((7, 7, 16, 16), "one tile holds everything")]
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 40), _randint(generator, 1, 40), _randint(generator, 1, 8),
                           _randint(generator, 1, 8)), "random"))
    return cases


# ---------------------------------------------------------------------------------------------- KV cache


def _kv_cache_reference(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int,
                        dtype: torch.dtype) -> int:
    from labkit.attention_variants import kv_cache_bytes

    return kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size, dtype)


def _kv_cache_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((32, 32, 128, 4096, 1, torch.float16), "LLaMA-7B shape, multi-head, fp16"),
             Case((32, 8, 128, 4096, 1, torch.float16), "grouped-query, 8 K/V heads"),
             Case((32, 1, 128, 4096, 1, torch.float16), "multi-query, 1 K/V head"),
             Case((2, 4, 32, 128, 16, torch.float32), "the cpu profile's GPT, float32, batch 16"),
             Case((1, 1, 64, 0, 1, torch.bfloat16), "empty cache")]
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8)
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 96), 2 ** _randint(generator, 0, 6), 2 ** _randint(generator, 4, 8),
                           _randint(generator, 1, 32768), _randint(generator, 1, 64),
                           dtypes[_randint(generator, 0, len(dtypes) - 1)]), "random"))
    return cases


for _exercise in (
    Exercise(
        name="attention_cost.online_softmax_update",
        title="The online-softmax update",
        goal="Fold one block of scores and values into the running max m, running sum l and accumulator A.",
        make_cases=_online_softmax_cases,
        reference=_online_softmax_update_reference,
        signature="update(m (R,), l (R,), A (R, dv), S (R, Bk), V (Bk, dv)) -> (m', l', A')",
        atol=1e-5,
        rtol=1e-5,
    ),
    Exercise(
        name="attention_cost.crossover_length",
        title="The crossover length",
        goal="The smallest T at which attention's T^2 FLOPs reach the linear FLOPs of projections and FFN.",
        make_cases=_crossover_cases,
        reference=_crossover_length_reference,
        signature="crossover_length(d_model, d_ff, causal: bool, activation: str) -> int",
        atol=0.0,
        rtol=0.0,
    ),
    Exercise(
        name="attention_cost.causal_block_skip",
        title="Which causal tiles to compute",
        goal="Classify each block_q x block_k tile of a causal score matrix as skipped, full or masked.",
        make_cases=_causal_block_cases,
        reference=_causal_block_skip_reference,
        signature="causal_block_skip(n_queries, n_keys, block_q, block_k) -> int64 (ceil(Lq/bq), ceil(Lk/bk))",
        atol=0.0,
        rtol=0.0,
    ),
    Exercise(
        name="attention_cost.kv_cache_bytes",
        title="The KV cache of MHA, GQA and MQA",
        goal="Bytes of the keys and values a decoder keeps for every layer, K/V head, token and sequence.",
        make_cases=_kv_cache_cases,
        reference=_kv_cache_reference,
        signature="kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size, dtype) -> int",
        atol=0.0,
        rtol=0.0,
    ),
):
    add_exercise(_exercise)
del _exercise
