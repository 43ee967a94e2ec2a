"""The set-up a newcomer relies on: dependencies agree, torch is not pinned, the book's table of contents is sound."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from labkit import classroom

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from the PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}
# pyproject extras that environment.yml does not carry (gpu: triton for a CUDA machine, already in dev)
EXTRAS_NOT_IN_ENV = {"gpu"}


def _split(requirement: str) -> tuple[str, str]:
    requirement = requirement.split(";")[0].strip()
    match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name = match.group(1).lower().replace("_", "-")
    spec = ",".join(sorted(part.strip() for part in match.group(2).split(",") if part.strip()))
    return name, spec


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra not in EXTRAS_NOT_IN_ENV:
            reqs += items
    return dict(_split(r) for r in reqs)


def _environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # a pip: section
            for item in dep.get("pip", []):
                name, spec = _split(item)
                out[name] = spec
            continue
        name, spec = _split(dep)
        if name in ("python", "pip"):
            continue
        out[CONDA_TO_PYPI.get(name, name)] = spec
    return out


def test_environment_yml_matches_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_requirement_parser_sees_a_difference():
    a = dict([_split("torch>=2.4"), _split("numpy>=1.24")])
    b = dict([_split("torch>=2.2"), _split("numpy>=1.24")])
    assert a != b


def test_torch_has_a_floor_and_no_pin():
    name, spec = _split(next(r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if r.startswith("torch")))
    assert name == "torch"
    assert spec.startswith(">=") and "," not in spec and "<" not in spec.replace(">=", ""), spec


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\s*$", ci, re.M)


def test_toc_lists_existing_files_and_every_notebook():
    listed = classroom.book_pages(ROOT)
    for entry in listed:
        candidates = [ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb", "")]
        assert any(c.is_file() for c in candidates), f"_toc.yml lists {entry}, which does not exist"
    notebooks = sorted(p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for nb in notebooks:
        assert nb in listed, f"{nb}.ipynb is not in _toc.yml"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_follow_the_chapter_template(path):
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "seed_everything(" in code, f"{path.name} does not call labkit.seed_everything"
    assert "get_profile(" in code, f"{path.name} does not read its sizes from a labkit.config profile"
    tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
    assert tags.count("solution") >= 3, f"{path.name} has fewer than three tagged solutions"
    assert tags.count("check") >= 3, f"{path.name} has fewer than three exercise checks"
    assert "ipywidgets" in code or "interact" in code, f"{path.name} has no widget"
