"""labkit.compression: the size model against labkit.quant / labkit.prune, the Pareto front against brute force,
the scenario choices, the measurement, and that the comparison code reuses labkit.quant and labkit.prune."""

from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from labkit import bench, compression, prune, quant, train
from labkit.compression import Measurement
from labkit.transformer import GPT, EncoderClassifier, TransformerConfig


def _classifier(seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(vocab_size=40, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=12, n_classes=3, pad_id=39)
    return EncoderClassifier(TransformerConfig(**{**fields, **overrides})).eval()


def _task(n_train=24, n_val=10, seq_len=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 39, (n_train + n_val, seq_len), generator=g)
    pad = torch.zeros_like(ids, dtype=torch.bool)
    pad[::3, -3:] = True
    labels = torch.randint(0, 3, (n_train + n_val,), generator=g)
    return SimpleNamespace(train_ids=ids[:n_train], train_padding=pad[:n_train], train_labels=labels[:n_train],
                           val_ids=ids[n_train:], val_padding=pad[n_train:], val_labels=labels[n_train:],
                           key={"task": "random", "seed": seed})


# ------------------------------------------------------------------------------------------------ size model


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("shape,group", [((16, 64), 16), ((8, 32), 32), ((5, 48), None)])
def test_bytes_per_weight_int_equals_quantized_tensor_bytes(bits, shape, group):
    weight = torch.randn(shape)
    granularity = "channel" if group is None else "group"
    q = quant.quantize_tensor(weight, bits, granularity, group)
    predicted = compression.bytes_per_weight("int", bits=bits, group_size=group, shape=shape) * weight.numel()
    if bits == 4:
        assert q.nbytes == pytest.approx(predicted)  # packed two a byte
    elif bits == 8:
        assert q.nbytes == pytest.approx(predicted)
    else:  # 3-bit integers are stored one a byte: the model counts the packed width
        assert q.ideal_nbytes == pytest.approx(predicted)


@pytest.mark.parametrize("fmt", ["dense", "csr", "bitmask", "2:4"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_bytes_per_weight_sparse_equals_prune_storage_bytes(fmt, sparsity):
    shape = (32, 64)
    nnz = 32 * 64 // 2 if fmt == "2:4" else 32 * 64 - prune.n_to_prune(sparsity, 32 * 64)
    expected = prune.storage_bytes(shape, nnz, fmt, 2, 4) / (32 * 64)
    assert compression.bytes_per_weight(fmt, sparsity=sparsity, value_bytes=2, shape=shape) == expected


def test_bytes_per_weight_formulas_and_errors():
    assert compression.bytes_per_weight("float") == 4.0
    assert compression.bytes_per_weight("float", value_bytes=2) == 2.0
    assert compression.bytes_per_weight("int", bits=4, group_size=32) == pytest.approx(0.5 + 4 / 32)
    assert compression.bytes_per_weight("2:4", shape=(64, 64)) == pytest.approx(2 + 1 / 8)
    for bad in [dict(fmt="fp8"), dict(fmt="int", bits=9), dict(fmt="int", bits=4, group_size=0),
                dict(fmt="csr", sparsity=1.5), dict(fmt="float", shape=(0, 3))]:
        with pytest.raises(ValueError):
            compression.bytes_per_weight(**bad)


def test_stored_bytes_of_a_dense_model_is_model_bytes_and_tied_weights_count_once():
    model = _classifier()
    assert compression.stored_bytes(model) == quant.model_bytes(model)
    gpt = GPT(TransformerConfig(vocab_size=50, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=8))
    assert gpt.lm_head.weight is gpt.embed.tokens.weight or True  # tied or not, the formula must agree
    assert compression.stored_bytes(gpt) == quant.model_bytes(gpt)


def test_stored_bytes_of_a_quantized_model_uses_the_quantized_linears_bytes():
    model = _classifier()
    q, report = quant.quantize_model(model, quant.QuantConfig(weight_bits=4, activation=None, granularity="group",
                                                              group_size=8))
    linears = [m for m in q.modules() if isinstance(m, (quant.WeightOnlyLinear, quant.Int8DynamicLinear))]
    assert linears
    others = quant.model_bytes(q) - sum(quant.model_bytes(m) for m in linears)
    expected = others + sum(quant.linear_weight_bytes(m) + m.bias.numel() * 4 for m in linears)
    assert compression.stored_bytes(q) == expected
    assert sum(quant.linear_weight_bytes(m) for m in linears) == report.linear_bytes_after
    assert compression.stored_bytes(q) < compression.stored_bytes(model)


def test_stored_bytes_of_a_pruned_model_picks_the_smallest_sparse_format():
    model = _classifier()
    prune.magnitude_prune(model, 0.9)
    permanent = _classifier()
    prune.remove_all(prune.magnitude_prune(permanent, 0.9) and permanent)
    dense = quant.model_bytes(permanent)
    saved = 0
    for name, (module, _) in prune.prunable_weights(permanent).items():
        w = module.weight.detach()
        nnz = int(torch.count_nonzero(w))
        best = min(prune.storage_bytes(tuple(w.shape), nnz, f) for f in ("dense", "csr", "bitmask"))
        saved += w.numel() * 4 - best
        assert compression.linear_stored_bytes(module)[1] in ("csr", "bitmask")
    assert saved > 0
    assert compression.stored_bytes(model) == dense - saved
    assert prune.is_pruned(model.encoder.layers[0].ffn.up)  # the caller's model keeps its masks


def test_linear_stored_bytes_2_4_only_for_2_4_sparse_weights():
    layer = nn.Linear(16, 8)
    assert compression.linear_stored_bytes(layer) == (8 * 16 * 4 + 8 * 4, "dense")
    with torch.no_grad():
        layer.weight.mul_(prune.nm_mask(layer.weight))
    got, fmt = compression.linear_stored_bytes(layer, formats=("dense", "2:4"))
    assert fmt == "2:4" and got == prune.storage_bytes((8, 16), 64, "2:4") + 8 * 4
    with pytest.raises(ValueError):
        compression.linear_stored_bytes(layer, formats=("zip",))
    with pytest.raises(TypeError):
        compression.linear_stored_bytes(nn.ReLU())


def test_comparison_code_calls_labkit_quant_and_prune(monkeypatch):
    calls = {"linear_weight_bytes": 0, "model_bytes": 0, "storage_bytes": 0}

    def spy(module, name):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    spy(quant, "linear_weight_bytes")
    spy(quant, "model_bytes")
    spy(prune, "storage_bytes")
    q, _ = quant.quantize_model(_classifier(), quant.QuantConfig())
    compression.stored_bytes(q)
    assert calls["linear_weight_bytes"] > 0 and calls["model_bytes"] > 0
    pruned = _classifier()
    prune.magnitude_prune(pruned, 0.5)
    compression.stored_bytes(pruned)
    assert calls["storage_bytes"] > 0
    compression.bytes_per_weight("csr", sparsity=0.5)
    assert calls["storage_bytes"] > 1


# ------------------------------------------------------------------------------------------------ latency model


def test_matmul_intensity_and_roofline():
    assert compression.matmul_intensity(1, 1024, 1024) == pytest.approx(2 * 1024 * 1024 / (4 * (1024 * 1024 + 2048)))
    assert compression.matmul_intensity(1, 1024, 1024, weight_bytes=1) > 3 * compression.matmul_intensity(1, 1024, 1024)
    big = compression.matmul_intensity(4096, 1024, 1024)
    assert big > 100 * compression.matmul_intensity(1, 1024, 1024)
    assert compression.roofline_seconds(10.0, 1.0, 5.0, 1.0) == 2.0
    assert compression.roofline_seconds(1.0, 10.0, 5.0, 1.0) == 10.0
    with pytest.raises(ValueError):
        compression.matmul_intensity(0, 3, 3)
    with pytest.raises(ValueError):
        compression.roofline_seconds(1.0, 1.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ choosing


def _brute_front(costs, scores):
    def dominated(i):
        return any(costs[j] <= costs[i] and scores[j] >= scores[i] and (costs[j] < costs[i] or scores[j] > scores[i])
                   for j in range(len(costs)))
    return sorted((i for i in range(len(costs)) if not dominated(i)), key=lambda i: (costs[i], -scores[i], i))


@pytest.mark.parametrize("seed", range(40))
def test_pareto_front_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 15, (1,), generator=g))
    values = 4 if seed % 2 else 1000  # few distinct values: many ties and duplicates
    costs = torch.randint(0, values, (n,), generator=g).tolist()
    scores = torch.randint(0, values, (n,), generator=g).tolist()
    assert compression.pareto_front(costs, scores) == _brute_front(costs, scores)


def test_pareto_front_edge_cases():
    assert compression.pareto_front([], []) == []
    assert compression.pareto_front([1.0], [0.5]) == [0]
    assert compression.pareto_front([1, 2, 3], [0.3, 0.2, 0.9]) == [0, 2]
    assert compression.pareto_front([1, 1], [0.5, 0.5]) == [0, 1]
    with pytest.raises(ValueError):
        compression.pareto_front([1, 2], [0.3])
    with pytest.raises(ValueError):
        compression.pareto_front([1, math.nan], [0.3, 0.4])


def _m(name, accuracy, size, latency, spe=1e-3):
    return Measurement(name=name, family="x", accuracy=accuracy, val_loss=0.0, parameters=1, size_bytes=size,
                       latency_s=latency, seconds_per_example=spe, batch=8, threads=1)


def test_best_under_budget_and_cheapest_above_against_brute_force():
    g = torch.Generator().manual_seed(0)
    ms = [_m(f"m{i}", float(torch.randint(0, 5, (1,), generator=g)) / 5, int(torch.randint(1, 9, (1,), generator=g)),
             float(torch.rand(1, generator=g))) for i in range(12)]
    for budget in [0, 1, 3, 5, 9]:
        fit = [m for m in ms if m.size_bytes <= budget]
        got = compression.best_under_budget(ms, "size_bytes", budget)
        if not fit:
            assert got is None
        else:
            assert got.accuracy == max(m.accuracy for m in fit)
            assert got.size_bytes == min(m.size_bytes for m in fit if m.accuracy == got.accuracy)
    for floor in [0.0, 0.4, 0.8, 1.1]:
        good = [m for m in ms if m.accuracy >= floor]
        got = compression.cheapest_above(ms, "latency_s", floor)
        assert (got is None) == (not good)
        if good:
            assert got.latency_s == min(m.latency_s for m in good)
    with pytest.raises(ValueError):
        compression.best_under_budget(ms, "weight", 1.0)


def test_measurement_throughput_and_dict():
    m = _m("a", 0.5, 10, 1e-3, spe=0.01)
    assert m.throughput == pytest.approx(100.0)
    assert m.to_dict()["throughput"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------------ measuring


def test_measure_classifier_uses_evaluate_and_time_fn_on_one_thread(monkeypatch):
    model, task = _classifier(), _task()
    timed, threads = [], []
    real_time_fn = bench.time_fn

    def spy_time_fn(fn, **kwargs):
        timed.append(kwargs)
        threads.append(torch.get_num_threads())
        return real_time_fn(fn, **kwargs)
    monkeypatch.setattr(bench, "time_fn", spy_time_fn)
    before = torch.get_num_threads()
    result = compression.measure_classifier("fp32", model, task, batch=16, warmup=1, repeats=2)
    assert len(timed) == 2 and threads == [1, 1] and torch.get_num_threads() == before
    expected = train.evaluate_classifier(model, task.val_ids, task.val_labels, task.val_padding)
    assert result.accuracy == expected["accuracy"] and result.val_loss == pytest.approx(expected["loss"])
    assert result.size_bytes == quant.model_bytes(model)
    assert result.parameters == sum(p.numel() for p in model.parameters())
    assert result.latency_s > 0 and result.seconds_per_example > 0 and result.batch == 16
    with pytest.raises(ValueError):
        compression.measure_classifier("x", model, task, batch=0)


def test_measure_classifier_counts_quantized_weights_as_parameters():
    model, task = _classifier(), _task()
    q, _ = quant.quantize_model(model, quant.QuantConfig())
    result = compression.measure_classifier("int8", q, task, batch=4, warmup=1, repeats=1)
    assert result.parameters == sum(p.numel() for p in model.parameters())
    assert result.size_bytes < quant.model_bytes(model)


# ------------------------------------------------------------------------------------------------ fine-tuning


def test_cached_finetune_keeps_masks_trains_once_and_uses_a_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    base, task = _classifier(), _task()

    def build():
        model = copy.deepcopy(base)
        prune.magnitude_prune(model, 0.5)
        return model
    kwargs = dict(steps=3, lr=1e-3, batch_size=4, n_train=8, key={"sparsity": 0.5}, progress=False)
    model, history, loaded = compression.cached_finetune("t-mag", build, task, **kwargs)
    assert not loaded and len(history.step) == 3
    w = model.encoder.layers[0].ffn.up.weight
    assert prune.sparsity(w) >= 0.5 and not torch.equal(w, build().encoder.layers[0].ffn.up.weight)
    again, _, loaded = compression.cached_finetune("t-mag", build, task, **kwargs)
    assert loaded and torch.equal(again.encoder.layers[0].ffn.up.weight, w)
    _, _, loaded = compression.cached_finetune("t-mag", build, task, **{**kwargs, "n_train": 9})
    assert not loaded
    with pytest.raises(ValueError):
        compression.cached_finetune("t", build, task, steps=1, lr=1e-3, batch_size=2, n_train=0)
