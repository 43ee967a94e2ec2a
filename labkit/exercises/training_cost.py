"""Chapter 3 exercises: the bytes and FLOPs of a training step, checked against labkit's references."""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _dtype(generator: torch.Generator) -> torch.dtype:
    return _DTYPES[_randint(generator, 0, len(_DTYPES) - 1)]


# ---------------------------------------------------------------------------------------------- training state


def _training_state_reference(n_params: int, param_dtype: torch.dtype, optimizer: str, master_weights: bool) -> int:
    """Parameters + gradients in ``param_dtype`` plus ``k`` optimizer states (:data:`OPTIMIZER_STATES`), in
    ``param_dtype``, or with ``master_weights`` in float32 next to a float32 master copy of the parameters."""
    from labkit.training_cost import OPTIMIZER_STATES

    size = torch.empty((), dtype=param_dtype).element_size()
    states = OPTIMIZER_STATES[optimizer]
    if master_weights:
        return n_params * (2 * size + 4 + 4 * states)
    return n_params * (2 + states) * size


def _training_state_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((1, torch.float32, "adamw", False), "one float32 parameter, AdamW: 16 bytes"),
        Case((1_000_000, torch.float16, "adamw", True), "fp16 with fp32 master weights, AdamW"),
        Case((1_000_000, torch.bfloat16, "adamw", False), "pure bfloat16, AdamW"),
        Case((10, torch.float32, "sgd", False), "plain SGD keeps no state"),
        Case((10, torch.float32, "sgd_momentum", False), "SGD with momentum: one state"),
        Case((7, torch.bfloat16, "sgd", True), "bf16 with master weights, plain SGD"),
    ]
    optimizers = ("adamw", "adam", "sgd_momentum", "sgd")
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 10**9), _dtype(generator),
                           optimizers[_randint(generator, 0, 3)], bool(_randint(generator, 0, 1))), "random"))
    return cases


# ---------------------------------------------------------------------------------------------- attention scores


def _attention_score_bytes_reference(batch_size: int, n_heads: int, seq_len: int, dtype: torch.dtype) -> int:
    """What one layer of labkit's attention saves of size ``T x T`` per head: the softmax output and the
    probabilities fed to ``P V`` in ``dtype``, and the one-byte mask of fully masked rows."""
    from labkit.training_cost import activation_memory_breakdown
    from labkit.transformer import TransformerConfig

    config = TransformerConfig(vocab_size=2, d_model=n_heads, n_heads=n_heads, n_layers=1, d_ff=1, max_len=seq_len)
    parts = activation_memory_breakdown(config, batch_size, seq_len, dtype)
    return parts["attention_probabilities"] + parts["attention_row_mask"]


def _attention_score_bytes_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((1, 1, 1, torch.float32), "one token"),
        Case((16, 4, 128, torch.float32), "the cpu profile's GPT"),
        Case((8, 12, 1024, torch.bfloat16), "GPT-2 small heads at T = 1024, bfloat16"),
        Case((2, 3, 5, torch.float64), "float64"),
    ]
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 64), _randint(generator, 1, 32), _randint(generator, 1, 4096),
                           _dtype(generator)), "random"))
    return cases


# ---------------------------------------------------------------------------------------------- FLOPs per token


def _flops_per_token_reference(n_layers: int, d_model: int, d_ff: int, vocab_size: int, seq_len: int) -> int:
    """Training FLOPs per token of labkit's GPT (GELU FFN): ``6N`` over the matmul weights plus ``12 L T d``."""
    from labkit.training_cost import training_flops_per_token
    from labkit.transformer import TransformerConfig

    config = TransformerConfig(vocab_size=vocab_size, d_model=d_model, n_heads=1, n_layers=n_layers, d_ff=d_ff,
                               max_len=seq_len)
    return training_flops_per_token(config, seq_len)["total"]


