"""labkit.distill: kd_loss against a hand-written reference and F.kl_div (values and gradients), the closed-form
gradient, hooks that read hidden states and attention maps, intermediate losses, and trainers that never touch
the teacher."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import distill
from labkit.distill import (IntermediateDistillation, attention_map_loss, capture_layers, distill_classifier,
                            distill_language_model, frozen, hidden_state_loss, kd_logit_gradient, kd_loss,
                            softened_softmax, uniform_layer_map)
from labkit.transformer import GPT, EncoderClassifier, TransformerConfig, count_parameters

DTYPES = [torch.float32, torch.float64]
SHAPES = [(5, 3), (4, 10), (2, 3, 7), (1, 1)]


def logits_and_targets(shape, dtype, seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    student = (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    teacher = (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    targets = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    return student, teacher, targets


def handwritten_kd(student, teacher, targets, temperature, alpha):
    """The formula written out with explicit sums, in float64: alpha CE + (1 - alpha) T^2 KL(p_t || p_s)."""
    s, t = student.double().reshape(-1, student.size(-1)), teacher.double().reshape(-1, teacher.size(-1))
    y = targets.reshape(-1)
    total = 0.0
    for row in range(s.size(0)):
        p_s = torch.exp(s[row] / temperature) / torch.exp(s[row] / temperature).sum()
        p_t = torch.exp(t[row] / temperature) / torch.exp(t[row] / temperature).sum()
        kl = sum(float(p_t[i] * (torch.log(p_t[i]) - torch.log(p_s[i]))) for i in range(s.size(1)))
        p_hard = torch.exp(s[row]) / torch.exp(s[row]).sum()
        total += alpha * float(-torch.log(p_hard[y[row]])) + (1 - alpha) * temperature**2 * kl
    return total / s.size(0)


def torch_kd(student, teacher, targets, temperature, alpha):
    """The usual PyTorch spelling: F.cross_entropy + F.kl_div(log p_s, p_t, batchmean) * T^2."""
    s, t = student.reshape(-1, student.size(-1)), teacher.reshape(-1, teacher.size(-1))
    soft = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
    return alpha * F.cross_entropy(s, targets.reshape(-1)) + (1 - alpha) * temperature**2 * soft


# ---- the loss --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.1), (0.5, 0.9), (2.0, 0.0), (3.0, 1.0)])
def test_kd_loss_matches_references(shape, dtype, temperature, alpha):
    student, teacher, targets = logits_and_targets(shape, dtype)
    ours = kd_loss(student, teacher, targets, temperature, alpha)
    assert ours.dtype == dtype and ours.shape == ()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours.double(), torch.tensor(handwritten_kd(student, teacher, targets, temperature,
                                                                          alpha), dtype=torch.float64), **tol)
    torch.testing.assert_close(ours, torch_kd(student, teacher, targets, temperature, alpha), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.1), (2.0, 0.0)])
def test_kd_gradient_matches_torch_and_closed_form(shape, dtype, temperature, alpha):
    student, teacher, targets = logits_and_targets(shape, dtype, seed=1)
    ours_in = student.clone().requires_grad_()
    ref_in = student.clone().requires_grad_()
    kd_loss(ours_in, teacher, targets, temperature, alpha).backward()
    torch_kd(ref_in, teacher, targets, temperature, alpha).backward()
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, **tol)
    torch.testing.assert_close(ours_in.grad, kd_logit_gradient(student, teacher, targets, temperature, alpha), **tol)


def test_soft_gradient_is_t_times_probability_gap():
    """dL/dz_s of the soft term alone (alpha = 0, one example) is T (p_T^s - p_T^t): the T^2 factor cancels one 1/T
    from the chain rule and leaves a gradient that shrinks only like 1/T, not 1/T^2."""
    student, teacher, _ = logits_and_targets((1, 6), torch.float64, seed=2)
    for temperature in (1.0, 2.0, 8.0):
        z = student.clone().requires_grad_()
        kd_loss(z, teacher, None, temperature, alpha=0.0).backward()
        expected = temperature * (softened_softmax(student, temperature) - softened_softmax(teacher, temperature))
        torch.testing.assert_close(z.grad, expected, atol=1e-12, rtol=1e-10)
    without_t2 = student.clone().requires_grad_()
    (kd_loss(without_t2, teacher, None, 8.0, alpha=0.0) / 64).backward()
    assert without_t2.grad.abs().max() < z.grad.abs().max() / 10  # without T^2 the gradient would vanish


def test_high_temperature_limit_is_logit_matching():
    """For T >> |z|, T (p_T^s - p_T^t) -> (z_s - z_t - mean gap) / C: the gradient of (1/2C)||z_s - z_t||^2 with
    zero-mean logits (Hinton et al. 2015, section 2.1)."""
    student, teacher, _ = logits_and_targets((3, 5), torch.float64, seed=3, scale=1.0)
    gap = student - teacher
    matching = (gap - gap.mean(-1, keepdim=True)) / student.size(-1)
    errors = []
    for temperature in (10.0, 100.0, 1000.0):
        grad = kd_logit_gradient(student, teacher, None, temperature, alpha=0.0) * student.size(0)
        errors.append((grad - matching).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3 * matching.abs().max().item()


def test_kd_loss_is_zero_for_identical_logits_and_reductions_agree():
    student, _, targets = logits_and_targets((4, 6, 9), torch.float64)
    assert kd_loss(student, student.clone(), targets, 3.0, alpha=0.0).abs().item() < 1e-12
    per = kd_loss(student, student.flip(-1), targets, 2.0, 0.3, reduction="none")
    assert per.shape == (4, 6) and (per > 0).all()
    torch.testing.assert_close(per.mean(), kd_loss(student, student.flip(-1), targets, 2.0, 0.3))
    torch.testing.assert_close(per.sum(), kd_loss(student, student.flip(-1), targets, 2.0, 0.3, reduction="sum"))


def test_teacher_logits_get_no_gradient_and_extreme_logits_stay_finite():
    student, teacher, targets = logits_and_targets((4, 5), torch.float32)
    teacher = teacher.clone().requires_grad_()
    student = (student * 1000).requires_grad_()
    loss = kd_loss(student, teacher * 1000, targets, 1.0, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and teacher.grad is None


def test_softened_softmax_limits():
    z = torch.tensor([[2.0, 1.0, -1.0]])
    torch.testing.assert_close(softened_softmax(z, 1.0), torch.softmax(z, -1))
    assert torch.allclose(softened_softmax(z, 1e6), torch.full_like(z, 1 / 3), atol=1e-5)
    assert torch.allclose(softened_softmax(z, 1e-3), torch.tensor([[1.0, 0.0, 0.0]]))
    entropy = [-(p * p.log()).sum().item() for p in (softened_softmax(z, t) for t in (0.5, 1.0, 2.0, 4.0))]
    assert entropy == sorted(entropy)


@pytest.mark.parametrize("call,error,match", [
    (lambda s, t, y: kd_loss(s, t[:, :2], y), ValueError, "shape of student_logits"),
    (lambda s, t, y: kd_loss(s, t, y.float()), TypeError, "integer tensor"),
    (lambda s, t, y: kd_loss(s, t, y[:2]), ValueError, "targets must have shape"),
    (lambda s, t, y: kd_loss(s, t, y + 10), ValueError, r"class ids in \[0, 3\)"),
    (lambda s, t, y: kd_loss(s, t, None, alpha=0.5), ValueError, "targets are needed"),
    (lambda s, t, y: kd_loss(s, t, y, temperature=0.0), ValueError, "temperature must be"),
    (lambda s, t, y: kd_loss(s, t, y, temperature=float("inf")), ValueError, "temperature must be"),
    (lambda s, t, y: kd_loss(s, t, y, alpha=1.5), ValueError, r"alpha must be a number in \[0, 1\]"),
    (lambda s, t, y: kd_loss(s, t, y, reduction="batchmean"), ValueError, "reduction must be one of"),
    (lambda s, t, y: kd_loss(s.long(), t, y), TypeError, "floating-point"),
    (lambda s, t, y: kd_loss(s.tolist(), t, y), TypeError, "torch.Tensor"),
    (lambda s, t, y: softened_softmax(s, -1.0), ValueError, "temperature"),
])
def test_bad_input(call, error, match):
    student, teacher, targets = logits_and_targets((4, 3), torch.float32)
    with pytest.raises(error, match=match):
        call(student, teacher, targets)


# ---- hidden states and attention maps --------------------------------------------------------------------------------


def classifier(d_model=16, n_layers=2, seed=0, n_heads=2):
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=20, d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_ff=2 * d_model,
                               max_len=12, n_classes=3, pad_id=0)
    return EncoderClassifier(config)


def gpt(d_model=16, n_layers=2, seed=0):
    torch.manual_seed(seed)
    return GPT(TransformerConfig(vocab_size=20, d_model=d_model, n_heads=2, n_layers=n_layers, d_ff=2 * d_model,
                                 max_len=12))


def test_capture_layers_reads_the_models_own_attention_and_leaves_the_output_alone():
    model = gpt(n_layers=3).eval()
    idx = torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(0))
    reference_logits, reference_maps = model(idx, return_attention=True)
    with capture_layers(model, attention=True) as states:
        model(idx)  # a first pass is forgotten by the next
        logits = model(idx)
    assert len(states.hidden) == 3 and len(states.attention) == 3
    torch.testing.assert_close(logits, reference_logits, atol=0, rtol=0)
    for ours, theirs in zip(states.attention, reference_maps):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    assert states.hidden[0].shape == (2, 7, 16)
    assert not model.blocks.layers[0]._forward_hooks and not model.blocks.layers[0].self_attn._forward_pre_hooks


def test_capture_layers_hidden_states_are_the_layer_outputs():
    model = classifier().eval()
    idx = torch.randint(1, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    with capture_layers(model) as states:
        model(idx)
    x = model.embed(idx)
    for layer, captured in zip(model.encoder.layers, states.hidden):
        x = layer(x)
        torch.testing.assert_close(captured, x)
    assert states.attention == []
    with pytest.raises(TypeError, match="EncoderClassifier or GPT"):
        with capture_layers(nn.Linear(2, 2)):
            pass


def test_uniform_layer_map():
    assert uniform_layer_map(1, 2) == [(0, 1)]
    assert uniform_layer_map(2, 6) == [(0, 2), (1, 5)]
    assert uniform_layer_map(3, 3) == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError, match="more layers"):
        uniform_layer_map(4, 2)
    with pytest.raises(ValueError, match="positive int"):
        uniform_layer_map(0, 2)


def test_hidden_state_loss_against_mse_with_and_without_projection():
    generator = torch.Generator().manual_seed(0)
    h_s, h_t = torch.randn(2, 5, 4, generator=generator), torch.randn(2, 5, 8, generator=generator)
    projection = nn.Linear(4, 8)
    mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    keep = ~mask
    expected = F.mse_loss(projection(h_s)[keep], h_t[keep])
    torch.testing.assert_close(hidden_state_loss(h_s, h_t, projection, mask), expected)
    torch.testing.assert_close(hidden_state_loss(h_t, h_t + 1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="give a projection"):
        hidden_state_loss(h_s, h_t)
    with pytest.raises(ValueError, match="share"):
        hidden_state_loss(h_s[:1], h_t, projection)
    with pytest.raises(ValueError, match="padding_mask"):
        hidden_state_loss(h_s, h_t, projection, mask.long())


def test_attention_map_loss_is_kl_over_keys():
    generator = torch.Generator().manual_seed(0)
    a_s = torch.softmax(torch.randn(2, 3, 4, 4, generator=generator), -1)
    a_t = torch.softmax(torch.randn(2, 3, 4, 4, generator=generator), -1)
    expected = F.kl_div(a_s.log().reshape(-1, 4), a_t.reshape(-1, 4), reduction="batchmean")
    torch.testing.assert_close(attention_map_loss(a_s, a_t), expected)
    assert attention_map_loss(a_t, a_t).abs().item() < 1e-6
    fewer_heads = attention_map_loss(a_s[:, :1], a_t)  # different head counts: head-averaged maps
    torch.testing.assert_close(fewer_heads, F.kl_div(a_s[:, :1].log().reshape(-1, 4),
                                                     a_t.mean(1).reshape(-1, 4), reduction="batchmean"))
    with pytest.raises(ValueError, match=r"\(B, H, T, T\)"):
        attention_map_loss(a_s[0], a_t)


def test_intermediate_distillation_projects_only_when_widths_differ():
    teacher, narrow, same = classifier(16, 2), classifier(8, 1, seed=1), classifier(16, 1, seed=2)
    wide = IntermediateDistillation.between(narrow, teacher, hidden_weight=1.0, attention_weight=0.5)
    assert wide.layer_map == [(0, 1)] and isinstance(wide.projections[0], nn.Linear)
    assert wide.projections[0].in_features == 8 and wide.projections[0].out_features == 16
    assert isinstance(IntermediateDistillation.between(same, teacher).projections[0], nn.Identity)
    idx = torch.randint(1, 20, (2, 6), generator=torch.Generator().manual_seed(0))
    with capture_layers(narrow, attention=True) as s_states, capture_layers(teacher, attention=True) as t_states:
        narrow(idx)
        teacher(idx)
    loss = wide(s_states, t_states)
    expected = (hidden_state_loss(s_states.hidden[0], t_states.hidden[1], wide.projections[0])
                + 0.5 * attention_map_loss(s_states.attention[0], t_states.attention[1]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert wide.projections[0].weight.grad is not None
    with pytest.raises(ValueError, match="out of range"):
        IntermediateDistillation.between(narrow, teacher, layer_map=[(0, 2)])
    with pytest.raises(ValueError, match="nothing to distil"):
        IntermediateDistillation(8, 16, [(0, 0)], hidden_weight=0.0)
    with pytest.raises(ValueError, match="layer_map"):
        IntermediateDistillation(8, 16, [])


# ---- the trainers ----------------------------------------------------------------------------------------------------


def classification_data(n=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (n, 10), generator=generator)
    labels = ids[:, 0] % 3
    padding = torch.zeros_like(ids, dtype=torch.bool)
    padding[::3, 7:] = True
    return ids, labels, padding


class Spy:
    """Records, at every teacher forward pass, the teacher's mode and whether autograd was on."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_hook(lambda module, args, out: self.calls.append(
            (module.training, torch.is_grad_enabled(), out.requires_grad)))


