"""Where training time and memory go: the bytes and FLOPs of one training step of labkit's GPT, measured.

The source paper (Mei et al. 2024, arXiv:2405.11704, abstract; seeds 001/002) "dig[s] deep into the efficiency
bottleneck of the training phase". This module takes one training step apart:

* **Memory.** ``parameters + gradients + optimizer states + activations saved for backward`` (+ temporaries).
  :func:`activation_memory_breakdown` derives the saved activations op by op for labkit's own layers;
  :func:`saved_activation_bytes` measures what autograd really saves (``saved_tensors_hooks``) and
  :func:`measure_training_memory` the peak of a real step, so every formula is checked by a measurement.
* **FLOPs.** ``6N`` per token for the matmul weights (Kaplan et al. 2020, §2.1) plus ``12 L T d`` for attention;
  :func:`model_flops_utilization` divides achieved by peak FLOP/s (Narayanan et al. 2021, §5.1; Chowdhery et al.
  2022, App. B).
* **Levers.** Gradient accumulation (:func:`train_step_with_accumulation`), activation checkpointing
  (:mod:`labkit.checkpointing`), and a profiler view of where a step's time goes (:func:`profile_step`,
  :func:`time_by_category`).
"""

from __future__ import annotations

import copy
import functools
import numbers
import warnings
from typing import Any, Callable

import torch
from torch import Tensor, nn

from labkit.attention import _positive_int
from labkit.bench import peak_memory, time_fn
from labkit.device import resolve_device
from labkit.layers import LayerNorm, RMSNorm
from labkit.transformer import TransformerConfig, gpt_parameter_count
from labkit.train import _lm_loss

__all__ = [
    "OPTIMIZER_STATES",
    "activation_memory_breakdown",
    "training_memory_breakdown",
    "saved_activation_bytes",
    "measure_training_memory",
    "training_flops_per_token",
    "model_flops_utilization",
    "peak_flops",
    "measured_matmul_flops",
    "GPU_PEAK_FLOPS",
    "train_step_with_accumulation",
    "profile_step",
    "time_by_category",
    "CATEGORIES",
]

#: Tensors of optimizer state kept per parameter tensor, each the parameter's size and dtype.
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

_ID_BYTES = 8  # token ids and targets are int64 (TokenEmbedding indexes with idx.long())


# ----------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_config(config: Any) -> TransformerConfig:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    return config


def _check_seq_len(config: TransformerConfig, seq_len: Any) -> int:
    if _positive_int("seq_len", seq_len) > config.max_len:
        raise ValueError(f"seq_len {seq_len} exceeds max_len {config.max_len}")
    return int(seq_len)


def _itemsize(name: str, dtype: Any) -> int:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype, got {dtype}")
    return torch.empty((), dtype=dtype).element_size()


def _check_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``batch`` must be ``(inputs, targets)``, two tensors with the same leading (batch) size."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(t, Tensor) for t in batch):
        raise TypeError(f"batch must be a pair of tensors (inputs, targets), got {type(batch).__name__}")
    inputs, targets = batch
    if inputs.dim() == 0 or targets.dim() == 0 or inputs.size(0) != targets.size(0):
        raise ValueError(f"inputs and targets must share their first (batch) dim, "
                         f"got {tuple(inputs.shape)} and {tuple(targets.shape)}")
    return inputs, targets


def _check_module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


# ----------------------------------------------------------------------------------------------------------
# memory: formulas
# ----------------------------------------------------------------------------------------------------------


