"""labkit.regularization: dropout statistics and masks, label smoothing against F.cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit.regularization import Dropout, dropout, dropout_mask, label_smoothing_cross_entropy

# ----------------------------------------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------------------------------------

N = 200_000


def _zero_fraction_tolerance(p: float, n: int = N) -> float:
    """Five standard deviations of a Binomial(n, p) fraction."""
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_dropout_statistics_match_F_dropout(p, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(N, generator=generator, dtype=dtype) + 0.5
    for impl in (lambda t: dropout(t, p, generator=generator), lambda t: F.dropout(t, p, training=True)):
        out = impl(x)
        zero_fraction = (out == 0).double().mean().item()
        assert abs(zero_fraction - p) < _zero_fraction_tolerance(p)
        kept = out != 0
        torch.testing.assert_close(out[kept], x[kept] / (1 - p))  # survivors scaled by 1/(1-p)
        # E[out] = E[x]: the kept fraction's deviation, scaled, bounds the deviation of the mean
        relative_tolerance = (_zero_fraction_tolerance(p) / (1 - p)
                              + 5 * x.std().item() / x.mean().item() / math.sqrt(N * (1 - p)))
        assert out.mean().item() == pytest.approx(x.mean().item(), rel=relative_tolerance)


def test_dropout_mask_equals_reference_formula():
    x = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    p = 0.3
    out = dropout(x, p, generator=torch.Generator().manual_seed(7))
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) < 1 - p
    torch.testing.assert_close(out, torch.where(keep, x / (1 - p), torch.zeros_like(x)))
    torch.testing.assert_close(dropout_mask(x.shape, p, generator=torch.Generator().manual_seed(7)), keep)
    out.sum().backward()
    torch.testing.assert_close(x.grad, keep.double() / (1 - p))  # gradient flows through the kept elements
    other = dropout(x, p, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other, out)


def test_dropout_edge_cases_and_eval_mode():
    x = torch.randn(3, 7, requires_grad=True)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.9, training=False) is x
    zeros = dropout(x, 1.0)
    assert torch.equal(zeros, torch.zeros_like(x)) and torch.equal(zeros, F.dropout(x, 1.0))
    zeros.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))

    module = Dropout(0.5, generator=torch.Generator().manual_seed(0))
    assert "p=0.5" in repr(module)
    assert module.training and (module(x) == 0).any()
    module.eval()
    assert torch.equal(module(x), x)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_dropout_rejects_bad_probability(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        dropout(torch.ones(3), p)
    with pytest.raises(ValueError):
        Dropout(p)


def test_dropout_rejects_bad_types():
    with pytest.raises(TypeError, match="floating-point"):
        dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="must be a Tensor"):
        dropout([1.0, 2.0], 0.5)
    with pytest.raises(TypeError):
        dropout(torch.ones(3), "0.5")


# ----------------------------------------------------------------------------------------------------------
# label smoothing
# ----------------------------------------------------------------------------------------------------------


def _case(shape, n_classes, dtype, ignore_index=-100, ignored=0):
    generator = torch.Generator().manual_seed(sum(shape) + n_classes)
    logits = (torch.randn(shape, generator=generator, dtype=dtype) * 3)
    target_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    target = torch.randint(0, n_classes, target_shape, generator=generator)
    if ignored:
        flat = target.view(-1)
        flat[:ignored] = ignore_index
    return logits, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 6), (2, 7, 3, 2), (5,)], ids=str)
def test_label_smoothing_matches_cross_entropy(shape, reduction, smoothing, dtype):
    n_classes = shape[1] if len(shape) > 1 else shape[0]
    logits, target = _case(shape, n_classes, dtype, ignored=2 if len(shape) > 1 else 0)
    ours_logits = logits.clone().requires_grad_()
    theirs_logits = logits.clone().requires_grad_()
    ours = label_smoothing_cross_entropy(ours_logits, target, smoothing, reduction=reduction)
    theirs = F.cross_entropy(theirs_logits, target, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(ours, theirs)
    grad_output = torch.randn_like(theirs)
    ours.backward(grad_output)
    theirs.backward(grad_output)
    torch.testing.assert_close(ours_logits.grad, theirs_logits.grad)


def test_label_smoothing_is_cross_entropy_against_mixed_target():
    logits, target = _case((6, 4), 4, torch.float64)
    eps = 0.2
    mixed = (1 - eps) * F.one_hot(target, 4).double() + eps / 4
    expected = -(mixed * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, target, eps, reduction="none"), expected)
    # F.cross_entropy with probability targets gives the same numbers
    torch.testing.assert_close(expected, F.cross_entropy(logits, mixed, reduction="none"))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_custom_ignore_index(reduction):
    logits, target = _case((10, 4), 4, torch.float64, ignore_index=2, ignored=0)
    target[:3] = 2  # a valid class index used as ignore_index, as torch allows
    ours = label_smoothing_cross_entropy(logits, target, 0.3, ignore_index=2, reduction=reduction)
    theirs = F.cross_entropy(logits, target, label_smoothing=0.3, ignore_index=2, reduction=reduction)
    torch.testing.assert_close(ours, theirs)
    if reduction == "none":
        assert torch.all(ours[target == 2] == 0)


def test_label_smoothing_all_targets_ignored():
    logits = torch.randn(3, 4)
    target = torch.full((3,), -100)
    assert torch.isnan(label_smoothing_cross_entropy(logits, target, 0.1))
    assert torch.isnan(F.cross_entropy(logits, target, label_smoothing=0.1))
    assert label_smoothing_cross_entropy(logits, target, 0.1, reduction="sum").item() == 0.0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(smoothing=-0.1), ValueError, "smoothing must be in"),
    (dict(smoothing=1.1), ValueError, "smoothing must be in"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(target=torch.zeros(4)), TypeError, "class indices"),
    (dict(target=torch.zeros(5, dtype=torch.long)), ValueError, r"target must have shape \(4,\)"),
    (dict(target=torch.tensor([0, 1, 3, 0])), ValueError, r"target values must be in \[0, 3\)"),
    (dict(target=torch.tensor([0, -1, 1, 0])), ValueError, "target values"),
    (dict(logits=torch.zeros(4, 3, dtype=torch.long)), TypeError, "floating-point"),
    (dict(logits=torch.tensor(1.0)), ValueError, "scalar"),
])
def test_label_smoothing_bad_inputs(kwargs, error, match):
    arguments = dict(logits=torch.randn(4, 3), target=torch.tensor([0, 1, 2, 0]), smoothing=0.1)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        label_smoothing_cross_entropy(**arguments)
