"""Chapter "Optimizers" exercises: the references pass their own checks, independent right answers pass, and
plausible wrong answers fail with a message that names the case."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit import exercises
from labkit.exercises import ExerciseError, check

CHAPTER = ["optim.adam_step", "optim.adam_weight_decay", "optim.warmup_cosine", "optim.clip_grad_norm",
           "optim.label_smoothing"]


# ---------------------------------------------------------------------------------------------- learners


def adam_step_right(param, grad, m, v, step, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v


def adam_step_with_torch(param, grad, m, v, step, lr, beta1, beta2, eps):
    """An independent right answer: torch.optim.Adam, its state set to step - 1."""
    p = param.clone().requires_grad_()
    p.grad = grad.clone()
    optimizer = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps, foreach=False)
    optimizer.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    optimizer.step()
    return p.detach(), optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"]


def adam_step_no_bias_correction(param, grad, m, v, step, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    return param - lr * m / (v.sqrt() + eps), m, v


def adam_step_eps_inside_sqrt(param, grad, m, v, step, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    return param - lr * m_hat / (v_hat + eps).sqrt(), m, v


def weight_decay_right(param, grad, m, v, step, lr, weight_decay, decoupled):
    if decoupled:
        param = param * (1 - lr * weight_decay)
    else:
        grad = grad + weight_decay * param
    return adam_step_right(param, grad, m, v, step, lr, 0.9, 0.999, 1e-8)


def weight_decay_always_coupled(param, grad, m, v, step, lr, weight_decay, decoupled):
    return adam_step_right(param, grad + weight_decay * param, m, v, step, lr, 0.9, 0.999, 1e-8)


def weight_decay_without_lr(param, grad, m, v, step, lr, weight_decay, decoupled):
    """Wrong: AdamW's decay is lr·λ·θ, not λ·θ."""
    if decoupled:
        param = param * (1 - weight_decay)
    else:
        grad = grad + weight_decay * param
    return adam_step_right(param, grad, m, v, step, lr, 0.9, 0.999, 1e-8)


def warmup_cosine_right(step, warmup_steps, total_steps, min_lr_ratio):
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2


def warmup_cosine_from_zero(step, warmup_steps, total_steps, min_lr_ratio):
    """Wrong: step / W makes the first step's lr 0."""
    if step < warmup_steps:
        return step / warmup_steps
    return warmup_cosine_right(step, warmup_steps, total_steps, min_lr_ratio)


def warmup_cosine_unclamped(step, warmup_steps, total_steps, min_lr_ratio):
    """Wrong: after total_steps the cosine comes back up."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * progress)) / 2


def clip_right(grads, max_norm):
    total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    factor = min(1.0, max_norm / (total + 1e-6))
    return [g * factor for g in grads], total


def clip_with_torch(grads, max_norm):
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], float(total)


def clip_per_tensor(grads, max_norm):
    """Wrong: each tensor clipped by its own norm."""
    clipped = [g * min(1.0, max_norm / (float(g.norm()) + 1e-6)) for g in grads]
    return clipped, math.sqrt(sum(float(g.norm()) ** 2 for g in grads))


def clip_always_rescale(grads, max_norm):
    """Wrong: rescales to max_norm even when the norm is smaller."""
    total = math.sqrt(sum(float((g**2).sum()) for g in grads))
    return [g * (max_norm / (total + 1e-6)) for g in grads], total


def label_smoothing_right(logits, target, smoothing):
    log_probs = torch.log_softmax(logits, dim=-1)
    k = logits.size(-1)
    q = torch.full_like(log_probs, smoothing / k)
    q.scatter_add_(1, target[:, None], torch.full_like(log_probs[:, :1], 1 - smoothing))
    return -(q * log_probs).sum(-1).mean()


def label_smoothing_with_torch(logits, target, smoothing):
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


def label_smoothing_k_minus_1(logits, target, smoothing):
    """Wrong: ε spread over the K − 1 other classes (another convention, not torch's nor the chapter's)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    k = logits.size(-1)
    q = torch.full_like(log_probs, smoothing / (k - 1))
    q.scatter_(1, target[:, None], 1 - smoothing)
    return -(q * log_probs).sum(-1).mean()