def activation_memory_breakdown(
    config: TransformerConfig,
    batch_size: int,
    seq_len: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> dict[str, int]:
    """Bytes autograd saves for backward in one forward of labkit's :class:`~labkit.transformer.GPT` plus its
    cross-entropy loss, by component, derived from what each op of labkit's implementation saves.

    With ``B`` batch, ``T`` seq_len, ``d`` d_model, ``H`` heads, ``f`` d_ff, ``V`` vocab, ``s`` bytes per element,
    one layer saves ``s (10 BTd + 2 BT + 2 B H T^2 + c_f B T f) + B H T`` bytes, where ``c_f`` = 1 (ReLU: its
    output), 2 (GELU: input and output), 4 (SwiGLU: gate, silu(gate), up, product):

    * each from-scratch LayerNorm: ``x - mean`` and the normalised ``x_hat`` (``2 BTd``), ``rsqrt(var + eps)``
      (``BT``); its output is the saved input of the next projection (``BTd``) -- two norms: ``6 BTd + 2 BT``;
    * attention: Q, K, V as contiguous ``(B H, T, d/H)`` copies for the batched matmuls (``3 BTd``), the
      softmax output and the masked probabilities fed to ``P V`` (``2 B H T^2``), the bool mask of fully masked
      rows (``B H T`` bytes) and the re-merged heads fed to ``W_o`` (``BTd``).

    Outside the layers: the token ids (``8 BT``, int64), the final LayerNorm (pre-norm: ``3 BTd + BT``; post-norm
    only the head's input ``BTd``), the log-probabilities of the loss (``BTV``), the targets (``8 BT``) and the
    loss's total weight (one element). Dropout with ``0 < p < 1`` adds a mask after the embedding, on the
    attention probabilities, after ``W_o``, on the FFN hidden and after the FFN: ``2 BTd + BHT^2 + BTf``
    elements per layer (+ ``BTd`` once), stored in ``dtype`` on the CPU and as bool (1 byte) on CUDA; with ReLU
    the dropped hidden is saved besides the ReLU output (``+ BTf``). Embedding lookups, position adds, residual
    adds, bias adds and scalar scales save nothing. Checked to the byte against :func:`saved_activation_bytes`.
    """
    config = _check_config(config)
    b = _positive_int("batch_size", batch_size)
    t = _check_seq_len(config, seq_len)
    s = _itemsize("dtype", dtype)
    d, h, f, v, n_layers = config.d_model, config.n_heads, config.d_ff, config.vocab_size, config.n_layers
    dropout = 0.0 < config.dropout < 1.0
    mask_size = 1 if resolve_device(device).type == "cuda" else s  # CUDA: native_dropout's bool mask
    hidden_tensors = {"relu": 1, "gelu": 2, "swiglu": 4}[config.activation]
    if dropout and config.activation == "relu":
        hidden_tensors += 1  # ReLU backward keeps its output; W_2 now reads the dropped copy
    btd = b * t * d
    per_layer = {
        "norm_statistics": 2 * (2 * btd + b * t) * s,
        "projection_inputs": 2 * btd * s,
        "attention_qkv": 3 * btd * s,
        "attention_probabilities": 2 * b * h * t * t * s,
        "attention_row_mask": b * h * t,
        "attention_output": btd * s,
        "ffn_hidden": hidden_tensors * b * t * f * s,
        "dropout_masks": (2 * btd + b * h * t * t + b * t * f) * mask_size if dropout else 0,
    }
    breakdown = {"token_ids": b * t * _ID_BYTES, "embedding_dropout_mask": btd * mask_size if dropout else 0}
    breakdown.update({name: n_layers * value for name, value in per_layer.items()})
    breakdown["final_norm"] = (3 * btd + b * t) * s if config.norm_first else btd * s
    breakdown["loss"] = b * t * v * s + b * t * _ID_BYTES + s
    breakdown["total"] = sum(breakdown.values())
    return breakdown


def training_memory_breakdown(
    config: TransformerConfig,
    batch_size: int,
    seq_len: int,
    param_dtype: torch.dtype = torch.float32,
    optimizer: str = "adamw",
    grad_dtype: torch.dtype | None = None,
    *,
    activation_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, int]:
    """Bytes of one training step of labkit's GPT: ``parameters`` ``N s_p``, ``gradients`` ``N s_g``,
    ``optimizer_states`` ``k N s_p`` (``k`` = 2 for Adam/AdamW's two moments, 1 for SGD with momentum, 0 for
    plain SGD), ``activations`` from :func:`activation_memory_breakdown`, and their sum ``total``.

    ``N`` = :func:`~labkit.transformer.gpt_parameter_count`; ``grad_dtype`` and ``activation_dtype`` default to
    ``param_dtype``. The total is the memory a step holds if everything lived at once; the measured peak
    (:func:`measure_training_memory`) adds temporaries but never holds all activations and all gradients together,
    since backward frees the one as it makes the other. Mixed-precision master copies and optimizer step counters
    (one scalar per tensor) are not included. Source: Mei et al. 2024 on the training bottleneck.
    """
    config = _check_config(config)
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATES)}, got {optimizer!r}")
    param_size = _itemsize("param_dtype", param_dtype)
    grad_size = param_size if grad_dtype is None else _itemsize("grad_dtype", grad_dtype)
    activation_dtype = param_dtype if activation_dtype is None else activation_dtype
    n_params = gpt_parameter_count(config)
    breakdown = {
        "parameters": n_params * param_size,
        "gradients": n_params * grad_size,
        "optimizer_states": OPTIMIZER_STATES[optimizer] * n_params * param_size,
        "activations": activation_memory_breakdown(config, batch_size, seq_len, activation_dtype, device)["total"],
    }
    breakdown["total"] = sum(breakdown.values())
    return breakdown


