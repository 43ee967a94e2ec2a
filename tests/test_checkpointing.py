"""labkit.checkpointing: recompute-in-backward against no checkpointing and against torch.utils.checkpoint
(same gradients, dropout masks included), lower measured peak memory, and argument checks."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from labkit.checkpointing import (
    CheckpointedEncoderLayer,
    CheckpointedGPT,
    checkpoint,
    checkpoint_sequential,
    disable_checkpointing,
    enable_checkpointing,
    is_checkpointed,
)
from labkit.bench import peak_memory
from labkit.transformer import GPT, EncoderLayer, TransformerConfig

TORCH_CHECKPOINT = functools.partial(torch_checkpoint.checkpoint, use_reentrant=False)
DTYPES = [torch.float32, torch.float64]


def _block(dim: int, dtype: torch.dtype, p: float = 0.3) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(p), nn.Linear(2 * dim, dim)).to(dtype)


def _gradients(run, module: nn.Module, x: torch.Tensor, seed: int = 7):
    """Output, d(output . w)/dx and parameter gradients of ``run(module, x)`` with the RNG seeded."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = run(module, x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in module.parameters())]


def _assert_all_close(got, expected, dtype):
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


# ------------------------------------------------------------------------------------------- checkpoint


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 16)])
def test_checkpoint_equals_plain_and_torch_with_dropout(shape, dtype):
    torch.manual_seed(0)
    block = _block(shape[-1], dtype)
    x = torch.randn(shape, dtype=dtype)
    plain = _gradients(lambda m, v: m(v), block, x)
    ours = _gradients(lambda m, v: checkpoint(m, v), block, x)
    theirs = _gradients(lambda m, v: TORCH_CHECKPOINT(m, v), block, x)
    _assert_all_close(ours, plain, dtype)
    _assert_all_close(ours, theirs, dtype)
    assert not torch.equal(_gradients(lambda m, v: m(v), block, x, seed=8)[1], plain[1])  # dropout is active


def test_checkpoint_recomputes_the_forward_once_in_backward():
    calls = []

    def function(a, scale, b):
        calls.append(torch.is_grad_enabled())
        return torch.sin(a) * scale + b.exp()

    a = torch.randn(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    out = checkpoint(function, a, 2.0, b)
    assert calls == [False]  # forward ran without building a graph
    out.sum().backward()
    assert calls == [False, True]  # ... and once more, with grad, in backward
    torch.testing.assert_close(a.grad, 2.0 * torch.cos(a.detach()))
    torch.testing.assert_close(b.grad, b.detach().exp())


def test_checkpoint_keeps_only_its_inputs():
    saved = []
    x = torch.randn(16, 32, requires_grad=True)
    block = _block(32, torch.float32, p=0.0)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        checkpoint(block, x)
    assert len(saved) == 1 and saved[0] is x


def test_checkpoint_leaves_the_random_stream_as_without_it():
    block, x = _block(8, torch.float32), torch.randn(4, 8, requires_grad=True)
    after = []
    for run in (lambda: block(x), lambda: checkpoint(block, x)):
        torch.manual_seed(3)
        run().sum().backward()
        after.append(torch.rand(3))
    torch.testing.assert_close(after[0], after[1])


def test_checkpoint_tuple_outputs_and_integer_inputs():
    table = torch.randn(10, 4, requires_grad=True)
    ids = torch.tensor([1, 3, 3])

    def function(weights, index):
        rows = weights[index]
        return rows * 2, rows.sum(dim=-1)

    doubled, summed = checkpoint(function, table, ids)
    (doubled.sum() + summed.sum()).backward()
    expected = torch.zeros(10, 4)
    expected[1] += 3
    expected[3] += 6
    torch.testing.assert_close(table.grad, expected)


def test_checkpoint_recomputes_under_the_same_autocast():
    torch.manual_seed(0)
    linear = nn.Linear(16, 16)
    x = torch.randn(4, 16, requires_grad=True)
    results = []
    for run in (lambda: linear(x), lambda: checkpoint(linear, x)):
        linear.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run()
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        results.append((x.grad.clone(), linear.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_checkpoint_without_grad_just_runs():
    x = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        out = checkpoint(torch.exp, x)
    assert out.grad_fn is None
    torch.testing.assert_close(out, x.detach().exp())


def test_checkpoint_rejects_bad_inputs():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="function must be callable"):
        checkpoint("not a function", x)
    with pytest.raises(ValueError, match="at least one tensor"):
        checkpoint(lambda a: a, 3.0)
    with pytest.raises(TypeError, match="preserve_rng_state must be a bool"):
        checkpoint(torch.exp, x, preserve_rng_state="yes")
    with pytest.raises(TypeError, match="must return a Tensor"):
        checkpoint(lambda a: {"out": a}, x)
    with pytest.warns(UserWarning, match="requires grad"):
        checkpoint(torch.exp, torch.randn(3))
    weight = torch.randn(3, requires_grad=True)
    out = checkpoint(lambda a: a * weight, x)
    with pytest.raises(RuntimeError, match="loss.backward"):
        torch.autograd.grad(out.sum(), [x])


# ------------------------------------------------------------------------------------ checkpoint_sequential


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("segments", [1, 2, 3, 5])
def test_checkpoint_sequential_equals_torch(segments, dtype):
    torch.manual_seed(0)
    model = nn.Sequential(*(_block(8, dtype, p=0.2) for _ in range(5)))
    x = torch.randn(6, 8, dtype=dtype)
    plain = _gradients(lambda m, v: m(v), model, x)
    ours = _gradients(lambda m, v: checkpoint_sequential(m, segments, v), model, x)
    theirs = _gradients(
        lambda m, v: torch_checkpoint.checkpoint_sequential(m, segments, v, use_reentrant=False), model, x
    )
    _assert_all_close(ours, plain, dtype)
    _assert_all_close(ours, theirs, dtype)


def test_checkpoint_sequential_rejects_bad_inputs():
    x = torch.randn(2, 4, requires_grad=True)
    functions = [torch.sin, torch.cos]
    with pytest.raises(ValueError, match="segments must be a positive int"):
        checkpoint_sequential(functions, 0, x)
    with pytest.raises(ValueError, match="at most the number of functions"):
        checkpoint_sequential(functions, 3, x)
    with pytest.raises(TypeError, match="non-empty sequence of callables"):
        checkpoint_sequential([], 1, x)
    with pytest.raises(TypeError, match="non-empty sequence of callables"):
        checkpoint_sequential([torch.sin, 3], 1, x)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        checkpoint_sequential(functions, 1, [1.0, 2.0])


# ------------------------------------------------------------------------------------------ GPT layers


def _gpt_config(**overrides) -> TransformerConfig:
    values = dict(vocab_size=40, d_model=16, n_heads=2, n_layers=3, d_ff=32, max_len=32, dropout=0.2)
    values.update(overrides)
    return TransformerConfig(**values)


def _gpt_gradients(model: nn.Module, x, y, seed: int = 11):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model.loss(x, y)
    loss.backward()
    return [loss.detach(), *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [True, False])
def test_checkpointed_gpt_gradients_equal_plain_and_torch(dtype, norm_first):
    torch.manual_seed(0)
    base = GPT(_gpt_config(norm_first=norm_first)).to(dtype)
    x, y = torch.randint(0, 40, (3, 12)), torch.randint(0, 40, (3, 12))
    plain = _gpt_gradients(base, x, y)
    ours = _gpt_gradients(enable_checkpointing(copy.deepcopy(base)), x, y)
    theirs = _gpt_gradients(enable_checkpointing(copy.deepcopy(base), TORCH_CHECKPOINT), x, y)
    _assert_all_close(ours, plain, dtype)
    _assert_all_close(ours, theirs, dtype)


def test_enable_and_disable_keep_parameters_and_outputs():
    torch.manual_seed(0)
    model = GPT(_gpt_config(dropout=0.0))
    keys = list(model.state_dict())
    x = torch.randint(0, 40, (2, 10))
    expected = model(x)
    enable_checkpointing(model)
    assert is_checkpointed(model)
    assert all(type(layer) is CheckpointedEncoderLayer for layer in model.blocks.layers)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), expected)
    copied = copy.deepcopy(model)
    assert is_checkpointed(copied)
    disable_checkpointing(model)
    assert not is_checkpointed(model) and all(type(layer) is EncoderLayer for layer in model.blocks.layers)
    torch.testing.assert_close(model(x), expected)


