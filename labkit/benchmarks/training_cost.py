"""Benchmarks of "Where training time and memory go": the levers on a GPT training step, measured.

* ``training.checkpointing`` -- peak memory and time of forward+backward of labkit's GPT with labkit's
  activation checkpointing against no checkpointing, and against ``torch.utils.checkpoint`` (non-reentrant).
* ``training.grad_accumulation`` -- peak memory and time of one optimizer step on the same batch split into
  ``k`` micro-batches against the whole batch at once.

``ratio`` is labkit time / reference time; ``memory.ratio`` labkit peak / reference peak.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable

import torch
from torch import Tensor, nn

from labkit.bench import Comparison, compare, register
from labkit.benchmarks.transformer import _check_same, _dtype
from labkit.config import Profile


def _gpt_and_batch(device: torch.device, profile: Profile, n_layers: int) -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    from labkit.transformer import GPT, TransformerConfig

    torch.manual_seed(0)
    config = TransformerConfig.from_profile(profile, profile.vocab_size, n_layers=n_layers)
    model = GPT(config).to(device, _dtype(device))
    generator = torch.Generator().manual_seed(0)
    shape = (profile.batch_size, profile.seq_len)
    batch = tuple(torch.randint(0, profile.vocab_size, shape, generator=generator).to(device) for _ in range(2))
    return model, batch


def _forward_backward(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Callable[[], Tensor]:
    """Loss, backward, and gradients freed again (so every call starts from the same memory)."""

    def step() -> Tensor:
        loss = model.loss(*batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    return step


@register("training.checkpointing")
def checkpointing(device: torch.device, profile: Profile) -> list[Comparison]:
    """GPT forward+backward with every layer checkpointed (labkit.checkpointing) vs no checkpointing and vs
    torch.utils.checkpoint.checkpoint(use_reentrant=False): peak memory and time ratios."""
    import torch.utils.checkpoint as torch_checkpoint

    from labkit.checkpointing import enable_checkpointing

    n_layers = int(profile.get("checkpoint_n_layers", max(4, profile.n_layers)))
    plain, batch = _gpt_and_batch(device, profile, n_layers)
    ours = enable_checkpointing(copy.deepcopy(plain))
    theirs = enable_checkpointing(copy.deepcopy(plain),
                                  functools.partial(torch_checkpoint.checkpoint, use_reentrant=False))
    steps = {name: _forward_backward(model, batch) for name, model in
             (("labkit", ours), ("none", plain), ("torch", theirs))}
    expected = steps["none"]()
    for name in ("labkit", "torch"):
        _check_same(f"training.checkpointing[{name}]", steps[name](), expected)
    params: dict[str, Any] = {"batch": profile.batch_size, "seq_len": profile.seq_len, "d_model": profile.d_model,
                              "n_layers": n_layers, "d_ff": profile.d_ff,
                              "dtype": str(_dtype(device)).removeprefix("torch.")}
    return [
        compare(steps["labkit"], steps[reference], name=f"training.checkpointing[vs_{reference}]",
                warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device,
                mode="forward+backward", params={**params, "reference": reference})
        for reference in ("none", "torch")
    ]


@register("training.grad_accumulation")
def grad_accumulation(device: torch.device, profile: Profile) -> list[Comparison]:
    """One optimizer step with the batch split into k micro-batches (labkit.training_cost.
    train_step_with_accumulation) vs the whole batch at once: peak memory and time against k."""
    from labkit.training_cost import train_step_with_accumulation

    model, batch = _gpt_and_batch(device, profile, profile.n_layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every repeat sees the same model

    def step(micro_batches: int) -> Callable[[], float]:
        return lambda: train_step_with_accumulation(model, optimizer, batch, micro_batches)

    counts = [k for k in (2, 4, 8) if k <= profile.batch_size]
    return [
        compare(step(k), step(1), name=f"training.grad_accumulation[micro_batches={k}]",
                warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device,
                mode="forward+backward+step",
                params={"batch": profile.batch_size, "micro_batches": k, "seq_len": profile.seq_len,
                        "d_model": profile.d_model, "n_layers": profile.n_layers,
                        "dtype": str(_dtype(device)).removeprefix("torch.")})
        for k in counts
    ]