@pytest.mark.parametrize("intermediate", [False, True])
def test_distill_classifier_never_changes_the_teacher(intermediate):
    ids, labels, padding = classification_data()
    teacher, student = classifier(16, 2).train(), classifier(8, 1, seed=1)
    before = copy.deepcopy(teacher.state_dict())
    spy = Spy(teacher)
    layers = IntermediateDistillation.between(student, teacher, attention_weight=0.5) if intermediate else None
    student_before = copy.deepcopy(student.state_dict())
    history = distill_classifier(student, teacher, ids, labels, padding_mask=padding, steps=6, batch_size=8, lr=1e-2,
                                 intermediate=layers, val_ids=ids, val_labels=labels, val_padding_mask=padding,
                                 eval_every=3, progress=False)
    assert len(history.loss) == 6 and set(history.val_accuracy) == {3, 6}
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[name], atol=0, rtol=0)
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())
    assert teacher.training  # the mode it came in with
    assert spy.calls and all(not training and not grad for training, grad, _ in spy.calls)
    assert any((student.state_dict()[k] != v).any() for k, v in student_before.items())
    if layers is not None:
        assert len(spy.calls) == 6  # on the fly: one teacher pass per step
    else:
        assert len(spy.calls) == 1  # precomputed: one pass over the 48 examples


