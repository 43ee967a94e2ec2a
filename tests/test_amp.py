"""labkit.amp against torch.autocast and torch.amp.GradScaler: op dtypes and values, a GPT forward and backward,
scripted overflow sequences, misuse errors, and the fp32 master-weight recipe."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import amp
from labkit.amp import FP32_OPS, LOW_PRECISION_OPS, TORCH_CPU_FP32_OPS, GradScaler, MasterWeightTrainer, autocast
from labkit.optim import SGD, AdamW
from labkit.transformer import GPT, TransformerConfig

BF16 = torch.bfloat16

# ---- op by op -------------------------------------------------------------------------------------------------------

def constants(device: str = "cpu") -> dict[str, torch.Tensor]:
    """The fp32 "parameters" and targets the op cases use, on ``device``."""
    generator = torch.Generator().manual_seed(0)
    values = {"W": torch.randn(6, 8, generator=generator), "B3": torch.randn(2, 8, 5, generator=generator),
              "target": torch.tensor([0, 3, 5, 7]), "dense_target": torch.rand(4, 8, generator=generator),
              "c_mm": torch.ones(4, 6), "c_bmm": torch.ones(2, 2, 5), "c_addbmm": torch.ones(2, 5),
              "conv1d": torch.ones(3, 4, 3) / 7, "conv2d": torch.ones(2, 1, 2, 2) / 3,
              "conv3d": torch.ones(2, 1, 1, 2, 2) / 3, "convt1d": torch.ones(4, 2, 3) / 5,
              "convt2d": torch.ones(1, 2, 2, 2) / 5}
    return {name: value.to(device) for name, value in values.items()}


K = constants()
W = K["W"]

# (op name, how it is called); each takes x of shape (4, 8) in the dtype under test and the constants k
CASES = [
    ("linear", "F.linear", lambda x, k: F.linear(x, k["W"])),
    ("matmul", "torch.matmul", lambda x, k: torch.matmul(x, k["W"].t())),
    ("matmul", "Tensor.matmul", lambda x, k: x.matmul(k["W"].t())),
    ("matmul", "@", lambda x, k: x @ k["W"].t()),
    ("matmul", "rmatmul", lambda x, k: k["W"] @ x.t()),
    ("mm", "torch.mm", lambda x, k: torch.mm(x, k["W"].t())),
    ("mm", "Tensor.mm", lambda x, k: x.mm(k["W"].t())),
    ("bmm", "torch.bmm", lambda x, k: torch.bmm(x.reshape(2, 2, 8), k["B3"])),
    ("bmm", "Tensor.bmm", lambda x, k: x.reshape(2, 2, 8).bmm(k["B3"])),
    ("addmm", "torch.addmm", lambda x, k: torch.addmm(k["c_mm"], x, k["W"].t())),
    ("baddbmm", "torch.baddbmm", lambda x, k: torch.baddbmm(k["c_bmm"], x.reshape(2, 2, 8), k["B3"])),
    ("addbmm", "torch.addbmm", lambda x, k: torch.addbmm(k["c_addbmm"], x.reshape(2, 2, 8), k["B3"])),
    ("einsum", "torch.einsum", lambda x, k: torch.einsum("ij,kj->ik", x, k["W"])),
    ("conv1d", "F.conv1d", lambda x, k: F.conv1d(x.reshape(1, 4, 8), k["conv1d"])),
    ("conv2d", "F.conv2d", lambda x, k: F.conv2d(x.reshape(1, 1, 4, 8), k["conv2d"])),
    ("conv3d", "F.conv3d", lambda x, k: F.conv3d(x.reshape(1, 1, 2, 2, 8), k["conv3d"])),
    ("conv_transpose1d", "F.conv_transpose1d", lambda x, k: F.conv_transpose1d(x.reshape(1, 4, 8), k["convt1d"])),
    ("conv_transpose2d", "F.conv_transpose2d", lambda x, k: F.conv_transpose2d(x.reshape(1, 1, 4, 8), k["convt2d"])),
    ("scaled_dot_product_attention", "F.sdpa", lambda x, k: F.scaled_dot_product_attention(
        x.reshape(1, 4, 8), k["W"][:4].reshape(1, 4, 8), k["W"][2:].reshape(1, 4, 8))),
    ("softmax", "torch.softmax", lambda x, k: torch.softmax(x, -1)),
    ("softmax", "Tensor.softmax", lambda x, k: x.softmax(-1)),
    ("softmax", "F.softmax", lambda x, k: F.softmax(x, dim=-1)),
    ("log_softmax", "F.log_softmax", lambda x, k: F.log_softmax(x, dim=-1)),
    ("log_softmax", "Tensor.log_softmax", lambda x, k: x.log_softmax(-1)),
    ("cross_entropy", "F.cross_entropy", lambda x, k: F.cross_entropy(x, k["target"])),
    ("nll_loss", "F.nll_loss", lambda x, k: F.nll_loss(x, k["target"])),
    ("mse_loss", "F.mse_loss", lambda x, k: F.mse_loss(x, k["dense_target"])),
    ("l1_loss", "F.l1_loss", lambda x, k: F.l1_loss(x, k["dense_target"])),
    ("smooth_l1_loss", "F.smooth_l1_loss", lambda x, k: F.smooth_l1_loss(x, k["dense_target"])),
    ("binary_cross_entropy_with_logits", "F.bce_logits",
     lambda x, k: F.binary_cross_entropy_with_logits(x, k["dense_target"])),
    ("kl_div", "F.kl_div", lambda x, k: F.kl_div(x, k["dense_target"], reduction="batchmean")),
    ("layer_norm", "F.layer_norm", lambda x, k: F.layer_norm(x, (8,), k["W"][0], k["W"][1])),
    ("group_norm", "F.group_norm", lambda x, k: F.group_norm(x.reshape(1, 4, 8), 2)),
    ("sum", "torch.sum", lambda x, k: torch.sum(x)),
    ("sum", "Tensor.sum", lambda x, k: x.sum(-1)),
    ("mean", "torch.mean", lambda x, k: torch.mean(x, 0)),
    ("mean", "Tensor.mean", lambda x, k: x.mean()),
    ("cumsum", "Tensor.cumsum", lambda x, k: x.cumsum(-1)),
    ("prod", "Tensor.prod", lambda x, k: (x / 4 + 1).prod(-1)),
    ("norm", "Tensor.norm", lambda x, k: x.norm()),
    ("norm", "torch.norm", lambda x, k: torch.norm(x, dim=-1)),
    ("vector_norm", "linalg.vector_norm", lambda x, k: torch.linalg.vector_norm(x, dim=0)),
    ("logsumexp", "Tensor.logsumexp", lambda x, k: x.logsumexp(-1)),
    ("exp", "Tensor.exp", lambda x, k: x.exp()),
    ("exp", "torch.exp", lambda x, k: torch.exp(x)),
    ("log", "Tensor.log", lambda x, k: (x.abs() + 0.5).log()),
    ("pow", "Tensor.pow", lambda x, k: x.pow(2)),
    ("pow", "**", lambda x, k: x ** 3),
    ("pow", "rpow", lambda x, k: 2 ** x),
    ("rsqrt", "torch.rsqrt", lambda x, k: torch.rsqrt(x.abs() + 0.5)),
]
CASE_IDS = [f"{op}:{how}" for op, how, _ in CASES]


def x_in(dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).to(dtype)


def run_case(fn, dtype, context, device="cpu"):
    k = K if device == "cpu" else constants(device)
    with context:
        return fn(x_in(dtype).to(device), k)


def test_every_listed_op_has_a_case():
    assert {op for op, _, _ in CASES} == set(LOW_PRECISION_OPS) | set(FP32_OPS) == amp.KNOWN_OPS
    assert not set(LOW_PRECISION_OPS) & set(FP32_OPS)
    assert TORCH_CPU_FP32_OPS <= set(FP32_OPS)
    for reason in list(LOW_PRECISION_OPS.values()) + list(FP32_OPS.values()):
        assert isinstance(reason, str) and len(reason) > 20


def assert_close_low_precision(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = max(1.0, theirs.float().abs().max().item())
    torch.testing.assert_close(ours.float(), theirs.float(), atol=2e-2 * scale, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["fp32_in", "bf16_in"])
@pytest.mark.parametrize("op,how,fn", CASES, ids=CASE_IDS)
def test_op_dtype_and_values_against_torch_autocast(op, how, fn, dtype):
    ours = run_case(fn, dtype, autocast("cpu"))
    theirs = run_case(fn, dtype, torch.autocast("cpu", dtype=BF16))
    if op in LOW_PRECISION_OPS:
        assert ours.dtype == theirs.dtype == BF16
    else:
        assert ours.dtype == torch.float32  # labkit: every precision-sensitive op in fp32
        # torch's CPU autocast agrees for fp32 inputs and for its own fp32 list, else keeps bf16
        expected = torch.float32 if dtype == torch.float32 or op in TORCH_CPU_FP32_OPS else BF16
        assert theirs.dtype == expected
    assert_close_low_precision(ours, theirs)
    if dtype == torch.float32:
        assert fn(x_in(dtype), K).dtype == torch.float32  # outside any context nothing is cast


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["fp32_in", "bf16_in"])
@pytest.mark.parametrize("op,how,fn", CASES, ids=CASE_IDS)
def test_torch_cpu_policy_reproduced_exactly(op, how, fn, dtype):
    ours = run_case(fn, dtype, autocast("cpu", fp32_ops=TORCH_CPU_FP32_OPS))
    theirs = run_case(fn, dtype, torch.autocast("cpu", dtype=BF16))
    assert ours.dtype == theirs.dtype
    assert_close_low_precision(ours, theirs)


def test_fp16_on_cpu_and_untouched_tensors():
    x = x_in(torch.float32)
    with autocast("cpu", dtype=torch.float16):
        assert F.linear(x, W).dtype == torch.float16
        assert F.linear(x.double(), W.double()).dtype == torch.float64  # fp64 is never cast
        assert torch.softmax(x.half(), -1).dtype == torch.float32
        assert (x.half() + x).dtype == torch.float32  # "the rest": torch's type promotion
        assert F.gelu(x.half()).dtype == torch.float16
        assert torch.sum(torch.arange(4)).dtype == torch.int64  # integers are never cast
    with autocast("cuda"):  # another device type: CPU tensors are left alone
        assert F.linear(x, W).dtype == torch.float32


# ---- contexts ------------------------------------------------------------------------------------------------------


def test_nested_and_disabled_contexts():
    x = x_in(torch.float32)
    assert not amp.is_autocast_enabled("cpu") and amp.get_autocast_dtype("cpu") == BF16
    with autocast("cpu"):
        assert amp.is_autocast_enabled("cpu") and F.linear(x, W).dtype == BF16
        with autocast("cpu", enabled=False):
            assert not amp.is_autocast_enabled("cpu")
            assert F.linear(x, W).dtype == torch.float32
            assert torch.softmax(x.bfloat16(), -1).dtype == BF16
        with autocast("cpu", dtype=torch.float16):
            assert amp.get_autocast_dtype("cpu") == torch.float16
            assert F.linear(x, W).dtype == torch.float16
        assert F.linear(x, W).dtype == BF16 and amp.get_autocast_dtype("cpu") == BF16
    assert F.linear(x, W).dtype == torch.float32 and not amp.is_autocast_enabled("cpu")


def test_context_restored_after_an_exception_and_reusable():
    x = x_in(torch.float32)
    context = autocast("cpu")
    with pytest.raises(RuntimeError, match="boom"):
        with context:
            raise RuntimeError("boom")
    assert F.linear(x, W).dtype == torch.float32 and not amp.is_autocast_enabled()
    with context:
        with context:  # the same object entered twice
            assert F.linear(x, W).dtype == BF16
        assert F.linear(x, W).dtype == BF16
    assert F.linear(x, W).dtype == torch.float32


def test_decorator():
    @autocast("cpu")
    def forward(x):
        return F.linear(x, W)

    assert forward(x_in(torch.float32)).dtype == BF16
    assert F.linear(x_in(torch.float32), W).dtype == torch.float32


def test_cast_cache_follows_in_place_updates():
    weight = W.clone().requires_grad_()
    x = x_in(torch.float32)
    with autocast("cpu"):
        first = F.linear(x, weight)
        again = F.linear(x, weight)
        assert len(amp._state.cache) == 1  # one cast of the parameter, reused
        with torch.no_grad():
            weight.mul_(2)
        second = F.linear(x, weight)
    assert not amp._state.cache  # cleared with the outermost context
    torch.testing.assert_close(second.float(), 2 * first.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(first, again)
    (first.sum() + second.sum()).backward()
    assert weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TransformerConfig(vocab_size=50, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=16))


def gpt_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (4, 16), generator=generator), torch.randint(0, 50, (4, 16), generator=generator)


def test_gpt_forward_loss_and_gradients_against_torch_autocast():
    model = tiny_gpt()
    reference = copy.deepcopy(model)
    idx, targets = gpt_batch()
    with autocast("cpu"):
        logits = model(idx)
        loss = model.loss(idx, targets)
    with torch.autocast("cpu", dtype=BF16):
        torch_logits = reference(idx)
        torch_loss = reference.loss(idx, targets)
    assert logits.dtype == torch_logits.dtype == BF16
    assert loss.dtype == torch_loss.dtype == torch.float32
    torch.testing.assert_close(logits.float(), torch_logits.float(), atol=5e-2, rtol=5e-2)
    assert abs(loss.item() - torch_loss.item()) < 1e-2 * torch_loss.item()
    assert abs(loss.item() - model.loss(idx, targets).item()) < 1e-2 * torch_loss.item()  # fp32 loss
    loss.backward()
    torch_loss.backward()
    ours = torch.cat([p.grad.flatten() for p in model.parameters()])
    theirs = torch.cat([q.grad.flatten() for q in reference.parameters()])
    assert F.cosine_similarity(ours, theirs, dim=0) > 0.995
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
        # relative to the whole gradient: some tensors (the key bias) have a gradient that is 0 up to rounding
        assert (p.grad - q.grad).norm() <= 0.05 * q.grad.norm() + 2e-3 * theirs.norm(), name


def test_autocast_bad_arguments():
    with pytest.raises(ValueError, match="device_type"):
        autocast("tpu")
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        autocast("cpu", dtype=torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        autocast("cpu", dtype="bf16")
    with pytest.raises(TypeError, match="enabled"):
        autocast("cpu", enabled="yes")
    with pytest.raises(ValueError, match="unknown ops"):
        autocast("cpu", fp32_ops={"softmax", "gelu"})
    with pytest.raises(TypeError, match="collection of op names"):
        autocast("cpu", fp32_ops="softmax")
    with pytest.raises(ValueError, match="both"):
        autocast("cpu", low_precision_ops={"linear", "softmax"})
    with pytest.raises(ValueError, match="device_type"):
        amp.is_autocast_enabled("gpu")


# ---- the loss scale rule -------------------------------------------------------------------------------------------


def test_update_scale_rule_matches_torch_kernel():
    generator = torch.Generator().manual_seed(2)
    for growth, backoff, interval in [(2.0, 0.5, 3), (1.7, 0.3, 2), (3.0, 0.9, 1)]:
        scale, tracker = 1024.0, 0
        torch_scale, torch_tracker = torch.tensor(1024.0), torch.tensor(0, dtype=torch.int32)
        for found in (torch.rand(60, generator=generator) < 0.3).tolist():
            scale, tracker = amp.update_scale(scale, tracker, found, growth, backoff, interval)
            torch._amp_update_scale_(torch_scale, torch_tracker, torch.tensor(float(found)), growth, backoff, interval)
            assert (scale, tracker) == (torch_scale.item(), torch_tracker.item())
    assert amp.update_scale(2.0 ** 127, 0, False, 2.0, 0.5, 1) == (2.0 ** 127, 0)  # growth to inf is refused
    assert amp.update_scale(8.0, 4, True) == (4.0, 0)
    assert amp.update_scale(8.0, 1998, False) == (8.0, 1999)
    assert amp.update_scale(8.0, 1999, False) == (16.0, 0)


# ---- GradScaler against torch.amp.GradScaler -------------------------------------------------------------------------


def regression_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    generator = torch.Generator().manual_seed(seed + 1)
    data = [(torch.randn(16, 6, generator=generator), torch.randn(16, 2, generator=generator)) for _ in range(4)]
    return model, data


def scripted_run(scaler, model, optimizer, data, steps, overflow_at, nan_at=()):
    """Train ``steps`` iterations, poisoning a gradient with inf (or NaN) at chosen steps.
    Returns the scale after each update and the steps the optimizer actually took."""
    scales, taken = [], []
    for step in range(steps):
        x, y = data[step % len(data)]
        optimizer.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        if step in overflow_at:
            model[0].weight.grad[1, 2] = math.inf
        if step in nan_at:
            model[2].bias.grad[0] = math.nan
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
        taken.append(int(optimizer.state[model[0].weight].get("step", torch.tensor(0.0)).item()))
    return scales, taken


SCRIPTS = {
    "powers_of_two": dict(init_scale=2.0 ** 10, growth_interval=3),
    "odd_factors": dict(init_scale=1000.0, growth_factor=1.7, backoff_factor=0.3, growth_interval=2),
    "every_step": dict(init_scale=2.0 ** 120, growth_factor=4.0, growth_interval=1),
}


@pytest.mark.parametrize("script", SCRIPTS, ids=list(SCRIPTS))
def test_scripted_overflows_same_scales_skips_and_parameters_as_torch(script):
    settings = SCRIPTS[script]
    overflow_at, nan_at, steps = {0, 1, 2, 7, 15, 16, 30}, {11, 23}, 36
    model, data = regression_problem()
    runs = {}
    for name, scaler_cls, optimizer_cls in [("labkit+torch_adamw", GradScaler, torch.optim.AdamW),
                                            ("torch", torch.amp.GradScaler, torch.optim.AdamW),
                                            ("labkit+labkit_adamw", GradScaler, AdamW)]:
        net = copy.deepcopy(model)
        optimizer = optimizer_cls(net.parameters(), lr=1e-2, weight_decay=0.01)
        scales, taken = scripted_run(scaler_cls("cpu", **settings), net, optimizer, data, steps, overflow_at, nan_at)
        runs[name] = (scales, taken, net)
    scales, taken, torch_net = runs["torch"]
    skipped = [step for step in range(steps) if taken[step] == (taken[step - 1] if step else 0)]
    assert skipped == sorted(overflow_at | nan_at)
    for name in ("labkit+torch_adamw", "labkit+labkit_adamw"):
        assert runs[name][0] == scales, name
        assert runs[name][1] == taken, name
    for p, q in zip(runs["labkit+torch_adamw"][2].parameters(), torch_net.parameters()):
        assert torch.equal(p, q)  # same scaler arithmetic, same optimizer: bit for bit
    for p, q in zip(runs["labkit+labkit_adamw"][2].parameters(), torch_net.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_growth_after_growth_interval_clean_steps():
    model, data = regression_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = GradScaler("cpu", init_scale=4.0, growth_interval=4)
    scales, _ = scripted_run(scaler, model, optimizer, data, 9, overflow_at=set())
    assert scales == [4.0, 4.0, 4.0, 8.0, 8.0, 8.0, 8.0, 16.0, 16.0]
    assert scaler.state_dict()["_growth_tracker"] == 1


def one_backward(scaler, seed: int = 0):
    model, data = regression_problem(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.scale(F.mse_loss(model(data[0][0]), data[0][1])).backward()
    return model, optimizer


def test_unscale_matches_torch_and_allows_clipping():
    ours_scaler = GradScaler("cpu", init_scale=3.0)
    ours_model, ours_opt = one_backward(ours_scaler)
    torch_scaler = torch.amp.GradScaler("cpu", init_scale=3.0)
    torch_model, torch_opt = one_backward(torch_scaler)
    ours_scaler.unscale_(ours_opt)
    torch_scaler.unscale_(torch_opt)
    for p, q in zip(ours_model.parameters(), torch_model.parameters()):
        assert torch.equal(p.grad, q.grad)
    torch.nn.utils.clip_grad_norm_(ours_model.parameters(), 0.1)
    ours_scaler.step(ours_opt)  # does not unscale again
    ours_scaler.update()
    assert not ours_scaler.found_inf(ours_opt)  # states are forgotten after update


@pytest.mark.parametrize("scaler_cls", [GradScaler, torch.amp.GradScaler], ids=["labkit", "torch"])
def test_misuse_raises_like_torch(scaler_cls):
    scaler = scaler_cls("cpu")
    model, optimizer = one_backward(scaler)
    scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(optimizer)
    scaler.step(optimizer)
    with pytest.raises(RuntimeError, match="unscale_\\(\\) is being called after step"):
        scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(optimizer)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(optimizer, closure=lambda: None)
    scaler.update()
    half = nn.Linear(2, 2).half()
    half_opt = torch.optim.SGD(half.parameters(), lr=0.1)
    scaler.scale(half(torch.ones(1, 2, dtype=torch.float16)).float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(half_opt)


def test_labkit_only_errors():
    scaler = GradScaler("cpu")
    model = regression_problem()[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="scale\\(loss"):
        scaler.step(optimizer)
    scaler.scale(torch.ones(()))
    with pytest.raises(RuntimeError, match="No inf checks"):
        scaler.update()
    with pytest.raises(RuntimeError, match="No inf checks"):
        scaler.step(optimizer)  # no parameter has a gradient
    with pytest.raises(ValueError, match="growth_factor"):
        GradScaler("cpu", growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        GradScaler("cpu", backoff_factor=1.0)
    with pytest.raises(ValueError, match="growth_interval"):
        GradScaler("cpu", growth_interval=0)
    with pytest.raises(ValueError, match="init_scale"):
        GradScaler("cpu", init_scale=math.inf)
    with pytest.raises(TypeError, match="device"):
        GradScaler(torch.device("cpu"))
    with pytest.raises(ValueError, match="outputs must be"):
        scaler.scale([torch.ones(()), "loss"])
    with pytest.raises(RuntimeError, match="empty"):
        scaler.load_state_dict({})
    with pytest.raises(ValueError, match="growth_factor"):
        scaler.set_growth_factor(0.5)
    with pytest.raises(ValueError, match="growth_interval"):
        scaler.set_growth_interval(2.5)
    scaler.set_backoff_factor(0.25)
    assert scaler.get_backoff_factor() == 0.25


def test_scale_outputs_state_dict_and_new_scale():
    scaler = GradScaler("cpu", init_scale=8.0)
    assert scaler.get_scale() == 8.0 and scaler.is_enabled()
    a, (b, c) = scaler.scale([torch.ones(2), (torch.full((1,), 2.0), torch.ones(()))])
    assert a.tolist() == [8.0, 8.0] and b.tolist() == [16.0] and c.item() == 8.0
    assert list(scaler.scale(iter([torch.ones(())])))[0].item() == 8.0
    scaler.update(new_scale=2.0)
    assert scaler.get_scale() == 2.0
    scaler.update(new_scale=torch.tensor(0.5))
    assert scaler.get_scale() == 0.5
    theirs = torch.amp.GradScaler("cpu")
    theirs.load_state_dict(scaler.state_dict())
    assert theirs.state_dict() == scaler.state_dict()
    fresh = GradScaler("cpu")
    fresh.load_state_dict(theirs.state_dict())
    assert fresh.get_scale() == 0.5 and fresh.state_dict() == theirs.state_dict()
    defaults = torch.amp.GradScaler("cpu", growth_interval=7).state_dict()
    assert GradScaler("cpu", growth_interval=7).state_dict() == defaults


def test_disabled_scaler_is_transparent():
    scaler = GradScaler("cpu", enabled=False)
    model, optimizer = one_backward(scaler)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.ones(())
    assert scaler.scale(loss) is loss
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 1.0 and scaler.state_dict() == {} and not scaler.is_enabled()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the plain step ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA fallback")
def test_cuda_scaler_without_cuda_disables_itself_like_torch():
    with pytest.warns(UserWarning, match="CUDA is not available"):
        ours = GradScaler("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.amp.GradScaler("cuda")
    assert ours.is_enabled() == theirs.is_enabled() is False


# ---- master weights ------------------------------------------------------------------------------------------------


def train_plain(model, optimizer, batches):
    for idx, targets in batches:
        optimizer.zero_grad()
        model.loss(idx, targets).backward()
        optimizer.step()


@pytest.mark.parametrize("scaler", [None, "power_of_two"], ids=["unscaled", "scaled_2^8"])
def test_master_weights_with_a_lossless_dtype_equal_fp32_training(scaler):
    batches = [gpt_batch(seed) for seed in range(4)]
    plain = tiny_gpt()
    train_plain(plain, AdamW(plain.parameters(), lr=1e-2), batches)
    master = tiny_gpt()
    scaler = GradScaler("cpu", init_scale=2.0 ** 8) if scaler else None
    trainer = MasterWeightTrainer(master, AdamW(master.parameters(), lr=1e-2), dtype=torch.float32, scaler=scaler)
    for idx, targets in batches:
        trainer.step(lambda model: model.loss(idx, targets))
    for p, q, r in zip(plain.parameters(), master.parameters(), trainer.model.parameters()):
        assert torch.equal(p, q) and torch.equal(q, r)
    assert trainer.skipped_steps == 0


def stalling_problem():
    """Weights at 1 (fp16 spacing 2^-11 below 1, 2^-10 above) and an fp16 target 2^-8 away in each coordinate; with
    lr = 0.015 every SGD update (about 2·lr·2^-8 ≈ 1.2e-4) is below half a spacing (2^-12 ≈ 2.4e-4). Inputs are
    fp16 numbers, so the fp16 model sees the same data."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=generator).half().float()
    start = torch.ones(1, 8)
    target_weight = start + 2.0 ** -8 * torch.sign(torch.randn(1, 8, generator=generator))
    y = x @ target_weight.t()
    model = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(start)
    return model, x, y


