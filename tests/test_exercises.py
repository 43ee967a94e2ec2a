"""labkit.exercises: right answers pass, wrong answers fail with a useful message."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit import exercises
from labkit.exercises import Case, Exercise, ExerciseError, ExerciseResult, check, check_function

CHAPTER_1 = ["transformer.attention", "transformer.sinusoidal_encoding", "transformer.layer_norm",
             "transformer.gpt_parameter_count"]


# ---------------------------------------------------------------------------------------------- learners


def attention_right(q, k, v, is_causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def attention_scaled_by_d(q, k, v, is_causal):
    scores = q @ k.transpose(-2, -1) / q.size(-1)  # wrong: d instead of sqrt(d)
    if is_causal:
        scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


def attention_without_mask(q, k, v, is_causal):
    return F.scaled_dot_product_attention(q, k, v)


def sinusoidal_right(n_positions, d_model):
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    angle = position / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = angle.sin()
    table[:, 1::2] = angle.cos()[:, : d_model // 2]
    return table.float()


def sinusoidal_halves(n_positions, d_model):
    """Wrong: all sines first, then all cosines, instead of interleaved."""
    table = sinusoidal_right(n_positions, d_model)
    return torch.cat([table[:, 0::2], table[:, 1::2]], dim=1)


def sinusoidal_swapped(n_positions, d_model):
    """Wrong: cos on even columns, sin on odd ones."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    angle = position / 10000 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = angle.cos()
    table[:, 1::2] = angle.sin()[:, : d_model // 2]
    return table


def layer_norm_right(x, weight, bias, eps):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def layer_norm_unbiased(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=True)  # wrong: N - 1
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gpt_count_reference(*args):
    return exercises.get_exercise("transformer.gpt_parameter_count").reference(*args)


def gpt_count_without_final_norm(vocab_size, d_model, n_layers, d_ff, max_len):
    return gpt_count_reference(vocab_size, d_model, n_layers, d_ff, max_len) - 2 * d_model


# ---------------------------------------------------------------------------------------------- chapter 1


ALL_EXERCISES = [exercise.name for exercise in exercises.list_exercises()]


@pytest.mark.parametrize("name", ALL_EXERCISES)
def test_reference_passes_its_own_check(name, capsys):
    result = check(name, exercises.get_exercise(name).reference)
    assert isinstance(result, ExerciseResult) and result.max_abs_error == 0.0
    assert result.n_cases > exercises.get_exercise(name).n_cases  # edge cases come on top of the random ones
    assert f"✓ {name}: all {result.n_cases} cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("name, learner", [
    ("transformer.attention", attention_right),
    ("transformer.sinusoidal_encoding", sinusoidal_right),
    ("transformer.layer_norm", layer_norm_right),
])
def test_independent_right_answers_pass(name, learner):
    result = check(name, learner, verbose=False)
    assert result.max_abs_error < 1e-4


@pytest.mark.parametrize("name, learner, expected", [
    ("transformer.attention", attention_scaled_by_d, "values differ"),
    ("transformer.attention", attention_without_mask, "causal"),
    ("transformer.sinusoidal_encoding", sinusoidal_halves, "values differ"),
    ("transformer.sinusoidal_encoding", sinusoidal_swapped, "values differ"),
    ("transformer.layer_norm", layer_norm_unbiased, "values differ"),
    ("transformer.gpt_parameter_count", gpt_count_without_final_norm, "off by -"),
])
def test_wrong_answers_fail(name, learner, expected, rejection):
    message = rejection(name, learner)
    assert expected in message
    if name != "transformer.gpt_parameter_count":
        assert "max abs error" in message and "as expected" in message  # the shapes and the error
    if name in ("transformer.attention", "transformer.layer_norm"):
        assert "inputs (Tensor(" in message


def test_failure_message_names_case_shapes_and_error():
    with pytest.raises(ExerciseError) as failure:
        check("transformer.attention", attention_without_mask, verbose=False)
    message = str(failure.value)
    assert "case 2 of" in message and "[causal]" in message
    assert "Tensor(2, 3, 5, 8) float32" in message and "True" in message
    assert "shape (2, 3, 5, 8) as expected" in message
    error = float(message.split("max abs error ")[1].split()[0])
    assert error > 1e-3


@pytest.mark.parametrize("name", ALL_EXERCISES)
def test_an_unfilled_stub_is_reported_as_not_implemented(name):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(ExerciseError, match="not implemented yet"):
        check(name, stub, verbose=False)


def test_a_crashing_learner_names_the_case():
    def learner(q, k, v, is_causal):
        return q @ k  # shapes do not fit

    with pytest.raises(ExerciseError, match=r"raised RuntimeError.*\n  on case 1 of"):
        check("transformer.attention", learner, verbose=False)


