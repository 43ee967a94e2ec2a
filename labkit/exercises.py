"""Automatic checks for the book's exercises: the reader's function against labkit's reference.

``check("transformer.attention", my_attention)`` runs the reader's function and the reference on the same
deterministic random cases (plus edge cases), compares shape, dtype and values, prints
``✓ transformer.attention: all N cases passed`` or raises :class:`ExerciseError` naming the first failing case:
its inputs' shapes, the expected and received shapes, and the largest absolute error.

Chapters add exercises with :func:`add_exercise`; :func:`list_exercises` lists them for a class.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Case",
    "Exercise",
    "ExerciseError",
    "ExerciseResult",
    "EXERCISES",
    "add_exercise",
    "list_exercises",
    "check",
    "check_function",
]


class ExerciseError(AssertionError):
    """The reader's function gave a wrong answer (or none): the message says on which case and how."""


@dataclass(frozen=True)
class Case:
    """One call: positional ``args`` given to both functions, and a short ``label`` saying what it tests."""

    args: tuple[Any, ...]
    label: str = ""


@dataclass(frozen=True)
class ExerciseResult:
    """A passed check: how many cases ran and the largest absolute error seen (0 for exact answers)."""

    name: str
    n_cases: int
    max_abs_error: float

    def __str__(self) -> str:
        return f"✓ {self.name}: all {self.n_cases} cases passed (max abs error {self.max_abs_error:.2e})"


CaseMaker = Callable[[torch.Generator, int], Iterable["Case | tuple"]]


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``make_cases(generator, n_random)`` gives the cases, ``reference`` the right answers."""

    name: str
    title: str
    goal: str
    make_cases: CaseMaker
    reference: Callable[..., Any]
    atol: float = 1e-5
    rtol: float = 1e-4
    signature: str = ""
    n_cases: int = 8


EXERCISES: dict[str, Exercise] = {}


def add_exercise(exercise: Exercise) -> Exercise:
    """Register ``exercise`` under its name (a name may be registered once)."""
    if not isinstance(exercise, Exercise):
        raise TypeError(f"expected an Exercise, got {type(exercise).__name__}")
    if exercise.name in EXERCISES and EXERCISES[exercise.name] is not exercise:
        raise ValueError(f"an exercise called {exercise.name!r} is already registered")
    EXERCISES[exercise.name] = exercise
    return exercise


def list_exercises(prefix: str = "") -> list[Exercise]:
    """The registered exercises whose name starts with ``prefix``, sorted by name."""
    return [EXERCISES[name] for name in sorted(EXERCISES) if name.startswith(prefix)]


# ----------------------------------------------------------------------------------------------------------
# the checking engine
# ----------------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return repr(value)


def _describe_case(index: int, total: int, case: Case) -> str:
    label = f" [{case.label}]" if case.label else ""
    arguments = ", ".join(_describe(arg) for arg in case.args)
    return f"case {index + 1} of {total}{label}: inputs ({arguments})"


def _fresh(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Copies of tensor arguments, so that neither function sees what the other may have changed in place."""
    return tuple(arg.detach().clone() if isinstance(arg, Tensor) else arg for arg in args)