# ----------------------------------------------------------------------------------------------------------
# memory: measurements
# ----------------------------------------------------------------------------------------------------------


def saved_activation_bytes(model: nn.Module, batch: tuple[Tensor, Tensor], loss_fn: LossFn | None = None) -> int:
    """Measured bytes autograd saves for backward in ``loss_fn(model, inputs, targets)`` (default: next-token
    cross-entropy), parameters and buffers excluded.

    Every tensor saved by an op passes ``torch.autograd.graph.saved_tensors_hooks``' pack hook; the bytes are
    those of the distinct storages behind them (a view saved twice counts once, a view counts its whole storage).
    """
    _check_module(model)
    inputs, targets = _check_batch(batch)
    loss_fn = _lm_loss if loss_fn is None else loss_fn
    excluded = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(model, inputs, targets)
    del loss  # frees the graph and what it saved
    return sum(storages.values())


def _optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    """The reference optimizer holding ``OPTIMIZER_STATES[name]`` state tensors per parameter."""
    if name not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATES)}, got {name!r}")
    if name in ("adamw", "adam"):
        return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, lr=1e-3)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9 if name == "sgd_momentum" else 0.0)


def measure_training_memory(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    device: str | torch.device | None = None,
    *,
    optimizer: str = "adamw",
    loss_fn: LossFn | None = None,
) -> int:
    """Measured peak bytes of a steady-state training step, everything included: a fresh copy of ``model`` (its
    parameters), an ``optimizer`` whose state already exists, then forward, backward (gradients) and
    ``optimizer.step()``. Measured with :func:`labkit.bench.peak_memory` (CUDA allocator / CPU profiler).

    It holds at least ``parameters + gradients + optimizer states`` (all live during the step) and compares with
    :func:`training_memory_breakdown`'s total: on the CPU, for the sizes in the tests, measured / formula was
    0.9 to 1.15 (temporaries such as the logits' gradient add, freeing activations during backward subtracts).
    ``device`` defaults to where the model's parameters are.
    """
    _check_module(model)
    inputs, targets = _check_batch(batch)
    loss_fn = _lm_loss if loss_fn is None else loss_fn
    _optimizer(optimizer, [nn.Parameter(torch.zeros(1))])  # validate the name before measuring
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError("model has no parameters to train")
    dev = first.device if device is None else resolve_device(device)
    inputs, targets = inputs.to(dev), targets.to(dev)

    def training_steps() -> None:
        replica = copy.deepcopy(model).to(dev).train()  # the parameters are allocated inside the measurement
        for param in replica.parameters():
            param.grad = None
        opt = _optimizer(optimizer, replica.parameters())
        for _ in range(2):  # the first step creates the optimizer state; the second is the steady-state one
            loss = loss_fn(replica, inputs, targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss

    return peak_memory(training_steps, dev, warmup=0)


# ----------------------------------------------------------------------------------------------------------
# FLOPs and utilisation
# ----------------------------------------------------------------------------------------------------------


def training_flops_per_token(config: TransformerConfig, seq_len: int) -> dict[str, int]:
    """Matmul FLOPs of one training step (forward + backward) per token of labkit's GPT.

    ``6 N`` (Kaplan et al. 2020, §2.1: forward ``2N``, backward ``4N`` -- gradients for the input and for the
    weight) over the matmul weights ``N = L (4 d^2 + 2 d f) + d V`` (SwiGLU: ``3 d f``; ``d V`` is the output
    head, tied or not), plus the attention term ``3 * 4 L T d``: per token, ``Q K^T`` and ``P V`` cost ``2 T d``
    each per layer in forward, doubled in backward. With ``f = 4d`` this is Narayanan et al. 2021's
    ``72 L d^2 (1 + T/(6d) + V/(12 L d))`` and PaLM's ``6N + 12 L H Q T`` (Chowdhery et al. 2022, App. B).

    It equals ``FlopCounterMode`` on a real forward+backward exactly: every matmul operand there requires grad,
    so backward is exactly twice forward. Not counted, as FlopCounterMode does not count them: the embedding
    lookups (gathers, and a scatter-add in backward), softmax, norms, activations, bias adds and the optimizer
    (O(N) elementwise). labkit computes the full T x T scores and masks afterwards, so no causal halving.
    Kaplan et al. write the attention term as ``2 L T d`` forward (the ``Q K^T`` logits only).
    """
    config = _check_config(config)
    t = _check_seq_len(config, seq_len)
    d, f = config.d_model, config.d_ff
    ffn_matrices = 3 if config.activation == "swiglu" else 2
    layer_params = config.n_layers * (4 * d * d + ffn_matrices * d * f)
    head_params = d * config.vocab_size
    flops = {
        "n_matmul_params": layer_params + head_params,
        "layers": 6 * layer_params,
        "head": 6 * head_params,
        "attention": 3 * 4 * config.n_layers * t * d,
    }
    flops["dense"] = flops["layers"] + flops["head"]  # the 6N term
    flops["total"] = flops["dense"] + flops["attention"]
    flops["forward"] = flops["total"] // 3
    flops["backward"] = flops["total"] - flops["forward"]
    return flops


def model_flops_utilization(flops_per_step: float, step_time_s: float, peak_flops: float) -> float:
    """MFU = (model FLOPs per step / step time) / peak FLOP/s (Chowdhery et al. 2022, App. B; Narayanan et al.
    2021). Model FLOPs are those the model needs (:func:`training_flops_per_token` x tokens), not recomputation."""
    for name, value in (("flops_per_step", flops_per_step), ("step_time_s", step_time_s), ("peak_flops", peak_flops)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(flops_per_step) / float(step_time_s) / float(peak_flops)


#: Dense (no sparsity) peak FLOP/s from NVIDIA's data sheets, by GPU and by math mode. ``float32`` is the plain
#: FP32 (non-tensor-core) rate; ``tf32`` the tensor-core rate a float32 matmul gets when TF32 is allowed.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 67e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "tf32": 378e12, "float32": 51e12},
    "H100": {"bfloat16": 989.4e12, "float16": 989.4e12, "tf32": 494.7e12, "float32": 67e12},  # SXM
    "A100": {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float16": 121e12, "tf32": 60e12, "float32": 30.3e12},
    "T4": {"float16": 65e12, "float32": 8.1e12},
}


def _gpu_table_entry(name: str) -> dict[str, float] | None:
    """The table row whose key occurs in the CUDA device name (most specific key first)."""
    normalized = name.upper()
    for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):
        if key.upper() in normalized:
            return GPU_PEAK_FLOPS[key]
    return None


@functools.lru_cache(maxsize=None)
def _measured_matmul_flops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2))
    timing = time_fn(lambda: torch.mm(a, b), warmup=2, repeats=5, device=device)
    return 2 * size**3 / timing.median_s


