"""labkit.classroom: the exercise convention over every chapter, student/instructor copies, grading, install lines."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from labkit import classroom
from labkit.classroom import ConventionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# the chapters whose copies are executed (cheaply: setup cell + exercise cells only)
GRADED = ROOT / "notebooks" / "01_transformer.ipynb"


def _md(text, tags=()):
    return {"cell_type": "markdown", "id": f"m{abs(hash(text)) % 10**8}", "metadata": {"tags": list(tags)},
            "source": text}


def _code(text, tags=()):
    return {"cell_type": "code", "id": f"c{abs(hash(text)) % 10**8}", "metadata": {"tags": list(tags)},
            "source": text, "outputs": [], "execution_count": None}


def _exercise(label="ex-double", fn="my_double", check_name="transformer.layer_norm"):
    return [
        _md(f"```{{exercise}} Doubling\n:label: {label}\n\nWrite `{fn}(x)`.\n```"),
        _code(f"def {fn}(x):\n    # your code here\n    raise NotImplementedError", ["exercise"]),
        _md(f"```{{solution-start}} {label}\n:class: dropdown\n```", ["solution"]),
        _code(f"def {fn}(x):\n    return 2 * x", ["solution"]),
        _md("```{solution-end}\n```", ["solution"]),
        _code(f'check("{check_name}", {fn});', ["check"]),
    ]


def _notebook(cells):
    first = _code(classroom.install_block("https://github.com/example/book") + "\n\nimport torch")
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [_md("# Title"), first, *cells]}


@pytest.fixture
def good():
    return _notebook(_exercise("ex-a", "my_a") + _exercise("ex-b", "my_b") + _exercise("ex-c", "my_c"))


# ---------------------------------------------------------------------------------------------------------
# every chapter follows the convention
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_chapter_follows_the_exercise_convention(path):
    problems = classroom.lint_notebook(path, url=classroom.repository_url(ROOT))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_install_line_names_the_configured_repository(path):
    url = classroom.repository_url(ROOT)
    nb = classroom.read_notebook(path)
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join(first["source"])
    assert source.startswith(classroom.install_block(url)), f"{path.name}: run python -m labkit.classroom sync-install"
    assert classroom._INSTALL_LINE_RE.findall(source) == [url]


def test_sync_install_check_reports_nothing_on_the_checkout():
    assert classroom.sync_install(ROOT, check=True) == []


def test_repository_url_comes_from_config(tmp_path):
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/someone/else/\n")
    assert classroom.repository_url(tmp_path) == "https://github.com/someone/else"
    (tmp_path / "_config.yml").write_text("repository:\n  branch: main\n")
    with pytest.raises(ValueError, match="repository.url"):
        classroom.repository_url(tmp_path)


def test_sync_install_rewrites_a_stale_url_and_prepends_a_missing_block(tmp_path, good):
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/new/place\n")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    stale = copy.deepcopy(good)  # install block for https://github.com/example/book
    bare = copy.deepcopy(good)
    bare["cells"][1]["source"] = "import torch"
    for name, nb in [("01_a.ipynb", stale), ("02_b.ipynb", bare)]:
        (tmp_path / "notebooks" / name).write_text(json.dumps(nb))
    (tmp_path / "book" / "how_to_run.md").write_text("```bash\ngit clone https://github.com/old/place\n```\n")
    assert len(classroom.sync_install(tmp_path, check=True)) == 3
    assert (tmp_path / "book" / "how_to_run.md").read_text().count("old/place") == 1  # --check writes nothing
    assert len(classroom.sync_install(tmp_path)) == 3
    assert classroom.sync_install(tmp_path, check=True) == []
    for name in ("01_a.ipynb", "02_b.ipynb"):
        nb = classroom.read_notebook(tmp_path / "notebooks" / name)
        source = "".join(nb["cells"][1]["source"])
        assert source.startswith(classroom.install_block("https://github.com/new/place"))
        assert source.endswith("import torch") and source.count("%pip") == 1
    assert "git clone https://github.com/new/place" in (tmp_path / "book" / "how_to_run.md").read_text()


# ---------------------------------------------------------------------------------------------------------
# the convention: what passes, what is refused and how it is explained
# ---------------------------------------------------------------------------------------------------------


def test_parse_finds_the_exercises(good):
    found = classroom.parse_exercises(good, "demo")
    assert [e.label for e in found] == ["ex-a", "ex-b", "ex-c"]
    assert [e.function for e in found] == ["my_a", "my_b", "my_c"]
    assert found[0].check_name == "transformer.layer_norm" and found[0].title == "Doubling"
    assert found[0].solution_cells == (4, 5, 6) and found[0].check_cell == 7


def _lint(tmp_path, nb, **kw):
    path = tmp_path / "07_demo.ipynb"
    path.write_text(json.dumps(nb))
    return "\n".join(classroom.lint_notebook(path, **kw))


def test_lint_accepts_a_good_notebook(tmp_path, good):
    assert _lint(tmp_path, good, url="https://github.com/example/book") == ""


@pytest.mark.parametrize("breakage, message", [
    ("drop_solution_end", "not closed"),
    ("wrong_label", "solution-start names 'ex-zzz'"),
    ("no_dropdown", ":class: dropdown"),
    ("stub_without_raise", "raise NotImplementedError"),
    ("check_other_function", "the check calls 'my_other'"),
    ("unregistered_check", "names no exercise registered"),
    ("stray_solution_tag", "tagged 'solution' outside an exercise"),
    ("missing_check", "expected the code cell tagged 'check'"),
    ("two_exercises_only", "at least 3"),
    ("outputs_kept", "stored outputs"),
    ("other_install_url", "install lines for https://github.com/example/book"),
    ("duplicate_label", "used by more than one exercise"),
])
def test_lint_names_each_broken_rule(tmp_path, good, breakage, message):
    nb = copy.deepcopy(good)
    cells = nb["cells"]
    if breakage == "drop_solution_end":
        del cells[6]
    elif breakage == "wrong_label":
        cells[4]["source"] = "```{solution-start} ex-zzz\n:class: dropdown\n```"
    elif breakage == "no_dropdown":
        cells[4]["source"] = "```{solution-start} ex-a\n```"
    elif breakage == "stub_without_raise":
        cells[3]["source"] = "def my_a(x):\n    pass"
    elif breakage == "check_other_function":
        cells[7]["source"] = 'check("transformer.layer_norm", my_other)'
    elif breakage == "unregistered_check":
        cells[7]["source"] = 'check("nosuch.exercise", my_a)'
    elif breakage == "stray_solution_tag":
        cells.insert(1, _code("x = 1", ["solution"]))
    elif breakage == "missing_check":
        del cells[7]
    elif breakage == "two_exercises_only":
        del cells[14:]
    elif breakage == "outputs_kept":
        cells[1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    elif breakage == "other_install_url":
        cells[1]["source"] = classroom.install_block("https://github.com/elsewhere/x")
    elif breakage == "duplicate_label":
        for cell in cells[8:14]:
            cell["source"] = cell["source"].replace("ex-b", "ex-a")
    problems = _lint(tmp_path, nb, url="https://github.com/example/book")
    assert message in problems, problems
    assert problems.startswith("07_demo.ipynb: ")


def test_copies_refuse_a_broken_notebook_and_write_nothing(tmp_path, good):
    broken = copy.deepcopy(good)
    del broken["cells"][6]  # an unclosed solution
    src = tmp_path / "src"
    src.mkdir()
    (src / "01_ok.ipynb").write_text(json.dumps(good))
    (src / "02_broken.ipynb").write_text(json.dumps(broken))
    with pytest.raises(ConventionError, match=r"02_broken breaks the exercise convention:\n.*not closed"):
        classroom.write_versions(src, tmp_path / "student", "student")
    assert not (tmp_path / "student").exists()
    with pytest.raises(ValueError, match="'student' or 'instructor'"):
        classroom.write_versions(src, tmp_path / "x", "teacher")
    with pytest.raises(FileNotFoundError, match="expected a notebook"):
        classroom.write_versions(tmp_path / "missing", tmp_path / "x", "student")


def test_student_copy_drops_exactly_the_solutions(good):
    student = classroom.student_version(good)
    assert len(student["cells"]) == len(good["cells"]) - 9
    assert all("solution" not in c["metadata"]["tags"] for c in student["cells"])
    kept = [c["source"] for c in student["cells"]]
    assert sum("raise NotImplementedError" in s for s in kept) == 3 and sum(s.startswith("check(") for s in kept) == 3
    assert student["metadata"]["labkit"] == {"version": "student"}
    instructor = classroom.instructor_version(good)
    assert [c["source"] for c in instructor["cells"]] == [c["source"] for c in good["cells"]]


# ---------------------------------------------------------------------------------------------------------
# the real chapters: copies on disk, the student's checks fail as handed out, the instructor's pass
# ---------------------------------------------------------------------------------------------------------


def test_cli_writes_both_versions_of_every_chapter(tmp_path):
    assert classroom.main(["student", str(ROOT / "notebooks"), "--out", str(tmp_path / "student")]) == 0
    assert classroom.main(["instructor", str(ROOT / "notebooks"), "--out", str(tmp_path / "instructor")]) == 0
    for path in NOTEBOOKS:
        student = classroom.read_notebook(tmp_path / "student" / path.name)
        instructor = classroom.read_notebook(tmp_path / "instructor" / path.name)
        original = classroom.read_notebook(path)
        n_solution = sum("solution" in c.get("metadata", {}).get("tags", []) for c in original["cells"])
        assert n_solution >= 9 and len(student["cells"]) == len(original["cells"]) - n_solution
        assert len(instructor["cells"]) == len(original["cells"])
        assert not any(c.get("outputs") for c in student["cells"] + instructor["cells"])
        checks = [c for c in student["cells"] if "check" in c.get("metadata", {}).get("tags", [])]
        assert len(checks) == len(classroom.parse_exercises(original))


def test_index_lists_every_exercise_with_its_goal():
    rows = classroom.exercise_index(ROOT / "notebooks")
    per_chapter = {p.stem: 0 for p in NOTEBOOKS}
    for row in rows:
        per_chapter[row["notebook"]] += 1
        assert row["goal"] and row["title"] and row["label"].startswith("ex-")
    assert min(per_chapter.values()) >= classroom.MIN_EXERCISES


@pytest.fixture(scope="module")
def graded_copies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classroom")
    shutil.copy(GRADED, folder / GRADED.name)
    results = {}
    for version in ("student", "instructor"):
        classroom.write_versions(folder / GRADED.name, folder / version, version)
        results[version] = classroom.grade(folder / version / GRADED.name, timeout=120)
    return results


def test_student_checks_fail_as_handed_out(graded_copies):
    results = graded_copies["student"]
    assert len(results) == len(classroom.parse_exercises(GRADED)) >= 3
    for result in results:
        assert not result.passed, str(result)
        assert "not implemented yet" in result.message, str(result)


def test_instructor_checks_pass_when_executed(graded_copies):
    results = graded_copies["instructor"]
    assert [r.check_name for r in results] == [e.check_name for e in classroom.parse_exercises(GRADED)]
    for result in results:
        assert result.passed, str(result)
        assert result.message.startswith(f"✓ {result.check_name}: all "), str(result)


# ---------------------------------------------------------------------------------------------------------
# the notebook-times file behind the instructor page
# ---------------------------------------------------------------------------------------------------------


def test_notebook_times_are_merged_per_profile(tmp_path):
    path = tmp_path / "times.json"
    assert classroom.load_notebook_times(path) == {}
    classroom.record_notebook_time("notebooks/01_a.ipynb", 12.34, "smoke", "nbmake", path=path, device="cpu",
                                   date=0)
    classroom.record_notebook_time("02_b", 50, "cpu", "jupyter-book build", path=path, device="cpu")
    classroom.record_notebook_time("01_a", 11.0, "smoke", "nbmake", path=path, device="cpu")  # newer: replaces
    classroom.record_notebook_time("01_a", 99.0, "smoke", "nbmake", path=path, device="cpu", date=10)  # older
    times = classroom.load_notebook_times(path)
    assert set(times) == {"smoke", "cpu"}
    assert times["smoke"]["01_a"]["seconds"] == 11.0 and times["cpu"]["02_b"]["how"] == "jupyter-book build"
    assert times["cpu"]["02_b"]["date"].startswith("20") and times["cpu"]["02_b"]["cores"] >= 1
    with pytest.raises(ValueError, match="profile must be"):
        classroom.record_notebook_time("01_a", 1.0, "laptop", "x", path=path, device="cpu")
    with pytest.raises(ValueError, match="non-negative"):
        classroom.record_notebook_time("01_a", -1.0, "cpu", "x", path=path, device="cpu")


def test_checked_in_notebook_times_name_real_chapters():
    times = classroom.load_notebook_times(ROOT / classroom.NOTEBOOK_TIMES)
    stems = {p.stem for p in NOTEBOOKS}
    for profile, records in times.items():
        assert profile in ("smoke", "cpu", "gpu")
        for stem, record in records.items():
            assert stem in stems, f"{stem}: no such notebook in notebooks/"
            assert record["seconds"] >= 0 and record["device"] and record["how"]