def label_smoothing_naive_log(logits, target, smoothing):
    """Wrong on large logits: log(softmax) underflows to -inf, where log_softmax stays finite."""
    probs = torch.softmax(logits, dim=-1)
    k = logits.size(-1)
    q = torch.full_like(probs, smoothing / k)
    q.scatter_add_(1, target[:, None], torch.full_like(probs[:, :1], 1 - smoothing))
    return -(q * probs.log()).sum(-1).mean()


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name, learner", [
    ("optim.adam_step", adam_step_right),
    ("optim.adam_step", adam_step_with_torch),
    ("optim.adam_weight_decay", weight_decay_right),
    ("optim.warmup_cosine", warmup_cosine_right),
    ("optim.clip_grad_norm", clip_right),
    ("optim.clip_grad_norm", clip_with_torch),
    ("optim.label_smoothing", label_smoothing_right),
    ("optim.label_smoothing", label_smoothing_with_torch),
])
def test_independent_right_answers_pass(name, learner):
    result = check(name, learner, verbose=False)
    assert result.max_abs_error < 1e-4


@pytest.mark.parametrize("name, learner, case_label", [
    ("optim.adam_step", adam_step_no_bias_correction, "first step"),
    ("optim.adam_step", adam_step_eps_inside_sqrt, "tiny gradients, large eps"),
    ("optim.adam_weight_decay", weight_decay_always_coupled, "decoupled (AdamW), first step"),
    ("optim.adam_weight_decay", weight_decay_without_lr, "decoupled (AdamW), first step"),
    ("optim.warmup_cosine", warmup_cosine_from_zero, "step 0 of the warm-up"),
    ("optim.warmup_cosine", warmup_cosine_unclamped, "after the end"),
    ("optim.clip_grad_norm", clip_per_tensor, "norm above max_norm"),
    ("optim.clip_grad_norm", clip_always_rescale, "norm below max_norm"),
    ("optim.label_smoothing", label_smoothing_k_minus_1, "ε = 0.1"),
    ("optim.label_smoothing", label_smoothing_naive_log, "large logits"),
])
def test_wrong_answers_fail_on_the_case_that_shows_the_mistake(name, learner, case_label, rejection):
    assert f"[{case_label}" in rejection(name, learner)


def test_clip_failure_message_shows_the_error():
    with pytest.raises(ExerciseError, match=r"item 0: item 0: values differ.*max abs error"):
        check("optim.clip_grad_norm", clip_per_tensor, verbose=False)


def test_clip_wants_a_float_norm():
    def tensor_norm(grads, max_norm):
        clipped, total = clip_right(grads, max_norm)
        return clipped, torch.tensor(total)

    with pytest.raises(ExerciseError, match="expected a number, got Tensor"):
        check("optim.clip_grad_norm", tensor_norm, verbose=False)


def test_references_leave_their_inputs_alone():
    exercise = exercises.get_exercise("optim.adam_step")
    case = exercise.make_cases(torch.Generator().manual_seed(0), 0)[1]
    before = [a.clone() if torch.is_tensor(a) else a for a in case.args]
    exercise.reference(*case.args)
    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(case.args, before))
    clip = exercises.get_exercise("optim.clip_grad_norm")
    grads, max_norm = clip.make_cases(torch.Generator().manual_seed(0), 0)[0].args
    copies = [g.clone() for g in grads]
    clipped, total = clip.reference(grads, max_norm)
    assert all(torch.equal(g, c) for g, c in zip(grads, copies)) and total > max_norm
    assert math.isclose(math.sqrt(sum(float((g**2).sum()) for g in clipped)), max_norm, rel_tol=1e-5)


def test_cases_are_deterministic_and_cover_edges():
    for name in CHAPTER:
        exercise = exercises.get_exercise(name)
        first = exercise.make_cases(torch.Generator().manual_seed(0), 3)
        second = exercise.make_cases(torch.Generator().manual_seed(0), 3)
        assert [c.label for c in first] == [c.label for c in second]
    adam_cases = exercises.get_exercise("optim.adam_step").make_cases(torch.Generator(), 0)
    assert any(c.args[4] == 1 and not c.args[2].any() for c in adam_cases)  # first step starts from zero moments
    assert any(c.args[0].dtype == torch.float64 for c in adam_cases)
    decay_cases = exercises.get_exercise("optim.adam_weight_decay").make_cases(torch.Generator(), 0)
    assert {c.args[-1] for c in decay_cases} == {True, False}


def test_exercises_are_listed_for_the_chapter():
    assert [e.name for e in exercises.list_exercises("optim.")] == sorted(CHAPTER)


def test_adam_reference_rejects_step_zero():
    with pytest.raises(ValueError, match="step must be >= 1"):
        exercises.get_exercise("optim.adam_step").reference(torch.zeros(2), torch.zeros(2), torch.zeros(2),
                                                             torch.zeros(2), 0, 1e-3, 0.9, 0.999, 1e-8)
