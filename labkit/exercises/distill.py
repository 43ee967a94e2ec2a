"""Chapter "Knowledge distillation" exercises, checked against :mod:`labkit.distill`.

* ``distill.softened_softmax`` -- ``softmax(z / T)`` over the last dim (Hinton et al. 2015, eq. 1).
* ``distill.kd_loss`` -- ``alpha * CE + (1 - alpha) * T^2 * KL(p_T^t || p_T^s)``, averaged over the batch.
* ``distill.kd_gradient`` -- the gradient of that loss with respect to the student logits, in closed form.
* ``distill.hidden_state_loss`` -- the hint loss ``||W h_s + b - h_t||^2 / d_t`` averaged over real tokens.

Every reference runs labkit's own code, so a reader's function is compared with what the chapter trains with.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.optim import _uniform
from labkit.exercises.transformer import _randint, _randn


def _logit_pair(generator: torch.Generator, batch: int, classes: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    student = _randn(generator, batch, classes) * scale
    teacher = _randn(generator, batch, classes) * scale
    targets = torch.randint(0, classes, (batch,), generator=generator)
    return student, teacher, targets


# ----------------------------------------------------------------------------------------------------------
# the softened softmax
# ----------------------------------------------------------------------------------------------------------


def _softened_softmax_reference(logits: Tensor, temperature: float) -> Tensor:
    from labkit.distill import softened_softmax

    return softened_softmax(logits, temperature)


def _softened_softmax_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    z = torch.tensor([[3.0, 1.0, 0.2, -2.0]])
    cases = [Case((z, 1.0), "T = 1: the ordinary softmax"), Case((z, 4.0), "T = 4: flatter"),
             Case((z, 0.25), "T < 1: sharper"), Case((z * 100, 1.0), "large logits: subtract the max first"),
             Case((torch.zeros(2, 3), 2.0), "equal logits: uniform at any T")]
    for _ in range(n_random):
        shape = tuple(_randint(generator, 1, 5) for _ in range(_randint(generator, 1, 3)))
        cases.append(Case((_randn(generator, *shape) * 3, _uniform(generator, 0.3, 8.0)), "random"))
    return cases


# ----------------------------------------------------------------------------------------------------------
# the loss and its gradient
# ----------------------------------------------------------------------------------------------------------


def _kd_loss_reference(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float,
                       alpha: float) -> Tensor:
    from labkit.distill import kd_loss

    return kd_loss(student_logits, teacher_logits, targets, temperature, alpha)


def _kd_gradient_reference(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float,
                           alpha: float) -> Tensor:
    from labkit.distill import kd_logit_gradient

    return kd_logit_gradient(student_logits, teacher_logits, targets, temperature, alpha)


def _kd_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    s, t, y = _logit_pair(generator, 4, 5, 2.0)
    cases = [Case((s, t, y, 1.0, 0.5), "T = 1, alpha = 0.5"),
             Case((s, t, y, 4.0, 0.5), "T = 4: the T^2 factor matters"),
             Case((s, t, y, 3.0, 0.0), "alpha = 0: soft targets only"),
             Case((s, t, y, 2.0, 1.0), "alpha = 1: cross-entropy with the labels only (at T = 1, not T)"),
             Case((s, s.clone(), y, 2.0, 0.0), "student = teacher: no soft loss"),
             Case((*_logit_pair(generator, 1, 3, 1.0), 2.0, 0.3), "one example")]
    for _ in range(n_random):
        batch, classes = _randint(generator, 1, 6), _randint(generator, 2, 8)
        cases.append(Case((*_logit_pair(generator, batch, classes, _uniform(generator, 0.5, 4.0)),
                           _uniform(generator, 0.5, 6.0), _uniform(generator, 0.0, 1.0)), "random"))
    return cases


# ----------------------------------------------------------------------------------------------------------
# the hint loss on hidden states
# ----------------------------------------------------------------------------------------------------------


def _hidden_state_loss_reference(student_hidden: Tensor, teacher_hidden: Tensor, weight: Tensor, bias: Tensor,
                                 padding_mask: Tensor) -> Tensor:
    from labkit.distill import hidden_state_loss

    projection = nn.Linear(weight.size(1), weight.size(0)).to(weight.dtype)
    with torch.no_grad():
        projection.weight.copy_(weight)
        projection.bias.copy_(bias)
        return hidden_state_loss(student_hidden, teacher_hidden, projection, padding_mask)


def _hidden_case(generator: torch.Generator, batch: int, length: int, d_student: int, d_teacher: int,
                 n_pads: int) -> tuple[Tensor, ...]:
    padding = torch.zeros(batch, length, dtype=torch.bool)
    if n_pads:
        padding[-1, length - n_pads:] = True
    return (_randn(generator, batch, length, d_student), _randn(generator, batch, length, d_teacher),
            _randn(generator, d_teacher, d_student) * 0.5, _randn(generator, d_teacher), padding)


def _hidden_state_loss_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case(_hidden_case(generator, 2, 4, 3, 5, 0), "no padding"),
             Case(_hidden_case(generator, 2, 4, 3, 5, 2), "the last row ends in two pads: leave them out"),
             Case(_hidden_case(generator, 1, 3, 4, 4, 0), "equal widths (a square projection)")]
    for _ in range(n_random):
        length = _randint(generator, 2, 6)
        cases.append(Case(_hidden_case(generator, _randint(generator, 1, 3), length, _randint(generator, 2, 6),
                                       _randint(generator, 2, 8), _randint(generator, 0, length - 1)), "random"))
    return cases


for _exercise in (
    Exercise(
        name="distill.softened_softmax",
        title="The softened softmax",
        goal="p_i = exp(z_i / T) / sum_j exp(z_j / T) over the last dim, computed stably.",
        make_cases=_softened_softmax_cases,
        reference=_softened_softmax_reference,
        signature="softened_softmax(logits: Tensor (..., C), temperature: float > 0) -> Tensor (..., C)",
    ),
    Exercise(
        name="distill.kd_loss",
        title="The distillation loss",
        goal="mean over the batch of alpha·CE(softmax(z_s), y) + (1 − alpha)·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)).",
        make_cases=_kd_cases,
        reference=_kd_loss_reference,
        signature="kd_loss(student_logits (B, C), teacher_logits (B, C), targets (B,) int64, temperature, alpha) "
                  "-> scalar Tensor",
    ),
    Exercise(
        name="distill.kd_gradient",
        title="The gradient of the distillation loss",
        goal="d loss / d z_s = [alpha·(softmax(z_s) − onehot(y)) + (1 − alpha)·T·(p_T^s − p_T^t)] / B.",
        make_cases=_kd_cases,
        reference=_kd_gradient_reference,
        signature="kd_gradient(student_logits (B, C), teacher_logits (B, C), targets (B,), temperature, alpha) "
                  "-> Tensor (B, C)",
    ),
    Exercise(
        name="distill.hidden_state_loss",
        title="Matching hidden states through a projection",
        goal="mean over non-pad tokens of mean_j ((W h_s + b)_j − h_t,j)²; padding_mask is True at pads.",
        make_cases=_hidden_state_loss_cases,
        reference=_hidden_state_loss_reference,
        signature="hidden_state_loss(student_hidden (B, T, d_s), teacher_hidden (B, T, d_t), weight (d_t, d_s), "
                  "bias (d_t,), padding_mask (B, T) bool) -> scalar Tensor",
    ),
):
    add_exercise(_exercise)
del _exercise