def measured_matmul_flops(device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                          size: int = 1024) -> float:
    """Achieved FLOP/s of a ``size x size`` matmul (``2 size^3`` FLOPs), timed with :func:`labkit.bench.time_fn`
    (median of 5 after warm-up; cached per device, dtype and size): the practical peak of a device."""
    _itemsize("dtype", dtype)
    return _measured_matmul_flops(resolve_device(device), dtype, _positive_int("size", size))


def peak_flops(device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> float | None:
    """The peak FLOP/s to divide by for MFU.

    CUDA: the dense data-sheet number of :data:`GPU_PEAK_FLOPS` for this GPU and dtype (float32 matmuls use the
    TF32 rate when ``torch.backends.cuda.matmul.allow_tf32`` is on); ``None``, with a warning, for a GPU or dtype
    not in the table (:func:`measured_matmul_flops` gives a practical peak instead). CPU and other devices: no
    data sheet applies, so this returns a *measured* practical peak, :func:`measured_matmul_flops` (a 1024^3
    matmul): MFU on the CPU is then relative to the best the machine's matmul does, not to a theoretical peak.
    """
    dev = resolve_device(device)
    name = str(dtype).removeprefix("torch.")
    _itemsize("dtype", dtype)
    if dev.type != "cuda":
        return measured_matmul_flops(dev, dtype)
    gpu = torch.cuda.get_device_name(dev)
    entry = _gpu_table_entry(gpu)
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and entry is not None and "tf32" in entry:
        name = "tf32"
    if entry is None or name not in entry:
        warnings.warn(f"no data-sheet peak for {gpu!r} in {name}; known GPUs: {sorted(GPU_PEAK_FLOPS)}. "
                      "Use measured_matmul_flops(device, dtype) for a measured practical peak.", stacklevel=2)
        return None
    return entry[name]


# ----------------------------------------------------------------------------------------------------------
# gradient accumulation
# ----------------------------------------------------------------------------------------------------------


def train_step_with_accumulation(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[Tensor, Tensor],
    micro_batches: int,
    loss_fn: LossFn | None = None,
) -> float:
    """One optimizer step on ``batch`` run as ``k = micro_batches`` forward/backward passes on slices of it.

    ``grad = sum_i (n_i / B) grad L_i``, which is ``(1/k) sum_i grad L_i`` for equal slices and equals the
    full-batch gradient of a mean loss: activations are held for ``B/k`` samples at a time, gradients are
    accumulated in place. Returns the full-batch loss. ``loss_fn(model, inputs, targets)`` is a mean over
    samples (default: next-token cross-entropy); the gradients are zeroed first, as the step owns them.
    """
    _check_module(model)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    inputs, targets = _check_batch(batch)
    total = inputs.size(0)
    if not isinstance(micro_batches, int) or isinstance(micro_batches, bool) or not 1 <= micro_batches <= total:
        raise ValueError(f"micro_batches must be an int in [1, batch size {total}], got {micro_batches!r}")
    loss_fn = _lm_loss if loss_fn is None else loss_fn
    optimizer.zero_grad(set_to_none=True)
    full_loss = 0.0
    for micro_inputs, micro_targets in zip(inputs.tensor_split(micro_batches), targets.tensor_split(micro_batches)):
        loss = loss_fn(model, micro_inputs, micro_targets) * (micro_inputs.size(0) / total)
        loss.backward()
        full_loss += float(loss.detach())
    optimizer.step()
    return full_loss


# ----------------------------------------------------------------------------------------------------------
# the profiler view
# ----------------------------------------------------------------------------------------------------------

#: Categories of :func:`time_by_category`, in the order it reports them.
CATEGORIES = ("matmul", "attention softmax", "norm", "elementwise", "optimizer", "other")

_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::matmul",
               "aten::linear", "aten::mv", "aten::addmv", "aten::dot", "aten::_scaled_mm"}
