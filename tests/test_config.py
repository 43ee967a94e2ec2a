"""Profiles and device helpers."""

from __future__ import annotations

import pytest
import torch

import labkit
from labkit.config import PROFILES, get_profile
from labkit.device import describe_device, device_slug, resolve_device, seed_everything


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    monkeypatch.setenv("LABKIT_PROFILE", "CPU")
    assert get_profile().name == "cpu"


def test_profile_defaults_to_device(monkeypatch):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert get_profile().name == expected


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'huge'.*smoke"):
        get_profile("huge")
    with pytest.raises(TypeError, match="must be a str"):
        get_profile(3)


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = PROFILES["smoke"], PROFILES["cpu"], PROFILES["gpu"]
    for field in ("d_model", "n_layers", "seq_len", "train_steps", "vocab_size"):
        assert getattr(smoke, field) <= getattr(cpu, field) <= getattr(gpu, field), field
    for p in PROFILES.values():
        assert p.d_model % p.n_heads == 0, p.name


def test_profile_get_and_replace():
    p = get_profile("smoke")
    assert p.get("d_model") == p.d_model
    assert p.get("missing", 7) == 7
    q = p.replace(extra={"window": 5})
    assert q.get("window") == 5 and p.get("window") is None


def test_seed_everything_makes_torch_repeatable():
    seed_everything(123)
    a = torch.randn(5)
    seed_everything(123)
    b = torch.randn(5)
    assert torch.equal(a, b)
    seed_everything(124)
    assert not torch.equal(a, torch.randn(5))
    with pytest.raises(TypeError):
        seed_everything("1")


def test_device_helpers():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == labkit.default_device()
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    with pytest.raises(TypeError):
        resolve_device(3)
    assert "cpu" in describe_device("cpu")
    assert device_slug("cpu").startswith("cpu-") and " " not in device_slug("cpu")
