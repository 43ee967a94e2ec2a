"""Optimizers from scratch: SGD (momentum, Nesterov), Adam and AdamW; a warmup-cosine schedule; global-norm clipping.

The source paper (Mei et al. 2024, arXiv:2405.11704, abstract) credits adaptive optimizers "such as AdamW" with
accelerating convergence; this module implements them so that the claim can be measured.

Update rules (``g`` the gradient, ``t`` the step count, ``lr`` the learning rate, ``λ`` the weight decay):

* SGD with momentum ``μ`` and dampening ``τ``: ``b ← μ b + (1−τ) g`` (``b = g`` on the first step),
  ``θ ← θ − lr·b`` (Nesterov: ``θ ← θ − lr·(g + μ b)``). Weight decay adds ``λθ`` to ``g`` (an L2 penalty).
* Adam (Kingma & Ba 2015): ``m ← β1 m + (1−β1) g``, ``v ← β2 v + (1−β2) g²``, bias-corrected
  ``m̂ = m/(1−β1^t)``, ``v̂ = v/(1−β2^t)``, ``θ ← θ − lr·m̂/(√v̂ + ε)``. Weight decay is L2: ``g ← g + λθ``, which
  then passes through ``1/(√v̂ + ε)``, so every weight decays by a different effective amount.
* AdamW (Loshchilov & Hutter 2019): decoupled decay ``θ ← θ − lr·λ·θ − lr·m̂/(√v̂ + ε)``; every weight shrinks by
  the same factor ``1 − lr·λ``.

The classes are ``torch.optim.Optimizer`` subclasses with PyTorch's hyperparameters, defaults, param groups and
state_dict format (state keys ``step`` (a scalar tensor), ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
``momentum_buffer``), so that a labkit state_dict loads into ``torch.optim`` and back. Each has three paths:

* ``foreach=False``: the readable per-parameter loop, the update rule line by line;
* ``foreach=True``: the multi-tensor path (``torch._foreach_*``), one call per operation for a whole list of tensors
  of one device and dtype; the default on CUDA;
* ``fused=True`` (Adam and AdamW, CUDA): one Triton kernel reads ``θ, g, m, v`` once and writes ``θ, m, v``
  (:mod:`labkit.kernels.fused_adamw_triton`).

None of this calls ``torch.optim.SGD``/``Adam``/``AdamW``: those are the references the tests compare with.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "warmup_cosine",
    "WarmupCosine",
    "clip_grad_norm_",
    "optimizer_state_bytes",
]


# ----------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _check_non_negative(name: str, label: str, value: Any) -> None:
    """Raise like torch (``"Invalid learning rate: -1.0"``), and say what was expected."""
    if not _check_number(name, value) >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid {label}: {value} (expected {name} >= 0)")


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        if not 0.0 <= _check_number(f"betas[{index}]", beta) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta} (expected 0 <= beta < 1)")
    return float(betas[0]), float(betas[1])


def _check_foreach_fused(foreach: bool | None, fused: bool | None) -> None:
    if foreach and fused:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def _use_foreach(foreach: bool | None, params: Sequence[Tensor]) -> bool:
    """``foreach=None`` picks the multi-tensor path on CUDA and the per-parameter loop elsewhere (as torch does)."""
    if foreach is None:
        return bool(params) and all(p.device.type == "cuda" for p in params)
    return bool(foreach)


def _step_dtype() -> torch.dtype:
    """The dtype of ``state['step']``: float64 when that is the default dtype, else float32 (as torch)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _new_step() -> Tensor:
    """A zero step counter, on the CPU so reading it never synchronises a GPU."""
    return torch.tensor(0.0, dtype=_step_dtype())