_SOFTMAX_OPS = {"aten::softmax", "aten::_softmax", "aten::_softmax_backward_data", "aten::_safe_softmax"}
_NORM_OPS = {"aten::layer_norm", "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::rms_norm",
             "aten::_fused_rms_norm", "aten::_fused_rms_norm_backward"}
_ELEMENTWISE_OPS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "pow", "rsqrt", "sqrt", "exp", "log",
    "gelu", "gelu_backward", "relu", "threshold_backward", "silu", "silu_backward", "sigmoid", "tanh", "where",
    "masked_fill", "masked_fill_", "dropout", "native_dropout", "native_dropout_backward", "bernoulli_", "copy_",
    "clone", "fill_", "zero_", "zeros_like", "ones_like", "sum", "mean", "lerp_", "addcmul_", "addcdiv_", "sqrt_",
    "maximum", "eq", "all", "contiguous", "_to_copy", "to",
}
_NORM_RANGE = "labkit::norm"
_NORM_MODULES = (LayerNorm, RMSNorm, nn.LayerNorm)


def _time_key(device: torch.device) -> str:
    return "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"


def _profile(fn: Callable[[], Any], device: torch.device, model: nn.Module | None = None):
    """Run ``fn`` once to warm up, then once under ``torch.profiler``; norm modules of ``model`` are marked with
    a ``labkit::norm`` range so that their (from-scratch, elementwise) ops can be attributed to them."""
    from torch.profiler import ProfilerActivity, profile, record_function

    if not callable(fn):
        raise TypeError(f"fn must be callable (a function of no arguments), got {type(fn).__name__}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    handles, ranges = [], []
    if model is not None:
        for module in _check_module(model).modules():
            if isinstance(module, _NORM_MODULES):
                handles.append(module.register_forward_pre_hook(
                    lambda *_: ranges.append(record_function(_NORM_RANGE).__enter__())))
                handles.append(module.register_forward_hook(lambda *_: ranges.pop().__exit__(None, None, None)))
    try:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with profile(activities=activities) as prof:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    finally:
        for handle in handles:
            handle.remove()
    return prof


def profile_step(fn: Callable[[], Any], device: str | torch.device | None = None, row_limit: int = 15) -> list[dict]:
    """The ops ``fn()`` spends its time in, from ``torch.profiler`` (one warm-up call, one profiled call): one
    dict per op name with ``name``, ``self_cpu_s`` (time in the op itself, children excluded), ``calls`` and
    ``share`` of the summed self time (on CUDA also ``self_device_s``; share is then of device time), largest
    first, ``row_limit`` rows."""
    dev = resolve_device(device)
    _positive_int("row_limit", row_limit)
    averages = _profile(fn, dev).key_averages()
    key = _time_key(dev)
    total = sum(getattr(event, key) for event in averages) or 1.0
    rows = []
    for event in sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:row_limit]:
        row = {"name": event.key, "self_cpu_s": event.self_cpu_time_total / 1e6, "calls": event.count,
               "share": getattr(event, key) / total}
        if dev.type == "cuda":
            row["self_device_s"] = event.self_device_time_total / 1e6
        rows.append(row)
    return rows


