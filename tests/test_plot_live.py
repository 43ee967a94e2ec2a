"""labkit.plot.LivePlot: collects points, redraws lines in place (throttled), updates a display handle, closes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from labkit import plot  # noqa: E402


class FakeHandle:
    def __init__(self):
        self.updates = 0

    def update(self, fig):
        self.updates += 1


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


def test_points_become_lines_and_throttling_works():
    live = plot.LivePlot({"loss": ("Loss", "step", "nats"), "acc": ("Accuracy", "step", "fraction")},
                         min_interval_s=1000.0, log_y=("loss",))
    live._handle = FakeHandle()
    assert live.axes["loss"].get_title() == "Loss" and live.axes["acc"].get_ylabel() == "fraction"
    assert live.axes["loss"].get_yscale() == "log"
    for step in range(1, 6):
        live.add("loss", "train", step, 1.0 / step)
    assert live.refresh() is True  # the first refresh always draws
    live.add("loss", "train", 6, 0.1)
    assert live.refresh() is False  # throttled
    assert live.refresh(force=True) is True
    line = live._lines[("loss", "train")]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5, 6] and line.get_ydata()[-1] == pytest.approx(0.1)
    assert live._handle.updates == 2
    live.add("acc", "val", 3, 0.5, style="o-")
    fig = live.close()
    assert live._lines[("acc", "val")].get_marker() == "o"
    assert live.data["acc"]["val"] == ([3.0], [0.5])
    assert not plt.fignum_exists(fig.number)  # closed, so a notebook does not show it a second time


def test_without_ipython_points_are_only_collected(monkeypatch):
    IPython = pytest.importorskip("IPython")
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # another test may have started a shell
    live = plot.LivePlot({"loss": ("Loss", "step", "nats")}, min_interval_s=0)
    assert live._handle is None
    live.add("loss", "train", 1, 2.0)
    assert live.refresh() is True


def test_bad_arguments():
    with pytest.raises(ValueError, match="non-empty dict"):
        plot.LivePlot({})
    with pytest.raises(ValueError, match="title, xlabel, ylabel"):
        plot.LivePlot({"loss": "Loss"})
    with pytest.raises(ValueError, match="min_interval_s"):
        plot.LivePlot({"loss": ("a", "b", "c")}, min_interval_s=-1)
    live = plot.LivePlot({"loss": ("a", "b", "c")})
    with pytest.raises(ValueError, match="unknown panel"):
        live.add("accuracy", "val", 1, 1.0)
