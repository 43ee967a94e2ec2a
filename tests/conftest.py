"""Fixtures shared by the test files."""

from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.fixture
def triton_interpreter():
    """``triton_interpreter(script) -> stdout``: run a Python script in a fresh interpreter with
    ``TRITON_INTERPRET=1`` (Triton kernels then run on the CPU); skip without triton, fail with its stderr."""
    pytest.importorskip("triton")

    def run(script: str) -> str:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return result.stdout

    return run
