"""labkit.cache: the cache folder and atomic writes."""

from __future__ import annotations

import pytest

from labkit import cache


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "sub"))
    assert cache.cache_dir() == tmp_path / "sub"
    assert (tmp_path / "sub").is_dir()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "deep" / "file.bin"
    assert cache.atomic_write(path, lambda f: f.write(b"old"), binary=True) == path
    with pytest.raises(ZeroDivisionError):
        cache.atomic_write(path, lambda f: f.write(b"new") and 1 / 0, binary=True)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"], "no temporary file left behind"
    cache.atomic_write(path, lambda f: f.write("é"))
    assert path.read_text(encoding="utf-8") == "é"
