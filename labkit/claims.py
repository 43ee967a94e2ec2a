"""The claims registry: what the source documents claim, and where the book measures it.

Each :class:`Claim` names the claim (briefly, as the document states it), its source and section, the chapter
notebook that tests it, and one or more :class:`Measurement`: a value the chapter glues (``glue="ch1_..."``,
read from the executed notebook) or an entry of ``benchmarks/results/<device>.json`` (``benchmark="name"``,
``field="ratio"`` or a dotted path such as ``"memory.ratio"``). The book's results page
(``book/results.md``, directive ``labkit-claims`` of :mod:`labkit.bookext`) turns the registry into one table at
build time; nothing in it is typed in.

To add a claim, append a ``Claim(...)`` to :data:`CLAIMS`; ``tests/test_claims.py`` checks that the notebook
exists, that it quotes each glue key in its prose, and that each benchmark entry is in a results file.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Measurement", "Claim", "CLAIMS", "ClaimRow", "chapter_number", "load_glue", "load_benchmarks",
           "claim_rows", "format_value"]


def chapter_number(chapter: str) -> int:
    """1 for ``"01_transformer"``: the two digits that open a chapter notebook's name."""
    if not isinstance(chapter, str) or len(chapter) < 3 or not chapter[:2].isdigit() or chapter[2] != "_":
        raise ValueError(f"chapter must be a notebook stem like '01_transformer', got {chapter!r}")
    return int(chapter[:2])


@dataclass(frozen=True)
class Measurement:
    """One measured number: ``label`` says what it is; exactly one of ``glue`` (a key the chapter glues) or
    ``benchmark`` (an entry name in benchmarks/results/*.json, read at ``field``); ``fmt`` a format spec."""

    label: str
    glue: str | None = None
    benchmark: str | None = None
    field: str = "ratio"
    fmt: str = ""
    unit: str = ""

    def __post_init__(self):
        if (self.glue is None) == (self.benchmark is None):
            raise ValueError(f"measurement {self.label!r}: give exactly one of glue= or benchmark=")


@dataclass(frozen=True)
class Claim:
    """A claim of a source document, tested in ``chapter`` (a notebook stem such as ``"01_transformer"``)."""

    claim: str
    source: str
    chapter: str
    measurements: tuple[Measurement, ...]

    def __post_init__(self):
        if not self.measurements:
            raise ValueError(f"claim {self.claim!r} has no measurement")
        chapter_number(self.chapter)


PAPER = "Mei et al. 2024"
ARTICLE = "003"
M = Measurement