def _compare(expected: Any, got: Any, atol: float, rtol: float) -> tuple[str | None, float]:
    """(problem or None, max abs error) for one answer."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__}", math.inf
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}", math.inf
        if got.dtype != expected.dtype:
            return f"expected dtype {expected.dtype}, got dtype {got.dtype}", math.inf
        got, expected = got.detach().cpu(), expected.detach().cpu()
        if expected.numel() == 0:
            return None, 0.0
        if torch.isnan(got).any() and not torch.isnan(expected).any():
            return f"got NaN values (expected shape {tuple(expected.shape)}, none expected)", math.inf
        error = (got.double() - expected.double()).abs().nan_to_num(nan=0.0)
        max_error = float(error.max())
        if not torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True):
            return (f"values differ: shape {tuple(expected.shape)} as expected, max abs error {max_error:.3g} "
                    f"(allowed atol={atol:g}, rtol={rtol:g})"), max_error
        return None, max_error
    if isinstance(expected, numbers.Integral):
        if isinstance(got, Tensor) and got.numel() == 1 and not got.is_floating_point():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, numbers.Integral):
            return f"expected an int, got {type(got).__name__} ({got!r})", math.inf
        if int(got) != int(expected):
            return f"expected {int(expected)}, got {int(got)} (off by {int(got) - int(expected):+d})", abs(int(got) - int(expected))
        return None, 0.0
    if isinstance(expected, numbers.Real):
        if not isinstance(got, numbers.Real):
            return f"expected a number, got {type(got).__name__}", math.inf
        error = abs(float(got) - float(expected))
        if not math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol):
            return f"expected {expected!r}, got {got!r} (abs error {error:.3g})", error
        return None, error
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a sequence of {len(expected)} items, got {_describe(got)}", math.inf
        worst = 0.0
        for i, (e, g) in enumerate(zip(expected, got)):
            problem, error = _compare(e, g, atol, rtol)
            if problem is not None:
                return f"item {i}: {problem}", error
            worst = max(worst, error)
        return None, worst
    if got != expected:
        return f"expected {expected!r}, got {got!r}", math.inf
    return None, 0.0


def check_function(learner_fn: Callable[..., Any], reference_fn: Callable[..., Any],
                   make_cases: CaseMaker | Sequence["Case | tuple"], *, atol: float = 1e-5, rtol: float = 1e-4,
                   name: str = "exercise", n_cases: int = 8, seed: int = 0, verbose: bool = True) -> ExerciseResult:
    """Call ``learner_fn(*case.args)`` and ``reference_fn(*case.args)`` on every case and compare the answers.

    ``make_cases`` is a sequence of cases (``Case`` or tuples of arguments) or a function
    ``(generator, n_cases) -> cases`` fed a generator seeded with ``seed``. Raises :class:`ExerciseError` on the
    first wrong answer (or a learner that raises); returns an :class:`ExerciseResult` when all pass.
    """
    if not callable(learner_fn):
        raise TypeError(f"learner_fn must be a function, got {type(learner_fn).__name__}")
    if not callable(reference_fn):
        raise TypeError(f"reference_fn must be a function, got {type(reference_fn).__name__}")
    if callable(make_cases):
        cases_in = make_cases(torch.Generator().manual_seed(seed), n_cases)
    else:
        cases_in = make_cases
    cases = [c if isinstance(c, Case) else Case(tuple(c)) for c in cases_in]
    if not cases:
        raise ValueError(f"{name}: no cases to check")
    worst = 0.0
    for index, case in enumerate(cases):
        where = _describe_case(index, len(cases), case)
        expected = reference_fn(*_fresh(case.args))
        try:
            got = learner_fn(*_fresh(case.args))
        except NotImplementedError as err:
            raise ExerciseError(f"✗ {name}: not implemented yet -- replace `raise NotImplementedError` in your "
                                f"function with your code, then run the check again") from err
        except Exception as err:
            raise ExerciseError(f"✗ {name}: your function raised {type(err).__name__}: {err}\n  on {where}") from err
        problem, error = _compare(expected, got, atol, rtol)
        if problem is not None:
            raise ExerciseError(f"✗ {name}: wrong answer on {where}\n  {problem}")
        worst = max(worst, error)
    result = ExerciseResult(name, len(cases), worst)
    if verbose:
        print(f"✓ {name}: all {len(cases)} cases passed")
    return result


def check(name: str, learner_fn: Callable[..., Any], *, n_cases: int | None = None,
          verbose: bool = True) -> ExerciseResult:
    """Check ``learner_fn`` against the reference of the exercise called ``name`` on its fixed edge cases plus
    ``n_cases`` random ones (default: the exercise's own count). Raises :class:`ExerciseError` on a wrong answer."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}: expected one of {sorted(EXERCISES)}")
    if n_cases is not None and (not isinstance(n_cases, int) or isinstance(n_cases, bool) or n_cases < 0):
        raise ValueError(f"n_cases must be a non-negative int or None, got {n_cases!r}")
    exercise = EXERCISES[name]
    return check_function(learner_fn, exercise.reference, exercise.make_cases, atol=exercise.atol,
                          rtol=exercise.rtol, name=name,
                          n_cases=exercise.n_cases if n_cases is None else n_cases, verbose=verbose)


# ----------------------------------------------------------------------------------------------------------
# chapter 1: the Transformer
# ----------------------------------------------------------------------------------------------------------


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """A random int in [low, high] from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _randn(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def _attention_reference(q: Tensor, k: Tensor, v: Tensor, is_causal: bool) -> Tensor:
    from labkit.attention import scaled_dot_product_attention

    return scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def _attention_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def qkv(batch: tuple[int, ...], n_queries: int, n_keys: int, dim: int, dim_v: int,
            dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        return (_randn(generator, *batch, n_queries, dim, dtype=dtype), _randn(generator, *batch, n_keys, dim, dtype=dtype),
                _randn(generator, *batch, n_keys, dim_v, dtype=dtype))

    cases = [
        Case((*qkv((2, 3), 5, 5, 8, 8), False), "batch 2, 3 heads, no mask"),
        Case((*qkv((2, 3), 5, 5, 8, 8), True), "causal"),
        Case((*qkv((1, 1), 1, 1, 4, 4), True), "length 1"),
        Case((*qkv((2,), 3, 7, 16, 6), False), "3-D input, 3 queries on 7 keys, value width 6"),
        Case((*qkv((1, 2), 6, 6, 32, 32, torch.float64), True), "float64, d = 32"),
    ]
    for _ in range(n_random):
        length, dim = _randint(generator, 1, 12), 2 ** _randint(generator, 1, 5)
        causal = bool(_randint(generator, 0, 1))
        batch = (_randint(generator, 1, 3), _randint(generator, 1, 4))
        cases.append(Case((*qkv(batch, length, length, dim, dim), causal), "random"))
    return cases


def _sinusoidal_reference(n_positions: int, d_model: int) -> Tensor:
    from labkit.layers import sinusoidal_encoding

    return sinusoidal_encoding(n_positions, d_model)


def _sinusoidal_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((1, 4), "one position"), Case((10, 2), "d_model = 2"), Case((50, 16), "50 positions"),
             Case((7, 5), "odd d_model ends on a sine"), Case((128, 64), "128 positions, d_model 64")]
    cases += [Case((_randint(generator, 1, 100), 2 * _randint(generator, 1, 32)), "random") for _ in range(n_random)]
    return cases


def _layer_norm_reference(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    from labkit.layers import layer_norm

    return layer_norm(x, x.shape[-1], weight, bias, eps)


def _layer_norm_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    def case(shape: tuple[int, ...], eps: float, label: str, dtype: torch.dtype = torch.float32,
             offset: float = 0.0) -> Case:
        x = _randn(generator, *shape, dtype=dtype) * 3 + offset
        weight = 1 + 0.5 * _randn(generator, shape[-1], dtype=dtype)
        bias = 0.5 * _randn(generator, shape[-1], dtype=dtype)
        return Case((x, weight, bias, eps), label)

    cases = [case((4, 8), 1e-5, "4 vectors of width 8"), case((2, 3, 16), 1e-5, "3-D input"),
             case((3, 1), 1e-5, "width 1: normalises to the bias"), case((2, 5), 1e-1, "large eps"),
             case((2, 6, 32), 1e-5, "float64, mean far from 0", torch.float64, offset=10.0)]
    for _ in range(n_random):
        shape = (_randint(generator, 1, 4), _randint(generator, 1, 6), _randint(generator, 2, 64))
        cases.append(case(shape, 1e-5, "random"))
    return cases


def _gpt_parameter_count_reference(vocab_size: int, d_model: int, n_layers: int, d_ff: int, max_len: int) -> int:
    from labkit.transformer import TransformerConfig, gpt_parameter_count

    config = TransformerConfig(vocab_size=vocab_size, d_model=d_model, n_heads=1, n_layers=n_layers, d_ff=d_ff,
                               max_len=max_len, activation="gelu", norm_first=True, positional="learned",
                               tie_embeddings=True, bias=True)
    return gpt_parameter_count(config)


def _gpt_parameter_count_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((100, 16, 1, 64, 32), "one layer"), Case((50_257, 768, 12, 3072, 1024), "GPT-2 small sizes"),
             Case((300, 32, 3, 32, 8), "d_ff = d_model")]
    for _ in range(n_random):
        d_model = 8 * _randint(generator, 1, 16)
        cases.append(Case((_randint(generator, 2, 5000), d_model, _randint(generator, 1, 6),
                           d_model * _randint(generator, 1, 4), _randint(generator, 1, 512)), "random"))
    return cases


for _exercise in (
    Exercise(
        name="transformer.attention",
        title="Scaled dot-product attention",
        goal="Compute softmax(QKᵀ/√d + M)V, with the causal mask M hiding future keys (003 §4.1).",
        make_cases=_attention_cases,
        reference=_attention_reference,
        signature="attention(q (..., L, d), k (..., S, d), v (..., S, d_v), is_causal: bool) -> (..., L, d_v)",
    ),
    Exercise(
        name="transformer.sinusoidal_encoding",
        title="Sinusoidal positional encoding",
        goal="Build PE[p, 2i] = sin(p/10000^(2i/d)), PE[p, 2i+1] = cos(p/10000^(2i/d)), interleaved by column.",
        make_cases=_sinusoidal_cases,
        reference=_sinusoidal_reference,
        signature="sinusoidal_encoding(n_positions: int, d_model: int) -> float32 (n_positions, d_model)",
    ),
    Exercise(
        name="transformer.layer_norm",
        title="Layer normalisation",
        goal="Normalise each vector over its last dimension with the biased variance, then scale and shift.",
        make_cases=_layer_norm_cases,
        reference=_layer_norm_reference,
        signature="layer_norm(x (..., d), weight (d,), bias (d,), eps: float) -> (..., d)",
    ),
    Exercise(
        name="transformer.gpt_parameter_count",
        title="Counting a GPT's parameters",
        goal="Add up embeddings, attention, FFN and norm parameters of a pre-norm GPT with tied embeddings.",
        make_cases=_gpt_parameter_count_cases,
        reference=_gpt_parameter_count_reference,
        signature="gpt_parameter_count(vocab_size, d_model, n_layers, d_ff, max_len) -> int",
        atol=0.0,
        rtol=0.0,
    ),
):
    add_exercise(_exercise)
del _exercise