def test_wrong_shape_and_dtype_and_type():
    with pytest.raises(ExerciseError, match=r"expected shape \(4, 8\), got shape \(8, 4\)"):
        check("transformer.layer_norm", lambda x, w, b, eps: layer_norm_right(x, w, b, eps).T.contiguous(),
              verbose=False)
    with pytest.raises(ExerciseError, match="expected dtype torch.float32, got dtype torch.float64"):
        check("transformer.sinusoidal_encoding", lambda n, d: sinusoidal_right(n, d).double(), verbose=False)
    with pytest.raises(ExerciseError, match="expected a torch.Tensor, got list"):
        check("transformer.sinusoidal_encoding", lambda n, d: sinusoidal_right(n, d).tolist(), verbose=False)
    with pytest.raises(ExerciseError, match="expected an int, got float"):
        check("transformer.gpt_parameter_count", lambda *a: float(gpt_count_reference(*a)), verbose=False)


def test_cases_are_deterministic_and_cover_edges():
    exercise = exercises.get_exercise("transformer.attention")
    first = exercise.make_cases(torch.Generator().manual_seed(0), 4)
    second = exercise.make_cases(torch.Generator().manual_seed(0), 4)
    assert [c.label for c in first] == [c.label for c in second]
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a.args, b.args))
    assert any(c.args[0].shape[-2] == 1 for c in first)  # length 1
    assert any(c.args[3] for c in first) and any(not c.args[3] for c in first)  # causal and not
    sinusoidal = exercises.get_exercise("transformer.sinusoidal_encoding").make_cases(torch.Generator(), 0)
    assert any(d % 2 == 1 for _, d in (c.args for c in sinusoidal))  # odd d_model
    assert any(n == 1 for n, _ in (c.args for c in sinusoidal))


def test_n_cases_controls_random_cases(capsys):
    check("transformer.layer_norm", layer_norm_right, n_cases=0)
    assert "all 5 cases passed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="n_cases"):
        check("transformer.layer_norm", layer_norm_right, n_cases=-1)


def test_learner_cannot_corrupt_the_reference_inputs():
    def in_place_learner(x, weight, bias, eps):
        expected = layer_norm_right(x, weight, bias, eps)
        x.zero_()
        return expected

    check("transformer.layer_norm", in_place_learner, verbose=False)


def test_chapter_1_exercises_are_listed():
    assert [e.name for e in exercises.list_exercises("transformer.")] == sorted(CHAPTER_1)


@pytest.mark.parametrize("name", ALL_EXERCISES)
def test_every_exercise_has_title_goal_and_signature(name):
    exercise = exercises.get_exercise(name)
    assert exercise.title and exercise.goal and exercise.signature
    assert "\n" not in exercise.goal


def test_unknown_exercise():
    with pytest.raises(ValueError, match="unknown exercise 'nope'"):
        check("nope", lambda: None)


# ---------------------------------------------------------------------------------------------- the generic engine


def test_check_function_with_plain_cases():
    cases = [(1.0, 2.0), Case((3.0, 4.0), "second")]
    result = check_function(lambda a, b: a + b, lambda a, b: a + b, cases, name="add", verbose=False)
    assert result.n_cases == 2
    with pytest.raises(ExerciseError, match=r"case 2 of 2 \[second\].*\n  expected 7.0, got -1.0"):
        check_function(lambda a, b: a + b if a < 2 else -1.0, lambda a, b: a + b, cases, name="add", verbose=False)


def test_check_function_tolerances_and_nan():
    cases = [(torch.ones(3),)]
    check_function(lambda x: x + 1e-7, lambda x: x, cases, atol=1e-6, rtol=0, verbose=False)
    with pytest.raises(ExerciseError, match="max abs error 1e-05"):
        check_function(lambda x: x + 1e-5, lambda x: x, cases, atol=1e-6, rtol=0, verbose=False)
    with pytest.raises(ExerciseError, match="NaN"):
        check_function(lambda x: x * math.nan, lambda x: x, cases, verbose=False)


def test_check_function_rejects_bad_arguments():
    with pytest.raises(TypeError, match="learner_fn"):
        check_function(None, lambda: 1, [()])
    with pytest.raises(ValueError, match="no cases"):
        check_function(lambda: 1, lambda: 1, [])


def test_add_exercise_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(exercises, "EXERCISES", dict(exercises.EXERCISES))
    extra = Exercise("test.double", "Doubling", "Multiply by two.", lambda g, n: [(1,), (2,)], lambda x: 2 * x)
    exercises.add_exercise(extra)
    assert check("test.double", lambda x: x + x, verbose=False).n_cases == 2
    with pytest.raises(ValueError, match="already registered"):
        exercises.add_exercise(Exercise("test.double", "t", "g", lambda g, n: [], lambda x: x))