def test_precomputed_teacher_gives_the_same_training_as_on_the_fly():
    ids, labels, padding = classification_data()
    teacher = classifier(16, 2)
    runs = []
    for precompute in (True, False):
        student = classifier(8, 1, seed=1)
        history = distill_classifier(student, teacher, ids, labels, padding_mask=padding, steps=5, batch_size=8,
                                     lr=1e-2, temperature=3.0, alpha=0.3, precompute_teacher=precompute,
                                     progress=False)
        runs.append((history.loss, student.state_dict()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for name, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][name], atol=1e-5, rtol=1e-4)


def test_distillation_moves_the_student_towards_the_teacher():
    ids, labels, padding = classification_data(64)
    teacher, student = classifier(16, 2), classifier(8, 1, seed=1)
    with torch.no_grad():
        teacher.head.weight.mul_(20)  # a confident teacher whose answers are not the labels
    teacher.eval()

    def gap():
        with torch.no_grad():
            return kd_loss(student(ids, padding), teacher(ids, padding), None, 1.0, alpha=0.0).item()

    start = gap()
    distill_classifier(student, teacher, ids, labels, padding_mask=padding, steps=40, batch_size=16, lr=1e-2,
                       temperature=1.0, alpha=0.0, progress=False)
    assert gap() < 0.5 * start


