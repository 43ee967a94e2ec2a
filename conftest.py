"""Repository-wide pytest hooks.

In the ``smoke`` profile every notebook must execute in under ``LABKIT_NOTEBOOK_BUDGET_S`` seconds
(default 60, the CI budget on 2 CPU cores); a notebook that runs but takes longer fails its test.
"""

from __future__ import annotations

import os

import pytest


def _notebook_budget_s() -> float | None:
    if os.environ.get("LABKIT_PROFILE", "").lower() != "smoke":
        return None
    return float(os.environ.get("LABKIT_NOTEBOOK_BUDGET_S", "60"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    budget = _notebook_budget_s()
    if budget is None or call.when != "call" or not str(item.fspath).endswith(".ipynb"):
        return
    if report.passed and call.duration > budget:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.fspath.basename} ran in {call.duration:.1f} s in the smoke profile, "
            f"over its budget of {budget:.0f} s: shrink the smoke sizes in labkit.config"
        )
