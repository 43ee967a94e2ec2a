"""Chapter "Knowledge distillation" exercises: the references pass their own checks, independent right answers pass,
and plausible wrong answers fail with a message that names the case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit import exercises
from labkit.exercises import check

CHAPTER = ["distill.softened_softmax", "distill.kd_loss", "distill.kd_gradient", "distill.hidden_state_loss"]

# ---------------------------------------------------------------------------------------------- learners


def softened_softmax_right(logits, temperature):
    z = logits / temperature
    z = z - z.max(dim=-1, keepdim=True).values
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)


def softened_softmax_times_t(logits, temperature):
    """Wrong: multiplies by T, so a high temperature sharpens instead of flattening."""
    return torch.softmax(logits * temperature, dim=-1)


def softened_softmax_unstable(logits, temperature):
    """Wrong: no max subtraction, so exp overflows on large logits (NaN)."""
    e = (logits / temperature).exp()
    return e / e.sum(dim=-1, keepdim=True)


def kd_loss_right(student_logits, teacher_logits, targets, temperature, alpha):
    soft = F.kl_div(F.log_softmax(student_logits / temperature, -1), F.softmax(teacher_logits / temperature, -1),
                    reduction="batchmean")
    return alpha * F.cross_entropy(student_logits, targets) + (1 - alpha) * temperature**2 * soft


def kd_loss_without_t2(student_logits, teacher_logits, targets, temperature, alpha):
    """Wrong: forgets the T^2 factor."""
    return kd_loss_right(student_logits, teacher_logits, targets, temperature, alpha) \
        - (1 - alpha) * (temperature**2 - 1) * F.kl_div(F.log_softmax(student_logits / temperature, -1),
                                                        F.softmax(teacher_logits / temperature, -1),
                                                        reduction="batchmean")


def kd_loss_reversed_kl(student_logits, teacher_logits, targets, temperature, alpha):
    """Wrong: KL(p_s || p_t), the divergence the other way round."""
    soft = F.kl_div(F.log_softmax(teacher_logits / temperature, -1), F.softmax(student_logits / temperature, -1),
                    reduction="batchmean")
    return alpha * F.cross_entropy(student_logits, targets) + (1 - alpha) * temperature**2 * soft


def kd_loss_hard_term_at_t(student_logits, teacher_logits, targets, temperature, alpha):
    """Wrong: the cross-entropy with the labels computed on the softened logits z_s / T."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, -1), F.softmax(teacher_logits / temperature, -1),
                    reduction="batchmean")
    return alpha * F.cross_entropy(student_logits / temperature, targets) + (1 - alpha) * temperature**2 * soft


def kd_loss_mean_over_classes(student_logits, teacher_logits, targets, temperature, alpha):
    """Wrong: F.kl_div's reduction="mean" (the default) also divides by the number of classes."""
    p_teacher = F.softmax(teacher_logits / temperature, -1)
    soft = (p_teacher * (p_teacher.log() - F.log_softmax(student_logits / temperature, -1))).mean()
    return alpha * F.cross_entropy(student_logits, targets) + (1 - alpha) * temperature**2 * soft


def kd_gradient_right(student_logits, teacher_logits, targets, temperature, alpha):
    z = student_logits.detach().clone().requires_grad_()
    kd_loss_right(z, teacher_logits, targets, temperature, alpha).backward()
    return z.grad


def kd_gradient_without_t(student_logits, teacher_logits, targets, temperature, alpha):
    """Wrong: the soft part as (p_T^s - p_T^t) without the factor T left over from T^2 / T."""
    batch = student_logits.size(0)
    onehot = F.one_hot(targets, student_logits.size(-1)).to(student_logits.dtype)
    soft = torch.softmax(student_logits / temperature, -1) - torch.softmax(teacher_logits / temperature, -1)
    return (alpha * (torch.softmax(student_logits, -1) - onehot) + (1 - alpha) * soft) / batch


def kd_gradient_not_averaged(student_logits, teacher_logits, targets, temperature, alpha):
    """Wrong: forgets the 1/B of the batch mean."""
    return kd_gradient_right(student_logits, teacher_logits, targets, temperature, alpha) * student_logits.size(0)


def hidden_loss_right(student_hidden, teacher_hidden, weight, bias, padding_mask):
    keep = ~padding_mask
    projected = student_hidden @ weight.T + bias
    return F.mse_loss(projected[keep], teacher_hidden[keep])


def hidden_loss_with_pads(student_hidden, teacher_hidden, weight, bias, padding_mask):
    """Wrong: averages over pad tokens too."""
    return F.mse_loss(student_hidden @ weight.T + bias, teacher_hidden)


def hidden_loss_summed_over_features(student_hidden, teacher_hidden, weight, bias, padding_mask):
    """Wrong: sums the squared error over the teacher's features instead of averaging."""
    return hidden_loss_right(student_hidden, teacher_hidden, weight, bias, padding_mask) * teacher_hidden.size(-1)


# ---------------------------------------------------------------------------------------------- tests


def test_chapter_exercises_are_registered():
    names = [e.name for e in exercises.list_exercises("distill.")]
    assert names == sorted(CHAPTER)


@pytest.mark.parametrize("name", CHAPTER)
def test_reference_passes_its_own_check(name):
    exercise = exercises.get_exercise(name)
    result = check(name, exercise.reference, verbose=False)
    assert result.n_cases >= 8 and result.max_abs_error == 0.0


@pytest.mark.parametrize("name,learner", [
    ("distill.softened_softmax", softened_softmax_right),
    ("distill.kd_loss", kd_loss_right),
    ("distill.kd_gradient", kd_gradient_right),
    ("distill.hidden_state_loss", hidden_loss_right),
])
def test_independent_right_answers_pass(name, learner):
    assert check(name, learner, verbose=False).n_cases >= 8


@pytest.mark.parametrize("name,learner,case", [
    ("distill.softened_softmax", softened_softmax_times_t, "T = 4"),
    ("distill.softened_softmax", softened_softmax_unstable, "large logits"),
    ("distill.kd_loss", kd_loss_without_t2, "T = 4"),
    ("distill.kd_loss", kd_loss_reversed_kl, "T = 1"),
    ("distill.kd_loss", kd_loss_hard_term_at_t, "T = 4"),
    ("distill.kd_loss", kd_loss_mean_over_classes, "T = 1"),
    ("distill.kd_gradient", kd_gradient_without_t, "T = 4"),
    ("distill.kd_gradient", kd_gradient_not_averaged, "T = 1"),
    ("distill.hidden_state_loss", hidden_loss_with_pads, "two pads"),
    ("distill.hidden_state_loss", hidden_loss_summed_over_features, "no padding"),
])
def test_wrong_answers_fail_on_the_named_case(rejection, name, learner, case):
    message = rejection(name, learner)
    assert case in message


def test_not_implemented_is_reported():
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(exercises.ExerciseError, match="not implemented yet"):
        check("distill.kd_loss", stub, verbose=False)
