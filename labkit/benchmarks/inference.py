"""Chapter "Inference optimization": the KV cache against recomputing the prefix, and torch.compile against eager.

* ``inference.kv_cache``: greedy generation of ``ch11_bench_new_tokens`` tokens (256 in the cpu and gpu profiles)
  after a ``ch11_bench_prompt``-token prompt with the book's GPT architecture (profile sizes, ``max_len`` raised to
  hold prompt + new tokens; weights at initialisation: the time does not depend on their values). ``ratio`` =
  time with the cache / time recomputing the whole sequence every step; the chapter's target is a ratio <= 0.2
  (a 5x speed-up) on the CPU. The two runs are checked to give the same tokens before they are timed.
* ``inference.compile``: one forward of the GPT's blocks on a (batch, seq_len) batch, ``torch.compile`` (backend
  ``ch11_compile_backend``; Inductor when it can run here, else the fallback named in ``params["note"]``) against
  eager; ``params`` holds the compile time and the number of calls that pays for it.

CPU timings run on one thread (steadier on a shared machine; the params say so).
"""

from __future__ import annotations

import contextlib

import torch

from labkit.bench import Comparison, compare, cpu_threads, register
from labkit.config import Profile
from labkit.transformer import GPT, TransformerConfig


def _threads(device: torch.device):
    return cpu_threads(1) if device.type == "cpu" else contextlib.nullcontext()


def bench_model(profile: Profile, max_len: int, device: torch.device) -> GPT:
    """The book's GPT architecture at the profile's sizes with room for ``max_len`` positions, in eval mode."""
    torch.manual_seed(0)
    config = TransformerConfig.from_profile(profile, profile.vocab_size, max_len=max_len)
    return GPT(config).to(device).eval()


@register("inference.kv_cache")
def kv_cache(device: torch.device, profile: Profile) -> Comparison:
    """Greedy generation of 256 new tokens (profile ch11_bench_new_tokens): with the KV cache vs recomputing the
    whole prefix each step (ratio = cached / recomputed; target <= 0.2 on CPU)."""
    from labkit.generate import generate

    n_prompt, n_new = profile.get("ch11_bench_prompt", 128), profile.get("ch11_bench_new_tokens", 256)
    model = bench_model(profile, n_prompt + n_new, device)
    prompt = torch.randint(0, profile.vocab_size, (1, n_prompt), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(device)
    with _threads(device):
        cached = generate(model, prompt, n_new, use_cache=True)
        recomputed = generate(model, prompt, n_new, use_cache=False)
        if not torch.equal(cached, recomputed):
            raise AssertionError("inference.kv_cache: generation with and without the cache gave different tokens")
        return compare(lambda: generate(model, prompt, n_new, use_cache=True),
                       lambda: generate(model, prompt, n_new, use_cache=False),
                       name=f"inference.kv_cache[prompt={n_prompt},new={n_new}]", warmup=1,
                       repeats=profile.get("ch11_bench_repeats", 3), device=device, memory=False,
                       mode="greedy generation, cache vs recompute",
                       params={"prompt": n_prompt, "new_tokens": n_new, "d_model": profile.d_model,
                               "n_layers": profile.n_layers, "threads": 1 if device.type == "cpu" else None,
                               "measured": "cached / recomputed"})


@register("inference.compile")
def compile_forward(device: torch.device, profile: Profile) -> Comparison:
    """One forward of the GPT's blocks at (batch_size, seq_len): torch.compile vs eager (ratio = compiled / eager),
    with the compile time in params."""
    from labkit.inference import measure_compile

    model = bench_model(profile, profile.seq_len, device)
    hidden = torch.randn(profile.batch_size, profile.seq_len, profile.d_model, device=device)
    backend = profile.get("ch11_compile_backend", "inductor")
    with _threads(device):
        report = measure_compile(lambda h: model.blocks(h, is_causal=True), (hidden,), backend=backend,
                                 warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device,
                                 name=f"inference.compile[blocks,batch={profile.batch_size},seq={profile.seq_len}]")
    comparison = report.comparison
    comparison.params.update({"backend": report.backend, "note": report.note, "compile_s": report.compile_s,
                              "first_call_s": report.first_call_s, "speedup": report.speedup,
                              "break_even_calls": report.break_even_calls, "measured": "compiled / eager",
                              "threads": 1 if device.type == "cpu" else None})
    return comparison
