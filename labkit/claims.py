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
    # chapter 6: parallel training
    Claim("Massively parallel computing techniques accelerate convergence", f"{PAPER}, abstract; {ARTICLE} §9.4",
          "06_parallel", (
              M("data-parallel training against one process on the whole batch", glue="ch6_checks_verdict"),
              M("largest gap between the loss curves of different rank counts", glue="ch6_loss_spread",
                fmt=".1e"),
              M("speed-up of 2 ranks over 1, same global batch", glue="ch6_speedup_2", fmt=".2f", unit="×"),
              M("largest rank count measured", glue="ch6_max_ranks"),
              M("parallel efficiency at the largest rank count", glue="ch6_efficiency_max", fmt=".0%"),
              M("gradient synchronisation, one all-reduce per tensor / bucketed (target 1.5×)",
                glue="ch6_bench_speedup", fmt=".1f", unit="×"),
          )),
    Claim("Massively parallel computing techniques reduce the memory footprint", f"{PAPER}, abstract",
          "06_parallel", (
              M("optimizer state per rank, plain data parallelism / ZeRO-1, at the largest rank count",
                glue="ch6_zero_saving", fmt=".2f", unit="×"),
              M("model states per GPU, 7.5 B parameters on 64 GPUs, plain data parallelism (formula)",
                glue="ch6_paper_stage0", fmt=".0f", unit="GB"),
              M("the same with ZeRO stage 3 (formula)", glue="ch6_paper_stage3", fmt=".2f", unit="GB"),
          )),
    Claim("Splitting the model into parts processed in parallel raises inference speed", f"{ARTICLE} §9.2",
          "06_parallel", (
              M("pipeline bubble: idle share of 4 stages (simulated)", glue="ch6_bubble_formula_4", fmt=".0%"),
              M("micro-batches in flight", glue="ch6_n_micro"),
              M("idle share measured in the real pipeline run", glue="ch6_bubble_real", fmt=".0%"),
              M("the same predicted by (p − 1)/(m + p − 1)", glue="ch6_bubble_formula_real", fmt=".0%"),
          )),
    # chapter 7: quantization
    Claim("Quantization greatly reduces model size and memory", f"{PAPER}, abstract; {ARTICLE} §2.2.2, §9.2",
          "07_quantization", (
              M("linear-layer bytes, fp32 / int8 per channel (scales included)", glue="ch7_size_int8", fmt=".2f",
                unit="×"),
              M("the same at int4, groups of 128", glue="ch7_size_int4", fmt=".2f", unit="×"),
              M("whole GPT at int4 (embedding, norms and biases stay float)", glue="ch7_size_int4_model",
                fmt=".2f", unit="×"),
          )),
    Claim("Quantization maintains prediction accuracy", f"{PAPER}, abstract", "07_quantization", (
        M("perplexity increase of the GPT with W8A8", glue="ch7_w8a8_ppl_increase", fmt=".2f", unit="%"),
        M("classifier accuracy drop with W8A8", glue="ch7_w8a8_acc_drop", fmt=".2f", unit="points"),
        M("targets 2 % and 0.5 points", glue="ch7_w8a8_target"),
        M("low bit width tried", glue="ch7_low_bits", unit="bits"),
        M("perplexity at that width, min-max per channel", glue="ch7_ppl_low_minmax", fmt=".1f"),
        M("perplexity in fp32", glue="ch7_ppl_fp32", fmt=".2f"),
        M("perplexity with activation outliers, per-tensor int8 activations", glue="ch7_outlier_tensor",
          fmt=".2f"),
        M("the same after SmoothQuant", glue="ch7_outlier_smooth", fmt=".3f"),
    )),
    Claim("Quantization greatly reduces inference delay and computation",
          f"{PAPER}, abstract; {ARTICLE} §2.2.2, §9.2", "07_quantization", (
              M("time of an int4 weight-only linear layer / float, batch 1", glue="ch7_linear_w4_ratio",
                fmt=".1f", unit="×"),
              M("int8 matrix product used by W8A8", glue="ch7_linear_backend"),
              M("width n of the largest n × n layer timed", glue="ch7_linear_n"),
              M("speed-up of that layer with W8A8 at batch 1 (target 1.3×)", glue="ch7_linear_speedup",
                fmt=".2f", unit="×"),
              M("speed of the book's GPT with labkit's W8A8 / fp32", glue="ch7_w8a8_latency_ratio", fmt=".2f",
                unit="×"),
              M("the same with PyTorch's dynamic quantization", glue="ch7_torch_latency_ratio", fmt=".2f",
                unit="×"),
          )),
    # chapter 8: pruning, sparsity and sharing
    Claim("Sparsity: setting most parameters to 0 reduces memory", f"{ARTICLE} §2.2.1, §9.3", "08_pruning", (
        M("sparsity above which CSR is smaller than dense (int32 indices)", glue="ch8_breakeven_csr32", fmt=".0f",
          unit="%"),
        M("the same with PyTorch's int64 indices", glue="ch8_breakeven_csr64", fmt=".0f", unit="%"),
        M("bytes of PyTorch's CSR / dense at 50 % sparsity", glue="ch8_csr_at_half", fmt=".2f", unit="×"),
        M("sparsity above which a bitmask is smaller", glue="ch8_breakeven_bitmask", fmt=".1f", unit="%"),
    )),
    Claim("Sparsity reduces computation", f"{ARTICLE} §2.2.1, §9.3", "08_pruning", (
        M("FFN time with half its weights at zero / dense (dense kernels)", glue="ch8_unstructured_ratio",
          fmt=".2f", unit="×"),
        M("share of FFN neurons removed (structured)", glue="ch8_ffn_amount_pct", fmt=".0f", unit="%"),
        M("FFN speed-up after removing them (target 1.25×)", glue="ch8_ffn_speedup", fmt=".2f", unit="×"),
        M("accuracy after removing them and fine-tuning", glue="ch8_ffn_after", fmt=".3f"),
        M("accuracy of the dense model", glue="ch8_dense_accuracy", fmt=".3f"),
        M("2:4 semi-structured sparsity, speed-up over dense fp16 (GPU only)", glue="ch8_semi_text"),
    )),
    Claim("Pruning reduces model size while maintaining prediction accuracy", f"{PAPER}, abstract", "08_pruning", (
        M("accuracy at 50 % sparsity after fine-tuning", glue="ch8_half_accuracy", fmt=".3f"),
        M("dense accuracy − that, in points (target: at most 1)", glue="ch8_half_gap", fmt=".1f", unit="points"),
        M("highest sparsity tried, one-shot, no fine-tuning", glue="ch8_top_sparsity", fmt=".0f", unit="%"),
        M("accuracy there, layer-wise magnitude", glue="ch8_oneshot_layer_top", fmt=".3f"),
        M("accuracy there, global magnitude", glue="ch8_oneshot_global_top", fmt=".3f"),
        M("accuracy there, OBD (Fisher)", glue="ch8_oneshot_obd_top", fmt=".3f"),
    )),
    Claim("Sparse updates (only non-zero parameters are updated) reduce computation", f"{ARTICLE} §2.2.1, §9.3",
          "08_pruning", (
              M("optimizer moments kept by MaskedAdamW / dense AdamW", glue="ch8_state_ratio", fmt=".2f",
                unit="×"),
              M("sparsity after fine-tuning with sparse updates (the pruned weights stay zero)",
                glue="ch8_sparse_update_sparsity", fmt=".3f"),
          )),
    Claim("Parameter sharing reduces the number of parameters and improves computing efficiency",
          f"{ARTICLE} §9.3", "08_pruning", (
              M("parameters of the layer-shared classifier / unshared", glue="ch8_shared_params_ratio", fmt=".2f",
                unit="×"),
              M("its validation accuracy", glue="ch8_shared_accuracy", fmt=".3f"),
              M("the unshared classifier's at the same step", glue="ch8_dense_at_share_steps", fmt=".3f"),
          )),
    # chapter 9: knowledge distillation
    Claim("Knowledge distillation reduces model size", f"{PAPER}, abstract; {ARTICLE} §2.2.2",
          "09_distillation", (
              M("parameters of the student", glue="ch9_student_params", fmt=","),
              M("parameters of the teacher", glue="ch9_teacher_params", fmt=","),
              M("student / teacher (the size is chosen, not produced by distillation)", glue="ch9_student_share",
                fmt=".1f", unit="%"),
          )),
    Claim("Knowledge distillation reduces inference delay", f"{PAPER}, abstract", "09_distillation", (
        M("forward time, student / teacher, batch 1", glue="ch9_latency_ratio_b1", fmt=".2f", unit="×"),
        M("the same at the large batch", glue="ch9_latency_ratio_big", fmt=".2f", unit="×"),
        M("large batch size", glue="ch9_latency_batch_big"),
    )),
    Claim("Knowledge distillation maintains prediction accuracy", f"{PAPER}, abstract", "09_distillation", (
        M("teacher accuracy kept by the best distilled student", glue="ch9_keeps", fmt=".1f", unit="%"),
        M("target: 95 % with at most 25 % of the parameters", glue="ch9_target_keep"),
        M("accuracy gain over the same student trained on the labels alone", glue="ch9_gain", fmt=".3f"),
        M("seed spread", glue="ch9_spread", fmt=".3f"),
        M("does the gain exceed the seed spread?", glue="ch9_target_beat"),
        M("GPT student perplexity trained from scratch", glue="ch9_ppl_scratch", fmt=".2f"),
        M("the same with logit distillation", glue="ch9_ppl_kd", fmt=".2f"),
    )),
    # chapter 10: choosing a compression
    Claim("Compression significantly reduces model size while maintaining prediction accuracy",
          f"{PAPER}, abstract", "10_choosing_compression", (
              M("accuracy of the fp32 teacher", glue="ch10_teacher_accuracy", fmt=".3f"),
              M("size reduction, int8 W8A8", glue="ch10_int8_size_x", fmt=".2f", unit="×"),
              M("its accuracy", glue="ch10_int8_acc", fmt=".3f"),
              M("size reduction, int4 weight-only", glue="ch10_int4_size_x", fmt=".2f", unit="×"),
              M("its accuracy", glue="ch10_int4_acc", fmt=".3f"),
              M("size reduction, 50 % magnitude pruning (index cost included)", glue="ch10_magnitude_size_x",
                fmt=".2f", unit="×"),
              M("its accuracy", glue="ch10_magnitude_acc", fmt=".3f"),
              M("size reduction, structured pruning", glue="ch10_structured_size_x", fmt=".2f", unit="×"),
              M("its accuracy", glue="ch10_structured_acc", fmt=".3f"),
              M("size reduction, distilled student", glue="ch10_student_size_x", fmt=".2f", unit="×"),
              M("its accuracy", glue="ch10_student_acc", fmt=".3f"),
          )),
    Claim("Compression significantly reduces inference delay", f"{PAPER}, abstract", "10_choosing_compression", (
        M("batch-1 speed-up, int8 W8A8", glue="ch10_int8_speedup", fmt=".2f", unit="×"),
        M("the same, int4 weight-only", glue="ch10_int4_speedup", fmt=".2f", unit="×"),
        M("the same, 50 % unstructured pruning", glue="ch10_magnitude_speedup", fmt=".2f", unit="×"),
        M("the same, structured pruning", glue="ch10_structured_speedup", fmt=".2f", unit="×"),
        M("the same, distilled student", glue="ch10_student_speedup", fmt=".2f", unit="×"),
    )),
    Claim("Compression techniques compare differently in different application scenarios", f"{PAPER}, abstract",
          "10_choosing_compression", (
              M("choice for an edge CPU at batch 1", glue="ch10_edge_choice"),
              M("choice for a throughput server", glue="ch10_server_choice"),
              M("choice under a memory cap", glue="ch10_memory_choice"),
          )),
    Claim("Efficiency optimization increases the risk of overfitting", f"{PAPER}, abstract",
          "10_choosing_compression", (
              M("verdict of the chapter's measurement", glue="ch10_overfit_verdict"),
              M("train − validation accuracy of the pruned model fine-tuned on a small set",
                glue="ch10_overfit_small_gap", fmt="+.3f"),
              M("the same fine-tuned on all the data", glue="ch10_overfit_full_gap", fmt="+.3f"),
              M("the unpruned teacher fine-tuned on the small set", glue="ch10_overfit_dense_gap", fmt="+.3f"),
          )),
    Claim("The performance loss after compression has to be controlled", f"{PAPER}, abstract",
          "10_choosing_compression", (
              M("accuracy of the heavily pruned model before fine-tuning", glue="ch10_recovery_zero", fmt=".3f"),
              M("after fine-tuning", glue="ch10_recovery_final", fmt=".3f"),
              M("4-bit post-training quantization, one scale a matrix", glue="ch10_ptq4", fmt=".3f"),
              M("4-bit quantization-aware training", glue="ch10_qat4", fmt=".3f"),
              M("QAT against PTQ", glue="ch10_qat_verdict"),
          )),
    Claim("Compression algorithms have a generality problem", f"{PAPER}, abstract", "10_choosing_compression", (
        M("GPT validation-loss change at the sparsity tuned on the classifier", glue="ch10_gen_lm_at_cls",
          fmt="+.1f", unit="%"),
        M("classifier accuracy change at the sparsity tuned on the GPT", glue="ch10_gen_cls_at_lm", fmt="+.3f"),
        M("verdict", glue="ch10_gen_verdict"),
    )),
    # chapter 11: inference
    Claim("Static graphs raise inference speed but need more compile time", f"{ARTICLE} §2.2.2, §9.2",
          "11_inference", (
              M("compiler backend", glue="ch11_compile_backend"),
              M("compile time of the GPT layer stack", glue="ch11_compile_s", fmt=".1f", unit="s"),
              M("speed-up per call, compiled / eager", glue="ch11_compile_speedup", fmt=".2f", unit="×"),
              M("when the compile time is paid back", glue="ch11_compile_pays_off"),
              M("compile time / one-off generation time", glue="ch11_compile_vs_generation", fmt=".1f",
                unit="×"),
              M("compilations for calls with new input shapes", glue="ch11_n_compiles"),
              M("calls with distinct shapes", glue="ch11_n_shapes"),
          )),
    Claim("Dynamic graphs are more flexible but slower", f"{ARTICLE} §9.2", "11_inference", (
        M("graphs the book's GPT broke into when compiled (eager runs it as written)", glue="ch11_gpt_graphs"),
        M("eager time per call / compiled (speed-up of the static graph)", glue="ch11_compile_speedup",
          fmt=".2f", unit="×"),
    )),
    Claim("Inference speed is raised by static graphs, quantization, compression and distributed computing "
          "(the list leaves out the KV cache)", f"{ARTICLE} §9.2", "11_inference", (
        M("greedy generation, recomputing the prefix / with the KV cache (target 5×)", glue="ch11_kv_speedup",
          fmt=".1f", unit="×"),
        M("tokens with and without the cache", glue="ch11_same_tokens"),
        M("KV cache of a 7B model, 4096 tokens, fp16, one sequence", glue="ch11_kv_7b_gib", fmt=".1f",
          unit="GiB"),
        M("arithmetic intensity of a decode step at batch 1 (FLOP/byte)", glue="ch11_intensity_b1", fmt=".2f"),
        M("ridge point of this device (FLOP/byte)", glue="ch11_ridge", fmt=".1f"),
        M("throughput gain from batching sequences", glue="ch11_throughput_gain", fmt=".1f", unit="×"),
    )),
    # chapter 12: applications and metrics
    Claim("Accuracy, precision and recall, F1 (\"combining accuracy and recall\"), BLEU and ROUGE evaluate a model",
          f"{ARTICLE} §9.7", "12_applications", (
              M("largest difference of the book's metrics from scikit-learn, sacreBLEU and rouge-score",
                glue="ch12_metric_max_error", fmt=".1e"),
              M("random cases per metric", glue="ch12_metric_cases"),
          )),
    Claim("A Transformer classifies text (case 1; the §5.2 code sample)", f"{ARTICLE} §4.3, §5.2",
          "12_applications", (
              M("validation accuracy of the book's encoder classifier", glue="ch12_cls_accuracy", fmt=".3f"),
              M("its macro F1", glue="ch12_cls_macro_f1", fmt=".3f"),
              M("accuracy of always answering the majority class", glue="ch12_cls_majority_accuracy", fmt=".3f"),
              M("macro F1 of the majority class", glue="ch12_cls_majority_macro_f1", fmt=".3f"),
              M("windows where the §5.2 sample reads its LSTM at padding", glue="ch12_last_is_pad", fmt=".1f",
                unit="%"),
          )),
    Claim("An encoder-decoder translates, the decoder generating the target word by word (case 2)",
          f"{ARTICLE} §4.3", "12_applications", (
              M("BLEU on unseen test numbers, greedy decoding", glue="ch12_mt_bleu_greedy", fmt=".1f"),
              M("chrF, greedy decoding", glue="ch12_mt_chrf_greedy", fmt=".1f"),
              M("exact match, greedy decoding", glue="ch12_mt_exact_greedy", fmt=".3f"),
              M("BLEU with beam search", glue="ch12_mt_bleu_beam", fmt=".1f"),
              M("beam search over greedy", glue="ch12_beam_verdict"),
              M("BLEU of copying the source", glue="ch12_mt_bleu_copy", fmt=".1f"),
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