def _group_by_device_and_dtype(*lists: Sequence[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel lists of tensors by the device and dtype of the first list: ``_foreach_*`` ops need
    every tensor in one call to share them."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, tensor in enumerate(lists[0]):
        buckets[(tensor.device, tensor.dtype)].append(index)
    return [tuple([tensors[i] for i in indices] for tensors in lists) for indices in buckets.values()]


def _params_with_grad(group: dict[str, Any]) -> list[Tensor]:
    params = []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("labkit optimizers do not support sparse gradients")
        params.append(p)
    return params


class _LabkitOptimizer(Optimizer):
    """Common ``step``: evaluate the closure, then update each param group with ``_update_group``."""

    def _update_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step over every param group; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss


# ----------------------------------------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------------------------------------


class SGD(_LabkitOptimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay (``torch.optim.SGD``'s
    arguments and defaults).

    ``g ← g + λθ``; ``b ← μ b + (1−τ) g`` (``b = g`` at the first step); ``θ ← θ − lr·b``, or with Nesterov
    ``θ ← θ − lr·(g + μ b)``. ``maximize`` ascends instead (``g ← −g``).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None) -> None:
        _check_non_negative("lr", "learning rate", lr)
        _check_non_negative("momentum", "momentum value", momentum)
        _check_number("dampening", dampening)
        _check_non_negative("weight_decay", "weight_decay value", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                             f"(got momentum={momentum}, dampening={dampening})")
        if fused:
            raise ValueError("labkit fuses Adam and AdamW only: SGD takes fused=None or False")
        _check_foreach_fused(foreach, fused)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=False, fused=fused)  # the last two keep torch's state_dict format
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in (("nesterov", False), ("maximize", False), ("foreach", None),
                                 ("differentiable", False), ("fused", False)):
                group.setdefault(key, default)

    def _update_group(self, group: dict[str, Any]) -> None:
        if group.get("fused"):
            raise ValueError("labkit fuses Adam and AdamW only: this SGD param group has fused=True")
        params = _params_with_grad(group)
        if not params:
            return
        grads = [p.grad for p in params]
        buffers = [self.state[p].get("momentum_buffer") for p in params] if group["momentum"] != 0 else []
        update = _sgd_foreach if _use_foreach(group["foreach"], params) else _sgd_single_tensor
        new_buffers = update(params, grads, buffers, lr=group["lr"], momentum=group["momentum"],
                             dampening=group["dampening"], weight_decay=group["weight_decay"],
                             nesterov=group["nesterov"], maximize=group["maximize"])
        for p, buffer in zip(params, new_buffers):
            self.state[p]["momentum_buffer"] = buffer


def _sgd_single_tensor(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor | None], *, lr: float,
                       momentum: float, dampening: float, weight_decay: float, nesterov: bool,
                       maximize: bool) -> list[Tensor]:
    """The readable loop: one parameter at a time. Returns the momentum buffers (created on the first step)."""
    for i, (param, grad) in enumerate(zip(params, grads)):
        if maximize:
            grad = -grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)  # L2 penalty λ/2·θ² has gradient λθ
        if momentum != 0:
            buffer = buffers[i]
            if buffer is None:
                buffer = buffers[i] = grad.detach().clone()  # b_1 = g_1
            else:
                buffer.mul_(momentum).add_(grad, alpha=1 - dampening)  # b ← μ b + (1−τ) g
            grad = grad.add(buffer, alpha=momentum) if nesterov else buffer
        param.add_(grad, alpha=-lr)  # θ ← θ − lr·(update)
    return buffers


def _sgd_foreach(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor | None], *, lr: float,
                 momentum: float, dampening: float, weight_decay: float, nesterov: bool,
                 maximize: bool) -> list[Tensor]:
    """The multi-tensor path: the same arithmetic, one ``torch._foreach_*`` call per operation."""
    buffers = list(buffers) if momentum != 0 else []
    index_of = {id(p): i for i, p in enumerate(params)}
    for device_params, device_grads in _group_by_device_and_dtype(params, grads):
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        if weight_decay != 0:
            device_grads = torch._foreach_add(device_grads, device_params, alpha=weight_decay)
        if momentum != 0:
            indices = [index_of[id(p)] for p in device_params]
            device_buffers = [buffers[i] for i in indices]
            if all(b is not None for b in device_buffers):
                torch._foreach_mul_(device_buffers, momentum)
                torch._foreach_add_(device_buffers, device_grads, alpha=1 - dampening)
            else:  # first step (or a param that joined late): the buffer starts as the gradient
                for j, (i, grad) in enumerate(zip(indices, device_grads)):
                    if device_buffers[j] is None:
                        device_buffers[j] = buffers[i] = grad.detach().clone()
                    else:
                        device_buffers[j].mul_(momentum).add_(grad, alpha=1 - dampening)
            if nesterov:
                device_grads = torch._foreach_add(device_grads, device_buffers, alpha=momentum)
            else:
                device_grads = device_buffers
        torch._foreach_add_(device_params, device_grads, alpha=-lr)
    return buffers


