"""labkit.training_cost: memory and FLOP formulas of a GPT training step checked against measurements,
gradient accumulation against the full batch, and the profiler view."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import training_cost as tc
from labkit.bench import count_flops, peak_memory
from labkit.transformer import GPT, TransformerConfig, count_parameters, gpt_forward_flops
from labkit.training_cost import (
    activation_memory_breakdown,
    measure_training_memory,
    model_flops_utilization,
    peak_flops,
    profile_step,
    saved_activation_bytes,
    time_by_category,
    train_step_with_accumulation,
    training_flops_per_token,
    training_memory_breakdown,
)

VOCAB = 37


def _config(**overrides) -> TransformerConfig:
    values = dict(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=64)
    values.update(overrides)
    return TransformerConfig(**values)


def _batch(batch_size: int, seq_len: int, vocab: int = VOCAB, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (batch_size, seq_len), generator=generator),
            torch.randint(0, vocab, (batch_size, seq_len), generator=generator))


# ------------------------------------------------------------------------------------- activation memory

# (d_model, n_heads, batch, seq_len, extra config): widths, lengths and every branch of the formula
ACTIVATION_CASES = [
    (16, 2, 2, 5, {}),
    (32, 4, 3, 17, {}),
    (48, 3, 1, 33, {}),
    (16, 1, 2, 9, {"activation": "relu"}),
    (24, 2, 2, 7, {"activation": "swiglu", "bias": False}),
    (16, 4, 3, 1, {"norm_first": False}),
    (16, 2, 2, 11, {"norm_first": False, "positional": "sinusoidal", "tie_embeddings": False}),
    (32, 2, 2, 12, {"dropout": 0.1}),
    (16, 2, 2, 6, {"dropout": 0.1, "activation": "relu", "norm_first": False}),
    (16, 2, 2, 6, {"dropout": 0.2, "activation": "swiglu"}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d_model, n_heads, batch_size, seq_len, extra", ACTIVATION_CASES)
def test_activation_formula_equals_saved_tensor_measurement(d_model, n_heads, batch_size, seq_len, extra, dtype):
    """The formula is exact (tolerance 0 bytes): it counts what each op of labkit's layers saves."""
    torch.manual_seed(0)
    config = _config(d_model=d_model, n_heads=n_heads, **extra)
    model = GPT(config).to(dtype)
    measured = saved_activation_bytes(model, _batch(batch_size, seq_len))
    assert activation_memory_breakdown(config, batch_size, seq_len, dtype)["total"] == measured


def test_per_layer_formula_in_the_docstring():
    """One more GELU layer adds s(10 BTd + 2 BT + 2 BHT^2 + 2 BTf) + BHT bytes."""
    b, t, d, h, f, s = 3, 10, 16, 2, 32, 4
    one, two = (activation_memory_breakdown(_config(n_layers=n), b, t)["total"] for n in (1, 2))
    assert two - one == s * (10 * b * t * d + 2 * b * t + 2 * b * h * t * t + 2 * b * t * f) + b * h * t


def test_activation_memory_scales_with_batch_dtype_and_quadratically_with_length():
    config = _config()
    small = activation_memory_breakdown(config, 2, 16)
    loss_scalar = 4  # the loss's one-element total weight does not grow with the batch
    assert activation_memory_breakdown(config, 4, 16)["total"] - loss_scalar == 2 * (small["total"] - loss_scalar)
    assert activation_memory_breakdown(config, 2, 32)["attention_probabilities"] == 4 * small["attention_probabilities"]
    half = activation_memory_breakdown(config, 2, 16, torch.float16)
    assert half["attention_qkv"] * 2 == small["attention_qkv"]
    assert half["token_ids"] == small["token_ids"]  # int64 whatever the float dtype


def test_dropout_masks_are_bytes_on_cuda_and_floats_on_cpu():
    config = _config(dropout=0.1)
    cpu = activation_memory_breakdown(config, 2, 8, device="cpu")
    cuda = activation_memory_breakdown(config, 2, 8, device="cuda")
    assert cpu["dropout_masks"] == 4 * cuda["dropout_masks"] > 0
    assert activation_memory_breakdown(_config(), 2, 8)["dropout_masks"] == 0


def test_saved_activation_bytes_counts_a_shared_storage_once():
    x = torch.randn(4, 8, requires_grad=True)
    model = nn.Linear(8, 8)  # saves its input x (a leaf here, not a parameter): 4*8*4 bytes

    def loss_fn(module, inputs, targets):
        y = module(inputs)
        return (y * y).sum() + (inputs * inputs).sum()  # y saved once (twice by mul), x saved again

    assert saved_activation_bytes(model, (x, x), loss_fn) == 2 * 4 * 8 * 4


