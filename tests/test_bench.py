"""labkit.bench: timing, peak memory, FLOP counts, comparisons, the registry and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from labkit import bench
from labkit.bench import Comparison, Timing, compare, count_flops, peak_memory, register, time_fn

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv(bench.PROGRESS_ENV, "0")


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as discovered, restored after the test (test benchmarks do not leak)."""
    bench.registered()
    monkeypatch.setattr(bench, "_REGISTRY", dict(bench._REGISTRY))


# ---------------------------------------------------------------------------------------------- timing


def test_time_fn_counts_warmup_and_repeats():
    calls = []
    timing = time_fn(lambda: calls.append(1), warmup=2, repeats=5, device="cpu")
    assert len(calls) == 7
    assert timing.repeats == 5 and len(timing.times_s) == 5
    assert timing.median_s > 0 and timing.iqr_s >= 0
    assert min(timing.times_s) <= timing.median_s <= max(timing.times_s)


def test_time_fn_measures_a_known_duration():
    timing = time_fn(lambda: time.sleep(0.01), warmup=0, repeats=3, device="cpu")
    assert 0.01 <= timing.median_s < 0.1


def test_time_fn_defaults_come_from_the_profile(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    calls = []
    timing = time_fn(lambda: calls.append(1), device="cpu")
    assert timing.repeats == 3 and len(calls) == 4  # smoke: 1 warm-up, 3 repeats


def test_timing_summary_statistics():
    timing = Timing.from_times([4.0, 1.0, 3.0, 2.0, 5.0])
    assert timing.median_s == 3.0
    assert timing.iqr_s == pytest.approx(2.0)  # quartiles 2 and 4
    assert Timing.from_times([0.5]).iqr_s == 0.0
    assert "n=5" in str(timing)


@pytest.mark.parametrize("kwargs, error", [
    ({"warmup": -1, "repeats": 3}, ValueError),
    ({"warmup": 0, "repeats": 0}, ValueError),
    ({"warmup": 1.5, "repeats": 3}, TypeError),
])
def test_time_fn_rejects_bad_counts(kwargs, error):
    with pytest.raises(error, match="warmup|repeats"):
        time_fn(lambda: None, device="cpu", **kwargs)


def test_time_fn_rejects_a_non_callable():
    with pytest.raises(TypeError, match="callable"):
        time_fn(3, warmup=0, repeats=1)


# ---------------------------------------------------------------------------------------------- memory


def test_peak_memory_sees_a_known_allocation():
    def allocate_8_mib():
        x = torch.empty(2 * MiB, dtype=torch.float32)  # 8 MiB
        x.fill_(1.0)
        return float(x[0])

    peak = peak_memory(allocate_8_mib, "cpu")
    assert 8 * MiB <= peak < 10 * MiB


def test_peak_memory_replays_frees_in_order():
    def two_alive():
        a = torch.ones(MiB)  # 4 MiB
        b = torch.ones(MiB)
        return float(a[0] + b[0])

    def one_at_a_time():
        a = torch.ones(MiB)
        del a
        b = torch.ones(MiB)
        return float(b[0])

    assert peak_memory(two_alive, "cpu") >= 8 * MiB
    assert 4 * MiB <= peak_memory(one_at_a_time, "cpu") < 6 * MiB


def test_peak_memory_of_no_allocation_is_small():
    assert peak_memory(lambda: None, "cpu") < 4096


def test_peak_memory_rejects_unsupported_device():
    with pytest.raises(ValueError, match="cpu.*cuda"):
        peak_memory(lambda: None, "meta")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@needs_cuda
def test_peak_memory_cuda():
    peak = peak_memory(lambda: torch.ones(2 * MiB, device="cuda").sum(), "cuda")
    assert 8 * MiB <= peak < 10 * MiB


@pytest.mark.cuda
@needs_cuda
def test_time_fn_cuda_waits_for_the_kernels():
    a = torch.randn(2048, 2048, device="cuda")
    one = time_fn(lambda: a @ a, warmup=2, repeats=5, device="cuda")
    four = time_fn(lambda: [a @ a for _ in range(4)], warmup=2, repeats=5, device="cuda")
    assert one.median_s > 0 and 2.0 < four.median_s / one.median_s < 6.0


# ---------------------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("m, k, n", [(8, 16, 4), (32, 1, 7), (3, 5, 2)])
def test_count_flops_of_a_matmul(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert count_flops(lambda: a @ b) == 2 * m * k * n


def test_count_flops_of_a_batched_matmul_and_elementwise():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    assert count_flops(lambda: torch.bmm(a, b).relu()) == 2 * 3 * 4 * 5 * 6


# ---------------------------------------------------------------------------------------------- compare


def test_compare_ratio_of_known_durations():
    calls = {"labkit": 0, "reference": 0}

    def slow():
        calls["labkit"] += 1
        time.sleep(0.02)

    def fast():
        calls["reference"] += 1
        time.sleep(0.01)

    result = compare(slow, fast, name="sleep", warmup=1, repeats=3, device="cpu", memory=False)
    assert calls["labkit"] == calls["reference"] == 4  # the same warm-up and repeats for both
    assert result.ratio == pytest.approx(result.labkit.median_s / result.reference.median_s)
    assert 1.4 < result.ratio < 2.6
    assert result.labkit_peak_bytes is None and result.memory_ratio is None
    assert "sleep" in str(result) and "ratio" in str(result)


def test_compare_measures_memory_of_both():
    result = compare(lambda: torch.ones(2 * MiB).sum(), lambda: torch.ones(MiB).sum(), name="alloc",
                     warmup=0, repeats=1, device="cpu", mode="forward", params={"n": 1})
    assert result.labkit_peak_bytes >= 8 * MiB > result.reference_peak_bytes >= 4 * MiB
    assert result.memory_ratio == pytest.approx(2.0, rel=0.05)
    entry = result.to_dict()
    assert entry["memory"]["labkit_peak_bytes"] == result.labkit_peak_bytes
    assert entry["params"] == {"n": 1} and entry["mode"] == "forward"
    json.dumps(entry)


def test_compare_rejects_bad_arguments():
    with pytest.raises(TypeError, match="reference_fn"):
        compare(lambda: None, None, name="x", warmup=0, repeats=1)
    with pytest.raises(ValueError, match="name"):
        compare(lambda: None, lambda: None, name="", warmup=0, repeats=1)


# ---------------------------------------------------------------------------------------------- registry and CLI


def _tiny(device, profile):
    """A tiny benchmark used by the tests."""
    x = torch.randn(16, 16)
    return [compare(lambda: x @ x, lambda: torch.mm(x, x), name=f"test.tiny[n={n}]", device=device,
                    warmup=profile.bench_warmup, repeats=profile.bench_repeats, params={"n": n}) for n in (16, 17)]


def test_register_and_select(scratch_registry):
    register("test.tiny")(_tiny)
    assert "test.tiny" in bench.registered()
    assert "transformer.sdpa" in bench.registered()  # discovered from labkit/benchmarks
    assert bench._select(["test"]) == ["test.tiny"]  # a topic prefix
    with pytest.raises(ValueError, match="already registered"):
        register("test.tiny")(lambda device, profile: [])
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench._select(["nope"])
    with pytest.raises(ValueError, match="without spaces"):
        register("has space")


def test_run_normalises_and_reports_errors(scratch_registry):
    register("test.tiny")(_tiny)
    register("test.broken")(lambda device, profile: 42)
    results = bench.run(["test.tiny"], "cpu", "smoke")
    assert [c.name for c in results["test.tiny"]] == ["test.tiny[n=16]", "test.tiny[n=17]"]
    errors = {}
    assert bench.run(["test.broken"], "cpu", "smoke", errors=errors) == {}
    assert isinstance(errors["test.broken"], TypeError)
    with pytest.raises(TypeError, match="must return a Comparison"):
        bench.run(["test.broken"], "cpu", "smoke")


def test_main_writes_and_merges_json(scratch_registry, tmp_path, capsys):
    register("test.tiny")(_tiny)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"entries": {"other.bench[x=1]": {"name": "other.bench[x=1]", "ratio": 3.0}}}))
    assert bench.main(["test.tiny", "--device", "cpu", "--profile", "smoke", "--json", str(path)]) == 0
    assert "test.tiny[n=16]" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["entries"]["other.bench[x=1]"]["ratio"] == 3.0  # kept
    entry = data["entries"]["test.tiny[n=17]"]
    for key in ("name", "labkit_s", "reference_s", "ratio", "memory", "device", "torch", "profile", "timestamp"):
        assert key in entry, key
    assert entry["benchmark"] == "test.tiny" and entry["profile"] == "smoke"
    assert entry["labkit_s"] > 0 and entry["ratio"] == pytest.approx(entry["labkit_s"] / entry["reference_s"])
    assert entry["torch"] == torch.__version__
    first_stamp = entry["labkit_s"]
    assert bench.main(["test.tiny", "--device", "cpu", "--profile", "smoke", "--json", str(path)]) == 0
    again = json.loads(path.read_text())
    assert set(again["entries"]) == set(data["entries"])  # replaced by name, not duplicated
    assert again["entries"]["test.tiny[n=17]"]["labkit_s"] != first_stamp
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_main_list_and_unknown_name(scratch_registry, capsys):
    register("test.tiny")(_tiny)
    assert bench.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "test.tiny\tA tiny benchmark used by the tests." in listing and "transformer.sdpa" in listing
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["no.such.benchmark", "--device", "cpu"])
    assert exit_info.value.code == 2