CLAIMS: tuple[Claim, ...] = (
    # chapter 1: inside the Transformer
    Claim("Scaling QKᵀ by 1/√d_k keeps the dot products from growing too large", f"{ARTICLE} §4.1, §4.2",
          "01_transformer", (
              M("growth exponent of Var(q·k) in d_k, unscaled (derivation: 1)", glue="ch1_var_slope_raw", fmt=".2f"),
              M("the same after scaling (derivation: 0)", glue="ch1_var_slope_scaled", fmt=".2f"),
              M("softmax Jacobian norm, scaled / unscaled, at the largest d_k", glue="ch1_jacobian_ratio",
                fmt=".1f", unit="×"),
          )),
    Claim("The encoder turns the input text into a fixed-length vector", f"{ARTICLE} §2.1", "01_transformer", (
        M("encoder output shape for a padded batch of two texts (one vector per token)", glue="ch1_encoder_shape"),
    )),
    Claim("Encoder layer = LayerNorm(x + SelfAttention(x) + FFN(SelfAttention(x)))", f"{ARTICLE} §4.1",
          "01_transformer", (
              M("validation loss of the article's block", glue="ch1_val_article", fmt=".3f", unit="nats"),
              M("validation loss of the standard pre-norm block", glue="ch1_val_pre", fmt=".3f", unit="nats"),
              M("validation loss of the standard post-norm block", glue="ch1_val_post", fmt=".3f", unit="nats"),
          )),
    # chapter 2: the cost of attention
    Claim("Global weighting captures long-distance dependencies", f"{ARTICLE} §2.1.1", "02_attention_cost", (
        M("recall accuracy of a one-layer Transformer at the longest distance", glue="ch2_acc_full_longest",
          fmt=".2f"),
        M("the same for a GRU trained on that distance", glue="ch2_acc_gru_longest", fmt=".2f"),
        M("chance level", glue="ch2_chance", fmt=".2f"),
        M("trained on all distances at once: the GRU", glue="ch2_mixed_gru", fmt=".2f"),
        M("trained on all distances at once: the one-layer Transformer", glue="ch2_mixed_full", fmt=".2f"),
    )),
    Claim("The Transformer restricts computing efficiency while capturing long-term dependencies",
          f"{PAPER}, abstract", "02_attention_cost", (
        M("log-log slope of naive attention time in the sequence length", glue="ch2_slope_time_naive", fmt=".2f"),
        M("log-log slope of naive attention memory", glue="ch2_slope_mem_naive", fmt=".2f"),
        M("memory of tiled (online-softmax) attention / naive, n = 4096 (benchmark)",
          benchmark="attention.naive_vs_flash_memory[seq_len=4096]", field="memory.ratio", fmt=".3f", unit="×"),
    )),
    Claim("Resource consumption comes from the model's size", f"{ARTICLE} §3.3", "02_attention_cost", (
        M("length beyond which attention's n² FLOPs dominate, book's GPT", glue="ch2_book_n_star", unit="tokens"),
        M("attention score matrices of one 4096-token sequence, LLaMA-7B shape", glue="ch2_llama_scores_gib",
          fmt=".0f", unit="GiB"),
    )),
    Claim("The Transformer's derivative architectures also restrict computing efficiency", f"{PAPER}, abstract",
          "02_attention_cost", (
        M("log-log time slope of sliding-window attention", glue="ch2_slope_time_window", fmt=".2f"),
        M("log-log time slope of linear attention", glue="ch2_slope_time_linear", fmt=".2f"),
        M("KV cache of the LLaMA-7B shape with multi-query attention (multi-head: 2 GiB)",
          glue="ch2_llama_kv_mqa_mib", fmt=".0f", unit="MiB"),
    )),
    # chapter 3: where training time and memory go
    Claim("The training phase has an efficiency bottleneck", f"{PAPER}, abstract", "03_training_cost", (
        M("training FLOPs per token of the book's GPT", glue="ch3_flops_per_token", fmt=","),
        M("model FLOPs utilisation of one training step", glue="ch3_mfu", fmt=".1%"),
    )),
    Claim("Memory management is needed because of the enormous number of parameters", f"{ARTICLE} §1.3, §3.3",
          "03_training_cost", (
              M("share of a training step's memory held by the parameters", glue="ch3_param_share", fmt=".1%"),
              M("share held by the activations", glue="ch3_activation_share", fmt=".1%"),
          )),
    # chapter 4: optimizers
    Claim("Adaptive optimization algorithms accelerate training convergence", f"{PAPER}; 001 findings",
          "04_optimizers", (
              M("verdict of the chapter's measurement", glue="ch4_verdict"),
              M("steps to the target loss, SGD with momentum / Adam", glue="ch4_speedup_adam", fmt=".2f",
                unit="×"),
              M("the same for AdamW", glue="ch4_speedup_adamw", fmt=".2f", unit="×"),
          )),
    Claim("Efficiency optimization increases the risk of overfitting", f"{PAPER}, abstract", "04_optimizers", (
        M("training accuracy of the unregularised classifier (Adam)", glue="ch4_cls_train_acc_adam", fmt=".2f"),
        M("its validation accuracy", glue="ch4_cls_val_acc_adam", fmt=".2f"),
    )),
    Claim("Adaptive optimization algorithms (AdamW) reduce the memory footprint", f"{PAPER}, abstract",
          "04_optimizers", (
        M("Adam's state / parameter memory of the book's GPT", glue="ch4_adam_state_ratio", fmt=".3f", unit="×"),
    )),
    # chapter 5: mixed precision
    Claim("Mixed precision training strategies accelerate convergence", f"{PAPER}, abstract",
          "05_mixed_precision", (
        M("largest gap of a mixed-precision run's validation loss to fp32's", glue="ch5_worst_gap", fmt=".2f",
          unit="%"),
        M("time of a bf16 autocast step / fp32 step, in the chapter", glue="ch5_time_ratio_bf16", fmt=".2f",
          unit="×"),
        M("time of a labkit bf16 training step / fp32 (benchmark)",
          benchmark="amp.train_step[low_vs_fp32,d_model=128,n_layers=2]", fmt=".2f", unit="×"),
        M("time of a PyTorch autocast training step / fp32 (benchmark)",
          benchmark="amp.train_step[torch_low_vs_fp32,d_model=128,n_layers=2]", fmt=".2f", unit="×"),
        M("activation gradients that round to zero in fp16 (the abstract names no loss scaling)",
          glue="ch5_grad_underflow_shifted", fmt=".1f", unit="%"),
        M("validation loss with fp16 and no loss scaling", glue="ch5_val_fp16_unscaled", fmt=".3f", unit="nats"),
        M("the same with loss scaling", glue="ch5_val_fp16_scaled", fmt=".3f", unit="nats"),
    )),
    Claim("Mixed precision training strategies reduce the memory footprint", f"{PAPER}, abstract",
          "05_mixed_precision", (
        M("activations saved for backward, bf16 autocast / fp32", glue="ch5_saved_ratio_bf16", fmt=".2f", unit="×"),
        M("peak memory of a labkit bf16 training step / fp32 (benchmark)",
          benchmark="amp.train_step[low_vs_fp32,d_model=128,n_layers=2]", field="memory.ratio", fmt=".2f",
          unit="×"),
    )),
)