def test_checkpointed_gpt_is_a_gpt_with_the_same_initialisation():
    torch.manual_seed(0)
    plain = GPT(_gpt_config())
    torch.manual_seed(0)
    checkpointed = CheckpointedGPT(_gpt_config())
    assert isinstance(checkpointed, GPT) and is_checkpointed(checkpointed)
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    plain.eval()
    checkpointed.eval()
    x = torch.randint(0, 40, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(x), plain(x))


def _peak_of_backward(model: nn.Module, batch) -> int:
    """Measured peak bytes (labkit.bench.peak_memory, CPU profiler) of loss + backward: activations + gradients."""
    def step():
        model.zero_grad(set_to_none=True)
        model.loss(*batch).backward()

    return peak_memory(step, "cpu", warmup=0)


def test_checkpointing_lowers_measured_peak_memory():
    """Deep and long enough that activations dominate: each layer keeps its input instead of ~10x that."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=6, d_ff=64, max_len=64)
    model = GPT(config)
    batch = (torch.randint(0, 64, (4, 64)), torch.randint(0, 64, (4, 64)))
    plain = _peak_of_backward(model, batch)
    ours = _peak_of_backward(enable_checkpointing(copy.deepcopy(model)), batch)
    theirs = _peak_of_backward(enable_checkpointing(copy.deepcopy(model), TORCH_CHECKPOINT), batch)
    assert ours < 0.5 * plain, (ours, plain)
    assert ours < 1.2 * theirs, (ours, theirs)  # no worse than PyTorch's implementation


def test_enable_checkpointing_rejects_bad_inputs():
    with pytest.raises(TypeError, match="nn.Module"):
        enable_checkpointing("gpt")
    with pytest.raises(ValueError, match="no labkit EncoderLayer"):
        enable_checkpointing(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="checkpoint_fn must be callable"):
        enable_checkpointing(GPT(_gpt_config()), checkpoint_fn=3)
    with pytest.raises(TypeError, match="nn.Module"):
        disable_checkpointing(None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoint_on_cuda_restores_the_cuda_rng():
    torch.manual_seed(0)
    base = GPT(_gpt_config()).cuda()
    x, y = torch.randint(0, 40, (3, 12), device="cuda"), torch.randint(0, 40, (3, 12), device="cuda")
    plain = _gpt_gradients(base, x, y)
    ours = _gpt_gradients(enable_checkpointing(copy.deepcopy(base)), x, y)
    theirs = _gpt_gradients(enable_checkpointing(copy.deepcopy(base), TORCH_CHECKPOINT), x, y)
    _assert_all_close(ours, plain, torch.float32)
    _assert_all_close(ours, theirs, torch.float32)
