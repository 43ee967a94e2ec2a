"""Repository-wide pytest hooks.

In the ``smoke`` profile every notebook must execute in under ``LABKIT_NOTEBOOK_BUDGET_S`` seconds
(default 60, the CI budget on 2 CPU cores); a notebook that runs but takes longer fails its test.

Every notebook that passes has its run time recorded, per profile, in ``benchmarks/notebook_times.json``
(read by the book's instructor page). ``LABKIT_NOTEBOOK_TIMES`` names another file, or ``off`` to record nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


def _notebook_budget_s() -> float | None:
    if os.environ.get("LABKIT_PROFILE", "").lower() != "smoke":
        return None
    return float(os.environ.get("LABKIT_NOTEBOOK_BUDGET_S", "60"))


def _record_time(item, seconds: float) -> None:
    target = os.environ.get("LABKIT_NOTEBOOK_TIMES", "")
    if target.lower() in ("off", "0", "no", "false"):
        return
    notebook = Path(str(item.fspath)).resolve()
    if notebook.parent != ROOT / "notebooks":  # only the book's chapters, not copies elsewhere
        return
    from labkit import classroom

    profile = os.environ.get("LABKIT_PROFILE", "").lower() or classroom.current_profile_name()
    if profile not in ("smoke", "cpu", "gpu"):
        return
    classroom.record_notebook_time(notebook.stem, seconds, profile, "nbmake (pytest)",
                                   path=Path(target) if target else ROOT / classroom.NOTEBOOK_TIMES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not str(item.fspath).endswith(".ipynb"):
        return
    budget = _notebook_budget_s()
    if budget is not None and report.passed and call.duration > budget:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.fspath.basename} ran in {call.duration:.1f} s in the smoke profile, "
            f"over its budget of {budget:.0f} s: shrink the smoke sizes in labkit.config"
        )
    if report.passed:
        try:
            _record_time(item, call.duration)
        except OSError as err:  # a read-only checkout must not fail the notebook's test
            print(f"could not record the run time of {item.fspath.basename}: {err}")