def _flops_per_token_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((1, 8, 32, 10, 1), "one layer, one token"),
        Case((2, 128, 512, 1024, 128), "the cpu profile's GPT"),
        Case((12, 768, 3072, 50_257, 1024), "GPT-2 small sizes"),
        Case((4, 64, 64, 100, 4096), "long sequence: the attention term dominates"),
    ]
    for _ in range(n_random):
        d_model = 8 * _randint(generator, 1, 64)
        cases.append(Case((_randint(generator, 1, 24), d_model, d_model * _randint(generator, 1, 4),
                           _randint(generator, 2, 60_000), _randint(generator, 1, 4096)), "random"))
    return cases


# ---------------------------------------------------------------------------------------------- accumulation


def _accumulate_reference(micro_gradients: list[Tensor], sizes: list[int]) -> Tensor:
    """The full-batch gradient of a mean loss from the mean-loss gradients of micro-batches of ``sizes``:
    ``sum_i (n_i / B) g_i`` with ``B = sum_i n_i``."""
    total = sum(sizes)
    return sum((n / total) * g for g, n in zip(micro_gradients, sizes))


def _accumulate_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def case(sizes: list[int], shape: tuple[int, ...], label: str, dtype: torch.dtype = torch.float32) -> Case:
        return Case(([_randn(generator, *shape, dtype=dtype) for _ in sizes], list(sizes)), label)

    cases = [
        case([4], (3,), "one micro-batch: the gradient itself"),
        case([2, 2, 2, 2], (5, 3), "four equal micro-batches"),
        case([3, 3, 2], (4,), "B = 8 in 3 pieces: the last one smaller"),
        case([1, 7], (2, 2), "very unequal sizes"),
        case([5, 4, 4], (6,), "float64", torch.float64),
    ]
    for _ in range(n_random):
        sizes = [_randint(generator, 1, 9) for _ in range(_randint(generator, 1, 6))]
        shape = tuple(_randint(generator, 1, 5) for _ in range(_randint(generator, 1, 3)))
        cases.append(case(sizes, shape, "random"))
    return cases


for _exercise in (
    Exercise(
        name="training_cost.training_state_bytes",
        title="The training state of a parameter",
        goal="Bytes of parameters, gradients and optimizer states for a dtype recipe (16 per parameter for "
             "float32 AdamW, and for fp16 with float32 master weights).",
        make_cases=_training_state_cases,
        reference=_training_state_reference,
        signature="training_state_bytes(n_params, param_dtype, optimizer, master_weights) -> int",
        atol=0.0,
        rtol=0.0,
    ),
    Exercise(
        name="training_cost.attention_score_bytes",
        title="The memory of attention scores",
        goal="Bytes one attention layer saves for backward that grow with T^2: two B x H x T x T tensors and a "
             "one-byte mask per row.",
        make_cases=_attention_score_bytes_cases,
        reference=_attention_score_bytes_reference,
        signature="attention_score_bytes(batch_size, n_heads, seq_len, dtype) -> int",
        atol=0.0,
        rtol=0.0,
    ),
    Exercise(
        name="training_cost.flops_per_token",
        title="Training FLOPs per token",
        goal="The 6N rule over the matmul weights (output head included) plus the attention term 12 L T d.",
        make_cases=_flops_per_token_cases,
        reference=_flops_per_token_reference,
        signature="flops_per_token(n_layers, d_model, d_ff, vocab_size, seq_len) -> int",
        atol=0.0,
        rtol=0.0,
    ),
    Exercise(
        name="training_cost.accumulate",
        title="Gradient accumulation: split and scale",
        goal="Combine the mean-loss gradients of micro-batches of unequal sizes into the full-batch gradient.",
        make_cases=_accumulate_cases,
        reference=_accumulate_reference,
        signature="accumulate(micro_gradients: list of Tensor, sizes: list of int) -> Tensor",
        atol=1e-6,
        rtol=1e-5,
    ),
):
    add_exercise(_exercise)
del _exercise
