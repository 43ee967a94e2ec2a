"""Profiles: one code path, three sizes.

Every notebook reads its sizes from :func:`get_profile`:

* ``smoke`` -- CI: each notebook runs in under 60 s on 2 CPU cores. Numbers are not meaningful.
* ``cpu``   -- a reader's laptop and the default book build: a notebook in a few minutes.
* ``gpu``   -- chosen when CUDA is present: sizes where efficiency effects are large.

The profile is chosen by the ``LABKIT_PROFILE`` environment variable, else by the device.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Profile", "PROFILES", "PROFILE_ENV", "get_profile"]

PROFILE_ENV = "LABKIT_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Sizes for one run of the book. Fields are shared by every chapter; ``extra`` holds chapter-specific ones."""

    name: str
    # the model that runs through the book
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    seq_len: int
    batch_size: int
    # data
    vocab_size: int  # BPE vocabulary trained on the docstring corpus
    max_docs: int  # documents taken from the corpus (None-like 0 means all)
    # training
    train_steps: int
    eval_every: int
    eval_batches: int
    lr: float
    # measurement
    bench_warmup: int
    bench_repeats: int
    bench_seq_lens: tuple[int, ...]
    # chapter-specific sizes, looked up with ``profile.get(key, default)``
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A chapter-specific size from ``extra`` (or a field of the same name)."""
        if key in self.extra:
            return self.extra[key]
        if key in {f.name for f in dataclasses.fields(self)}:
            return getattr(self, key)
        return default

    def replace(self, **changes: Any) -> "Profile":
        """A copy with some fields changed (a notebook may shrink or grow one experiment)."""
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        d_model=32,
        n_heads=2,
        n_layers=1,
        d_ff=64,
        seq_len=32,
        batch_size=8,
        vocab_size=300,
        max_docs=300,
        train_steps=20,
        eval_every=10,
        eval_batches=2,
        lr=3e-3,
        bench_warmup=1,
        bench_repeats=3,
        bench_seq_lens=(16, 32, 64),
        extra={
            # chapter 2, the cost of attention
            "ch2_seq_lens": (64, 128, 256), "ch2_repeats": 1, "ch2_backward_seq_len": 128,
            "ch2_task_seq_len": 16, "ch2_distances": (2, 6, 12), "ch2_window": 4, "ch2_task_d_model": 16,
            "ch2_task_samples": 128, "ch2_task_batch": 16, "ch2_task_steps": 8, "ch2_mixed_steps": 8,
            "ch2_task_lr": 5e-3, "ch2_bench_window": 16,
            # chapter 3, where training time and memory go
            "ch3_widths": (16, 32, 64), "ch3_seq_lens": (16, 32, 64), "ch3_sweep_batch": 2,
            "ch3_micro_batches": (1, 2, 4), "ch3_checkpoint_layers": 2, "ch3_checkpoint_batch": 8, "ch3_repeats": 1,
            # chapter 4, optimizers
            "ch4_d_model": 32, "ch4_n_layers": 1, "ch4_seq_len": 32, "ch4_batch_size": 8, "ch4_steps": 16,
            "ch4_eval_every": 8, "ch4_seeds": 1, "ch4_sgd_lrs": (1.0,), "ch4_adam_lrs": (3e-3,), "ch4_cls_classes": 4,
            "ch4_cls_seq_len": 32, "ch4_cls_batch_size": 8, "ch4_cls_steps": 12, "ch4_cls_sgd_lr": 0.3,
            "ch4_cls_adam_lr": 1e-3, "ch4_check_steps": 20,
            # chapter 5, mixed precision
            "ch5_n_layers": 1, "ch5_batch_size": 4, "ch5_seq_len": 32, "ch5_steps": 12, "ch5_lr": 3e-3,
            "ch5_loss_shift": 8, "ch5_grad_steps": 4, "ch5_sum_log2_n": 9, "ch5_sum_trials": 4,
            "ch5_matmul_sizes": (32, 64, 128),
            # the book's classifier (labkit.zoo.book_classifier)
            "cls_classes": 4, "cls_seq_len": 32, "cls_steps": 30, "cls_batch_size": 16, "cls_lr": 3e-3,
            # chapter 6, parallel training
            "ch6_ranks": 2, "ch6_scaling_ranks": (1, 2), "ch6_batch_size": 4, "ch6_seq_len": 32, "ch6_steps": 5,
            "ch6_train_steps": 4, "ch6_bench_width": 16, "ch6_bench_depth": 24, "ch6_repeats": 2,
            "ch6_allreduce_sizes": (2**6, 2**12, 2**16), "ch6_bucket_caps_mb": (0.0, 0.005, 25.0),
            "ch6_micro_batches": 4,
            # chapter 7, quantization
            "ch7_bits": (8, 4, 2), "ch7_group_size": 16, "ch7_eval_batches": 1, "ch7_cls_examples": 64,
            "ch7_calib_batches": 1, "ch7_qat_steps": 4, "ch7_qat_lr": 3e-4, "ch7_bench_sizes": (256, 512), "ch7_bench_batch": 8,
            "ch7_latency_repeats": 3, "ch7_outlier_factor": 100.0, "ch7_outlier_channels": (3, 11),
            # chapter 8, pruning
            "ch8_sparsities": (0.5, 0.9), "ch8_fisher_batches": 1, "ch8_fisher_batch_size": 8, "ch8_finetune_steps": 2,
            "ch8_finetune_lr": 1e-3, "ch8_gradual_stages": 2, "ch8_gradual_targets": (0.9,), "ch8_ffn_amount": 0.3,
            "ch8_head_amount": 0.5, "ch8_csr_sparsities": (0.99,), "ch8_bench_repeats": 3, "ch8_semi_sizes": (256,),
            "ch8_share_steps": 10, "ch8_widget_examples": 64,
            # chapter 9, distillation
            "ch9_student_d_model": 8, "ch9_student_layers": 1, "ch9_student_d_ff": 16, "ch9_student_heads": 2,
            "ch9_seeds": 1, "ch9_temperature": 4.0, "ch9_alpha": 0.1, "ch9_hidden_weight": 1.0,
            "ch9_sweep_temperatures": (1.0, 4.0), "ch9_sweep_alphas": (0.5,), "ch9_lm_steps": 10,
            # chapter 10, choosing a compression
            "ch10_ft_steps": 4, "ch10_ft_lr": 1e-3, "ch10_ft_batch": 16, "ch10_sparsity": 0.5, "ch10_ffn_amount": 0.5,
            "ch10_head_amount": 0.5, "ch10_group_size": 16, "ch10_student_d_model": 8, "ch10_student_layers": 1,
            "ch10_student_d_ff": 16, "ch10_student_heads": 2, "ch10_student_steps": 6, "ch10_temperature": 2.0,
            "ch10_alpha": 0.5, "ch10_bench_batch": 16, "ch10_bench_repeats": 2, "ch10_overfit_sizes": (16, 0),
            "ch10_overfit_decays": (0.0, 1.0), "ch10_overfit_steps": 4, "ch10_hard_sparsity": 0.9, "ch10_recovery_steps": 6,
            "ch10_calib_sizes": (1, 8), "ch10_gen_sparsities": (0.5, 0.9),
            "ch10_gen_eval_batches": 1,
            # chapter 11, inference optimization
            "ch11_bench_prompt": 8, "ch11_bench_new_tokens": 24, "ch11_bench_repeats": 1,
            "ch11_compile_backend": "eager", "ch11_new_tokens": 12, "ch11_batch_sizes": (1, 4, 16),
            "ch11_roofline_dim": 256, "ch11_roofline_tokens": (1, 8, 64), "ch11_recompute_lens": (8, 16),
            "ch11_repeats": 1,
            # chapter 12, applications and evaluation
            "ch12_mt_train": 300, "ch12_mt_val": 40, "ch12_mt_test": 40, "ch12_mt_d_model": 32, "ch12_mt_heads": 2,
            "ch12_mt_layers": 1, "ch12_mt_d_ff": 64, "ch12_mt_steps": 40, "ch12_mt_batch_size": 32, "ch12_mt_lr": 2e-3,
            "ch12_beam_size": 3, "ch12_errors_shown": 3, "ch12_metric_cases": 15,
        },
    ),
    "cpu": Profile(
        name="cpu",
        d_model=128,
        n_heads=4,
        n_layers=2,
        d_ff=512,
        seq_len=128,
        batch_size=16,
        vocab_size=1024,
        max_docs=4000,
        train_steps=400,
        eval_every=50,
        eval_batches=8,
        lr=1e-3,
        bench_warmup=2,
        bench_repeats=7,
        bench_seq_lens=(64, 128, 256, 512, 1024),
        extra={
            # chapter 2, the cost of attention
            "ch2_seq_lens": (256, 512, 1024, 2048, 4096), "ch2_repeats": 3, "ch2_backward_seq_len": 2048,
            "ch2_task_seq_len": 32, "ch2_distances": (2, 6, 12, 24), "ch2_window": 8, "ch2_task_d_model": 32,
            "ch2_task_samples": 1024, "ch2_task_batch": 32, "ch2_task_steps": 120, "ch2_mixed_steps": 240,
            "ch2_task_lr": 5e-3, "ch2_bench_window": 64,
            # chapter 3, where training time and memory go
            "ch3_widths": (32, 64, 128, 256), "ch3_seq_lens": (32, 64, 128, 256), "ch3_sweep_batch": 4,
            "ch3_micro_batches": (1, 2, 4, 8), "ch3_checkpoint_layers": 4, "ch3_checkpoint_batch": 8, "ch3_repeats": 3,
            # chapter 4, optimizers
            "ch4_d_model": 64, "ch4_n_layers": 1, "ch4_seq_len": 64, "ch4_batch_size": 16, "ch4_steps": 120,
            "ch4_eval_every": 20, "ch4_seeds": 2, "ch4_sgd_lrs": (0.25, 0.5, 1.0), "ch4_adam_lrs": (3e-3, 6e-3, 1.2e-2),
            "ch4_cls_classes": 8, "ch4_cls_seq_len": 32, "ch4_cls_batch_size": 16, "ch4_cls_steps": 200,
            "ch4_cls_sgd_lr": 0.3, "ch4_cls_adam_lr": 3e-3, "ch4_check_steps": 100,
            # chapter 5, mixed precision
            "ch5_n_layers": 1, "ch5_batch_size": 8, "ch5_seq_len": 64, "ch5_steps": 100, "ch5_lr": 3e-3,
            "ch5_loss_shift": 8, "ch5_grad_steps": 20, "ch5_sum_log2_n": 14, "ch5_sum_trials": 8,
            "ch5_matmul_sizes": (64, 128, 256, 512, 1024),
            # the book's classifier (labkit.zoo.book_classifier)
            "cls_classes": 8, "cls_seq_len": 64, "cls_steps": 300, "cls_batch_size": 32, "cls_lr": 2e-3,
            # chapter 6, parallel training
            "ch6_ranks": 2, "ch6_scaling_ranks": (1, 2, 4), "ch6_batch_size": 8, "ch6_seq_len": 64, "ch6_steps": 20,
            "ch6_train_steps": 12, "ch6_bench_width": 32, "ch6_bench_depth": 64, "ch6_repeats": 5,
            "ch6_allreduce_sizes": (2**6, 2**8, 2**10, 2**12, 2**14, 2**16, 2**18, 2**20, 2**22),
            "ch6_bucket_caps_mb": (0.0, 0.002, 0.01, 0.05, 0.25, 25.0), "ch6_micro_batches": 8,
            # chapter 7, quantization
            "ch7_bits": (8, 6, 4, 3, 2), "ch7_group_size": 32, "ch7_eval_batches": 1, "ch7_cls_examples": 0,
            "ch7_calib_batches": 1, "ch7_qat_steps": 30, "ch7_qat_lr": 3e-4, "ch7_bench_sizes": (512, 1024, 2048),
            "ch7_bench_batch": 16, "ch7_latency_repeats": 7, "ch7_outlier_factor": 100.0, "ch7_outlier_channels": (3, 17, 77),
            # chapter 8, pruning
            "ch8_sparsities": (0.3, 0.5, 0.7, 0.9), "ch8_fisher_batches": 8, "ch8_fisher_batch_size": 16,
            "ch8_finetune_steps": 40, "ch8_finetune_lr": 5e-4, "ch8_gradual_stages": 4, "ch8_gradual_targets": (0.7,),
            "ch8_ffn_amount": 0.3, "ch8_head_amount": 0.25, "ch8_csr_sparsities": (0.5, 0.9, 0.99), "ch8_bench_repeats": 21,
            "ch8_semi_sizes": (1024,), "ch8_share_steps": 150, "ch8_widget_examples": 128,
            # chapter 9, distillation
            "ch9_student_d_model": 64, "ch9_student_layers": 1, "ch9_student_d_ff": 256, "ch9_student_heads": 4,
            "ch9_seeds": 3, "ch9_temperature": 1.0, "ch9_alpha": 0.0, "ch9_hidden_weight": 1.0,
            "ch9_sweep_temperatures": (1.0, 2.0, 4.0, 8.0), "ch9_sweep_alphas": (0.0, 0.5), "ch9_lm_steps": 150,
            # chapter 10, choosing a compression
            "ch10_ft_steps": 40, "ch10_ft_lr": 5e-4, "ch10_ft_batch": 32, "ch10_sparsity": 0.5, "ch10_ffn_amount": 0.5,
            "ch10_head_amount": 0.5, "ch10_group_size": 32, "ch10_student_d_model": 64, "ch10_student_layers": 1,
            "ch10_student_d_ff": 256, "ch10_student_heads": 4, "ch10_student_steps": 200, "ch10_temperature": 2.0,
            "ch10_alpha": 0.5, "ch10_bench_batch": 64, "ch10_bench_repeats": 7, "ch10_overfit_sizes": (32, 0),
            "ch10_overfit_decays": (0.0, 1.0), "ch10_overfit_steps": 40, "ch10_hard_sparsity": 0.9,
            "ch10_recovery_steps": 60, "ch10_calib_sizes": (1, 4, 16, 64, 256),
            "ch10_gen_sparsities": (0.3, 0.5, 0.7, 0.9), "ch10_gen_eval_batches": 4,
            # chapter 11, inference optimization
            "ch11_bench_prompt": 128, "ch11_bench_new_tokens": 256, "ch11_bench_repeats": 3,
            "ch11_compile_backend": "inductor", "ch11_new_tokens": 64, "ch11_batch_sizes": (1, 2, 4, 8, 16, 32, 64),
            "ch11_roofline_dim": 2048, "ch11_roofline_tokens": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            "ch11_recompute_lens": (32, 64, 128, 256), "ch11_repeats": 3,
            # chapter 12, applications and evaluation
            "ch12_mt_train": 4000, "ch12_mt_val": 300, "ch12_mt_test": 300, "ch12_mt_d_model": 64, "ch12_mt_heads": 4,
            "ch12_mt_layers": 2, "ch12_mt_d_ff": 256, "ch12_mt_steps": 300, "ch12_mt_batch_size": 64, "ch12_mt_lr": 1e-3,
            "ch12_beam_size": 4, "ch12_errors_shown": 5, "ch12_metric_cases": 60,
        },
    ),
    "gpu": Profile(
        name="gpu",
        d_model=384,
        n_heads=6,
        n_layers=6,
        d_ff=1536,
        seq_len=256,
        batch_size=64,
        vocab_size=4096,
        max_docs=0,
        train_steps=3000,
        eval_every=250,
        eval_batches=20,
        lr=6e-4,
        bench_warmup=5,
        bench_repeats=20,
        bench_seq_lens=(256, 512, 1024, 2048, 4096, 8192),
        extra={
            # chapter 2, the cost of attention
            "ch2_seq_lens": (512, 1024, 2048, 4096, 8192, 16384), "ch2_repeats": 10, "ch2_backward_seq_len": 8192,
            "ch2_task_seq_len": 128, "ch2_distances": (4, 16, 48, 120), "ch2_window": 16, "ch2_task_d_model": 64,
            "ch2_task_samples": 4096, "ch2_task_batch": 64, "ch2_task_steps": 600, "ch2_mixed_steps": 1200,
            "ch2_task_lr": 3e-3, "ch2_bench_window": 256,
            # chapter 3, where training time and memory go
            "ch3_widths": (192, 384, 768, 1536), "ch3_seq_lens": (256, 512, 1024, 2048), "ch3_sweep_batch": 8,
            "ch3_micro_batches": (1, 2, 4, 8, 16), "ch3_checkpoint_layers": 12, "ch3_checkpoint_batch": 64,
            "ch3_repeats": 10,
            # chapter 4, optimizers
            "ch4_d_model": 384, "ch4_n_layers": 4, "ch4_seq_len": 128, "ch4_batch_size": 32, "ch4_steps": 1500,
            "ch4_eval_every": 100, "ch4_seeds": 3, "ch4_sgd_lrs": (0.1, 0.3, 1.0), "ch4_adam_lrs": (1e-3, 3e-3, 1e-2),
            "ch4_cls_classes": 16, "ch4_cls_seq_len": 64, "ch4_cls_batch_size": 64, "ch4_cls_steps": 600,
            "ch4_cls_sgd_lr": 0.3, "ch4_cls_adam_lr": 1e-3, "ch4_check_steps": 200,
            # chapter 5, mixed precision
            "ch5_n_layers": 4, "ch5_batch_size": 32, "ch5_seq_len": 256, "ch5_steps": 600, "ch5_lr": 1e-3,
            "ch5_loss_shift": 8, "ch5_grad_steps": 100, "ch5_sum_log2_n": 16, "ch5_sum_trials": 16,
            "ch5_matmul_sizes": (256, 512, 1024, 2048, 4096, 8192),
            # the book's classifier (labkit.zoo.book_classifier)
            "cls_classes": 16, "cls_seq_len": 128, "cls_steps": 1500, "cls_batch_size": 64, "cls_lr": 1e-3,
            # chapter 6, parallel training
            "ch6_ranks": 2, "ch6_scaling_ranks": (1, 2, 4), "ch6_batch_size": 16, "ch6_seq_len": 128, "ch6_steps": 20,
            "ch6_train_steps": 100, "ch6_bench_width": 32, "ch6_bench_depth": 64, "ch6_repeats": 10,
            "ch6_allreduce_sizes": (2**6, 2**8, 2**10, 2**12, 2**14, 2**16, 2**18, 2**20, 2**22, 2**24),
            "ch6_bucket_caps_mb": (0.0, 0.002, 0.01, 0.05, 0.25, 1.0, 25.0), "ch6_micro_batches": 8,
            # chapter 7, quantization
            "ch7_bits": (8, 6, 4, 3, 2), "ch7_group_size": 128, "ch7_eval_batches": 8, "ch7_cls_examples": 0,
            "ch7_calib_batches": 4, "ch7_qat_steps": 300, "ch7_qat_lr": 1e-4, "ch7_bench_sizes": (1024, 2048, 4096, 8192),
            "ch7_bench_batch": 16, "ch7_latency_repeats": 30, "ch7_outlier_factor": 100.0, "ch7_outlier_channels": (3, 17, 77),
            # chapter 8, pruning
            "ch8_sparsities": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95), "ch8_fisher_batches": 64, "ch8_fisher_batch_size": 32,
            "ch8_finetune_steps": 300, "ch8_finetune_lr": 3e-4, "ch8_gradual_stages": 8,
            "ch8_gradual_targets": (0.7, 0.9), "ch8_ffn_amount": 0.3, "ch8_head_amount": 0.34,
            "ch8_csr_sparsities": (0.5, 0.9, 0.99), "ch8_bench_repeats": 50, "ch8_semi_sizes": (4096, 8192),
            "ch8_share_steps": 750, "ch8_widget_examples": 512,
            # chapter 9, distillation
            "ch9_student_d_model": 192, "ch9_student_layers": 2, "ch9_student_d_ff": 768, "ch9_student_heads": 6,
            "ch9_seeds": 3, "ch9_temperature": 4.0, "ch9_alpha": 0.1, "ch9_hidden_weight": 1.0,
            "ch9_sweep_temperatures": (1.0, 2.0, 4.0, 8.0), "ch9_sweep_alphas": (0.0, 0.5, 0.9), "ch9_lm_steps": 1500,
            # chapter 10, choosing a compression
            "ch10_ft_steps": 200, "ch10_ft_lr": 3e-4, "ch10_ft_batch": 64, "ch10_sparsity": 0.5, "ch10_ffn_amount": 0.5,
            "ch10_head_amount": 0.5, "ch10_group_size": 128, "ch10_student_d_model": 192, "ch10_student_layers": 2,
            "ch10_student_d_ff": 768, "ch10_student_heads": 6, "ch10_student_steps": 1500, "ch10_temperature": 2.0,
            "ch10_alpha": 0.5, "ch10_bench_batch": 256, "ch10_bench_repeats": 15, "ch10_overfit_sizes": (64, 512, 0),
            "ch10_overfit_decays": (0.0, 1.0), "ch10_overfit_steps": 300, "ch10_hard_sparsity": 0.9,
            "ch10_recovery_steps": 300, "ch10_calib_sizes": (1, 4, 16, 64, 256, 1024), "ch10_gen_sparsities": (0.3, 0.5, 0.7, 0.9), "ch10_gen_eval_batches": 8,
            # chapter 11, inference optimization
            "ch11_bench_prompt": 128, "ch11_bench_new_tokens": 256, "ch11_bench_repeats": 5,
            "ch11_compile_backend": "inductor", "ch11_new_tokens": 128, "ch11_batch_sizes": (1, 4, 16, 64, 256, 1024),
            "ch11_roofline_dim": 8192, "ch11_roofline_tokens": (1, 4, 16, 64, 256, 1024, 4096, 16384),
            "ch11_recompute_lens": (64, 128, 256, 512), "ch11_repeats": 10,
            # chapter 12, applications and evaluation
            "ch12_mt_train": 20000, "ch12_mt_val": 1000, "ch12_mt_test": 1000, "ch12_mt_d_model": 128, "ch12_mt_heads": 4,
            "ch12_mt_layers": 3, "ch12_mt_d_ff": 512, "ch12_mt_steps": 3000, "ch12_mt_batch_size": 128, "ch12_mt_lr": 5e-4,
            "ch12_beam_size": 5, "ch12_errors_shown": 8, "ch12_metric_cases": 100,
        },
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``; else ``$LABKIT_PROFILE``; else ``gpu`` when CUDA is present, otherwise ``cpu``."""
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or None
    if name is None:
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, str):
        raise TypeError(f"profile name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: expected one of {sorted(PROFILES)} (set {PROFILE_ENV})")
    return PROFILES[key]
