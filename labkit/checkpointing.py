"""Activation checkpointing (gradient checkpointing), from scratch.

Backward needs what forward saved; for a stack of ``L`` layers that is ``O(L)`` activations. Chen et al. 2016
("Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174, §3-4) keep only the *inputs* of ``k``
segments, run forward without saving anything inside them, and recompute each segment's forward just before
its backward: memory ``O(L/k + k)`` (``O(sqrt L)`` for ``k = sqrt L``) for one extra forward, about a third more
compute on a training step (``2N -> 8N`` of ``6N`` per token, see :mod:`labkit.training_cost`). The source paper
(Mei et al. 2024, arXiv:2405.11704) names training memory and time as the efficiency bottleneck; this is the
classic trade of one for the other.

* :func:`checkpoint` -- a ``torch.autograd.Function``: forward under ``torch.no_grad()`` saving only the inputs
  and the RNG state; backward restores the RNG state (dropout draws the same masks, CPU and CUDA), recomputes
  with grad enabled and backpropagates through the recomputed graph.
* :func:`checkpoint_sequential` -- segments of a sequence of functions, like ``torch.utils.checkpoint``'s.
* :func:`enable_checkpointing` / :class:`CheckpointedGPT` -- every Transformer layer of a labkit model recomputed.

``torch.utils.checkpoint`` is the reference in the tests and benchmarks; it is not used here.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from labkit.attention import _positive_int
from labkit.training_cost import _check_module
from labkit.transformer import GPT, DecoderLayer, EncoderLayer, TransformerConfig

__all__ = [
    "checkpoint",
    "checkpoint_sequential",
    "enable_checkpointing",
    "disable_checkpointing",
    "is_checkpointed",
    "CheckpointedEncoderLayer",
    "CheckpointedDecoderLayer",
    "CheckpointedGPT",
]



def _cuda_devices(tensors: Sequence[Tensor]) -> list[int]:
    """CUDA device indices of ``tensors`` (whose RNG states must be saved and restored)."""
    return sorted({t.device.index if t.device.index is not None else torch.cuda.current_device()
                   for t in tensors if t.is_cuda})


def _autocast_state() -> dict[str, tuple[bool, torch.dtype]]:
    """Whether autocast is on, and in which dtype, for the CPU and (when present) CUDA."""
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return {device: (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) for device in devices}


class _Checkpoint(torch.autograd.Function):
    """Forward without a graph keeping only the inputs; backward = recompute with grad + backpropagate."""

    @staticmethod
    def forward(ctx: Any, function: Callable[..., Any], preserve_rng_state: bool, *args: Any) -> Any:
        ctx.function = function
        ctx.preserve_rng_state = preserve_rng_state
        ctx.autocast = _autocast_state()
        tensors = [arg for arg in args if isinstance(arg, Tensor)]
        if preserve_rng_state:
            ctx.cpu_rng_state = torch.get_rng_state()
            ctx.cuda_devices = _cuda_devices(tensors)
            ctx.cuda_rng_states = [torch.cuda.get_rng_state(device) for device in ctx.cuda_devices]
        # tensors go through save_for_backward (versions checked on unpack); the rest is kept as is
        ctx.tensor_positions = [i for i, arg in enumerate(args) if isinstance(arg, Tensor)]
        ctx.other_args = [None if isinstance(arg, Tensor) else arg for arg in args]
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            outputs = function(*args)
        if not isinstance(outputs, Tensor) and not (
            isinstance(outputs, tuple) and all(isinstance(o, Tensor) or o is None for o in outputs)
        ):
            raise TypeError(f"a checkpointed function must return a Tensor or a tuple of Tensors (or None), "
                            f"got {type(outputs).__name__}")
        return outputs

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        if not torch.autograd._is_checkpoint_valid():
            raise RuntimeError("labkit.checkpointing.checkpoint works with loss.backward() only, not with "
                               "torch.autograd.grad() or backward(inputs=...): the recomputed graph accumulates "
                               "into .grad of the parameters")
        args = list(ctx.other_args)
        for position, saved in zip(ctx.tensor_positions, ctx.saved_tensors):
            detached = saved.detach()
            detached.requires_grad_(saved.requires_grad)
            args[position] = detached
        inputs = [args[i] for i in ctx.tensor_positions]
        devices = ctx.cuda_devices if ctx.preserve_rng_state else []
        with torch.random.fork_rng(devices=devices, enabled=ctx.preserve_rng_state):
            if ctx.preserve_rng_state:  # the same random draws (dropout masks) as in forward
                torch.set_rng_state(ctx.cpu_rng_state)
                for device, state in zip(ctx.cuda_devices, ctx.cuda_rng_states):
                    torch.cuda.set_rng_state(state, device)
            with torch.enable_grad(), _autocast(ctx.autocast):
                outputs = ctx.function(*args)
        outputs = (outputs,) if isinstance(outputs, Tensor) else outputs
        pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs)
                 if isinstance(out, Tensor) and out.requires_grad and grad is not None]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
        grads = [None] * len(args)
        for position, tensor in zip(ctx.tensor_positions, inputs):
            grads[position] = tensor.grad
        return (None, None, *grads)


class _autocast:
    """Re-enter the autocast state recorded in forward (mixed precision recomputes in the same dtypes)."""

    def __init__(self, state: dict[str, tuple[bool, torch.dtype]]) -> None:
        self.contexts = [torch.autocast(device, dtype=dtype, enabled=enabled)
                         for device, (enabled, dtype) in state.items()]

    def __enter__(self) -> None:
        for context in self.contexts:
            context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for context in reversed(self.contexts):
            context.__exit__(*exc)


def checkpoint(function: Callable[..., Any], *args: Any, preserve_rng_state: bool = True) -> Any:
    """``function(*args)`` without keeping its intermediate activations: they are recomputed in backward
    (Chen et al. 2016, §3). Saved per call: the input tensors (and the RNG state, so that dropout masks repeat).

    Same results and gradients as calling ``function(*args)`` directly, and as
    ``torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)``. Non-tensor arguments are passed
    through. Like torch's reentrant variant, gradients reach parameters by ``loss.backward()`` (not
    ``torch.autograd.grad``), and at least one input tensor must require grad for any gradient to flow.
    """
    if not callable(function):
        raise TypeError(f"function must be callable, got {type(function).__name__}")
    if not isinstance(preserve_rng_state, bool):
        raise TypeError(f"preserve_rng_state must be a bool, got {type(preserve_rng_state).__name__}")
    tensors = [arg for arg in args if isinstance(arg, Tensor)]
    if not tensors:
        raise ValueError("checkpoint needs at least one tensor argument (the inputs it keeps), got none")
    if torch.is_grad_enabled() and not any(t.requires_grad for t in tensors):
        warnings.warn("none of the inputs of a checkpointed function requires grad: its parameters will get no "
                      "gradient", stacklevel=2)
    if not torch.is_grad_enabled():
        return function(*args)  # nothing would be saved anyway
    return _Checkpoint.apply(function, preserve_rng_state, *args)


def _run_segment(functions: Sequence[Callable[[Any], Any]], x: Any) -> Any:
    for function in functions:
        x = function(x)
    return x


def checkpoint_sequential(functions: Sequence[Callable[[Any], Any]] | nn.Sequential, segments: int,
                          input: Tensor, *, preserve_rng_state: bool = True) -> Any:
    """Run ``functions`` one after another on ``input`` in ``segments`` segments, all but the last checkpointed
    (Chen et al. 2016, §4: memory ``O(n / segments)`` inside a segment plus ``segments`` saved inputs).

    Splits as ``torch.utils.checkpoint.checkpoint_sequential`` does: ``segments - 1`` checkpointed runs of
    ``n // segments`` functions, then the rest without checkpointing (its backward comes first, so recomputing
    it would save nothing).
    """
    if isinstance(functions, nn.Sequential):
        functions = list(functions.children())
    if not isinstance(functions, Sequence) or not functions or not all(callable(f) for f in functions):
        raise TypeError("functions must be an nn.Sequential or a non-empty sequence of callables")
    segments = _positive_int("segments", segments)
    if segments > len(functions):
        raise ValueError(f"segments must be at most the number of functions ({len(functions)}), got {segments}")
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    size = len(functions) // segments
    x = input
    for start in range(0, size * (segments - 1), size):
        segment = list(functions[start:start + size])
        x = checkpoint(functools.partial(_run_segment, segment), x, preserve_rng_state=preserve_rng_state)
    return _run_segment(functions[size * (segments - 1):], x)


# ----------------------------------------------------------------------------------------------------------
# labkit's Transformer layers
# ----------------------------------------------------------------------------------------------------------


class _CheckpointedLayer:
    """Mixin: the layer's forward runs through ``self.checkpoint_fn`` (labkit's :func:`checkpoint` unless set)."""

    checkpoint_fn: Callable[..., Any] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        run = functools.partial(super().forward, **kwargs)  # keyword arguments (masks, flags) pass through
        if not (torch.is_grad_enabled() and self.training):
            return run(*args)
        return (self.checkpoint_fn or checkpoint)(run, *args)


class CheckpointedEncoderLayer(_CheckpointedLayer, EncoderLayer):
    """An :class:`~labkit.transformer.EncoderLayer` whose activations are recomputed in backward."""


class CheckpointedDecoderLayer(_CheckpointedLayer, DecoderLayer):
    """A :class:`~labkit.transformer.DecoderLayer` whose activations are recomputed in backward."""


_CHECKPOINTED = {EncoderLayer: CheckpointedEncoderLayer, DecoderLayer: CheckpointedDecoderLayer}
_PLAIN = {checkpointed: plain for plain, checkpointed in _CHECKPOINTED.items()}


def enable_checkpointing(model: nn.Module, checkpoint_fn: Callable[..., Any] | None = None) -> nn.Module:
    """Recompute every Transformer layer of ``model`` in backward (in place; returns ``model``).

    Each :class:`EncoderLayer` / :class:`DecoderLayer` becomes its checkpointed subclass: same parameters, same
    ``state_dict`` keys, same outputs; in training with grad enabled only the layer's inputs are kept. So a GPT
    of ``L`` layers keeps ``L`` inputs of ``B T d`` instead of every layer's activations (see
    :func:`labkit.training_cost.activation_memory_breakdown`). ``checkpoint_fn(function, *args)`` replaces
    labkit's :func:`checkpoint` (e.g. ``functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)``
    for a side-by-side comparison).
    """
    _check_module(model)
    if checkpoint_fn is not None and not callable(checkpoint_fn):
        raise TypeError(f"checkpoint_fn must be callable or None, got {type(checkpoint_fn).__name__}")
    layers = [m for m in model.modules() if isinstance(m, (EncoderLayer, DecoderLayer))]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no labkit EncoderLayer or DecoderLayer to checkpoint")
    for layer in layers:
        plain = _PLAIN.get(type(layer), type(layer))
        if plain not in _CHECKPOINTED:
            raise TypeError(f"cannot checkpoint a subclass {type(layer).__name__} of a labkit layer")
        layer.__class__ = _CHECKPOINTED[plain]
        layer.checkpoint_fn = checkpoint_fn
    return model


def disable_checkpointing(model: nn.Module) -> nn.Module:
    """Undo :func:`enable_checkpointing` (in place; returns ``model``)."""
    _check_module(model)
    for layer in model.modules():
        if type(layer) in _PLAIN:
            layer.__class__ = _PLAIN[type(layer)]
            layer.__dict__.pop("checkpoint_fn", None)
    return model


def is_checkpointed(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is checkpointed."""
    return any(isinstance(m, _CheckpointedLayer) for m in model.modules())


class CheckpointedGPT(GPT):
    """:class:`~labkit.transformer.GPT` with every layer checkpointed: same parameters and outputs, activation
    memory ``O(L B T d)`` for the layer inputs plus one layer's worth during its recomputation."""

    def __init__(self, config: TransformerConfig, checkpoint_fn: Callable[..., Any] | None = None) -> None:
        super().__init__(config)
        enable_checkpointing(self, checkpoint_fn)
