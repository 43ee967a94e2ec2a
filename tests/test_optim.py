"""labkit.optim against torch.optim: trajectories, state_dict exchange, resume, clipping, schedule, bad input,
and the fused Triton AdamW kernel (interpreter on the CPU, CUDA when present)."""

from __future__ import annotations

import copy
import io
import math
import textwrap

import pytest
import torch
from torch import nn

from labkit import optim as lo

STEPS = 200

# (labkit class, torch class, hyperparameters); each runs with two param groups, float32 and float64, both paths
CONFIGS = {
    "sgd": (lo.SGD, torch.optim.SGD, dict(lr=0.05)),
    "sgd_momentum": (lo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "sgd_nesterov_wd": (lo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    "sgd_dampening_wd": (lo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    "sgd_maximize": (lo.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.5, maximize=True)),
    "adam": (lo.Adam, torch.optim.Adam, dict(lr=0.01)),
    "adam_l2": (lo.Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    "adam_amsgrad_wd": (lo.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.05, amsgrad=True)),
    "adam_maximize": (lo.Adam, torch.optim.Adam, dict(lr=0.001, eps=1e-6, maximize=True)),
    "adamw": (lo.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    "adamw_wd_amsgrad": (lo.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
}


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def make_data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=generator, dtype=dtype), torch.randn(32, 3, generator=generator, dtype=dtype)


def param_groups(model: nn.Module, kwargs: dict) -> list[dict]:
    """Two groups: the first layer with its own lr and weight decay, the second with the defaults."""
    lr = kwargs["lr"]
    first = {"params": list(model[0].parameters()), "lr": lr * 0.5}
    if "weight_decay" in kwargs:
        first["weight_decay"] = kwargs["weight_decay"] * 2
    return [first, {"params": list(model[2].parameters())}]


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data, steps: int, scheduler=None) -> list[float]:
    x, y = data
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------------
# trajectories
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True], ids=["per_param", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_trajectory_matches_torch(config, dtype, foreach):
    ours_cls, torch_cls, kwargs = CONFIGS[config]
    ours, reference = make_model(dtype), make_model(dtype)
    start = copy.deepcopy(ours)
    data = make_data(dtype)
    ours_opt = ours_cls(param_groups(ours, kwargs), foreach=foreach, **kwargs)
    torch_opt = torch_cls(param_groups(reference, kwargs), foreach=foreach, **kwargs)
    ours_losses = train(ours, ours_opt, data, STEPS)
    torch_losses = train(reference, torch_opt, data, STEPS)
    assert_same_params(ours, reference)
    torch.testing.assert_close(ours_losses, torch_losses, atol=1e-6, rtol=0)
    moved = max((p - q).abs().max().item() for p, q in zip(ours.parameters(), start.parameters()))
    assert moved > 1e-3, "the optimizer did not move the parameters"
    for p, q in zip(ours_opt.state.values(), torch_opt.state.values()):
        assert p.keys() == q.keys()
        for key in p:
            torch.testing.assert_close(p[key], q[key], atol=1e-6, rtol=0)


def test_defaults_match_torch():
    model = make_model()
    for ours_cls, torch_cls in ((lo.SGD, torch.optim.SGD), (lo.Adam, torch.optim.Adam),
                                (lo.AdamW, torch.optim.AdamW)):
        ours, theirs = ours_cls(model.parameters()), torch_cls(model.parameters())
        assert ours.defaults == theirs.defaults, ours_cls.__name__
        assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]


def test_parameters_without_grad_are_left_alone():
    model = make_model()
    frozen = model[0].weight
    before = frozen.detach().clone()
    frozen.requires_grad_(False)
    optimizer = lo.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    train(model, optimizer, make_data(), 3)
    assert torch.equal(frozen, before)
    assert frozen not in optimizer.state


# ----------------------------------------------------------------------------------------------------------
# state_dict exchange and resume
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["sgd_nesterov_wd", "adam_amsgrad_wd", "adamw"])
@pytest.mark.parametrize("direction", ["labkit_to_torch", "torch_to_labkit"])
def test_state_dict_exchange_with_torch(config, direction):
    ours_cls, torch_cls, kwargs = CONFIGS[config]
    first_cls, second_cls = (ours_cls, torch_cls) if direction == "labkit_to_torch" else (torch_cls, ours_cls)
    data = make_data()
    model = make_model()
    optimizer = first_cls(param_groups(model, kwargs), **kwargs)
    train(model, optimizer, data, 30)

    continued, switched = copy.deepcopy(model), copy.deepcopy(model)
    same_opt = first_cls(param_groups(continued, kwargs), **kwargs)
    same_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # state_dict() holds references
    other_opt = second_cls(param_groups(switched, kwargs), **kwargs)
    other_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert other_opt.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    train(continued, same_opt, data, 30)
    train(switched, other_opt, data, 30)
    assert_same_params(continued, switched)


