"""labkit.bookext: a small Sphinx build (myst-nb, no execution) fills the generated tables from measured files."""

from __future__ import annotations

import io
import json
import re
from html import unescape
from pathlib import Path

import pytest

pytest.importorskip("myst_nb")
pytest.importorskip("sphinx_exercise")

from labkit import claims, classroom  # noqa: E402

RECORD = "application/papermill.record/"


def _glue_output(name, value):
    return {"output_type": "display_data", "data": {RECORD + "text/plain": repr(value)},
            "metadata": {"scrapbook": {"name": name, "mime_prefix": RECORD}}}


def _cell(kind, text, tags=(), outputs=None):
    _cell.count = getattr(_cell, "count", 0) + 1
    cell = {"cell_type": kind, "id": f"cell-{_cell.count}", "metadata": {"tags": list(tags)}, "source": text}
    if kind == "code":
        cell.update(outputs=outputs or [], execution_count=None)
    return cell


def _chapter() -> dict:
    glued = [_glue_output("ch1_device", "cpu (test)"), _glue_output("ch1_profile", "smoke"),
             _glue_output("ch1_value", 0.123456)]
    cells = [_cell("markdown", "# Demo chapter\n\nThe value is {glue:text}`ch1_value:.2f`."),
             _cell("code", classroom.install_block("https://github.com/example/book") + "\n\nx = 1", outputs=glued)]
    for label, fn, check in [("ex-a", "my_a", "transformer.layer_norm"), ("ex-b", "my_b", "transformer.attention"),
                             ("ex-c", "my_c", "amp.decode_fp16")]:
        cells += [_cell("markdown", f"```{{exercise}} Exercise {label}\n:label: {label}\n\nWrite it.\n```"),
                  _cell("code", f"def {fn}(x):\n    raise NotImplementedError", ["exercise"]),
                  _cell("markdown", f"```{{solution-start}} {label}\n:class: dropdown\n```", ["solution"]),
                  _cell("code", f"def {fn}(x):\n    return x", ["solution"]),
                  _cell("markdown", "```{solution-end}\n```", ["solution"]),
                  _cell("code", f'check("{check}", {fn});', ["check"])]
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


def _text(html_path: Path) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html_path.read_text()))


@pytest.fixture
def built(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "notebooks").mkdir(parents=True)
    (src / "benchmarks" / "results").mkdir(parents=True)
    (src / "conf.py").write_text(
        'extensions = ["myst_nb", "sphinx_exercise", "labkit.bookext"]\n'
        'nb_execution_mode = "off"\nexclude_patterns = ["_build"]\n')
    (src / "index.md").write_text("# Book\n\n```{toctree}\nnotebooks/01_demo\nresults\nclassroom\n```\n")
    (src / "results.md").write_text("# Results\n\n```{labkit-claims}\n```\n")
    (src / "classroom.md").write_text("# Classroom\n\n```{labkit-notebook-times}\n```\n\n```{labkit-exercises}\n```\n")
    (src / "notebooks" / "01_demo.ipynb").write_text(json.dumps(_chapter()))
    entry = {"name": "demo.bench", "ratio": 1.5, "device": "NVIDIA Test GPU", "profile": "gpu"}
    (src / "benchmarks" / "results" / "cuda-test.json").write_text(
        json.dumps({"device": "NVIDIA Test GPU", "entries": {"demo.bench": entry}}))
    classroom.record_notebook_time("01_demo", 12.3, "smoke", "nbmake (pytest)", device="cpu (test)",
                                   path=src / classroom.NOTEBOOK_TIMES)
    registry = (claims.Claim("The demo claim", "003 §9", "01_demo", (
        claims.Measurement("the glued value", glue="ch1_value", fmt=".2f", unit="×"),
        claims.Measurement("the benchmark ratio", benchmark="demo.bench", fmt=".1f"),
    )),)
    monkeypatch.setattr(claims, "CLAIMS", registry)
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    from sphinx.application import Sphinx

    warnings = io.StringIO()
    out = tmp_path / "html"
    app = Sphinx(str(src), str(src), str(out), str(tmp_path / "doctrees"), "html", status=None,
                 warning=warnings, freshenv=True)
    app.build()
    return out, warnings.getvalue(), app


def test_results_page_shows_glued_and_benchmark_values_with_device_and_chapter(built):
    out, warnings, _ = built
    assert "labkit-claims" not in warnings, warnings
    html = (out / "results.html").read_text()
    text = _text(out / "results.html")
    assert "The demo claim" in text and "003 §9" in text
    assert re.search(r"the glued value\s+0\.12×\s+cpu \(test\) \(smoke\)", text), text
    assert re.search(r"the benchmark ratio\s+1\.5\s+NVIDIA Test GPU \(gpu\)", text), text
    assert 'href="notebooks/01_demo.html"' in html  # the chapter, linked


def test_instructor_tables_list_times_and_exercises(built):
    out, warnings, _ = built
    text = _text(out / "classroom.html")
    assert re.search(r"Demo chapter\s+12 s\s+not measured\s+not measured", text), text
    assert "measured by nbmake (pytest) on cpu (test)" in text
    for check in ("transformer.layer_norm", "transformer.attention", "amp.decode_fp16"):
        assert check in text
    assert "Normalise each vector over its last dimension" in text  # the goal, from labkit.exercises


def test_a_missing_value_is_a_build_warning(tmp_path, monkeypatch, built):
    out, warnings, app = built
    registry = (claims.Claim("Another", "003 §9", "01_demo", (claims.Measurement("gone", glue="ch1_nothing"),)),)
    monkeypatch.setattr(claims, "CLAIMS", registry)
    app.build()  # the results page is rebuilt every time: what it shows lives outside its source
    assert "glue key 'ch1_nothing' not found" in app._warning.getvalue()
    assert "(missing)" in _text(out / "results.html")
