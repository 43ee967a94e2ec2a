"""Files that survive a session: where labkit caches things, and writes no reader sees half-done.

Corpora, tokenizers and trained checkpoints are cached in :func:`cache_dir`; every cached file is written
with :func:`atomic_write`, so an interrupted run leaves the old file or the whole new one, never half of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["CACHE_ENV", "cache_dir", "atomic_write"]

CACHE_ENV = "LABKIT_CACHE"


def cache_dir() -> Path:
    """The folder for labkit's cached files: ``$LABKIT_CACHE``, else ``~/.cache/labkit`` (created if missing)."""
    path = Path(os.environ.get(CACHE_ENV, "").strip() or "~/.cache/labkit").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it over
    ``path`` (``os.replace``): a reader sees the old file or the whole new one, never half of it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return target