def _event_chain(event) -> list:
    """``event`` and its enclosing profiler events, innermost first."""
    chain = []
    while event is not None:
        chain.append(event)
        event = event.cpu_parent
    return chain


def _category(event, norm_sequence: set[int]) -> str:
    chain = _event_chain(event)
    names = [e.name for e in chain]
    if any(name.startswith("Optimizer.") for name in names):
        return "optimizer"
    if event.name in _MATMUL_OPS:
        return "matmul"
    if event.name in _SOFTMAX_OPS:
        return "attention softmax"
    in_norm_backward = any(e.name.startswith("autograd::engine::evaluate_function") and e.sequence_nr in norm_sequence
                           for e in chain)
    if event.name in _NORM_OPS or _NORM_RANGE in names or in_norm_backward:
        return "norm"
    if event.name.startswith("aten::") and event.name.removeprefix("aten::") in _ELEMENTWISE_OPS:
        return "elementwise"
    return "other"


def time_by_category(fn: Callable[[], Any], model: nn.Module | None = None,
                     device: str | torch.device | None = None) -> dict[str, dict[str, float]]:
    """``{category: {"seconds", "share"}}`` for one profiled call of ``fn()``: each profiler event's self time
    goes to one of :data:`CATEGORIES` -- ``optimizer`` (inside ``Optimizer.step``/``zero_grad``), ``matmul``
    (mm/addmm/bmm...), ``attention softmax`` (softmax and its backward), ``norm`` (inside a norm module of
    ``model`` -- forward by a profiler range, backward by the autograd sequence number of the forward op -- or a
    fused norm op), ``elementwise`` (pointwise ops, reductions, copies), ``other`` (views, indexing, the loss,
    autograd bookkeeping). CPU time on the CPU, device time on CUDA."""
    dev = resolve_device(device)
    prof = _profile(fn, dev, model)
    events = list(prof.events())
    norm_sequence = {event.sequence_nr for event in events
                     if event.sequence_nr >= 0 and _NORM_RANGE in (e.name for e in _event_chain(event))}
    key = _time_key(dev)
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        if event.name == _NORM_RANGE:
            continue  # the range's own self time is hook overhead, not the norm's
        seconds[_category(event, norm_sequence)] += getattr(event, key) / 1e6
    total = sum(seconds.values()) or 1.0
    return {name: {"seconds": value, "share": value / total} for name, value in seconds.items()}
