"""labkit.inference: cost formulas against FlopCounterMode, the roofline arithmetic, what dynamo captures,
and the compile measurement with its honest fallback."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo

from labkit import inference
from labkit.attention import KVCache
from labkit.bench import count_flops, cpu_threads
from labkit.transformer import GPT, TransformerConfig


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads(1):
        yield


def small_gpt(**overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=37, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=32)
    fields.update(overrides)
    return GPT(TransformerConfig(**fields)).eval()


@pytest.mark.parametrize("n, d_in, d_out", [(1, 64, 32), (7, 16, 48), (128, 32, 32)])
def test_linear_cost_flops_match_the_counter(n, d_in, d_out):
    layer = torch.nn.Linear(d_in, d_out, bias=False)
    x = torch.randn(n, d_in)
    cost = inference.linear_cost(n, d_in, d_out, bytes_per_value=4)
    assert cost["flops"] == count_flops(lambda: layer(x))
    assert cost["bytes"] == 4 * (d_in * d_out + n * d_in + n * d_out)
    assert cost["intensity"] == pytest.approx(cost["flops"] / cost["bytes"])


def test_linear_intensity_limits():
    assert inference.linear_cost(1, 4096, 4096, 4)["intensity"] == pytest.approx(0.5, rel=1e-3)  # 2 FLOP / 4 bytes
    big = inference.linear_cost(10**9, 1024, 1024, 2)["intensity"]
    assert big == pytest.approx(2 * 1024 * 1024 / (2048 * 2), rel=1e-3)


@pytest.mark.parametrize("batch, context", [(1, 0), (1, 9), (3, 5)])
def test_decode_step_flops_match_the_counter(batch, context):
    model = small_gpt()
    cache = KVCache(2, batch, 4, 8, 32)
    with torch.no_grad():
        if context:
            model(torch.randint(0, 37, (batch, context)), kv_cache=cache)
        step = torch.randint(0, 37, (batch, 1))
        counted = count_flops(lambda: model(step, kv_cache=cache))
    cost = inference.decode_step_cost(model.config, batch, context)
    assert cost["flops"] == counted
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert cost["weight_bytes"] == 4 * matmul_weights
    assert cost["cache_bytes"] == batch * 2 * 2 * (context + 1) * 32 * 4


def test_decode_intensity_grows_with_batch():
    config = small_gpt(d_model=256, d_ff=1024, n_heads=4).config
    values = [inference.decode_step_cost(config, b, 16)["intensity"] for b in (1, 4, 16, 64)]
    assert values == sorted(values) and values[0] < 0.6 and values[-1] > 20 * values[0]


def test_roofline_and_break_even():
    assert inference.attainable_flops(0.5, 1e12, 1e11) == 5e10
    assert inference.attainable_flops(100, 1e12, 1e11) == 1e12
    assert inference.ridge_point(1e12, 1e11) == 10
    assert inference.break_even_calls(10.0, 0.003, 0.001) == pytest.approx(5000)
    assert math.isinf(inference.break_even_calls(10.0, 0.001, 0.002))
    with pytest.raises(ValueError, match="peak_flops must be a positive number"):
        inference.attainable_flops(1.0, 0, 1e9)
    with pytest.raises(ValueError, match="context_len must be a non-negative int"):
        inference.decode_step_cost(small_gpt().config, 1, -1)
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        inference.decode_step_cost({}, 1, 1)


def test_measured_peaks_are_positive():
    assert inference.measure_matmul_flops(64, repeats=2) > 1e6
    assert inference.measure_bandwidth(2**20, repeats=2) > 1e6
    with pytest.raises(ValueError, match="n_bytes must be an int >= 1024"):
        inference.measure_bandwidth(10)


def test_explain_finds_the_graph_break_in_the_token_id_check():
    model = small_gpt()
    idx = torch.randint(0, 37, (2, 8))
    report = inference.explain(model, idx)
    assert report["graph_break_count"] >= 1
    assert any("item" in reason.lower() for reason in report["break_reasons"]), report["break_reasons"]
    blocks = inference.explain(lambda h: model.blocks(h, is_causal=True), torch.randn(2, 8, 32))
    assert blocks["graph_break_count"] == 0 and blocks["graph_count"] == 1


def test_recorder_sees_recompilation_on_a_new_shape():
    model = small_gpt()
    torch._dynamo.reset()
    recorder = inference.GraphRecorder()
    compiled = torch.compile(lambda h: model.blocks(h, is_causal=True), backend=recorder, dynamic=False)
    with torch.no_grad():
        compiled(torch.randn(2, 8, 32))
        compiled(torch.randn(2, 8, 32))
        assert recorder.n_compiles == 1
        compiled(torch.randn(2, 12, 32))
    assert recorder.n_compiles == 2
    assert recorder.input_shapes[1][0] == (2, 12, 32)
    assert all(count > 10 for count in recorder.op_counts())
    torch._dynamo.reset()


def failing_backend(graph_module, example_inputs):
    raise RuntimeError("this backend cannot compile anything")


def test_measure_compile_reports_and_falls_back():
    h = torch.randn(64, 64)
    fn = lambda x: torch.nn.functional.gelu(x @ x) * 2  # noqa: E731
    report = inference.measure_compile(fn, (h,), backend="eager", warmup=1, repeats=2)
    assert report.backend == "eager" and report.note == "" and report.first_call_s > 0
    assert report.speedup > 0 and report.compile_s >= 0
    fallen = inference.measure_compile(fn, (h,), backend=failing_backend, fallback="eager", warmup=0, repeats=1)
    assert fallen.backend == "eager" and "failed" in fallen.note
    with pytest.raises(Exception, match="cannot compile anything"):
        inference.measure_compile(fn, (h,), backend=failing_backend, fallback=None, warmup=0, repeats=1)
    with pytest.raises(TypeError, match="args must be a tuple or list"):
        inference.measure_compile(fn, h)
    torch._dynamo.reset()


def test_inductor_availability_names_the_missing_compiler(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(inference.shutil, "which", lambda name: None)
    ok, reason = inference.inductor_available("cpu")
    assert not ok and "no C++ compiler" in reason
    monkeypatch.setattr(inference.shutil, "which", lambda name: "/usr/bin/" + name)
    assert inference.inductor_available("cpu")[0]