def test_alpha_one_is_plain_training():
    from labkit.train import train_classifier

    ids, labels, padding = classification_data()
    teacher = classifier(16, 2)
    a, b = classifier(8, 1, seed=1), classifier(8, 1, seed=1)
    h_kd = distill_classifier(a, teacher, ids, labels, padding_mask=padding, steps=5, batch_size=8, lr=1e-2, alpha=1.0,
                              progress=False, seed=3)
    h_ce = train_classifier(b, ids, labels, padding_mask=padding, steps=5, batch_size=8, lr=1e-2, progress=False, seed=3)
    assert h_kd.loss == pytest.approx(h_ce.loss, rel=1e-5)


def test_distill_language_model_with_hidden_states():
    tokens = torch.randint(0, 20, (400,), generator=torch.Generator().manual_seed(0))
    teacher, student = gpt(16, 2), gpt(8, 1, seed=1)
    before = copy.deepcopy(teacher.state_dict())
    layers = IntermediateDistillation.between(student, teacher)
    history = distill_language_model(student, teacher, tokens, steps=4, batch_size=4, seq_len=8, lr=1e-2,
                                     intermediate=layers, val_tokens=tokens, eval_every=2, eval_batches=2,
                                     progress=False)
    assert len(history.loss) == 4 and set(history.val_loss) == {2, 4}
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert layers.projections[0].weight.grad is not None
    assert count_parameters(student) < count_parameters(teacher)


