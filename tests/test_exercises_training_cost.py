"""Chapter 3 exercises ("Where training time and memory go"): right answers pass, plausible wrong ones fail."""

from __future__ import annotations

import pytest
import torch

from labkit import exercises
from labkit.exercises import check
from labkit.training_cost import training_flops_per_token, training_memory_breakdown, train_step_with_accumulation
from labkit.transformer import GPT, TransformerConfig, gpt_parameter_count

CHAPTER_3 = ["training_cost.training_state_bytes", "training_cost.attention_score_bytes",
             "training_cost.flops_per_token", "training_cost.accumulate"]

_STATES = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}


# ---------------------------------------------------------------------------------------------- learners


def state_right(n_params, param_dtype, optimizer, master_weights):
    size = torch.finfo(param_dtype).bits // 8
    if master_weights:  # low-precision weights and gradients; fp32 master copy and fp32 optimizer states
        return n_params * (size + size + 4 + 4 * _STATES[optimizer])
    return n_params * size * (2 + _STATES[optimizer])


def state_without_gradients(n_params, param_dtype, optimizer, master_weights):
    return state_right(n_params, param_dtype, optimizer, master_weights) - n_params * (torch.finfo(param_dtype).bits // 8)


def state_master_ignored(n_params, param_dtype, optimizer, master_weights):
    return state_right(n_params, param_dtype, optimizer, False)


def state_adam_one_state(n_params, param_dtype, optimizer, master_weights):
    states = {"adamw": 1, "adam": 1, "sgd_momentum": 1, "sgd": 0}[optimizer]
    size = torch.finfo(param_dtype).bits // 8
    return n_params * (2 * size + 4 + 4 * states) if master_weights else n_params * size * (2 + states)


def scores_right(batch_size, n_heads, seq_len, dtype):
    size = torch.finfo(dtype).bits // 8
    return 2 * batch_size * n_heads * seq_len**2 * size + batch_size * n_heads * seq_len


def scores_one_tensor(batch_size, n_heads, seq_len, dtype):
    return scores_right(batch_size, n_heads, seq_len, dtype) - batch_size * n_heads * seq_len**2 * (torch.finfo(dtype).bits // 8)


def scores_no_row_mask(batch_size, n_heads, seq_len, dtype):
    return scores_right(batch_size, n_heads, seq_len, dtype) - batch_size * n_heads * seq_len


def scores_float32_always(batch_size, n_heads, seq_len, dtype):
    return scores_right(batch_size, n_heads, seq_len, torch.float32)


def flops_right(n_layers, d_model, d_ff, vocab_size, seq_len):
    n_matmul = n_layers * (4 * d_model**2 + 2 * d_model * d_ff) + d_model * vocab_size
    return 6 * n_matmul + 12 * n_layers * seq_len * d_model


def flops_without_attention(n_layers, d_model, d_ff, vocab_size, seq_len):
    return flops_right(n_layers, d_model, d_ff, vocab_size, seq_len) - 12 * n_layers * seq_len * d_model


def flops_without_head(n_layers, d_model, d_ff, vocab_size, seq_len):
    return flops_right(n_layers, d_model, d_ff, vocab_size, seq_len) - 6 * d_model * vocab_size


def flops_forward_only(n_layers, d_model, d_ff, vocab_size, seq_len):
    return flops_right(n_layers, d_model, d_ff, vocab_size, seq_len) // 3


def accumulate_right(micro_gradients, sizes):
    total = sum(sizes)
    out = torch.zeros_like(micro_gradients[0])
    for gradient, n in zip(micro_gradients, sizes):
        out += gradient * (n / total)
    return out


def accumulate_plain_mean(micro_gradients, sizes):
    return torch.stack(micro_gradients).mean(0)


def accumulate_sum(micro_gradients, sizes):
    return torch.stack(micro_gradients).sum(0)


# ---------------------------------------------------------------------------------------------- tests


def test_chapter_3_exercises_are_listed():
    assert [e.name for e in exercises.list_exercises("training_cost.")] == sorted(CHAPTER_3)


@pytest.mark.parametrize("name, learner", [
    ("training_cost.training_state_bytes", state_right),
    ("training_cost.attention_score_bytes", scores_right),
    ("training_cost.flops_per_token", flops_right),
    ("training_cost.accumulate", accumulate_right),
])
def test_a_correct_solution_from_scratch_passes(name, learner):
    assert check(name, learner, verbose=False).max_abs_error <= 1e-6


@pytest.mark.parametrize("name, learner, message", [
    ("training_cost.training_state_bytes", state_without_gradients, "expected 16, got 12"),
    ("training_cost.training_state_bytes", state_master_ignored, "fp16 with fp32 master weights"),
    ("training_cost.training_state_bytes", state_adam_one_state, "expected 16, got 12"),
    ("training_cost.attention_score_bytes", scores_one_tensor, "off by"),
    ("training_cost.attention_score_bytes", scores_no_row_mask, "one token"),
    ("training_cost.attention_score_bytes", scores_float32_always, "bfloat16"),
    ("training_cost.flops_per_token", flops_without_attention, "one layer, one token"),
    ("training_cost.flops_per_token", flops_without_head, "off by"),
    ("training_cost.flops_per_token", flops_forward_only, "off by"),
    ("training_cost.accumulate", accumulate_plain_mean, "B = 8 in 3 pieces"),
    ("training_cost.accumulate", accumulate_sum, "four equal micro-batches"),
])
def test_wrong_answers_fail_with_a_useful_message(name, learner, message, rejection):
    assert message in rejection(name, learner)


def test_state_reference_is_the_static_part_of_the_training_memory_breakdown():
    config = TransformerConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=8)
    reference = exercises.get_exercise("training_cost.training_state_bytes").reference
    for dtype in (torch.float32, torch.bfloat16):
        for optimizer in _STATES:
            parts = training_memory_breakdown(config, 2, 8, dtype, optimizer)
            static = parts["parameters"] + parts["gradients"] + parts["optimizer_states"]
            assert reference(gpt_parameter_count(config), dtype, optimizer, False) == static


def test_flops_reference_is_labkits_formula():
    config = TransformerConfig(vocab_size=97, d_model=24, n_heads=3, n_layers=3, d_ff=40, max_len=16)
    reference = exercises.get_exercise("training_cost.flops_per_token").reference
    assert reference(3, 24, 40, 97, 16) == training_flops_per_token(config, 16)["total"]


def test_accumulate_reference_reproduces_train_step_with_accumulation():
    """The exercise's combination rule gives the gradient labkit's accumulated step leaves in .grad."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=20, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_len=6)
    model = GPT(config).double()
    inputs = torch.randint(0, 20, (5, 6))
    targets = torch.randint(0, 20, (5, 6))
    sizes = [len(part) for part in inputs.tensor_split(3)]
    micro_gradients = []
    for part_in, part_t in zip(inputs.tensor_split(3), targets.tensor_split(3)):
        model.zero_grad(set_to_none=True)
        model.loss(part_in, part_t).backward()
        micro_gradients.append(model.lm_head.weight.grad.clone())
    combined = exercises.get_exercise("training_cost.accumulate").reference(micro_gradients, sizes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step_with_accumulation(model, optimizer, (inputs, targets), 3)
    torch.testing.assert_close(combined, model.lm_head.weight.grad, rtol=1e-12, atol=1e-12)