def fp16_loss(model, x, y):
    return F.mse_loss(model(x.half()).float(), y)


def test_master_weights_converge_where_pure_fp16_updates_stall():
    steps, lr = 120, 0.015
    model, x, y = stalling_problem()
    pure = copy.deepcopy(model).half()
    pure_opt = SGD(pure.parameters(), lr=lr)
    initial = fp16_loss(pure, x, y).item()
    for _ in range(steps):
        pure_opt.zero_grad()
        fp16_loss(pure, x, y).backward()
        pure_opt.step()
    pure_final = fp16_loss(pure, x, y).item()
    assert torch.equal(pure.weight, model.weight.half())  # every update rounded away: stalled

    trainer = MasterWeightTrainer(model, SGD(model.parameters(), lr=lr), dtype=torch.float16)
    for _ in range(steps):
        trainer.step(lambda m: fp16_loss(m, x, y))
    master_final = fp16_loss(trainer.model, x, y).item()
    assert pure_final == initial
    assert master_final < initial / 30, (initial, master_final)  # measured: about 60x lower
    assert trainer.model.weight.dtype == torch.float16 and model.weight.dtype == torch.float32
    torch.testing.assert_close(trainer.model.weight, model.weight.half(), atol=0, rtol=0)


def test_master_weights_skip_overflowing_steps_with_a_scaler():
    model, x, y = stalling_problem()
    scaler = GradScaler("cpu", init_scale=2.0 ** 10)
    trainer = MasterWeightTrainer(model, SGD(model.parameters(), lr=0.1), scaler=scaler)
    trainer.step(lambda m: fp16_loss(m, x, y))
    before = model.weight.detach().clone()
    trainer.step(lambda m: fp16_loss(m, x, y) * 1e30)  # fp16 gradients overflow
    assert trainer.skipped_steps == 1 and torch.equal(model.weight, before)
    assert scaler.get_scale() == 2.0 ** 9
    trainer.step(lambda m: fp16_loss(m, x, y))
    assert not torch.equal(model.weight, before) and trainer.skipped_steps == 1