# ----------------------------------------------------------------------------------------------------------
# Adam and AdamW
# ----------------------------------------------------------------------------------------------------------


class Adam(_LabkitOptimizer):
    """Adam (Kingma & Ba 2015) with ``torch.optim.Adam``'s arguments and defaults; ``weight_decay`` is an L2 penalty.

    ``g ← g + λθ``; ``m ← β1 m + (1−β1) g``; ``v ← β2 v + (1−β2) g²``; ``m̂ = m/(1−β1^t)``, ``v̂ = v/(1−β2^t)``;
    ``θ ← θ − lr·m̂/(√v̂ + ε)``. ``amsgrad`` divides by the running maximum of ``v`` instead (Reddi et al. 2018).
    """

    _decoupled_weight_decay = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None) -> None:
        _check_non_negative("lr", "learning rate", lr)
        _check_non_negative("eps", "epsilon value", eps)
        betas = _check_betas(betas)
        _check_non_negative("weight_decay", "weight_decay value", weight_decay)
        _check_foreach_fused(foreach, fused)
        if fused and amsgrad:
            raise ValueError("the fused Triton AdamW kernel does not implement amsgrad: use fused=False")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=False, differentiable=False, fused=fused,
                        decoupled_weight_decay=self._decoupled_weight_decay)  # torch's state_dict keys
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in (("amsgrad", False), ("maximize", False), ("foreach", None),
                                 ("capturable", False), ("differentiable", False), ("fused", None)):
                group.setdefault(key, default)
            group["decoupled_weight_decay"] = self._decoupled_weight_decay

    def _state_lists(self, group: dict[str, Any], params: list[Tensor], fused: bool):
        """The step counters and moment buffers of ``params``, created (zeros) on first use."""
        steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = [], [], [], []
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = _new_step()
                state_dtype = torch.float32 if fused else p.dtype  # fused: fp32 moments for bf16/fp16 params
                state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if fused:
                _fused_state_policy(state)
            steps.append(state["step"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
        return steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs

    def _update_group(self, group: dict[str, Any]) -> None:
        if group.get("capturable") or group.get("differentiable"):
            raise ValueError("labkit's Adam/AdamW support capturable=False and differentiable=False only")
        params = _params_with_grad(group)
        if not params:
            return
        fused = bool(group["fused"])
        steps, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = self._state_lists(group, params, fused)
        grads = [p.grad for p in params]
        beta1, beta2 = group["betas"]
        hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                     weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"],
                     maximize=group["maximize"])
        if fused:
            if group["amsgrad"]:
                raise ValueError("the fused Triton AdamW kernel does not implement amsgrad: use fused=False")
            _adam_fused(params, grads, exp_avgs, exp_avg_sqs, steps, **hyper)
        elif _use_foreach(group["foreach"], params):
            _adam_foreach(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                          amsgrad=group["amsgrad"], **hyper)
        else:
            _adam_single_tensor(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                                amsgrad=group["amsgrad"], **hyper)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, ``torch.optim.AdamW``'s defaults
    (``weight_decay=1e-2``).

    ``θ ← θ − lr·λ·θ − lr·m̂/(√v̂ + ε)`` with ``m̂ = m/(1−β1^t)``, ``v̂ = v/(1−β2^t)`` as in Adam; the decay does not
    pass through the moments, so every weight shrinks by the same factor ``1 − lr·λ`` per step. The optimizer the
    source paper (Mei et al. 2024, arXiv:2405.11704) credits with faster convergence.
    """

    _decoupled_weight_decay = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach,
                         fused=fused)


def _bias_corrections(step: float, beta1: float, beta2: float) -> tuple[float, float]:
    """``(1 − β1^t, √(1 − β2^t))``: dividing ``m`` and ``√v`` by these removes the bias of the zero start."""
    return 1 - beta1 ** step, (1 - beta2 ** step) ** 0.5


def _adam_single_tensor(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor], steps: list[Tensor], *,
                        amsgrad: bool, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                        decoupled: bool, maximize: bool) -> None:
    """The readable loop: the update rule of Adam/AdamW, one parameter at a time."""
    for i, (param, grad, exp_avg, exp_avg_sq, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps)):
        if maximize:
            grad = -grad
        step += 1
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)  # AdamW: θ ← θ − lr·λ·θ, outside the moments
            else:
                grad = grad.add(param, alpha=weight_decay)  # Adam + L2: g ← g + λθ
        exp_avg.lerp_(grad, 1 - beta1)  # m ← β1 m + (1−β1) g
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v ← β2 v + (1−β2) g²
        bias_correction1, bias_correction2_sqrt = _bias_corrections(step.item(), beta1, beta2)
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            exp_avg_sq = max_exp_avg_sqs[i]
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)  # √v̂ + ε
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)  # θ ← θ − lr·m̂/(√v̂ + ε)


def _adam_foreach(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  max_exp_avg_sqs: list[Tensor], steps: list[Tensor], *, amsgrad: bool, lr: float, beta1: float,
                  beta2: float, eps: float, weight_decay: float, decoupled: bool, maximize: bool) -> None:
    """The multi-tensor path: each line of the update rule is one ``torch._foreach_*`` call over a list."""
    lists = [params, grads, exp_avgs, exp_avg_sqs, steps] + ([max_exp_avg_sqs] if amsgrad else [])
    one = torch.tensor(1.0)
    for device_params, device_grads, device_m, device_v, device_steps, *device_max in \
            _group_by_device_and_dtype(*lists):
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        torch._foreach_add_(device_steps, one)  # CPU step counters, one call
        if weight_decay != 0:
            if decoupled:
                torch._foreach_mul_(device_params, 1 - lr * weight_decay)
            else:
                device_grads = torch._foreach_add(device_grads, device_params, alpha=weight_decay)
        torch._foreach_lerp_(device_m, device_grads, 1 - beta1)
        torch._foreach_mul_(device_v, beta2)
        torch._foreach_addcmul_(device_v, device_grads, device_grads, 1 - beta2)
        del device_grads
        corrections = [_bias_corrections(step.item(), beta1, beta2) for step in device_steps]
        step_sizes = [-lr / bc1 for bc1, _ in corrections]
        if amsgrad:
            torch._foreach_maximum_(device_max[0], device_v)
            denom = torch._foreach_sqrt(device_max[0])
        else:
            denom = torch._foreach_sqrt(device_v)
        torch._foreach_div_(denom, [bc2_sqrt for _, bc2_sqrt in corrections])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(device_params, device_m, denom, step_sizes)


def _fused_state_policy(state: dict[str, Any]) -> None:
    """The fused kernel keeps fp32 moments and reads the step on the host: undo what ``load_state_dict`` did
    (it casts moments to the parameter dtype and, for fused groups, moves ``step`` to the parameter's device)."""
    if state["step"].device.type != "cpu":
        state["step"] = state["step"].to("cpu", _step_dtype())
    for key in ("exp_avg", "exp_avg_sq"):
        if state[key].dtype != torch.float32:
            state[key] = state[key].float()


def _adam_fused(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                steps: list[Tensor], *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                decoupled: bool, maximize: bool) -> None:
    """The CUDA path: one Triton kernel launch per (device, dtype) reads θ, g, m, v once and writes θ, m, v."""
    from labkit.kernels.fused_adamw_triton import fused_adamw_step_

    for p in params:
        if p.device.type != "cuda" and not _triton_interpreting():
            raise RuntimeError(f"fused=True runs a Triton kernel on CUDA tensors, got a parameter on {p.device}; "
                               "use foreach=True on this device (or set TRITON_INTERPRET=1 to test on the CPU)")
    for step in steps:
        step += 1
    for device_params, device_grads, device_m, device_v, device_steps in _group_by_device_and_dtype(
            params, grads, exp_avgs, exp_avg_sqs, steps):
        corrections = [_bias_corrections(step.item(), beta1, beta2) for step in device_steps]
        fused_adamw_step_(device_params, device_grads, device_m, device_v,
                          step_sizes=[lr / bc1 for bc1, _ in corrections],
                          bias_correction2_sqrts=[bc2_sqrt for _, bc2_sqrt in corrections],
                          lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                          decoupled=decoupled, maximize=maximize)


def _triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (how the tests check the kernel without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------------------------
# learning-rate schedule
# ----------------------------------------------------------------------------------------------------------


def _check_schedule(warmup_steps: Any, total_steps: Any, min_lr_ratio: Any) -> None:
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps must be > warmup_steps, got total_steps={total_steps}, "
                         f"warmup_steps={warmup_steps}")
    if not 0.0 <= _check_number("min_lr_ratio", min_lr_ratio) <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The learning-rate multiplier at ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr_ratio``.

    ``(step+1)/W`` for ``step < W``; then ``r + (1−r)·(1 + cos(π·(step−W)/(T−W)))/2`` for ``W <= step <= T``;
    ``r`` after ``T``. The warm-up never gives lr = 0 (step 0 already moves the weights).
    Equal to ``SequentialLR([LinearLR(start_factor=1/W, total_iters=W−1), CosineAnnealingLR(T_max=T−W,
    eta_min=r·lr)], milestones=[W])`` up to rounding.
    """
    _check_schedule(warmup_steps, total_steps, min_lr_ratio)
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _WarmupCosineLambda:
    """A picklable ``step -> multiplier`` (LambdaLR saves the ``__dict__`` of callable objects in its state)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


class WarmupCosine(LambdaLR):
    """``LambdaLR`` with the :func:`warmup_cosine` multiplier: ``lr(step) = base_lr · warmup_cosine(step, ...)``.

    Call ``scheduler.step()`` after each ``optimizer.step()``, as with any torch scheduler.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                 last_epoch: int = -1) -> None:
        _check_schedule(warmup_steps, total_steps, min_lr_ratio)
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, float(min_lr_ratio)
        super().__init__(optimizer, _WarmupCosineLambda(warmup_steps, total_steps, float(min_lr_ratio)),
                         last_epoch=last_epoch)


# ----------------------------------------------------------------------------------------------------------
# clipping and memory
# ----------------------------------------------------------------------------------------------------------


def _as_tensor_list(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        return [parameters]
    try:
        tensors = list(parameters)
    except TypeError as err:
        raise TypeError(f"parameters must be a Tensor or an iterable of Tensors, "
                        f"got {type(parameters).__name__}") from err
    for tensor in tensors:
        if not isinstance(tensor, Tensor):
            raise TypeError(f"parameters must contain Tensors, got a {type(tensor).__name__}")
    return tensors


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Scale every gradient in place by ``min(1, max_norm / (‖g‖ + 1e-6))``, where ``‖g‖`` is the ``norm_type``
    norm of all gradients joined into one vector (the norm of the per-tensor norms). Returns ``‖g‖`` (a tensor).

    Same result as ``torch.nn.utils.clip_grad_norm_``; ``error_if_nonfinite`` raises ``RuntimeError`` on a NaN or
    infinite norm, as torch does. Multiplying even when the factor is 1 avoids a GPU→CPU synchronisation.
    """
    params = _as_tensor_list(parameters)
    max_norm = _check_number("max_norm", max_norm)
    norm_type = _check_number("norm_type", norm_type)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    per_tensor = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    total_norm = torch.linalg.vector_norm(torch.stack([n.to(grads[0].device) for n in per_tensor]), norm_type)
    if error_if_nonfinite and not torch.isfinite(total_norm):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
                           "so it cannot be clipped. To disable this error and scale the gradients by the "
                           "non-finite norm anyway, set `error_if_nonfinite=False`")
    clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for grad in grads:
        grad.mul_(clip_coef.to(grad.device))
    return total_norm


def optimizer_state_bytes(optimizer: Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (moments, momentum buffers and the step scalars): SGD with
    momentum holds one buffer per parameter, Adam/AdamW two (``m`` and ``v``), amsgrad three."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return sum(value.numel() * value.element_size()
               for state in optimizer.state.values() for value in state.values() if isinstance(value, Tensor))
