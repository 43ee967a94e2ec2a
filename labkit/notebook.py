"""Helpers for the chapter notebooks."""

from __future__ import annotations

from typing import Any

__all__ = ["glue"]


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
