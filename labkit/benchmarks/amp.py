"""Chapter "Mixed precision": a GPT training step in fp32 and in mixed precision, labkit against torch.

``amp.train_step`` times one full step (forward, loss, backward, AdamW step) of the book's GPT at the profile's
sizes, and on CUDA also a wide model (``profile.get("amp_bench_d_model", 1024)``, the size at which the chapter's
target of a 2x tensor-core speed-up is stated). Low precision is bf16 on the CPU and fp16 (with loss scaling) on
CUDA. Three comparisons per model, each ``ratio = first / second`` in time and peak memory:

* ``labkit_vs_torch``: labkit's ``autocast`` (+ ``GradScaler``) vs ``torch.autocast`` (+ ``torch.amp.GradScaler``);
* ``low_vs_fp32``: labkit mixed precision vs plain fp32 (the speed-up or slow-down of mixed precision itself);
* ``torch_low_vs_fp32``: torch's mixed precision vs plain fp32.

All three use ``torch.optim.AdamW``, so the ratios isolate autocast and loss scaling.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

from labkit.bench import Comparison, compare, register
from labkit.config import Profile

MODE = "forward+backward+step"


def _low_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _train_step(model: nn.Module, batch: tuple[Tensor, Tensor], context: Callable[[], Any],
                scaler: Any | None) -> Callable[[], Tensor]:
    """One AdamW step of ``model`` on ``batch`` with the forward pass inside ``context()``; loss scaling when
    ``scaler`` is given. Returns the (unscaled) loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        with context():
            loss = model.loss(*batch)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    return step


def _check_losses(name: str, losses: dict[str, float]) -> None:
    """Refuse to time runs that do not train the same model: first-step losses within 2% of fp32."""
    for variant, loss in losses.items():
        if abs(loss - losses["fp32"]) > 0.02 * abs(losses["fp32"]):
            raise AssertionError(f"{name}: the {variant} loss {loss:.4f} is not within 2% of fp32 {losses['fp32']:.4f}")


def _model_sizes(device: torch.device, profile: Profile) -> list[dict[str, int]]:
    sizes = [dict(d_model=profile.d_model, n_heads=profile.n_heads, n_layers=profile.n_layers, d_ff=profile.d_ff)]
    if device.type == "cuda":
        wide = int(profile.get("amp_bench_d_model", 1024))
        sizes.append(dict(d_model=wide, n_heads=max(1, wide // 64), n_layers=profile.n_layers, d_ff=4 * wide))
    return sizes


@register("amp.train_step")
def train_step(device: torch.device, profile: Profile) -> list[Comparison]:
    """GPT training step (forward, backward, AdamW): labkit autocast(+GradScaler) vs torch.autocast(+GradScaler),
    and mixed precision vs fp32; bf16 on CPU, fp16 on CUDA; time and peak memory."""
    from labkit import amp
    from labkit.transformer import GPT, TransformerConfig

    low = _low_dtype(device)
    generator = torch.Generator().manual_seed(0)
    shape = (profile.batch_size, profile.seq_len)
    batch = tuple(torch.randint(0, profile.vocab_size, shape, generator=generator).to(device) for _ in range(2))
    comparisons = []
    for sizes in _model_sizes(device, profile):
        torch.manual_seed(0)
        config = TransformerConfig.from_profile(profile, profile.vocab_size, **sizes)
        model = GPT(config).to(device)
        scaled = low == torch.float16
        steps = {
            "labkit": _train_step(copy.deepcopy(model), batch, lambda: amp.autocast(device.type, low),
                                  amp.GradScaler(device.type) if scaled else None),
            "torch": _train_step(copy.deepcopy(model), batch, lambda: torch.autocast(device.type, low),
                                 torch.amp.GradScaler(device.type) if scaled else None),
            "fp32": _train_step(model, batch, contextlib.nullcontext, None),
        }
        label = f"d_model={config.d_model},n_layers={config.n_layers}"
        losses = {name: step().item() for name, step in steps.items()}
        _check_losses(f"amp.train_step[{label}]", losses)
        params = {"batch": profile.batch_size, "seq_len": profile.seq_len, **sizes, "vocab_size": profile.vocab_size,
                  "low_dtype": str(low).removeprefix("torch."), "loss_scaling": scaled,
                  **{f"first_loss_{name}": loss for name, loss in losses.items()}}
        for kind, first, second in (("labkit_vs_torch", "labkit", "torch"), ("low_vs_fp32", "labkit", "fp32"),
                                    ("torch_low_vs_fp32", "torch", "fp32")):
            comparisons.append(compare(steps[first], steps[second], name=f"amp.train_step[{kind},{label}]",
                                       warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device,
                                       mode=MODE, params={**params, "measured": f"{first} / {second}"}))
    return comparisons
