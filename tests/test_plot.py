"""labkit.plot: the helpers draw what they say, label it, return axes or the slope, and never show."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit import plot  # noqa: E402
from labkit.bench import Comparison, Timing  # noqa: E402
from labkit.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("labkit.plot must not call plt.show()")

    monkeypatch.setattr(plt, "show", forbidden)
    yield
    plt.close("all")


def test_use_style_sets_the_book_style():
    matplotlib.rcdefaults()
    plot.use_style()
    assert matplotlib.rcParams["axes.spines.top"] is False
    assert matplotlib.rcParams["axes.grid"] is True
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    assert [c.lower() for c in colors] == [c.lower() for c in plot.COLORS]


def test_figure_returns_fig_and_axes_grid():
    fig, axes = plot.figure(2, 3)
    assert axes.shape == (2, 3) and len(fig.axes) == 6
    fig, ax = plot.figure()
    assert ax.figure is fig
    with pytest.raises(ValueError, match="nrows"):
        plot.figure(0)


def test_plot_history_draws_train_and_validation():
    history = History(step=[1, 2, 3, 4], loss=[4.0, 3.0, 2.5, 2.0], tokens_per_s=[1.0] * 4, wall_s=[0.1] * 4,
                      val_loss={2: 3.1, 4: 2.4})
    ax = plot.plot_history(history, label="tiny")
    train_line, val_line = ax.get_lines()
    assert list(train_line.get_ydata()) == [4.0, 3.0, 2.5, 2.0]
    assert list(val_line.get_xdata()) == [2, 4] and list(val_line.get_ydata()) == [3.1, 2.4]
    assert ax.get_title() == "Training loss" and ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["tiny (train)", "tiny (validation)"]


def test_plot_history_accepts_a_dict_with_string_steps_and_an_axis():
    _, ax = plot.figure()
    data = {"step": [1, 2], "loss": [1.0, 0.5], "val_loss": {"2": 0.7}}
    assert plot.plot_history(data, ax=ax, title="LM", ylabel="nats") is ax
    assert ax.get_title() == "LM" and ax.get_ylabel() == "nats"
    assert list(ax.get_lines()[1].get_ydata()) == [0.7]
    with pytest.raises(TypeError, match="History"):
        plot.plot_history([1, 2, 3])


def test_attention_map_shows_the_matrix_with_token_labels():
    weights = torch.softmax(torch.randn(3, 4), dim=-1)
    ax = plot.attention_map(weights, xlabels=list("abcd"), ylabels=["x", "y", "z"], title="head 0")
    image = ax.get_images()[0]
    np.testing.assert_allclose(image.get_array(), weights.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
    assert ax.get_title() == "head 0" and ax.get_xlabel() == "key position" and ax.get_ylabel() == "query position"
    assert len(ax.figure.axes) == 2  # the colour bar


def test_attention_map_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(L, S\)"):
        plot.attention_map(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="xlabels must have 4 entries"):
        plot.attention_map(torch.rand(3, 4), xlabels=["a"])


@pytest.mark.parametrize("exponent", [1.0, 2.0, -0.5])
def test_loglog_fit_returns_the_exponent(exponent):
    x = np.array([64, 128, 256, 512, 1024], dtype=float)
    _, ax = plot.figure()
    slope = plot.loglog_fit(x, 3.0 * x**exponent, ax=ax, label="time", xlabel="sequence length", ylabel="s",
                            title="scaling")
    assert slope == pytest.approx(exponent, abs=1e-9)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_title() == "scaling" and ax.get_xlabel() == "sequence length"
    assert "slope" in ax.get_legend().get_texts()[1].get_text()


def test_loglog_fit_of_noisy_quadratic_accepts_tensors():
    x = torch.tensor([10.0, 20.0, 40.0, 80.0])
    y = x**2 * torch.tensor([1.05, 0.95, 1.02, 0.99])
    assert plot.loglog_fit(x, y) == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("x, y, match", [([1, 2], [1, 0], "positive"), ([1], [1], "at least 2"),
                                         ([1, 2], [1, 2, 3], "same length")])
def test_loglog_fit_rejects_bad_data(x, y, match):
    with pytest.raises(ValueError, match=match):
        plot.loglog_fit(x, y)


def test_plot_comparisons_draws_both_sides_in_ms():
    comparisons = [Comparison(f"t.sdpa[seq_len={n}]", Timing.from_times([n * 1e-3]), Timing.from_times([n * 5e-4]),
                              params={"seq_len": n}) for n in (256, 64, 128)]
    ax = plot.plot_comparisons(comparisons, x="seq_len")
    labkit_line, reference_line = (container.lines[0] for container in ax.containers)
    assert list(labkit_line.get_xdata()) == [64, 128, 256]
    np.testing.assert_allclose(np.asarray(labkit_line.get_ydata(), dtype=float), [64.0, 128.0, 256.0])
    np.testing.assert_allclose(np.asarray(reference_line.get_ydata(), dtype=float), [32.0, 64.0, 128.0])
    assert ax.get_title() == "t.sdpa" and ax.get_xlabel() == "seq_len" and ax.get_ylabel() == "time (ms)"
    with pytest.raises(ValueError, match="params"):
        plot.plot_comparisons(comparisons, x="batch")
