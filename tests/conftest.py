"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest

from labkit.exercises import ExerciseError, check


@pytest.fixture
def rejection():
    """``rejection(name, learner)``: check ``learner`` against exercise ``name``, require it to be rejected as a
    wrong answer on a named case, and return the message for the caller's own assertions."""

    def run(name, learner):
        with pytest.raises(ExerciseError) as failure:
            check(name, learner, verbose=False)
        message = str(failure.value)
        assert message.startswith(f"✗ {name}: wrong answer on case "), message
        return message

    return run