# ------------------------------------------------------------------------------------------ whole step


def test_training_memory_breakdown_parts():
    config = _config()
    n = count_parameters(GPT(config))
    adamw = training_memory_breakdown(config, 2, 8)
    assert adamw["parameters"] == adamw["gradients"] == 4 * n
    assert adamw["optimizer_states"] == 8 * n
    assert adamw["total"] == sum(adamw[k] for k in ("parameters", "gradients", "optimizer_states", "activations"))
    assert training_memory_breakdown(config, 2, 8, optimizer="sgd_momentum")["optimizer_states"] == 4 * n
    assert training_memory_breakdown(config, 2, 8, optimizer="sgd")["optimizer_states"] == 0
    mixed = training_memory_breakdown(config, 2, 8, torch.float64, grad_dtype=torch.bfloat16)
    assert mixed["parameters"] == 8 * n and mixed["gradients"] == 2 * n and mixed["optimizer_states"] == 16 * n
    assert mixed["activations"] == activation_memory_breakdown(config, 2, 8, torch.float64)["total"]


# measured peak / formula total: temporaries (logit gradients, softmax backward) push it up, freeing
# activations while gradients appear pulls it down; over these sizes it stays within [0.75, 1.5]
PEAK_FACTOR = (0.75, 1.5)


@pytest.mark.parametrize("d_model, seq_len, batch_size", [(32, 32, 4), (64, 64, 4), (32, 96, 8)])
def test_measured_peak_is_consistent_with_the_formula(d_model, seq_len, batch_size):
    torch.manual_seed(0)
    config = _config(d_model=d_model, d_ff=4 * d_model, max_len=128, vocab_size=128)
    model = GPT(config)
    measured = measure_training_memory(model, _batch(batch_size, seq_len, vocab=128), device="cpu")
    formula = training_memory_breakdown(config, batch_size, seq_len)
    persistent = formula["parameters"] + formula["gradients"] + formula["optimizer_states"]
    assert measured >= persistent
    assert PEAK_FACTOR[0] <= measured / formula["total"] <= PEAK_FACTOR[1], (measured, formula)


def test_measured_peak_depends_on_the_optimizer_state():
    torch.manual_seed(0)
    config = _config(d_model=64, d_ff=256, vocab_size=512)  # parameter-heavy, short sequences
    model, batch = GPT(config), _batch(2, 4, vocab=512)
    adamw = measure_training_memory(model, batch, optimizer="adamw")
    sgd = measure_training_memory(model, batch, optimizer="sgd")
    n_bytes = 4 * count_parameters(model)
    assert adamw - sgd >= 1.5 * n_bytes  # two extra state tensors per parameter (temporaries blur the rest)


def test_memory_functions_reject_bad_arguments():
    config, model = _config(), GPT(_config())
    with pytest.raises(ValueError, match="optimizer must be one of"):
        training_memory_breakdown(config, 2, 8, optimizer="lion")
    with pytest.raises(TypeError, match="must be a floating-point dtype"):
        training_memory_breakdown(config, 2, 8, param_dtype=torch.int32)
    with pytest.raises(TypeError, match="TransformerConfig"):
        activation_memory_breakdown({"d_model": 16}, 2, 8)
    with pytest.raises(ValueError, match="exceeds max_len"):
        activation_memory_breakdown(config, 2, 65)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        activation_memory_breakdown(config, 0, 8)
    with pytest.raises(TypeError, match="pair of tensors"):
        saved_activation_bytes(model, torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="share their first"):
        saved_activation_bytes(model, (torch.zeros(2, 8, dtype=torch.long), torch.zeros(3, 8, dtype=torch.long)))
    with pytest.raises(TypeError, match="nn.Module"):
        measure_training_memory(lambda x: x, _batch(2, 8))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        measure_training_memory(model, _batch(2, 8), optimizer="lion")


# ------------------------------------------------------------------------------------------------ FLOPs


@pytest.mark.parametrize("extra, batch_size, seq_len", [
    ({}, 2, 16),
    ({"d_model": 32, "d_ff": 128, "n_layers": 3}, 1, 40),
    ({"activation": "swiglu", "tie_embeddings": False, "bias": False}, 3, 8),
])
def test_training_flops_equal_flop_counter(extra, batch_size, seq_len):
    config = _config(**extra)
    model = GPT(config)
    x, y = _batch(batch_size, seq_len)
    counted = count_flops(lambda: model.loss(x, y).backward())
    flops = training_flops_per_token(config, seq_len)
    assert counted == batch_size * seq_len * flops["total"]
    assert flops["forward"] * seq_len == gpt_forward_flops(config, seq_len)
    assert flops["backward"] == 2 * flops["forward"]
    assert flops["dense"] == 6 * flops["n_matmul_params"]


