"""Chapter "Optimizers: from SGD to AdamW" exercises, checked against labkit's optimizers and regularisers.

* ``optim.adam_step`` -- one Adam update with bias correction (Kingma & Ba 2015, Algorithm 1).
* ``optim.adam_weight_decay`` -- weight decay as an L2 term in the gradient (Adam) or decoupled (AdamW).
* ``optim.warmup_cosine`` -- the learning-rate multiplier of linear warm-up then cosine decay.
* ``optim.clip_grad_norm`` -- clipping a list of gradients by their global norm.
* ``optim.label_smoothing`` -- cross-entropy against the mixed target ``(1−ε)·onehot + ε/K`` (001, method list).

Every reference runs labkit's own code (:mod:`labkit.optim`, :mod:`labkit.regularization`), so a reader's function
is compared with the implementation the chapter measures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint, _randn


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """A random float in [low, high) from ``generator``."""
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _random_shape(generator: torch.Generator) -> tuple[int, ...]:
    return tuple(_randint(generator, 1, 6) for _ in range(_randint(generator, 1, 3)))


# ----------------------------------------------------------------------------------------------------------
# one Adam step, with and without weight decay
# ----------------------------------------------------------------------------------------------------------


def _labkit_adam_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, *, lr: float,
                      betas: tuple[float, float], eps: float, weight_decay: float, decoupled: bool,
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Step ``step`` (1-based) of labkit's Adam (or AdamW when ``decoupled``) from the moments of step ``step − 1``;
    returns the new ``(param, exp_avg, exp_avg_sq)``. Works on copies: the inputs are left as they are."""
    from labkit.optim import Adam, AdamW

    if step < 1:
        raise ValueError(f"step must be >= 1 (the number of this update), got {step}")
    p = param.detach().clone().requires_grad_()
    p.grad = grad.detach().clone()
    optimizer_class = AdamW if decoupled else Adam
    optimizer = optimizer_class([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
    optimizer.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": exp_avg.detach().clone(),
                          "exp_avg_sq": exp_avg_sq.detach().clone()}
    optimizer.step()
    state = optimizer.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


def _adam_step_reference(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, lr: float,
                         beta1: float, beta2: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return _labkit_adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=lr, betas=(beta1, beta2), eps=eps,
                             weight_decay=0.0, decoupled=False)


def _moments(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, step: int,
             ) -> tuple[Tensor, Tensor]:
    """Moments as they could be after ``step − 1`` updates: zeros before the first, else ``m`` any sign, ``v > 0``."""
    if step == 1:
        return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    exp_avg = 0.1 * _randn(generator, *shape, dtype=dtype)
    exp_avg_sq = 0.01 * _randn(generator, *shape, dtype=dtype) ** 2 + 1e-6
    return exp_avg, exp_avg_sq


def _adam_state(generator: torch.Generator, shape: tuple[int, ...], step: int, dtype: torch.dtype = torch.float32,
                grad_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    param = _randn(generator, *shape, dtype=dtype)
    grad = grad_scale * _randn(generator, *shape, dtype=dtype)
    return (param, grad, *_moments(generator, shape, dtype, step))


def _adam_step_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [
        Case((*_adam_state(generator, (4,), 1), 1, 1e-3, 0.9, 0.999, 1e-8), "first step: bias correction is largest"),
        Case((*_adam_state(generator, (3, 5), 2), 2, 1e-2, 0.9, 0.999, 1e-8), "second step"),
        Case((*_adam_state(generator, (2, 3), 1000), 1000, 1e-3, 0.9, 0.999, 1e-8), "step 1000: 1 − β1^t ≈ 1"),
        Case((*_adam_state(generator, (6,), 5), 5, 3e-3, 0.8, 0.95, 1e-6), "β2 = 0.95, eps = 1e-6"),
        Case((*_adam_state(generator, (2, 4), 3, grad_scale=1e-6), 3, 1e-3, 0.9, 0.999, 1e-3),
             "tiny gradients, large eps: eps matters"),
        Case((*_adam_state(generator, (3, 3), 7, torch.float64), 7, 1e-2, 0.9, 0.99, 1e-8), "float64"),
        Case((*_adam_state(generator, (5,), 1, grad_scale=0.0), 1, 1e-3, 0.9, 0.999, 1e-8),
             "zero gradient at the first step: no update"),
    ]
    for _ in range(n_random):
        step = _randint(generator, 1, 50)
        cases.append(Case((*_adam_state(generator, _random_shape(generator), step), step,
                           10 ** _uniform(generator, -4, -1), _uniform(generator, 0.5, 0.95),
                           _uniform(generator, 0.9, 0.9999), 1e-8), "random"))
    return cases


def _adam_weight_decay_reference(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int,
                                 lr: float, weight_decay: float, decoupled: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _labkit_adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=weight_decay, decoupled=decoupled)


def _adam_weight_decay_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = []
    for decoupled in (False, True):
        name = "decoupled (AdamW)" if decoupled else "L2 in the gradient (Adam)"
        cases += [
            Case((*_adam_state(generator, (4,), 1), 1, 1e-2, 0.1, decoupled), f"{name}, first step"),
            Case((*_adam_state(generator, (3, 4), 10), 10, 1e-3, 0.01, decoupled), f"{name}, step 10"),
            Case((*_adam_state(generator, (2, 5), 4, grad_scale=1e-4), 4, 1e-2, 1.0, decoupled),
                 f"{name}, small gradients, λ = 1: the decay dominates"),
            Case((*_adam_state(generator, (6,), 3, torch.float64), 3, 1e-3, 0.0, decoupled), f"{name}, λ = 0"),
        ]
    for _ in range(n_random):
        step = _randint(generator, 1, 30)
        cases.append(Case((*_adam_state(generator, _random_shape(generator), step), step,
                           10 ** _uniform(generator, -4, -1), 10 ** _uniform(generator, -3, 0),
                           bool(_randint(generator, 0, 1))), "random"))
    return cases


# ----------------------------------------------------------------------------------------------------------
# schedule, clipping, label smoothing
# ----------------------------------------------------------------------------------------------------------


def _warmup_cosine_reference(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    from labkit.optim import warmup_cosine

    return warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)


def _warmup_cosine_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((0, 10, 100, 0.0), "step 0 of the warm-up: lr is not 0"),
             Case((9, 10, 100, 0.0), "last warm-up step: full lr"),
             Case((10, 10, 100, 0.0), "first cosine step: full lr"),
             Case((55, 10, 100, 0.0), "half-way through the decay"),
             Case((100, 10, 100, 0.1), "the end: min_lr_ratio"),
             Case((250, 10, 100, 0.1), "after the end: stays at min_lr_ratio"),
             Case((0, 0, 50, 0.0), "no warm-up"),
             Case((30, 0, 50, 0.2), "no warm-up, min_lr_ratio 0.2")]
    for _ in range(n_random):
        warmup = _randint(generator, 0, 20)
        total = warmup + _randint(generator, 1, 200)
        cases.append(Case((_randint(generator, 0, total + 10), warmup, total, round(_uniform(generator, 0, 0.5), 3)),
                          "random"))
    return cases


def _clip_reference(grads: list[Tensor], max_norm: float) -> tuple[list[Tensor], float]:
    from labkit.optim import clip_grad_norm_

    params = []
    for grad in grads:
        p = torch.zeros_like(grad, requires_grad=True)
        p.grad = grad.detach().clone()
        params.append(p)
    total_norm = clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(total_norm)


def _clip_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def grads(*shapes: tuple[int, ...], scale: float = 1.0, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        return [scale * _randn(generator, *shape, dtype=dtype) for shape in shapes]

    cases = [Case((grads((3, 4), (4,), scale=2.0), 1.0), "norm above max_norm: scaled down"),
             Case((grads((3, 4), (4,), scale=0.01), 1.0), "norm below max_norm: unchanged"),
             Case((grads((10,), (2, 2), (5, 1), scale=5.0), 0.5), "three tensors, one global norm"),
             Case(([torch.zeros(3), torch.zeros(2, 2)], 1.0), "all-zero gradients: unchanged, norm 0"),
             Case((grads((4, 4), scale=3.0, dtype=torch.float64), 2.0), "float64, one tensor"),
             Case(([torch.full((4,), 100.0), torch.full((2,), 1e-3)], 1.0),
                  "one large and one tiny tensor: both scaled by the same factor")]
    for _ in range(n_random):
        shapes = [_random_shape(generator) for _ in range(_randint(generator, 1, 5))]
        cases.append(Case((grads(*shapes, scale=10 ** _uniform(generator, -2, 1)), round(_uniform(generator, 0.1, 5), 3)),
                          "random"))
    return cases


def _label_smoothing_reference(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    from labkit.regularization import label_smoothing_cross_entropy

    return label_smoothing_cross_entropy(logits, target, smoothing)


def _label_smoothing_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def case(n: int, k: int, smoothing: float, label: str, dtype: torch.dtype = torch.float32,
             scale: float = 2.0) -> Case:
        logits = scale * _randn(generator, n, k, dtype=dtype)
        target = torch.randint(0, k, (n,), generator=generator)
        return Case((logits, target, smoothing), label)

    cases = [case(4, 5, 0.0, "ε = 0: plain cross-entropy"), case(8, 10, 0.1, "ε = 0.1"),
             case(3, 2, 0.2, "two classes"), case(5, 7, 1.0, "ε = 1: a uniform target"),
             case(6, 4, 0.1, "large logits (use log-softmax, not log(softmax))", scale=60.0),
             case(16, 32, 0.05, "float64", dtype=torch.float64)]
    for _ in range(n_random):
        cases.append(case(_randint(generator, 1, 16), _randint(generator, 2, 20), round(_uniform(generator, 0, 0.5), 3),
                          "random"))
    return cases


for _exercise in (
    Exercise(
        name="optim.adam_step",
        title="One Adam step with bias correction",
        goal="Update m and v, correct them by 1 − β^t, and move the parameter by lr·m̂/(√v̂ + ε) (Kingma & Ba 2015).",
        make_cases=_adam_step_cases,
        reference=_adam_step_reference,
        signature="adam_step(param, grad, exp_avg, exp_avg_sq, step: int >= 1, lr, beta1, beta2, eps) "
                  "-> (new_param, new_exp_avg, new_exp_avg_sq)",
    ),
    Exercise(
        name="optim.adam_weight_decay",
        title="Coupled and decoupled weight decay",
        goal="Add λθ to the gradient (Adam + L2), or shrink θ by lr·λ·θ outside the moments (AdamW).",
        make_cases=_adam_weight_decay_cases,
        reference=_adam_weight_decay_reference,
        signature="adam_weight_decay_step(param, grad, exp_avg, exp_avg_sq, step, lr, weight_decay, decoupled) "
                  "-> (new_param, new_exp_avg, new_exp_avg_sq), with betas (0.9, 0.999) and eps 1e-8",
    ),
    Exercise(
        name="optim.warmup_cosine",
        title="Linear warm-up, then cosine decay",
        goal="The lr multiplier: (step+1)/W during warm-up, then r + (1−r)(1 + cos(π·progress))/2, then r.",
        make_cases=_warmup_cosine_cases,
        reference=_warmup_cosine_reference,
        signature="warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio) -> float",
        atol=1e-9,
        rtol=1e-9,
    ),
    Exercise(
        name="optim.clip_grad_norm",
        title="Clipping by the global norm",
        goal="Scale every gradient by min(1, max_norm/(‖g‖ + 1e-6)), with ‖g‖ the norm of all gradients joined.",
        make_cases=_clip_cases,
        reference=_clip_reference,
        signature="clip_grad_norm(grads: list of tensors, max_norm) -> (list of clipped tensors, total norm: float)",
    ),
    Exercise(
        name="optim.label_smoothing",
        title="Label-smoothing cross-entropy",
        goal="The mean cross-entropy of softmax(logits) against q = (1−ε)·onehot(target) + ε/K.",
        make_cases=_label_smoothing_cases,
        reference=_label_smoothing_reference,
        signature="label_smoothing_loss(logits (N, K), target (N,) int64, smoothing) -> scalar tensor",
    ),
):
    add_exercise(_exercise)
del _exercise