def test_main_returns_1_when_a_benchmark_fails(scratch_registry, tmp_path, capsys):
    register("test.broken")(lambda device, profile: 42)
    assert bench.main(["test.broken", "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 1
    assert "test.broken failed" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_module_entry_point_lists_benchmarks():
    done = subprocess.run([sys.executable, "-m", "labkit.bench", "--list"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert {"transformer.sdpa", "transformer.mha", "transformer.encoder_layer"} <= {
        line.split("\t")[0] for line in done.stdout.splitlines()}


def test_results_path_is_per_device():
    path = bench.results_path("cpu")
    assert path.parent.name == "results" and path.parent.parent.name == "benchmarks"
    assert path.name == f"{bench.device_slug('cpu')}.json"


def test_load_results_rejects_a_foreign_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="entries"):
        bench.load_results(path)
    assert bench.load_results(tmp_path / "missing.json") == {"entries": {}}


def test_format_helpers():
    assert bench.format_seconds(0.00123) == "1.23 ms"
    assert bench.format_seconds(2.5) == "2.5 s"
    assert bench.format_bytes(3 * MiB) == "3 MiB"
    assert bench.format_bytes(None) == "n/a"


# ---------------------------------------------------------------------------------------------- chapter 1 benchmarks


@pytest.mark.parametrize("name", ["transformer.sdpa", "transformer.mha", "transformer.encoder_layer"])
def test_transformer_benchmarks_run_at_tiny_size(name):
    from labkit.config import get_profile

    profile = get_profile("smoke").replace(bench_seq_lens=(8, 16), bench_warmup=0, bench_repeats=1, seq_len=8,
                                           batch_size=2)
    comparisons = bench.run([name], "cpu", profile)[name]
    assert comparisons and all(isinstance(c, Comparison) for c in comparisons)
    for comparison in comparisons:
        assert comparison.mode == "forward+backward"
        assert comparison.labkit.median_s > 0 and comparison.reference.median_s > 0
        assert comparison.labkit_peak_bytes > 0 and comparison.reference_peak_bytes > 0
    if name == "transformer.sdpa":
        assert [c.params["seq_len"] for c in comparisons] == [8, 16]


def test_cpu_threads_sets_and_restores():
    import torch

    from labkit.bench import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="positive int"):
        with cpu_threads(0):
            pass