def test_training_flops_match_narayanan_for_a_4d_ffn():
    """72 L d^2 (1 + T/(6d) + V/(12 L d)) per token (Narayanan et al. 2021, with f = 4d, no recomputation)."""
    n_layers, d, t, v = 3, 64, 48, 500
    config = _config(n_layers=n_layers, d_model=d, d_ff=4 * d, vocab_size=v, n_heads=4)
    expected = 72 * n_layers * d * d * (1 + t / (6 * d) + v / (12 * n_layers * d))
    assert math.isclose(training_flops_per_token(config, t)["total"], expected, rel_tol=1e-12)


def test_model_flops_utilization():
    assert model_flops_utilization(6e12, 2.0, 6e12) == pytest.approx(0.5)
    for bad in ((0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, 1.0, float("nan")), (True, 1.0, 1.0)):
        with pytest.raises(ValueError, match="positive number"):
            model_flops_utilization(*bad)


def test_peak_flops_on_cpu_is_a_measured_matmul_rate():
    measured = peak_flops("cpu", torch.float32)
    assert 1e8 < measured < 1e14  # anything from a tiny core to a large server
    assert peak_flops("cpu") == measured  # cached: one measurement per device and dtype


@pytest.fixture
def tf32_setting():
    """Restore torch.backends.cuda.matmul.allow_tf32 after the test (it is a flag, not an attribute)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("Tesla T4", "T4"), ("NVIDIA L4", "L4"),
])
def test_gpu_peak_table(monkeypatch, tf32_setting, name, key):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    torch.backends.cuda.matmul.allow_tf32 = False
    entry = tc.GPU_PEAK_FLOPS[key]
    assert peak_flops(torch.device("cuda"), torch.float16) == entry["float16"]
    assert peak_flops(torch.device("cuda"), torch.float32) == entry["float32"]
    if "tf32" in entry:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert peak_flops(torch.device("cuda"), torch.float32) == entry["tf32"]


def test_gpu_peak_values_from_the_data_sheets(monkeypatch, tf32_setting):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == 989.4e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-PCIE-40GB")
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == 312e12


def test_unknown_gpu_gives_none_with_a_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1080")
    with pytest.warns(UserWarning, match="no data-sheet peak"):
        assert peak_flops(torch.device("cuda"), torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.warns(UserWarning, match="bfloat16"):
        assert peak_flops(torch.device("cuda"), torch.bfloat16) is None  # T4 has no bf16 tensor cores


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mfu_of_a_real_cuda_step_is_a_fraction():
    from labkit.bench import time_fn

    torch.manual_seed(0)
    config = _config(d_model=256, n_heads=4, d_ff=1024, n_layers=4, max_len=256, vocab_size=1024)
    model = GPT(config).cuda()
    x, y = (t.cuda() for t in _batch(8, 256, vocab=1024))
    step = lambda: model.loss(x, y).backward()  # noqa: E731
    seconds = time_fn(step, warmup=2, repeats=5, device="cuda").median_s
    peak = peak_flops("cuda", torch.float32) or tc.measured_matmul_flops("cuda", torch.float32, 4096)
    mfu = model_flops_utilization(training_flops_per_token(config, 256)["total"] * 8 * 256, seconds, peak)
    assert 0 < mfu < 1


# --------------------------------------------------------------------------------- gradient accumulation


def _loss(model, inputs, targets):
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


@pytest.mark.parametrize("batch_size, micro_batches", [(6, 1), (6, 2), (6, 3), (6, 6), (5, 2)])
def test_accumulated_gradients_equal_the_full_batch(batch_size, micro_batches):
    torch.manual_seed(0)
    model = GPT(_config()).double()
    reference = copy.deepcopy(model)
    batch = _batch(batch_size, 9)
    full_loss = _loss(reference, *batch)
    full_loss.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = train_step_with_accumulation(model, optimizer, batch, micro_batches, _loss)
    assert loss == pytest.approx(float(full_loss.detach()), abs=1e-12)
    for (name, param), ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, ref.grad, atol=1e-10, rtol=0, msg=name)
        torch.testing.assert_close(param.detach(), (ref - 0.1 * ref.grad).detach(), atol=1e-10, rtol=0, msg=name)


def test_accumulation_default_loss_and_zeroed_gradients():
    torch.manual_seed(0)
    model = GPT(_config()).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = _batch(4, 6)
    train_step_with_accumulation(model, optimizer, batch, 2)
    first = [p.grad.clone() for p in model.parameters()]
    train_step_with_accumulation(model, optimizer, batch, 4)  # starts from zero, does not add to the last step
    for grad, param in zip(first, model.parameters()):
        torch.testing.assert_close(param.grad, grad, atol=1e-10, rtol=0)


def test_accumulation_lowers_measured_peak_memory():
    torch.manual_seed(0)
    model = GPT(_config(d_model=32, d_ff=64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = _batch(8, 64)
    peaks = [peak_memory(lambda k=k: train_step_with_accumulation(model, optimizer, batch, k), "cpu", warmup=0)
             for k in (1, 2, 4)]
    assert peaks[0] > 1.5 * peaks[1] > 1.5 * 1.5 * peaks[2], peaks  # activations dominate: about halves each time


def test_accumulation_rejects_bad_arguments():
    model = GPT(_config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="micro_batches must be an int in"):
            train_step_with_accumulation(model, optimizer, _batch(4, 6), bad)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        train_step_with_accumulation(model, "sgd", _batch(4, 6), 2)


# ------------------------------------------------------------------------------------------- profiler


def _gpt_step():
    torch.manual_seed(0)
    model = GPT(_config(d_model=32, d_ff=128, max_len=64))
    optimizer = torch.optim.AdamW(model.parameters())
    batch = _batch(4, 64)
    return model, lambda: train_step_with_accumulation(model, optimizer, batch, 1)


def test_profile_step_table():
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    rows = profile_step(lambda: torch.mm(a, b).add_(1.0), device="cpu", row_limit=3)
    assert 1 <= len(rows) <= 3
    assert set(rows[0]) == {"name", "self_cpu_s", "calls", "share"}
    assert (rows[0]["name"], rows[0]["calls"]) == ("aten::mm", 1), rows  # 2 n^3 FLOPs against n^2 adds
    assert [r["share"] for r in rows] == sorted((r["share"] for r in rows), reverse=True)
    assert 0 < sum(r["share"] for r in rows) <= 1 + 1e-9
    with pytest.raises(TypeError, match="callable"):
        profile_step(None)
    with pytest.raises(ValueError, match="row_limit"):
        profile_step(lambda: None, row_limit=0)


def test_time_by_category_of_a_gpt_step():
    model, step = _gpt_step()
    by_category = time_by_category(step, model=model, device="cpu")
    assert list(by_category) == list(tc.CATEGORIES)
    assert sum(v["share"] for v in by_category.values()) == pytest.approx(1.0)
    for name in ("matmul", "attention softmax", "norm", "elementwise", "optimizer"):
        assert by_category[name]["seconds"] > 0, name
    # labkit's norm is built of elementwise ops: only the model's hooks can attribute them to "norm"
    assert time_by_category(step, device="cpu")["norm"]["seconds"] == 0


def test_time_by_category_knows_torch_ops():
    x = torch.randn(64, 128, requires_grad=True)
    norm, linear = nn.LayerNorm(128), nn.Linear(128, 128)
    result = time_by_category(lambda: torch.softmax(linear(norm(x)), -1).sum().backward(), device="cpu")
    assert result["norm"]["seconds"] > 0 and result["matmul"]["seconds"] > 0
    assert result["attention softmax"]["seconds"] > 0 and result["optimizer"]["seconds"] == 0


# ------------------------------------------------------------------------------------------- benchmarks


def test_training_benchmarks_run_and_report_memory_ratios(monkeypatch):
    from labkit import bench
    from labkit.config import get_profile

    monkeypatch.setenv(bench.PROGRESS_ENV, "0")
    profile = get_profile("smoke").replace(bench_warmup=0, bench_repeats=1, seq_len=32, batch_size=4,
                                           extra={"checkpoint_n_layers": 3})
    results = bench.run(["training"], "cpu", profile)
    checkpointing = {c.params["reference"]: c for c in results["training.checkpointing"]}
    assert set(checkpointing) == {"none", "torch"}
    assert checkpointing["none"].memory_ratio < 0.8  # 4 checkpointed layers keep far less
    assert 0.5 < checkpointing["torch"].memory_ratio < 1.5
    accumulation = results["training.grad_accumulation"]
    assert [c.params["micro_batches"] for c in accumulation] == [2, 4]
    assert accumulation[0].memory_ratio < 1 and accumulation[1].labkit_peak_bytes < accumulation[0].labkit_peak_bytes
