"""Automatic checks for the book's exercises: the reader's function against labkit's reference.

``check("transformer.attention", my_attention)`` runs the reader's function and the reference on the same
deterministic random cases (plus edge cases), compares shape, dtype and values, prints
``✓ transformer.attention: all N cases passed`` or raises :class:`ExerciseError` naming the first failing case:
its inputs' shapes, the expected and received shapes, and the largest absolute error.

Each chapter registers its exercises with :func:`add_exercise` in a module of this package named after its
topic (``labkit/exercises/transformer.py`` for chapter 1); every such module is loaded on first use, and
:func:`list_exercises` lists them all for a class.
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
    "get_exercise",
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


def _load_chapters() -> None:
    """Import every chapter module of this package once, so that their exercises are registered."""
    global _CHAPTERS_LOADED
    if _CHAPTERS_LOADED:
        return
    _CHAPTERS_LOADED = True
    import importlib
    import pkgutil

    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")


_CHAPTERS_LOADED = False


def add_exercise(exercise: Exercise) -> Exercise:
    """Register ``exercise`` under its name (a name may be registered once)."""
    if not isinstance(exercise, Exercise):
        raise TypeError(f"expected an Exercise, got {type(exercise).__name__}")
    if exercise.name in EXERCISES and EXERCISES[exercise.name] is not exercise:
        raise ValueError(f"an exercise called {exercise.name!r} is already registered")
    EXERCISES[exercise.name] = exercise
    return exercise


def get_exercise(name: str) -> Exercise:
    """The registered exercise called ``name`` (ValueError naming the known ones otherwise)."""
    _load_chapters()
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}: expected one of {sorted(EXERCISES)}")
    return EXERCISES[name]


def list_exercises(prefix: str = "") -> list[Exercise]:
    """The registered exercises whose name starts with ``prefix``, sorted by name."""
    _load_chapters()
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
    exercise = get_exercise(name)
    if n_cases is not None and (not isinstance(n_cases, int) or isinstance(n_cases, bool) or n_cases < 0):
        raise ValueError(f"n_cases must be a non-negative int or None, got {n_cases!r}")
    return check_function(learner_fn, exercise.reference, exercise.make_cases, atol=exercise.atol,
                          rtol=exercise.rtol, name=name,
                          n_cases=exercise.n_cases if n_cases is None else n_cases, verbose=verbose)