@pytest.mark.parametrize("config", ["sgd_momentum", "adam_l2", "adamw_wd_amsgrad"])
@pytest.mark.parametrize("foreach", [False, True], ids=["per_param", "foreach"])
def test_save_and_resume_equals_uninterrupted_run(config, foreach):
    ours_cls, _, kwargs = CONFIGS[config]
    data = make_data()

    def build(model):
        optimizer = ours_cls(param_groups(model, kwargs), foreach=foreach, **kwargs)
        return optimizer, lo.WarmupCosine(optimizer, warmup_steps=5, total_steps=60, min_lr_ratio=0.1)

    straight = make_model()
    optimizer, scheduler = build(straight)
    train(straight, optimizer, data, 60, scheduler)

    first_half = make_model()
    optimizer, scheduler = build(first_half)
    train(first_half, optimizer, data, 30, scheduler)
    buffer = io.BytesIO()
    torch.save({"model": first_half.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = make_model(seed=123)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    optimizer, scheduler = build(resumed)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    train(resumed, optimizer, data, 30, scheduler)
    assert_same_params(straight, resumed, atol=0)


# ----------------------------------------------------------------------------------------------------------
# bad hyperparameters
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes, kwargs", [
    ((lo.SGD, torch.optim.SGD), dict(lr=-0.1)),
    ((lo.SGD, torch.optim.SGD), dict(lr=0.1, momentum=-0.5)),
    ((lo.SGD, torch.optim.SGD), dict(lr=0.1, weight_decay=-1e-4)),
    ((lo.SGD, torch.optim.SGD), dict(lr=0.1, nesterov=True)),
    ((lo.SGD, torch.optim.SGD), dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    ((lo.Adam, torch.optim.Adam), dict(lr=-1e-3)),
    ((lo.Adam, torch.optim.Adam), dict(betas=(1.0, 0.999))),
    ((lo.Adam, torch.optim.Adam), dict(betas=(0.9, -0.1))),
    ((lo.Adam, torch.optim.Adam), dict(eps=-1e-8)),
    ((lo.Adam, torch.optim.Adam), dict(weight_decay=-0.1)),
    ((lo.AdamW, torch.optim.AdamW), dict(lr=-1e-3)),
    ((lo.AdamW, torch.optim.AdamW), dict(betas=(0.9, 1.0))),
    ((lo.AdamW, torch.optim.AdamW), dict(weight_decay=-0.01)),
], ids=lambda value: str(value) if isinstance(value, dict) else value[0].__name__)
def test_bad_hyperparameters_raise_like_torch(classes, kwargs):
    params = list(make_model().parameters())
    for cls in classes:
        with pytest.raises(ValueError):
            cls(params, **kwargs)


def test_bad_types_and_unsupported_options():
    params = list(make_model().parameters())
    with pytest.raises(TypeError, match="lr must be a real number"):
        lo.Adam(params, lr="0.1")
    with pytest.raises(ValueError, match="betas must be a pair"):
        lo.Adam(params, betas=(0.9,))
    with pytest.raises(ValueError, match="fuses Adam and AdamW only"):
        lo.SGD(params, lr=0.1, fused=True)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        lo.AdamW(params, foreach=True, fused=True)
    with pytest.raises(ValueError, match="amsgrad"):
        lo.AdamW(params, amsgrad=True, fused=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_fused_on_cpu_raises_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = make_model()
    optimizer = lo.AdamW(model.parameters(), fused=True)
    with pytest.raises(RuntimeError, match="Triton kernel on CUDA"):
        train(model, optimizer, make_data(), 1)


# ----------------------------------------------------------------------------------------------------------
# clipping, state memory
# ----------------------------------------------------------------------------------------------------------


def _with_grads(dtype=torch.float32, scale=1.0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    params = [torch.zeros(shape, dtype=dtype, requires_grad=True) for shape in [(4, 5), (7,), (2, 3, 3)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=dtype) * scale
    return params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0, 3])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype):
    ours, theirs = _with_grads(dtype), _with_grads(dtype)
    total = lo.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    torch.testing.assert_close(total, expected)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours]), norm_type)
    assert clipped <= max_norm * (1 + 1e-5)
    if max_norm > total:
        for p, q in zip(ours, _with_grads(dtype)):
            torch.testing.assert_close(p.grad, q.grad)  # not clipped