# ----------------------------------------------------------------------------------------------------------
# reading the measured values
# ----------------------------------------------------------------------------------------------------------


def load_glue(glue_json: str | Path) -> dict[str, Any]:
    """``{key: value}`` from a ``<notebook>.glue.json`` that myst-nb writes next to the executed notebook
    (values are the ``text/plain`` reprs, turned back into Python values where they are literals)."""
    path = Path(glue_json)
    if not path.is_file():
        return {}
    values = {}
    for key, output in json.loads(path.read_text(encoding="utf-8")).items():
        text = output.get("data", {}).get("text/plain")
        if text is None:
            continue
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key] = text
    return values


def load_benchmarks(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``benchmarks/results/*.json`` file (sorted by name) as a dict with ``device`` and ``entries``."""
    files = []
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("entries"), dict):
            data.setdefault("device", path.stem)
            files.append(data)
    return files


def _field(entry: dict[str, Any], dotted: str) -> Any:
    value: Any = entry
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def format_value(value: Any, fmt: str = "", unit: str = "") -> str:
    """``value`` formatted with ``fmt`` (strings as they are), followed by ``unit`` (``×`` and ``%`` attached)."""
    text = value if isinstance(value, str) else format(value, fmt)
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("×", "%") else f"{text} {unit}"


@dataclass(frozen=True)
class ClaimRow:
    """One line of the results table; ``problem`` is set when the value could not be found."""

    claim: str
    source: str
    chapter: str
    measured: str
    value: str
    device: str
    problem: str = ""


def claim_rows(glue_dir: str | Path, results_dir: str | Path,
               claims: Iterable[Claim] = CLAIMS) -> list[ClaimRow]:
    """The results table: one row per measurement (a benchmark measured on several devices gives one row per
    device). ``glue_dir`` holds ``<chapter>.glue.json`` (myst-nb's ``_build/jupyter_execute/notebooks``)."""
    benchmarks = load_benchmarks(results_dir)
    glue_cache: dict[str, dict[str, Any]] = {}
    rows = []
    for claim in claims:
        if claim.chapter not in glue_cache:
            glue_cache[claim.chapter] = load_glue(Path(glue_dir) / f"{claim.chapter}.glue.json")
        glued = glue_cache[claim.chapter]
        n = chapter_number(claim.chapter)
        chapter_device = glued.get(f"ch{n}_device")
        chapter_profile = glued.get(f"ch{n}_profile")
        device = (f"{chapter_device} ({chapter_profile})" if chapter_device and chapter_profile
                  else str(chapter_device or ""))
        for m in claim.measurements:
            if m.glue is not None:
                if m.glue in glued:
                    rows.append(ClaimRow(claim.claim, claim.source, claim.chapter, m.label,
                                         format_value(glued[m.glue], m.fmt, m.unit), device))
                else:
                    rows.append(ClaimRow(claim.claim, claim.source, claim.chapter, m.label, "", device,
                                         problem=f"glue key {m.glue!r} not found in {claim.chapter}'s executed "
                                                 f"notebook"))
                continue
            found = False
            for results in benchmarks:
                entry = results["entries"].get(m.benchmark)
                value = _field(entry, m.field) if entry else None
                if value is None:
                    continue
                found = True
                where = entry.get("device", results["device"])
                profile = entry.get("profile")
                rows.append(ClaimRow(claim.claim, claim.source, claim.chapter, m.label,
                                     format_value(value, m.fmt, m.unit),
                                     f"{where} ({profile})" if profile else where))
            if not found:
                rows.append(ClaimRow(claim.claim, claim.source, claim.chapter, m.label, "", "",
                                     problem=f"benchmark {m.benchmark!r} (field {m.field!r}) is in no results "
                                             f"file: run python -m labkit.bench"))
    return rows