def test_frozen_restores_flags_and_trainer_bad_input():
    teacher = classifier()
    next(teacher.parameters()).requires_grad_(False)
    flags = [p.requires_grad for p in teacher.parameters()]
    with frozen(teacher) as t:
        assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert [p.requires_grad for p in teacher.parameters()] == flags and teacher.training
    ids, labels, _ = classification_data()
    with pytest.raises(ValueError, match="different modules"):
        distill_classifier(teacher, teacher, ids, labels, steps=1, batch_size=4, lr=1e-3, progress=False)
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        distill_classifier(classifier(), "teacher", ids, labels, steps=1, batch_size=4, lr=1e-3, progress=False)
    with pytest.raises(TypeError, match="IntermediateDistillation"):
        distill_classifier(classifier(), classifier(seed=1), ids, labels, steps=1, batch_size=4, lr=1e-3,
                           intermediate=nn.Linear(2, 2), progress=False)
    with pytest.raises(ValueError, match="labels must have shape"):
        distill_classifier(classifier(), classifier(seed=1), ids, labels[:3], steps=1, batch_size=4, lr=1e-3,
                           progress=False)
    with pytest.raises(ValueError, match="temperature"):
        distill_classifier(classifier(), classifier(seed=1), ids, labels, steps=1, batch_size=4, lr=1e-3,
                           temperature=-1, progress=False)


def test_public_names():
    assert set(distill.__all__) <= set(dir(distill))


def test_train_or_load_distilled_classifier_caches_and_follows_the_teacher(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from labkit.config import get_profile

    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    ids, labels, padding = classification_data()
    task = SimpleNamespace(train_ids=ids, train_labels=labels, train_padding=padding, val_ids=ids[:8],
                           val_labels=labels[:8], val_padding=padding[:8], key={"task": "test"})
    teacher, config = classifier(16, 2), classifier(8, 1).config
    settings = {"steps": 3, "batch_size": 8, "lr": 1e-2, "eval_every": 3, "seed": 0}
    profile = get_profile("smoke")
    run = lambda: distill.train_or_load_distilled_classifier(  # noqa: E731
        task, teacher, config, settings, name="test-kd", hidden_weight=1.0, profile=profile, progress=False)
    first, history, loaded = run()
    again, history_again, loaded_again = run()
    assert not loaded and loaded_again and history.loss == history_again.loss
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    with torch.no_grad():
        teacher.head.bias.add_(1.0)
    assert run()[2] is False  # another teacher: trained again
