"""Chapter "Knowledge distillation": what a student saves at inference, and what the KD loss costs.

* ``distill.student_vs_teacher`` -- one forward pass (inference, no gradients) of the chapter's student classifier
  against the book's teacher classifier at batch 1 and at the training batch size: ``ratio = student / teacher``
  in time and peak memory. The weights are random: latency does not depend on what a model has learned.
* ``distill.kd_loss`` -- forward and backward of :func:`labkit.distill.kd_loss` against the usual PyTorch spelling
  ``alpha * F.cross_entropy + (1 - alpha) * T^2 * F.kl_div(..., reduction="batchmean")``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.bench import Comparison, compare, register
from labkit.config import Profile


def _classifier_configs(profile: Profile) -> tuple[Any, Any]:
    from labkit.distill import student_overrides
    from labkit.transformer import TransformerConfig

    n_classes, seq_len = int(profile.get("cls_classes", 8)), int(profile.get("cls_seq_len", profile.seq_len))
    common = {"n_classes": n_classes, "max_len": max(seq_len, profile.seq_len)}
    teacher = TransformerConfig.from_profile(profile, profile.vocab_size, **common)
    student = TransformerConfig.from_profile(profile, profile.vocab_size, **common, **student_overrides(profile))
    return teacher, student


@register("distill.student_vs_teacher")
def student_vs_teacher(device: torch.device, profile: Profile) -> list[Comparison]:
    """Classifier inference (forward, no_grad): the chapter's student vs the book's teacher, batch 1 and the
    training batch; ratio = student time / teacher time."""
    from labkit.distill import student_overrides
    from labkit.transformer import EncoderClassifier, count_parameters

    teacher_config, student_config = _classifier_configs(profile)
    torch.manual_seed(0)
    teacher = EncoderClassifier(teacher_config).to(device).eval()
    student = EncoderClassifier(student_config).to(device).eval()
    seq_len = int(profile.get("cls_seq_len", profile.seq_len))
    comparisons = []
    for batch in sorted({1, int(profile.get("cls_batch_size", profile.batch_size))}):
        ids = torch.randint(0, profile.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        ids = ids.to(device)

        def run(model: torch.nn.Module) -> Any:
            def forward() -> Tensor:
                with torch.no_grad():
                    return model(ids)
            return forward

        comparisons.append(compare(
            run(student), run(teacher), name=f"distill.student_vs_teacher[batch={batch}]",
            warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device, mode="forward (inference)",
            params={"batch": batch, "seq_len": seq_len, "student_parameters": count_parameters(student),
                    "teacher_parameters": count_parameters(teacher), "student": student_overrides(profile),
                    "teacher": {"d_model": teacher_config.d_model, "n_layers": teacher_config.n_layers,
                                "d_ff": teacher_config.d_ff, "n_heads": teacher_config.n_heads},
                    "measured": "student / teacher"}))
    return comparisons


@register("distill.kd_loss")
def kd_loss_benchmark(device: torch.device, profile: Profile) -> list[Comparison]:
    """kd_loss forward+backward on LM-shaped logits (batch x seq_len positions, vocab_size classes): labkit vs
    F.cross_entropy + F.kl_div."""
    from labkit.distill import kd_loss

    temperature, alpha = 2.0, 0.5
    generator = torch.Generator().manual_seed(0)
    shape = (profile.batch_size * profile.seq_len, profile.vocab_size)
    student = torch.randn(*shape, generator=generator).to(device).requires_grad_()
    teacher = torch.randn(*shape, generator=generator).to(device)
    targets = torch.randint(0, profile.vocab_size, shape[:1], generator=generator).to(device)

    def reference() -> Tensor:
        soft = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                        reduction="batchmean")
        return alpha * F.cross_entropy(student, targets) + (1 - alpha) * temperature**2 * soft

    def ours() -> Tensor:
        return kd_loss(student, teacher, targets, temperature, alpha)

    torch.testing.assert_close(ours(), reference(), atol=1e-4, rtol=1e-4)

    def step(loss_fn: Any) -> Any:
        return lambda: torch.autograd.grad(loss_fn(), student)

    return [compare(step(ours), step(reference), name=f"distill.kd_loss[positions={shape[0]},classes={shape[1]}]",
                    warmup=profile.bench_warmup, repeats=profile.bench_repeats, device=device,
                    mode="forward+backward", params={"positions": shape[0], "classes": shape[1],
                                                     "temperature": temperature, "alpha": alpha})]
