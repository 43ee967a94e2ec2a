"""labkit.claims: the registry behind the results page points at values that exist, and the table is built right."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labkit import bench, claims, classroom
from labkit.claims import Claim, Measurement

ROOT = Path(__file__).resolve().parents[1]


def _notebook_text(stem: str) -> tuple[str, str]:
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return code, prose


@pytest.mark.parametrize("claim", claims.CLAIMS, ids=lambda c: f"{c.chapter}:{c.claim[:30]}")
def test_every_claim_points_at_a_chapter_and_values_it_measures(claim):
    assert (ROOT / "notebooks" / f"{claim.chapter}.ipynb").is_file(), f"no notebook {claim.chapter}"
    code, prose = _notebook_text(claim.chapter)
    n = claims.chapter_number(claim.chapter)
    assert f'glue("ch{n}_device"' in code and f'glue("ch{n}_profile"' in code
    for m in claim.measurements:
        if m.glue is not None:
            # a key the chapter quotes in its own prose is glued, or the chapter's build fails
            assert re.search(r"\{glue(:\w+)?\}`" + re.escape(m.glue) + r"(:[^`]*)?`", prose), \
                f"{claim.chapter} does not quote {m.glue!r} in its text"


def test_every_benchmark_of_the_registry_is_in_a_results_file():
    files = claims.load_benchmarks(ROOT / "benchmarks" / "results")
    assert files, "no benchmarks/results/*.json"
    for claim in claims.CLAIMS:
        for m in claim.measurements:
            if m.benchmark is not None:
                values = [claims._field(f["entries"].get(m.benchmark) or {}, m.field) for f in files]
                assert any(v is not None for v in values), f"{m.benchmark} / {m.field} in no results file"


def test_every_chapter_on_the_book_has_a_claim():
    chapters = {Path(p).stem for p in classroom.book_pages(ROOT) if p.startswith("notebooks/")}
    assert "01_transformer" in chapters, "no chapter notebooks found in _toc.yml"
    missing = chapters - {c.chapter for c in claims.CLAIMS}
    assert not missing, f"chapters on the book with no claim in labkit/claims.py: {sorted(missing)}"


def test_registry_rejects_malformed_entries():
    with pytest.raises(ValueError, match="exactly one of glue= or benchmark="):
        Measurement("x")
    with pytest.raises(ValueError, match="exactly one of glue= or benchmark="):
        Measurement("x", glue="a", benchmark="b")
    with pytest.raises(ValueError, match="no measurement"):
        Claim("c", "s", "01_transformer", ())
    with pytest.raises(ValueError, match="notebook stem like '01_transformer'"):
        Claim("c", "s", "transformer", (Measurement("x", glue="a"),))


def test_format_value():
    assert claims.format_value(0.12345, ".2f", "×") == "0.12×"
    assert claims.format_value(0.335, ".1%") == "33.5%"
    assert claims.format_value(3538944, ",") == "3,538,944"
    assert claims.format_value(4.5, ".3f", "nats") == "4.500 nats"
    assert claims.format_value("(2, 64, 128)") == "(2, 64, 128)"


def _glue_file(folder: Path, stem: str, values: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {k: {"output_type": "display_data", "metadata": {"scrapbook": {"name": k}},
                "data": {"text/plain": repr(v)}} for k, v in values.items()}
    (folder / f"{stem}.glue.json").write_text(json.dumps(data))


def test_rows_read_glue_and_benchmarks_and_report_what_is_missing(tmp_path):
    registry = (
        Claim("A claim", "003 §1", "09_demo", (
            Measurement("a ratio", glue="ch9_ratio", fmt=".2f", unit="×"),
            Measurement("a shape", glue="ch9_shape"),
            Measurement("absent", glue="ch9_absent"),
            Measurement("bench", benchmark="demo.bench[n=1]", field="memory.ratio", fmt=".3f"),
            Measurement("nowhere", benchmark="demo.none"),
        )),
    )
    _glue_file(tmp_path / "glue", "09_demo", {"ch9_ratio": 1.23456, "ch9_shape": "(2, 3)",
                                               "ch9_device": "cpu (x86_64, 2 threads)", "ch9_profile": "cpu"})
    results = tmp_path / "results"
    results.mkdir()
    for slug, device, value in [("cpu-x", "cpu (x86_64, 2 threads)", 0.5), ("cuda-h100", "NVIDIA H100", 0.25)]:
        entry = {"name": "demo.bench[n=1]", "ratio": 2.0, "memory": {"ratio": value}, "device": device,
                 "profile": "gpu" if "cuda" in slug else "cpu"}
        bench_file = {"device": device, "entries": {"demo.bench[n=1]": entry}}
        (results / f"{slug}.json").write_text(json.dumps(bench_file))
    rows = claims.claim_rows(tmp_path / "glue", results, registry)
    by_label = {}
    for row in rows:
        by_label.setdefault(row.measured, []).append(row)
    assert by_label["a ratio"][0].value == "1.23×"
    assert by_label["a ratio"][0].device == "cpu (x86_64, 2 threads) (cpu)"
    assert by_label["a shape"][0].value == "(2, 3)" and not by_label["a shape"][0].problem
    assert "'ch9_absent' not found" in by_label["absent"][0].problem and by_label["absent"][0].value == ""
    assert [(r.value, r.device) for r in by_label["bench"]] == [("0.500", "cpu (x86_64, 2 threads) (cpu)"),
                                                                ("0.250", "NVIDIA H100 (gpu)")]
    assert "in no results file" in by_label["nowhere"][0].problem
    assert all(r.chapter == "09_demo" for r in rows)


def test_the_real_results_file_is_the_benchmarks_format():
    # the registry reads what labkit.bench writes: one object per device with an 'entries' object
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        data = bench.load_results(path)
        assert isinstance(data["entries"], dict)
