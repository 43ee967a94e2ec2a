"""Classroom tools: student and instructor copies of the chapters, the exercise convention checked, grading.

``python -m labkit.classroom student notebooks/ --out student/``     every chapter without its solutions
``python -m labkit.classroom instructor notebooks/ --out instructor/`` every chapter with them (outputs cleared)
``python -m labkit.classroom lint [notebooks/ ...]``                 check the exercise convention, list problems
``python -m labkit.classroom grade student/01_transformer.ipynb``    run the setup and exercise cells, report checks
``python -m labkit.classroom list [notebooks/]``                     the exercises of every chapter, with goals
``python -m labkit.classroom sync-install [--check]``                write the repository URL of ``_config.yml``
                                                                       into every notebook's install line

The convention (one exercise = six kinds of cells, in this order):

1. Markdown, untagged: ```` ```{exercise} Title ```` with ``:label: ex-<name>`` and the statement;
2. code tagged ``exercise``: the stub, ``def my_fn(...): ... raise NotImplementedError``;
3. Markdown tagged ``solution``: ```` ```{solution-start} ex-<name> ```` with ``:class: dropdown``;
4. code tagged ``solution`` (one or more, Markdown tagged ``solution`` may sit between): the answer;
5. Markdown tagged ``solution``: ```` ```{solution-end} ````;
6. code tagged ``check``: ``check("<topic>.<name>", my_fn)``.

The student copy drops every cell tagged ``solution``; nothing else carries that tag, so the statement, the stub
and the check stay, and the check fails ("not implemented yet") until the student writes the function.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "SOLUTION_TAG",
    "EXERCISE_TAG",
    "CHECK_TAG",
    "ConventionError",
    "NotebookExercise",
    "CheckResult",
    "repository_root",
    "repository_url",
    "install_block",
    "read_notebook",
    "parse_exercises",
    "lint_notebook",
    "lint",
    "student_version",
    "instructor_version",
    "write_versions",
    "sync_install",
    "exercise_index",
    "grade",
    "NOTEBOOK_TIMES",
    "current_profile_name",
    "load_notebook_times",
    "record_notebook_time",
    "main",
]

SOLUTION_TAG = "solution"
EXERCISE_TAG = "exercise"
CHECK_TAG = "check"
MIN_EXERCISES = 3

_EXERCISE_RE = re.compile(r"^\s*(`{3,}|:{3,})\{exercise\}\s*(?P<title>.*)$", re.M)
_LABEL_RE = re.compile(r"^\s*:label:\s*(?P<label>\S+)\s*$", re.M)
_SOLUTION_START_RE = re.compile(r"^\s*(`{3,}|:{3,})\{solution-start\}\s*(?P<label>\S*)\s*$", re.M)
_SOLUTION_END_RE = re.compile(r"^\s*(`{3,}|:{3,})\{solution-end\}\s*$", re.M)
_DROPDOWN_RE = re.compile(r"^\s*:class:.*\bdropdown\b", re.M)
_CHECK_RE = re.compile(r"""\bcheck\(\s*(["'])(?P<name>[\w.]+)\1\s*,\s*(?P<fn>[A-Za-z_]\w*)""")
_DEF_RE = re.compile(r"^(?:async\s+)?def\s+(?P<name>[A-Za-z_]\w*)\s*\(", re.M)
_INSTALL_LINE_RE = re.compile(r'%pip install -q "labkit @ git\+(?P<url>[^"]+)"')
_CLONE_RE = re.compile(r"(?P<prefix>git clone )(?P<url>https?://\S+)")

_INSTALL_TEMPLATE = '''import importlib.util

if importlib.util.find_spec("labkit") is None:  # a fresh Colab runtime: install the book's package
    %pip install -q "labkit @ git+{url}"'''


class ConventionError(ValueError):
    """A notebook breaks the exercise convention; the message lists every problem with its cell."""


@dataclass(frozen=True)
class NotebookExercise:
    """One exercise found in a notebook: its label, title, check name, the reader's function and cell indices."""

    notebook: str
    label: str
    title: str
    check_name: str
    function: str
    statement_cell: int
    stub_cells: tuple[int, ...]
    solution_cells: tuple[int, ...]
    check_cell: int


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check cell in a graded notebook."""

    notebook: str
    check_name: str
    passed: bool
    message: str

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.check_name}: {self.message}"


# ----------------------------------------------------------------------------------------------------------
# the repository: its root, its URL (written once, in _config.yml) and the install line derived from it
# ----------------------------------------------------------------------------------------------------------


def repository_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: this package's checkout) holding ``_config.yml``."""
    here = Path(start).resolve() if start is not None else Path(__file__).resolve().parent
    for folder in [here, *here.parents]:
        if (folder / "_config.yml").is_file():
            return folder
    raise FileNotFoundError(f"no _config.yml at or above {here}: run this from a checkout of the book")


def repository_url(root: str | Path | None = None) -> str:
    """``repository.url`` of ``_config.yml``: the one place the repository's address is written down."""
    import yaml

    config_path = repository_root(root) / "_config.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    url = (config.get("repository") or {}).get("url")
    if not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
        raise ValueError(f"{config_path}: expected repository.url to be an http(s) URL, got {url!r}")
    return url.rstrip("/")


def book_pages(root: str | Path | None = None) -> list[str]:
    """The pages ``_toc.yml`` puts on the book, in reading order: its root first, then every ``file`` of
    every part (sections included), as written there (``notebooks/01_transformer``, ``book/intro``)."""
    import yaml

    toc = yaml.safe_load((repository_root(root) / "_toc.yml").read_text(encoding="utf-8")) or {}
    pages = [toc["root"]] if "root" in toc else []

    def walk(entries: Any) -> None:
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return pages


def install_block(url: str) -> str:
    """The lines that open every notebook's first code cell: install labkit from ``url`` when it is missing."""
    if not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
        raise ValueError(f"url must be an http(s) URL without spaces, got {url!r}")
    return _INSTALL_TEMPLATE.format(url=url.rstrip("/"))


# ----------------------------------------------------------------------------------------------------------
# reading notebooks and finding their exercises
# ----------------------------------------------------------------------------------------------------------


def read_notebook(path: str | Path) -> dict[str, Any]:
    """The notebook at ``path`` as a plain dict (nbformat 4), with a clear error for anything else."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConventionError(f"{path}: not a notebook (invalid JSON: {err})") from None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise ConventionError(f"{path}: expected an nbformat 4 notebook with a 'cells' list")
    return nb


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _where(index: int, cell: dict[str, Any]) -> str:
    first = next((line for line in _source(cell).splitlines() if line.strip()), "")
    return f"cell {index} ({cell.get('cell_type')}{', id ' + cell['id'] if cell.get('id') else ''}: {first[:50]!r})"


def _defined_functions(source: str) -> list[str]:
    try:
        tree = ast.parse(_without_magics(source))
    except SyntaxError:
        return _DEF_RE.findall(source)
    return [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _without_magics(source: str) -> str:
    return "\n".join("pass  # magic" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _scan(nb: dict[str, Any], name: str) -> tuple[list[NotebookExercise], list[str]]:
    """(exercises, problems) for notebook ``nb``: a small state machine over the cells."""
    cells = nb["cells"]
    problems: list[str] = []
    exercises: list[NotebookExercise] = []
    i = 0
    while i < len(cells):
        cell, tags = cells[i], _tags(cells[i])
        text = _source(cell)
        for tag in (SOLUTION_TAG, EXERCISE_TAG, CHECK_TAG):
            if tag in tags:
                problems.append(f"{_where(i, cell)} is tagged {tag!r} outside an exercise: an exercise starts "
                                f"with an untagged Markdown cell holding ```{{exercise}}")
        if cell.get("cell_type") != "markdown" or not _EXERCISE_RE.search(text) or tags:
            i += 1
            continue
        start = i
        title = _EXERCISE_RE.search(text).group("title").strip()
        label_match = _LABEL_RE.search(text)
        label = label_match.group("label") if label_match else ""
        if not label:
            problems.append(f"{_where(i, cell)}: the exercise has no ':label: ex-<name>' line")
        elif not label.startswith("ex-"):
            problems.append(f"{_where(i, cell)}: the exercise label should start with 'ex-', got {label!r}")
        i += 1
        stub_cells = []
        while i < len(cells) and EXERCISE_TAG in _tags(cells[i]) and SOLUTION_TAG not in _tags(cells[i]):
            if cells[i].get("cell_type") != "code":
                problems.append(f"{_where(i, cells[i])}: the tag 'exercise' belongs on a code cell")
            stub_cells.append(i)
            i += 1
        if not stub_cells:
            problems.append(f"{_where(start, cell)}: expected a code cell tagged 'exercise' (the stub) right "
                            f"after the statement")
        stub_functions = [f for c in stub_cells for f in _defined_functions(_source(cells[c]))]
        for c in stub_cells:
            if "NotImplementedError" not in _source(cells[c]):
                problems.append(f"{_where(c, cells[c])}: the stub should `raise NotImplementedError` so that the "
                                f"student copy's check fails until it is written")
        # the solution block
        solution_cells, solution_code = [], []
        if i < len(cells) and SOLUTION_TAG in _tags(cells[i]) and _SOLUTION_START_RE.search(_source(cells[i])):
            opening = cells[i]
            start_label = _SOLUTION_START_RE.search(_source(opening)).group("label")
            if label and start_label != label:
                problems.append(f"{_where(i, opening)}: solution-start names {start_label!r}, the exercise is "
                                f"labelled {label!r}")
            if not _DROPDOWN_RE.search(_source(opening)):
                problems.append(f"{_where(i, opening)}: the solution needs ':class: dropdown' so that the book "
                                f"hides it until clicked")
            if opening.get("cell_type") != "markdown":
                problems.append(f"{_where(i, opening)}: solution-start must be a Markdown cell")
            solution_cells.append(i)
            i += 1
            closed = False
            while i < len(cells) and SOLUTION_TAG in _tags(cells[i]):
                solution_cells.append(i)
                if cells[i].get("cell_type") == "markdown" and _SOLUTION_END_RE.search(_source(cells[i])):
                    closed = True
                    i += 1
                    break
                if cells[i].get("cell_type") == "code":
                    solution_code.append(i)
                    if "raise NotImplementedError" in _source(cells[i]):
                        problems.append(f"{_where(i, cells[i])}: a solution cell still raises NotImplementedError")
                i += 1
            if not closed:
                problems.append(f"{_where(solution_cells[0], opening)}: the solution is not closed by a Markdown "
                                f"cell tagged 'solution' holding ```{{solution-end}}")
            if not solution_code:
                problems.append(f"{_where(solution_cells[0], opening)}: the solution has no code cell tagged "
                                f"'solution'")
        else:
            where = _where(i, cells[i]) if i < len(cells) else "the end of the notebook"
            problems.append(f"{where}: expected the solution of {label or title!r} here, opened by a Markdown "
                            f"cell tagged 'solution' holding ```{{solution-start}} {label}")
        for c in solution_cells:
            extra = set(_tags(cells[c])) - {SOLUTION_TAG}
            if extra & {EXERCISE_TAG, CHECK_TAG}:
                problems.append(f"{_where(c, cells[c])}: a cell may carry only one of the tags "
                                f"'exercise', 'solution', 'check'")
        solution_functions = [f for c in solution_code for f in _defined_functions(_source(cells[c]))]
        # the check
        check_name, function = "", ""
        if i < len(cells) and CHECK_TAG in _tags(cells[i]) and cells[i].get("cell_type") == "code":
            check_cell = i
            match = _CHECK_RE.search(_source(cells[i]))
            if not match:
                problems.append(f"{_where(i, cells[i])}: expected `check(\"<topic>.<name>\", my_fn)` in the check cell")
            else:
                check_name, function = match.group("name"), match.group("fn")
                if stub_cells and function not in stub_functions:
                    problems.append(f"{_where(i, cells[i])}: the check calls {function!r}, but the stub defines "
                                    f"{stub_functions or 'no function'}")
                if solution_code and function not in solution_functions:
                    problems.append(f"{_where(i, cells[i])}: the check calls {function!r}, but the solution "
                                    f"defines {solution_functions or 'no function'}")
            i += 1
        else:
            check_cell = -1
            where = _where(i, cells[i]) if i < len(cells) else "the end of the notebook"
            problems.append(f"{where}: expected the code cell tagged 'check' of {label or title!r} right after "
                            f"its solution")
        exercises.append(NotebookExercise(name, label, title, check_name, function, start, tuple(stub_cells),
                                          tuple(solution_cells), check_cell))
    return exercises, problems


def parse_exercises(nb: dict[str, Any] | str | Path, name: str = "") -> list[NotebookExercise]:
    """The exercises of a notebook (a dict or a path), in order; :class:`ConventionError` on a broken one."""
    if not isinstance(nb, dict):
        name = name or Path(nb).stem
        nb = read_notebook(nb)
    exercises, problems = _scan(nb, name)
    if problems:
        raise ConventionError(f"{name or 'notebook'} breaks the exercise convention:\n  " + "\n  ".join(problems))
    return exercises


def lint_notebook(path: str | Path, *, url: str | None = None, min_exercises: int = MIN_EXERCISES,
                  check_registry: bool = True) -> list[str]:
    """Every problem of the notebook at ``path`` against the convention (empty list: it follows it).

    Checked: the exercise cell sequence and tags, labels, stubs and solutions defining the checked function,
    check names registered in :mod:`labkit.exercises`, at least ``min_exercises`` exercises, no stored
    outputs, and (when ``url`` is given) the install line of the first code cell.
    """
    path = Path(path)
    try:
        nb = read_notebook(path)
    except ConventionError as err:
        return [str(err)]
    exercises, problems = _scan(nb, path.stem)
    if len(exercises) < min_exercises:
        problems.append(f"{len(exercises)} exercises, the book asks for at least {min_exercises}")
    labels = [e.label for e in exercises if e.label]
    for label in sorted({lab for lab in labels if labels.count(lab) > 1}):
        problems.append(f"the label {label!r} is used by more than one exercise")
    if check_registry:
        from labkit.exercises import get_exercise

        for exercise in exercises:
            if exercise.check_name:
                try:
                    get_exercise(exercise.check_name)
                except ValueError:
                    problems.append(f"cell {exercise.check_cell}: check({exercise.check_name!r}, ...) names no "
                                    f"exercise registered in labkit.exercises")
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
            problems.append(f"{_where(index, cell)} has stored outputs: notebooks are committed without outputs")
            break
    if url is not None:
        problem = _install_problem(nb, url)
        if problem:
            problems.append(problem)
    return [f"{path.name}: {p}" if not p.startswith(str(path)) else p for p in problems]


def _notebooks(sources: Iterable[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            paths += sorted(p for p in source.glob("*.ipynb") if not p.name.startswith("."))
        elif source.suffix == ".ipynb" and source.is_file():
            paths.append(source)
        else:
            raise FileNotFoundError(f"{source}: expected a notebook (.ipynb) or a folder of notebooks")
    if not paths:
        raise FileNotFoundError(f"no notebooks in {[str(s) for s in sources]}")
    return paths


def lint(sources: Iterable[str | Path], *, url: str | None = None,
         min_exercises: int = MIN_EXERCISES) -> dict[str, list[str]]:
    """``{notebook path: problems}`` for every notebook in ``sources`` (files or folders)."""
    return {str(p): lint_notebook(p, url=url, min_exercises=min_exercises) for p in _notebooks(sources)}


# ----------------------------------------------------------------------------------------------------------
# student and instructor copies
# ----------------------------------------------------------------------------------------------------------


def _dumps(nb: dict[str, Any]) -> str:
    """A notebook as nbformat writes it (sorted keys, one-space indent), so rewrites keep diffs small."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _cleared(nb: dict[str, Any], version: str) -> dict[str, Any]:
    out = copy.deepcopy(nb)
    for cell in out["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    out.setdefault("metadata", {})["labkit"] = {"version": version}
    return out


def student_version(nb: dict[str, Any], name: str = "") -> dict[str, Any]:
    """A copy of ``nb`` without the cells tagged ``solution`` (statements, stubs and checks kept; outputs
    cleared). Raises :class:`ConventionError` when the notebook breaks the convention."""
    parse_exercises(nb, name)
    out = _cleared(nb, "student")
    out["cells"] = [cell for cell in out["cells"] if SOLUTION_TAG not in _tags(cell)]
    return out


def instructor_version(nb: dict[str, Any], name: str = "") -> dict[str, Any]:
    """A copy of ``nb`` with every cell, solutions included, and outputs cleared (checked like the student's)."""
    parse_exercises(nb, name)
    return _cleared(nb, "instructor")


def write_versions(sources: str | Path | Sequence[str | Path], out: str | Path, version: str) -> list[Path]:
    """Write the ``version`` ("student" or "instructor") of every notebook in ``sources`` into folder ``out``.

    Every notebook is checked first; if any breaks the convention nothing is written and the
    :class:`ConventionError` lists all problems."""
    makers = {"student": student_version, "instructor": instructor_version}
    if version not in makers:
        raise ValueError(f"version must be 'student' or 'instructor', got {version!r}")
    paths = _notebooks([sources] if isinstance(sources, (str, Path)) else sources)
    made, problems = [], []
    for path in paths:
        try:
            made.append((path, makers[version](read_notebook(path), path.stem)))
        except ConventionError as err:
            problems.append(str(err))
    if problems:
        raise ConventionError("nothing written:\n" + "\n".join(problems))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in made:
        target = out / path.name
        target.write_text(_dumps(nb), encoding="utf-8")
        written.append(target)
    return written


# ----------------------------------------------------------------------------------------------------------
# the install line, from the one URL in _config.yml
# ----------------------------------------------------------------------------------------------------------


def _first_code_cell(nb: dict[str, Any]) -> dict[str, Any] | None:
    return next((cell for cell in nb["cells"] if cell.get("cell_type") == "code"), None)


def _install_problem(nb: dict[str, Any], url: str) -> str | None:
    cell = _first_code_cell(nb)
    if cell is None:
        return "no code cell: the first code cell must install labkit on Colab"
    if not _source(cell).startswith(install_block(url)):
        return (f"the first code cell must start with the install lines for {url} "
                f"(run `python -m labkit.classroom sync-install`)")
    return None


def _set_source(cell: dict[str, Any], text: str) -> None:
    lines = text.splitlines(keepends=True)
    cell["source"] = lines if isinstance(cell.get("source"), list) else text


def sync_install(root: str | Path | None = None, *, check: bool = False) -> list[Path]:
    """Make every notebook's first code cell start with :func:`install_block` of ``_config.yml``'s URL, and
    every ``git clone <url>`` in ``README.md`` and ``book/*.md`` name that URL.

    Returns the files that differed (rewritten unless ``check``). A first code cell that has an install line
    for another URL gets the URL replaced; one without any gets the block prepended.
    """
    root = repository_root(root)
    url = repository_url(root)
    block = install_block(url)
    changed = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = read_notebook(path)
        cell = _first_code_cell(nb)
        if cell is None:
            raise ConventionError(f"{path}: no code cell to hold the install line")
        text = _source(cell)
        if text.startswith(block):
            continue
        changed.append(path)
        if check:
            continue
        if _INSTALL_LINE_RE.search(text) and text.startswith("import importlib.util"):
            head_end = _INSTALL_LINE_RE.search(text).end()
            text = block + text[head_end:]
        else:  # no install line: prepend the block (dropping a bare `import importlib.util` it repeats)
            rest = text[len("import importlib.util"):] if text.startswith("import importlib.util\n") else text
            text = block + "\n\n" + rest.lstrip("\n")
        _set_source(cell, text)
        path.write_text(_dumps(nb), encoding="utf-8")
    for path in [root / "README.md", *sorted((root / "book").glob("*.md"))]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        new = _CLONE_RE.sub(lambda m: m.group("prefix") + url, text)
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed


# ----------------------------------------------------------------------------------------------------------
# the exercise list of the book, and grading
# ----------------------------------------------------------------------------------------------------------


def exercise_index(notebooks: str | Path | None = None) -> list[dict[str, str]]:
    """One row per exercise of every notebook in ``notebooks`` (default: the checkout's ``notebooks/``):
    ``notebook``, ``label``, ``title``, ``check`` (the registered name) and ``goal`` (from labkit.exercises)."""
    from labkit.exercises import get_exercise

    folder = Path(notebooks) if notebooks is not None else repository_root() / "notebooks"
    rows = []
    for path in _notebooks([folder]):
        for exercise in parse_exercises(path):
            goal = get_exercise(exercise.check_name).goal
            rows.append({"notebook": path.stem, "label": exercise.label, "title": exercise.title,
                         "check": exercise.check_name, "goal": goal})
    return rows


def _grading_notebook(nb: dict[str, Any], name: str) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """The cells grading runs: the first code cell (imports, profile) and every code cell from the first
    exercise statement on; plus (index in the reduced notebook, check name) of each check cell."""
    import nbformat

    cells = nb["cells"]
    first_statement = next((i for i, c in enumerate(cells) if c.get("cell_type") == "markdown" and not _tags(c)
                            and _EXERCISE_RE.search(_source(c))), None)
    if first_statement is None:
        raise ConventionError(f"{name}: no exercise to grade")
    setup = next(i for i, c in enumerate(cells) if c.get("cell_type") == "code")
    keep = [setup] + [i for i in range(first_statement, len(cells)) if cells[i].get("cell_type") == "code"]
    reduced = nbformat.v4.new_notebook(metadata=copy.deepcopy(nb.get("metadata", {})))
    checks = []
    for i in keep:
        cell = nbformat.v4.new_code_cell(_source(cells[i]), metadata=copy.deepcopy(cells[i].get("metadata", {})))
        if CHECK_TAG in _tags(cells[i]):
            match = _CHECK_RE.search(_source(cells[i]))
            checks.append((len(reduced.cells), match.group("name") if match else f"cell {i}"))
        reduced.cells.append(cell)
    return reduced, checks


def _check_outcome(cell: Any) -> tuple[bool, str]:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            first_line = (output.get("evalue") or "").splitlines()[:1]
            return False, f"{output.get('ename')}: {first_line[0] if first_line else ''}"
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    passed = next((line for line in text.splitlines() if line.startswith("✓")), None)
    if passed:
        return True, passed
    return False, "the check printed no result"


def grade(path: str | Path, *, timeout: int = 120, kernel_name: str = "python3") -> list[CheckResult]:
    """Execute the setup cell and the exercise cells of the notebook at ``path`` (nothing else, so it is
    quick) in a fresh kernel, and return one :class:`CheckResult` per check cell, in order. A failing check
    does not stop the run: every exercise is graded."""
    from nbclient import NotebookClient

    path = Path(path)
    nb = read_notebook(path)
    reduced, checks = _grading_notebook(nb, path.stem)
    client = NotebookClient(reduced, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.execute()
    results = []
    for index, name in checks:
        passed, message = _check_outcome(reduced.cells[index])
        results.append(CheckResult(path.stem, name, passed, message))
    return results


# ----------------------------------------------------------------------------------------------------------
# how long each chapter takes, per profile: measured by the runs themselves, read by the instructor page
# ----------------------------------------------------------------------------------------------------------

NOTEBOOK_TIMES = Path("benchmarks") / "notebook_times.json"


def current_profile_name() -> str:
    """The profile a notebook started now would use (``LABKIT_PROFILE``, else chosen by the device)."""
    from labkit.config import get_profile

    return get_profile().name


def load_notebook_times(path: str | Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{profile: {notebook stem: {"seconds", "how", "device", "date"}}}`` (empty when the file is absent)."""
    path = Path(path) if path is not None else repository_root() / NOTEBOOK_TIMES
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object {{profile: {{notebook: record}}}}")
    return data


def record_notebook_time(notebook: str, seconds: float, profile: str, how: str, *, path: str | Path | None = None,
                         device: str | None = None, date: float | str | None = None, with_load: bool = True) -> Path:
    """Merge one measured run time into the notebook-times file (atomic write, under a lock so that parallel
    runs do not lose each other's records). ``date``: when it ran, a POSIX timestamp or ISO string (default:
    now); a record older than the one already there is not written. ``with_load``: also note the machine's
    1-minute load average now (for a run that just ended)."""
    import datetime as dt
    import fcntl
    import hashlib
    import os
    import tempfile

    if not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
    if profile not in ("smoke", "cpu", "gpu"):
        raise ValueError(f"profile must be 'smoke', 'cpu' or 'gpu', got {profile!r}")
    path = Path(path) if path is not None else repository_root() / NOTEBOOK_TIMES
    if device is None:
        from labkit.device import default_device, describe_device

        device = describe_device(default_device())
    if isinstance(date, (int, float)):
        date = dt.datetime.fromtimestamp(date, dt.timezone.utc).isoformat(timespec="seconds")
    date = date or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_name = "labkit-times-" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12] + ".lock"
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_notebook_times(path)
        record = {"seconds": round(float(seconds), 1), "how": how, "device": device, "date": date}
        if with_load:  # how busy the machine was: 1-minute load average at the end of the run, and its cores
            record.update(load=round(os.getloadavg()[0], 1), cores=os.cpu_count())
        previous = data.get(profile, {}).get(Path(notebook).stem)
        if previous and str(previous.get("date", "")) > date:
            return path
        data.setdefault(profile, {})[Path(notebook).stem] = record
        data = {p: dict(sorted(data[p].items())) for p in sorted(data)}
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labkit.classroom {student,instructor,lint,grade,list,sync-install} ...``"""
    parser = argparse.ArgumentParser(prog="python -m labkit.classroom", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for version in ("student", "instructor"):
        p = sub.add_parser(version, help=f"write the {version} version of every notebook")
        p.add_argument("sources", nargs="+", help="notebooks or folders of notebooks")
        p.add_argument("--out", required=True, help="output folder")
    p = sub.add_parser("lint", help="check the exercise convention and the install line")
    p.add_argument("sources", nargs="*", help="notebooks or folders (default: notebooks/)")
    p = sub.add_parser("grade", help="run the exercise cells and report each check")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    p = sub.add_parser("list", help="the exercises of every chapter, with their learning goals")
    p.add_argument("folder", nargs="?", default=None)
    p = sub.add_parser("sync-install", help="write _config.yml's repository URL into the install lines")
    p.add_argument("--check", action="store_true", help="only report files that differ (exit 1 if any)")
    args = parser.parse_args(argv)

    try:
        if args.command in ("student", "instructor"):
            written = write_versions(args.sources, args.out, args.command)
            print(f"wrote {len(written)} {args.command} notebook(s) to {args.out}")
            return 0
        if args.command == "lint":
            sources = args.sources or [repository_root(Path.cwd()) / "notebooks"]
            url = repository_url(Path(sources[0]).resolve())
            report = lint(sources, url=url)
            bad = {path: problems for path, problems in report.items() if problems}
            for path, problems in bad.items():
                print("\n".join(problems))
            print(f"{len(report) - len(bad)} of {len(report)} notebook(s) follow the convention")
            return 1 if bad else 0
        if args.command == "grade":
            failed = 0
            for notebook in args.notebooks:
                for result in grade(notebook, timeout=args.timeout):
                    print(f"{result.notebook}  {result}")
                    failed += not result.passed
            return 1 if failed else 0
        if args.command == "list":
            for row in exercise_index(args.folder):
                print(f"{row['notebook']}  {row['check']:<36} {row['title']}\n    {row['goal']}")
            return 0
        changed = sync_install(Path.cwd(), check=args.check)
        verb = "differ" if args.check else "rewritten"
        print("\n".join(f"{verb}: {p}" for p in changed) or "every install line and clone URL matches _config.yml")
        return 1 if (args.check and changed) else 0
    except (ConventionError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
