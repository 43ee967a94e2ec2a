"""Chapter "Quantization": batch-1 latency of quantized linears, labkit against PyTorch's own quantization.

``quant.linear`` times one linear layer of ``n × n`` (``profile.get("ch7_bench_sizes")``) at batch 1 (and
``ch7_bench_batch`` rows), on one CPU thread (steadier on a shared machine) or on CUDA. Comparisons, each
``ratio = first / second``:

* ``w8a8_vs_fp32``: labkit's :class:`~labkit.quant.Int8DynamicLinear` (integer matmul) vs the float ``nn.Linear``
  (fp32 on the CPU, fp16 on CUDA; ``params["float_dtype"]``);
* ``w8a8_vs_torch_dynamic``: the same vs ``torch.ao.quantization.quantize_dynamic`` (fbgemm/oneDNN int8);
* ``w4_vs_fp32``: labkit's group-wise int4 :class:`~labkit.quant.WeightOnlyLinear` vs float (dequantize + matmul
  on the CPU; the Triton kernel vs fp16 on CUDA).
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn

from labkit.bench import Comparison, compare, cpu_threads, register
from labkit.config import Profile

MODE = "forward, inference"


def _torch_dynamic(linear: nn.Linear) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(linear)), {nn.Linear},
                                                      dtype=torch.qint8)


@register("quant.linear")
def linear(device: torch.device, profile: Profile) -> list[Comparison]:
    """Batch-1 (and batch-``ch7_bench_batch``) latency of W8A8 and W4 linears vs float, and vs torch's dynamic int8."""
    from labkit import quant

    sizes = profile.get("ch7_bench_sizes", (512, 1024, 2048))
    batches = sorted({1, int(profile.get("ch7_bench_batch", 1))})
    group = int(profile.get("ch7_group_size", 128))
    comparisons = []
    threads = cpu_threads(1) if device.type == "cpu" else contextlib.nullcontext()
    with threads, torch.no_grad():
        for n in sizes:
            torch.manual_seed(0)
            layer = nn.Linear(n, n).to(device)
            float_dtype = torch.float16 if device.type == "cuda" else torch.float32
            reference = copy.deepcopy(layer).to(float_dtype)
            w8a8 = quant.Int8DynamicLinear.from_float(layer)
            w4 = quant.WeightOnlyLinear.from_float(layer, 4, "group", group).to(device)
            variants = {"w8a8_vs_fp32": (w8a8, reference, torch.float32),
                        "w4_vs_fp32": (w4, reference, float_dtype)}
            if device.type == "cpu":
                variants["w8a8_vs_torch_dynamic"] = (w8a8, _torch_dynamic(layer), torch.float32)
            for batch in batches:
                x = torch.randn(batch, n, device=device)
                for kind, (first, second, dtype) in variants.items():
                    xin, xref = x.to(dtype), x.to(dtype if kind != "w8a8_vs_fp32" else float_dtype)
                    params = {"n": n, "batch": batch, "group_size": group, "measured": kind,
                              "int8_matmul": quant.int8_matmul_backend(device),
                              "float_dtype": str(float_dtype).removeprefix("torch."),
                              "threads": torch.get_num_threads() if device.type == "cpu" else None}
                    comparisons.append(compare(lambda: first(xin), lambda: second(xref),
                                               name=f"quant.linear[{kind},n={n},batch={batch}]",
                                               warmup=profile.bench_warmup, repeats=profile.bench_repeats,
                                               device=device, memory=False, mode=MODE, params=params))
    return comparisons
