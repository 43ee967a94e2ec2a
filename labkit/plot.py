"""Plots in one style for the whole book: training curves, attention maps, scaling fits, benchmark timings.

Every helper draws on an ``ax`` (a new figure when none is given), sets the title and axis labels, returns the
axes (or the fitted slope) and never calls ``plt.show()``: the notebook decides when a figure is shown.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["STYLE", "COLORS", "use_style", "figure", "plot_history", "attention_map", "loglog_fit",
           "plot_comparisons"]

# Okabe-Ito: distinguishable with every common kind of colour blindness.
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

STYLE: dict[str, Any] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply the book's matplotlib style (colour-blind-safe colours, light grid, no top/right spines)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=list(COLORS))


def figure(nrows: int = 1, ncols: int = 1, **kwargs: Any):
    """``(fig, axes)`` like ``plt.subplots`` with the style applied and a constrained layout."""
    import matplotlib.pyplot as plt

    for name, value in (("nrows", nrows), ("ncols", ncols)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    use_style()
    kwargs.setdefault("layout", "constrained")
    if "figsize" not in kwargs and (nrows, ncols) != (1, 1):
        width, height = STYLE["figure.figsize"]
        kwargs["figsize"] = (min(width * ncols * 0.8, 14.0), height * nrows * 0.9)
    return plt.subplots(nrows, ncols, **kwargs)


def _axes(ax: Any):
    return figure()[1] if ax is None else ax


def _label(ax: Any, title: str | None, xlabel: str | None, ylabel: str | None) -> None:
    if title is not None:
        ax.set_title(title)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)


def _as_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numbers (a list, array or tensor), got {type(values).__name__}") from err


def plot_history(history: Any, ax: Any = None, label: str | None = None, *, title: str | None = "Training loss",
                 xlabel: str | None = "step", ylabel: str | None = "cross-entropy loss (nats)",
                 show_val: bool = True):
    """Training loss against step (a line) and, when recorded, validation loss (markers).

    ``history`` is a :class:`labkit.train.History` or its ``to_dict()``; ``label`` names the run in the legend.
    """
    data = history.to_dict() if hasattr(history, "to_dict") else history
    if not isinstance(data, Mapping) or "step" not in data or "loss" not in data:
        raise TypeError(f"history must be a History or a dict with 'step' and 'loss', got {type(history).__name__}")
    ax = _axes(ax)
    name = label or "run"
    line, = ax.plot(data["step"], data["loss"], label=f"{name} (train)", alpha=0.85)
    val = data.get("val_loss") or {}
    if show_val and val:
        steps = sorted(int(s) for s in val)
        ax.plot(steps, [val[s] if s in val else val[str(s)] for s in steps], "o--", color=line.get_color(),
                label=f"{name} (validation)")
    _label(ax, title, xlabel, ylabel)
    ax.legend()
    return ax


def attention_map(weights: Any, ax: Any = None, xlabels: Sequence[str] | None = None,
                  ylabels: Sequence[str] | None = None, title: str | None = "Attention weights", *,
                  xlabel: str = "key position", ylabel: str = "query position", colorbar: bool = True):
    """A heat map of attention weights (L queries x S keys), rows summing to 1; tokens as tick labels if given."""
    matrix = _as_array(weights, "weights")
    if matrix.ndim != 2:
        raise ValueError(f"weights must have shape (L, S), got {matrix.shape}")
    for name, labels, size in (("xlabels", xlabels, matrix.shape[1]), ("ylabels", ylabels, matrix.shape[0])):
        if labels is not None and len(labels) != size:
            raise ValueError(f"{name} must have {size} entries (one per {'key' if name == 'xlabels' else 'query'}), "
                             f"got {len(labels)}")
    ax = _axes(ax)
    image = ax.imshow(matrix, vmin=0.0, vmax=max(1e-12, float(matrix.max())), aspect="auto", interpolation="nearest")
    ax.grid(False)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), [str(t) for t in xlabels], rotation=90)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), [str(t) for t in ylabels])
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="weight")
    _label(ax, title, xlabel, ylabel)
    return ax


def loglog_fit(x: Any, y: Any, ax: Any = None, label: str | None = None, *, title: str | None = None,
               xlabel: str | None = None, ylabel: str | None = None) -> float:
    """Fit ``log y = a + b log x`` by least squares, draw the points and the fitted line on log-log axes and
    return the slope ``b`` (y grows like x^b)."""
    xs, ys = _as_array(x, "x").ravel(), _as_array(y, "y").ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"x and y must have the same length, got {xs.size} and {ys.size}")
    if xs.size < 2:
        raise ValueError(f"need at least 2 points to fit a slope, got {xs.size}")
    if not (np.all(xs > 0) and np.all(ys > 0)):
        raise ValueError("x and y must be positive for a log-log fit")
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    ax = _axes(ax)
    name = label or "measured"
    points = ax.plot(xs, ys, "o", label=name)[0]
    grid = np.geomspace(xs.min(), xs.max(), 50)
    ax.plot(grid, np.exp(intercept) * grid**slope, "--", color=points.get_color(), label=f"{name}: slope {slope:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _label(ax, title, xlabel, ylabel)
    ax.legend()
    return float(slope)


def plot_comparisons(comparisons: Sequence[Any], x: str, ax: Any = None, *, title: str | None = None,
                     xlabel: str | None = None, ylabel: str = "time (ms)", labels: tuple[str, str] = ("labkit", "PyTorch"),
                     log: bool = True):
    """Median time (error bar: inter-quartile range) of labkit and the reference against ``params[x]`` of a list
    of :class:`labkit.bench.Comparison` (or their ``to_dict()`` entries from a results file)."""
    rows = [c.to_dict() if hasattr(c, "to_dict") else c for c in comparisons]
    if not rows:
        raise ValueError("comparisons must not be empty")
    missing = [row.get("name") for row in rows if x not in row.get("params", {})]
    if missing:
        raise ValueError(f"every comparison needs params[{x!r}]; missing in {missing}")
    rows.sort(key=lambda row: row["params"][x])
    xs = [row["params"][x] for row in rows]
    ax = _axes(ax)
    for side, label in zip(("labkit", "reference"), labels):
        ax.errorbar(xs, [1e3 * row[f"{side}_s"] for row in rows], yerr=[1e3 * row[f"{side}_iqr_s"] / 2 for row in rows],
                    marker="o", capsize=3, label=label)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    _label(ax, title if title is not None else rows[0].get("name", "").split("[")[0], xlabel or x, ylabel)
    ax.legend()
    return ax


__all__.append("LivePlot")


class LivePlot:
    """A figure redrawn in place while something runs (a training loop), in a notebook or not.

    ``live = LivePlot({"loss": ("Training loss", "step", "loss (nats)"), ...})`` makes one panel per entry;
    ``live.add("loss", "train", step, value)`` appends a point to a named line of a panel; ``live.refresh()``
    redraws at most every ``min_interval_s`` seconds (``force=True``: now); ``live.close()`` draws the final
    state and closes the figure, so the notebook shows it once. In IPython the figure is shown through a display
    handle and updated in place; elsewhere the points are only collected (``live.data``).
    """

    def __init__(self, panels: Mapping[str, tuple[str, str, str]], *, min_interval_s: float = 0.5,
                 log_y: Sequence[str] = (), figsize: tuple[float, float] | None = None):
        import time

        if not isinstance(panels, Mapping) or not panels:
            raise ValueError("panels must be a non-empty dict: name -> (title, xlabel, ylabel)")
        for name, labels in panels.items():
            if not (isinstance(labels, tuple) and len(labels) == 3):
                raise ValueError(f"panels[{name!r}] must be (title, xlabel, ylabel), got {labels!r}")
        if not isinstance(min_interval_s, (int, float)) or min_interval_s < 0:
            raise ValueError(f"min_interval_s must be a number >= 0, got {min_interval_s!r}")
        width, height = STYLE["figure.figsize"]
        self.figure, axes = figure(1, len(panels), squeeze=False,
                                   figsize=figsize or (min(width * len(panels) * 0.8, 14.0), height * 0.9))
        self.axes = dict(zip(panels, axes[0]))
        for name, (title, xlabel, ylabel) in panels.items():
            _label(self.axes[name], title, xlabel, ylabel)
            if name in log_y:
                self.axes[name].set_yscale("log")
        self.data: dict[str, dict[str, tuple[list[float], list[float]]]] = {name: {} for name in panels}
        self._lines: dict[tuple[str, str], Any] = {}
        self._styles: dict[tuple[str, str], str] = {}
        self.min_interval_s = float(min_interval_s)
        self._clock = time.perf_counter
        self._last = -float("inf")
        self._handle = self._display_handle()

    def _display_handle(self) -> Any:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return None
        if get_ipython() is None:
            return None
        return display(self.figure, display_id=True)

    def add(self, panel: str, series: str, x: float, y: float, style: str = "-") -> None:
        """Append the point ``(x, y)`` to line ``series`` of ``panel`` (created with ``style`` on first use)."""
        if panel not in self.axes:
            raise ValueError(f"unknown panel {panel!r}: expected one of {sorted(self.axes)}")
        xs, ys = self.data[panel].setdefault(series, ([], []))
        xs.append(float(x))
        ys.append(float(y))
        self._styles.setdefault((panel, series), style)

    def refresh(self, force: bool = False) -> bool:
        """Redraw (if ``force`` or ``min_interval_s`` has passed since the last redraw); True when it drew."""
        now = self._clock()
        if not force and now - self._last < self.min_interval_s:
            return False
        self._last = now
        for panel, lines in self.data.items():
            ax = self.axes[panel]
            for series, (xs, ys) in lines.items():
                key = (panel, series)
                if key not in self._lines:
                    self._lines[key], = ax.plot(xs, ys, self._styles[key], label=series)
                    ax.legend()
                else:
                    self._lines[key].set_data(xs, ys)
            ax.relim()
            ax.autoscale_view()
        if self._handle is not None:
            self._handle.update(self.figure)
        return True

    def close(self):
        """Draw the final state and close the figure (it stays shown where it was displayed); returns it."""
        import matplotlib.pyplot as plt

        self.refresh(force=True)
        plt.close(self.figure)
        return self.figure