def test_clip_grad_norm_edge_cases():
    params = _with_grads()
    params[1].grad[3] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite"):
        lo.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(_with_grads() + [params[1]], 1.0, error_if_nonfinite=True)
    assert torch.isinf(lo.clip_grad_norm_(params, 1.0))  # no error requested: returns the norm
    single = _with_grads()[0]
    torch.testing.assert_close(lo.clip_grad_norm_(single, 0.1), torch.linalg.vector_norm(_with_grads()[0].grad))
    assert lo.clip_grad_norm_([torch.zeros(3, requires_grad=True)], 1.0).item() == 0.0
    with pytest.raises(TypeError):
        lo.clip_grad_norm_([1.0, 2.0], 1.0)


def test_optimizer_state_bytes():
    model = make_model()
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    data = make_data()
    sgd = lo.SGD(model.parameters(), lr=0.01)
    train(model, sgd, data, 1)
    assert lo.optimizer_state_bytes(sgd) == 0
    momentum = lo.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train(model, momentum, data, 1)
    assert lo.optimizer_state_bytes(momentum) == 4 * n_params
    adamw = lo.AdamW(model.parameters())
    train(model, adamw, data, 1)
    assert lo.optimizer_state_bytes(adamw) == 2 * 4 * n_params + 4 * n_tensors  # m, v and a float32 step
    amsgrad = lo.Adam(model.parameters(), amsgrad=True)
    train(model, amsgrad, data, 1)
    assert lo.optimizer_state_bytes(amsgrad) == 3 * 4 * n_params + 4 * n_tensors
    torch_adamw = torch.optim.AdamW(model.parameters())
    train(model, torch_adamw, data, 1)
    assert lo.optimizer_state_bytes(torch_adamw) == lo.optimizer_state_bytes(adamw)
    with pytest.raises(TypeError):
        lo.optimizer_state_bytes(model)


# ----------------------------------------------------------------------------------------------------------
# learning-rate schedule
# ----------------------------------------------------------------------------------------------------------


def test_warmup_cosine_hand_values():
    w, t, r = 4, 14, 0.1
    assert lo.warmup_cosine(0, w, t, r) == pytest.approx(0.25)
    assert lo.warmup_cosine(2, w, t, r) == pytest.approx(0.75)
    assert lo.warmup_cosine(3, w, t, r) == pytest.approx(1.0)
    assert lo.warmup_cosine(4, w, t, r) == pytest.approx(1.0)
    assert lo.warmup_cosine(9, w, t, r) == pytest.approx(r + (1 - r) / 2)  # half way through the decay
    assert lo.warmup_cosine(14, w, t, r) == pytest.approx(r)
    assert lo.warmup_cosine(100, w, t, r) == pytest.approx(r)  # held after the end
    assert lo.warmup_cosine(0, 0, 10) == pytest.approx(1.0)  # no warm-up
    for step in range(w, t + 1):
        expected = r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (step - w) / (t - w)))
        assert lo.warmup_cosine(step, w, t, r) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("warmup, total, ratio", [(5, 40, 0.0), (1, 25, 0.2), (10, 11, 0.5)])