def test_master_weight_trainer_bad_arguments():
    model, x, y = stalling_problem()
    with pytest.raises(TypeError, match="nn.Module"):
        MasterWeightTrainer("model", SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="Optimizer"):
        MasterWeightTrainer(model, None)
    with pytest.raises(ValueError, match="exactly the trainable parameters"):
        MasterWeightTrainer(model, SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(TypeError, match="float32"):
        half = copy.deepcopy(model).half()
        MasterWeightTrainer(half, SGD(half.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="scaler"):
        MasterWeightTrainer(model, SGD(model.parameters(), lr=0.1), scaler=torch.amp.GradScaler("cpu"))
    trainer = MasterWeightTrainer(model, SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="scalar"):
        trainer.step(lambda m: m(x.half()))


# ---- the benchmark -------------------------------------------------------------------------------------------------


def test_train_step_benchmark_runs_at_tiny_size():
    from labkit import bench
    from labkit.benchmarks.amp import _check_losses
    from labkit.config import get_profile

    profile = get_profile("smoke").replace(bench_warmup=0, bench_repeats=1, seq_len=8, batch_size=2)
    comparisons = bench.run(["amp.train_step"], "cpu", profile, progress=False)["amp.train_step"]
    assert [c.params["measured"] for c in comparisons] == ["labkit / torch", "labkit / fp32", "torch / fp32"]
    for comparison in comparisons:
        assert comparison.labkit.median_s > 0 and comparison.reference_peak_bytes > 0
        assert comparison.params["low_dtype"] == "bfloat16" and not comparison.params["loss_scaling"]
    with pytest.raises(AssertionError, match="not within 2% of fp32"):
        _check_losses("x", {"fp32": 1.0, "labkit": 1.05})


# ---- CUDA: fp16 autocast and loss scaling against torch's (run on a GPU machine) ------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TORCH_CUDA_KEEPS_INPUT_DTYPE = {"mean"}  # torch's CUDA autocast leaves mean alone (it accumulates in fp32 inside)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("op,how,fn", CASES, ids=CASE_IDS)
def test_cuda_op_dtypes_against_torch_autocast(op, how, fn):
    for dtype in (torch.float32, torch.float16):
        ours = run_case(fn, dtype, autocast("cuda"), "cuda")
        theirs = run_case(fn, dtype, torch.autocast("cuda", dtype=torch.float16), "cuda")
        if op in TORCH_CUDA_KEEPS_INPUT_DTYPE and dtype == torch.float16:
            assert (ours.dtype, theirs.dtype) == (torch.float32, torch.float16)
        else:
            assert ours.dtype == theirs.dtype, (op, how, dtype)
        assert_close_low_precision(ours, theirs)


@pytest.mark.cuda
@needs_cuda
def test_cuda_gpt_loss_and_scaler_against_torch():
    model = tiny_gpt().cuda()
    reference = copy.deepcopy(model)
    idx, targets = (t.cuda() for t in gpt_batch())
    with autocast("cuda"):
        loss = model.loss(idx, targets)
    with torch.autocast("cuda", dtype=torch.float16):
        torch_loss = reference.loss(idx, targets)
    assert loss.dtype == torch_loss.dtype == torch.float32
    assert abs(loss.item() - torch_loss.item()) < 1e-2 * torch_loss.item()
    net, data = regression_problem()
    data = [(x.cuda(), y.cuda()) for x, y in data]
    runs = []
    for scaler_cls in (GradScaler, torch.amp.GradScaler):
        copy_ = copy.deepcopy(net).cuda()
        optimizer = torch.optim.AdamW(copy_.parameters(), lr=1e-2)
        runs.append(scripted_run(scaler_cls("cuda", init_scale=2.0 ** 10, growth_interval=3), copy_, optimizer,
                                 data, 20, overflow_at={0, 1, 9}, nan_at={14}))
    assert runs[0] == runs[1]
