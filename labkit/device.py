"""Devices and determinism: which accelerator is here, what it supports, and seeding."""

from __future__ import annotations

import os
import platform
import random
import re

import torch

__all__ = [
    "default_device",
    "resolve_device",
    "supports_bf16",
    "supports_fp16",
    "triton_available",
    "describe_device",
    "device_slug",
    "seed_everything",
]


def default_device() -> torch.device:
    """The best device present: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn ``None``, a string or a device into a ``torch.device`` (``None`` means the default)."""
    if device is None:
        return default_device()
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'mps'") from err
    raise TypeError(f"device must be None, a str or a torch.device, got {type(device).__name__}")


def supports_bf16(device: str | torch.device | None = None) -> bool:
    """Whether bfloat16 arithmetic runs natively on ``device`` (on CPU torch always emulates it correctly)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "mps":
        return True
    return True


def supports_fp16(device: str | torch.device | None = None) -> bool:
    """Whether float16 matmuls are supported on ``device`` (every CUDA and MPS device; CPU in recent torch)."""
    dev = resolve_device(device)
    if dev.type in ("cuda", "mps"):
        return True
    try:
        a = torch.ones(2, 2, dtype=torch.float16)
        (a @ a).sum().item()
        return True
    except RuntimeError:
        return False


def triton_available() -> bool:
    """Whether the ``triton`` package imports (kernels need CUDA, or ``TRITON_INTERPRET=1`` on CPU)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def describe_device(device: str | torch.device | None = None) -> str:
    """A human-readable device name, e.g. ``'NVIDIA H100 80GB HBM3'`` or ``'cpu (x86_64, 2 threads)'``."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def device_slug(device: str | torch.device | None = None) -> str:
    """A file-name-safe device name, used for ``benchmarks/results/<slug>.json``."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    elif dev.type == "mps":
        name = f"mps-{platform.machine()}"
    else:
        name = f"cpu-{platform.machine()}-{torch.get_num_threads()}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def seed_everything(seed: int = 0, deterministic: bool = True) -> None:
    """Seed Python, NumPy (when installed) and torch on every device; optionally ask for deterministic kernels."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