def test_warmup_cosine_matches_torch_schedulers(warmup, total, ratio):
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR

    base_lr = 0.3

    def lrs(make_scheduler) -> list[float]:
        optimizer = lo.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        scheduler = make_scheduler(optimizer)
        values = []
        for _ in range(total + 1):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    ours = lrs(lambda opt: lo.WarmupCosine(opt, warmup, total, ratio))
    formula = [base_lr * lo.warmup_cosine(step, warmup, total, ratio) for step in range(total + 1)]
    lambda_lr = lrs(lambda opt: LambdaLR(opt, lambda step: lo.warmup_cosine(step, warmup, total, ratio)))
    sequential = lrs(lambda opt: SequentialLR(opt, [
        LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        CosineAnnealingLR(opt, T_max=total - warmup, eta_min=ratio * base_lr)], milestones=[warmup]))
    torch.testing.assert_close(ours, formula, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours, lambda_lr, atol=1e-12, rtol=0)
    torch.testing.assert_close(ours, sequential, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("args, error", [
    ((0, -1, 10), ValueError), ((0, 10, 10), ValueError), ((0, 2, 10, 1.5), ValueError),
    ((-1, 2, 10), ValueError), ((0.5, 2, 10), TypeError), ((0, 2.0, 10), TypeError),
])
def test_warmup_cosine_bad_arguments(args, error):
    with pytest.raises(error):
        lo.warmup_cosine(*args)


# ----------------------------------------------------------------------------------------------------------
# fused Triton kernel: interpreter on the CPU, then CUDA
# ----------------------------------------------------------------------------------------------------------

_INTERPRETER_SCRIPT = textwrap.dedent("""
    import copy
    import os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from labkit import optim as lo

    def run(cls, dtype, fused, steps, skip_first=False, **kwargs):
        torch.manual_seed(0)
        shapes = [(3,), (37, 41), (5, 2, 3)]   # 1517 elements: the middle tensor spans two blocks
        params = [torch.randn(s).to(dtype).requires_grad_() for s in shapes]
        opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": kwargs["lr"] * 3}], fused=fused,
                  foreach=False if not fused else None, **kwargs)
        generator = torch.Generator().manual_seed(1)
        for step in range(steps):
            for i, p in enumerate(params):
                grad = torch.randn(p.shape, generator=generator).to(dtype)
                p.grad = None if (skip_first and step == 0 and i == 0) else grad
            opt.step()
        return params, opt

    checks = 0
    for cls, kwargs in [(lo.AdamW, dict(lr=1e-2, weight_decay=0.1)), (lo.Adam, dict(lr=1e-2, weight_decay=0.1)),
                        (lo.AdamW, dict(lr=1e-2, betas=(0.8, 0.9), maximize=True))]:
        for skip_first in (False, True):   # True: tensors at different step counts (per-tensor corrections)
            fused, _ = run(cls, torch.float32, True, 4, skip_first, **kwargs)
            plain, _ = run(cls, torch.float32, False, 4, skip_first, **kwargs)
            for a, b in zip(fused, plain):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
                checks += 1
    # bf16 / fp16 parameters: fp32 math and moments; one step against the fp32 path rounded to the dtype
    for dtype in (torch.bfloat16, torch.float16):
        fused, opt = run(lo.AdamW, dtype, True, 1, lr=1e-2, weight_decay=0.1)
        assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
        torch.manual_seed(0)
        shapes = [(3,), (37, 41), (5, 2, 3)]
        start = [torch.randn(s).to(dtype) for s in shapes]
        generator = torch.Generator().manual_seed(1)
        ref_params = [s.float().requires_grad_() for s in start]
        ref_opt = lo.AdamW([{"params": ref_params[:2]}, {"params": ref_params[2:], "lr": 3e-2}], lr=1e-2,
                           weight_decay=0.1, foreach=False)
        for p in ref_params:
            p.grad = torch.randn(p.shape, generator=generator).to(dtype).float()
        ref_opt.step()
        for a, b in zip(fused, ref_params):
            torch.testing.assert_close(a, b.to(dtype))
            checks += 1
    # a torch state_dict (moments in the parameter dtype, step on the CPU) loads into the fused optimizer
    params, opt = run(lo.AdamW, torch.float32, False, 2, lr=1e-2)
    fused_params = [p.detach().clone().requires_grad_() for p in params]
    fused_opt = lo.AdamW([{"params": fused_params[:2]}, {"params": fused_params[2:], "lr": 3e-2}], lr=1e-2,
                         fused=True)
    state = copy.deepcopy(opt.state_dict())  # state_dict() returns references to the live state
    for group in state["param_groups"]:
        group["fused"], group["foreach"] = True, None
    fused_opt.load_state_dict(state)
    for p, q in zip(params, fused_params):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    opt.step()
    fused_opt.step()
    for a, b in zip(params, fused_params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        checks += 1
    print("checked", checks)
""")


def test_fused_kernel_matches_per_parameter_path_under_interpreter(triton_interpreter):
    stdout = triton_interpreter(_INTERPRETER_SCRIPT)
    assert "checked 27" in stdout, stdout


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_adamw_on_cuda_matches_torch(dtype):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    shapes = [(1000, 257), (3,), (4096,), (17, 3, 5)]
    start = [torch.randn(s, device="cuda") for s in shapes]
    grads = [[torch.randn(s, device="cuda") for s in shapes] for _ in range(20)]

    def run(make):
        params = [p.clone().to(dtype).requires_grad_() for p in start]
        optimizer = make(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.to(dtype)
            optimizer.step()
        return params

    kwargs = dict(lr=1e-3, weight_decay=0.1)
    ours = run(lambda params: lo.AdamW(params, fused=True, **kwargs))
    theirs = run(lambda params: torch.optim.AdamW(params, fused=True, **kwargs))
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.float(), b.float(), **tolerance)
    if dtype == torch.float32:
        multi_tensor = run(lambda params: lo.AdamW(params, foreach=True, **kwargs))
        for a, b in zip(ours, multi_tensor):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
