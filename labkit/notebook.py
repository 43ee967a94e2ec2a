"""Helpers the chapter notebooks share: glue for the prose, source excerpts, small tables and comparisons."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any, Callable, Sequence

import torch

__all__ = ["glue", "source_excerpt", "show_source", "format_table", "print_table", "max_abs", "compare_pair"]


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the book's prose (myst-nb ``glue``); returns ``value``.

    Every number the text quotes is glued from the cell that computed it. Outside a book build, e.g. on Colab
    without myst-nb, nothing is recorded and the value is only returned.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name must be an identifier-like string, got {name!r}")
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return value
    myst_glue(name, value, display=display)
    return value


def source_excerpt(obj: Any, start: str | None = None, stop: str | None = None) -> str:
    """The source of ``obj`` (dedented), or only its lines from the first containing ``start`` through the
    next one containing ``stop`` (to the end when ``stop`` is None)."""
    lines = inspect.getsource(obj).splitlines()
    if start is not None:
        try:
            first = next(i for i, line in enumerate(lines) if start in line)
            last = next(i for i, line in enumerate(lines) if stop in line and i > first) if stop else len(lines) - 1
        except StopIteration:
            raise ValueError(f"no line containing {start!r} (then {stop!r}) in the source of {obj!r}") from None
        lines = lines[first : last + 1]
    return textwrap.dedent("\n".join(lines))


def show_source(obj: Any, start: str | None = None, stop: str | None = None) -> None:
    """Display :func:`source_excerpt` of ``obj`` as a highlighted Python block in the notebook."""
    from IPython.display import Markdown, display

    display(Markdown("```python\n" + source_excerpt(obj, start, stop) + "\n```"))


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned, floats as ``1.2e-07``."""
    cells = [[f"{c:.1e}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    if any(len(row) != len(header) for row in cells):
        raise ValueError(f"every row must have {len(header)} cells like the header")
    widths = [max(len(row[i]) for row in [list(header), *cells]) for i in range(len(header))]
    lines = []
    for row in [list(header), ["-" * w for w in widths], *cells]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print :func:`format_table`."""
    print(format_table(header, rows))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over all elements."""
    return (a.detach() - b.detach()).abs().max().item()


def compare_pair(ours_fn: Callable[..., torch.Tensor], ref_fn: Callable[..., torch.Tensor],
                 inputs: Sequence[torch.Tensor], seed: int = 0) -> tuple[float, float]:
    """Run both functions on fresh copies of ``inputs`` and backpropagate the same random upstream gradient:
    ``(max |output difference|, max |input-gradient difference|)``."""
    ours_in = [t.detach().clone().requires_grad_() for t in inputs]
    ref_in = [t.detach().clone().requires_grad_() for t in inputs]
    ours, ref = ours_fn(*ours_in), ref_fn(*ref_in)
    if ours.shape != ref.shape:
        raise ValueError(f"outputs differ in shape: {tuple(ours.shape)} against {tuple(ref.shape)}")
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(seed), dtype=ours.dtype)
    ours.backward(upstream.to(ours.device))
    ref.backward(upstream.to(ref.device))
    return max_abs(ours, ref), max(max_abs(a.grad, b.grad) for a, b in zip(ours_in, ref_in))
