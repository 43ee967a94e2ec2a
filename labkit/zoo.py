"""The book's models, trained once and cached: one model family from the first chapter to the last.

Chapter 1 trains the GPT-style causal LM of :mod:`labkit.transformer` on the offline docstring corpus, and
:func:`book_classifier` trains its encoder sibling to name the module a docstring documents; later chapters compress, parallelise and speed up the same model. :func:`lm_data` prepares the corpus,
split and BPE tokens for a profile, and :func:`train_or_load_gpt` trains a GPT on them or loads the
checkpoint an earlier run left (keyed by model config, data, profile and training settings; see
:func:`labkit.train.cached_train`). No notebook depends on another having run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from labkit import data, train
from labkit.config import Profile, get_profile
from labkit.transformer import GPT, EncoderClassifier, TransformerConfig

__all__ = ["LMData", "lm_data", "gpt_config", "train_settings", "train_or_load_gpt", "book_gpt",
           "ClassifierData", "classifier_data", "classifier_config", "classifier_settings", "train_or_load_classifier",
           "book_classifier"]


@dataclass
class LMData:
    """The language-modelling data of one profile: documents split by document, a BPE trained on the
    training documents, and both splits as 1-D token tensors. ``key`` describes it for checkpoint names."""

    train_docs: list[data.Document]
    val_docs: list[data.Document]
    tokenizer: data.BPETokenizer
    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    key: dict[str, Any] = field(default_factory=dict)


def lm_data(profile: Profile | None = None, *, val_fraction: float = 0.1, seed: int = 0) -> LMData:
    """Corpus (``profile.max_docs`` documents), a 90/10 split by document, and a BPE of ``profile.vocab_size``."""
    profile = profile or get_profile()
    docs = data.docstring_corpus(max_docs=profile.max_docs or None)
    train_docs, val_docs = data.train_val_split(docs, val_fraction=val_fraction, seed=seed)
    tokenizer = data.get_tokenizer("bpe", train_docs, profile.vocab_size)
    train_tokens = torch.tensor(tokenizer.encode(data.corpus_text(train_docs)), dtype=torch.long)
    val_tokens = torch.tensor(tokenizer.encode(data.corpus_text(val_docs)), dtype=torch.long)
    key = {"corpus": "stdlib docstrings", "max_docs": profile.max_docs, "split": f"docs {val_fraction} seed {seed}",
           "tokenizer": f"bpe-{tokenizer.vocab_size}", "n_train_tokens": len(train_tokens),
           "n_val_tokens": len(val_tokens)}
    return LMData(train_docs, val_docs, tokenizer, train_tokens, val_tokens, key)


def gpt_config(profile: Profile | None = None, vocab_size: int | None = None, **overrides: Any) -> TransformerConfig:
    """The book's GPT for a profile: pre-norm, GELU, learned positions, tied embeddings, sizes from the profile."""
    profile = profile or get_profile()
    if vocab_size is None:
        vocab_size = lm_data(profile).tokenizer.vocab_size
    return TransformerConfig.from_profile(profile, vocab_size=vocab_size, **overrides)


def train_settings(profile: Profile | None = None, **overrides: Any) -> dict[str, Any]:
    """Training settings of the book's GPT in a profile (steps, batch, sequence length, lr, evaluation, seed)."""
    profile = profile or get_profile()
    settings = {"steps": profile.train_steps, "batch_size": profile.batch_size, "seq_len": profile.seq_len,
                "lr": profile.lr, "eval_every": profile.eval_every, "eval_batches": profile.eval_batches, "seed": 0}
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise TypeError(f"unknown training setting(s) {unknown}; expected some of {sorted(settings)}")
    settings.update(overrides)
    return settings


def train_or_load_gpt(lm: LMData, config: TransformerConfig, settings: dict[str, Any], *, name: str = "gpt",
                      profile: Profile | None = None, customise: Callable[[GPT], nn.Module] | None = None,
                      device: str | torch.device | None = None, progress: bool = True,
                      ) -> tuple[nn.Module, train.History, bool]:
    """Train a GPT(``config``) on ``lm`` with ``settings``, or load it: ``(model, history, loaded_from_cache)``.

    ``customise(model)`` may change the freshly built model (e.g. swap its blocks); give such a variant its own
    ``name``, which is part of the checkpoint key with the config, data, profile and settings.
    """
    profile = profile or get_profile()
    key = {"name": name, "config": config.to_dict(), "data": lm.key, "profile": profile.name, **settings}

    def build() -> nn.Module:
        torch.manual_seed(settings["seed"])
        model = GPT(config)
        return customise(model) if customise else model

    def run(model: nn.Module) -> train.History:
        return train.train_language_model(
            model, lm.train_tokens, steps=settings["steps"], batch_size=settings["batch_size"],
            seq_len=settings["seq_len"], lr=settings["lr"], val_tokens=lm.val_tokens,
            eval_every=settings["eval_every"], eval_batches=settings["eval_batches"], device=device,
            seed=settings["seed"], progress=progress)

    return train.cached_train(key, build, run, device=device)


def book_gpt(profile: Profile | None = None, *, device: str | torch.device | None = None, progress: bool = True,
             ) -> tuple[nn.Module, train.History, LMData]:
    """The book's trained GPT for a profile (the one chapter 1 trains): ``(model, history, lm_data)``."""
    profile = profile or get_profile()
    lm = lm_data(profile)
    config = gpt_config(profile, vocab_size=lm.tokenizer.vocab_size)
    model, history, _ = train_or_load_gpt(lm, config, train_settings(profile), name="book-gpt", profile=profile,
                                          device=device, progress=progress)
    return model, history, lm


@dataclass
class ClassifierData:
    """The classification task of one profile: name the standard-library module a docstring documents,
    among the ``n_classes`` most frequent modules, from a ``seq_len``-token window of it (the LM's BPE).

    ``*_ids`` are (N, seq_len) int64, ``*_padding`` (N, seq_len) bool (True = pad), ``*_labels`` (N,) int64
    indexing ``label_names``. Every window of a document is an example; the split is a random 80/20 one of
    the documents, so no document has windows on both sides."""

    train_ids: torch.Tensor
    train_padding: torch.Tensor
    train_labels: torch.Tensor
    val_ids: torch.Tensor
    val_padding: torch.Tensor
    val_labels: torch.Tensor
    label_names: list[str]
    tokenizer: data.BPETokenizer
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def majority_accuracy(self) -> float:
        """Validation accuracy of always answering the most frequent training label (the trivial baseline)."""
        majority = torch.bincount(self.train_labels, minlength=self.n_classes).argmax()
        return float((self.val_labels == majority).float().mean())


def classifier_data(profile: Profile | None = None, *, val_fraction: float = 0.2, seed: int = 0) -> ClassifierData:
    """The book's classification task for a profile (``cls_classes`` modules, ``cls_seq_len`` tokens)."""
    profile = profile or get_profile()
    lm = lm_data(profile)
    n_classes, seq_len = profile.get("cls_classes"), profile.get("cls_seq_len")
    docs = lm.train_docs + lm.val_docs
    _, _, _, names = data.classification_dataset(docs, lm.tokenizer, 1, n_classes)
    kept = [doc for doc in docs if doc.label in set(names)]
    train_docs, val_docs = data.train_val_split(kept, val_fraction=val_fraction, seed=seed)
    train = data.classification_dataset(train_docs, lm.tokenizer, seq_len, n_classes, labels=names, windows=True)
    val = data.classification_dataset(val_docs, lm.tokenizer, seq_len, n_classes, labels=names, windows=True)
    key = {"task": "docstring module, windows", "lm_data": lm.key, "n_classes": n_classes, "seq_len": seq_len,
           "split": f"docs {val_fraction} seed {seed}", "n_train": len(train[0]), "n_val": len(val[0])}
    return ClassifierData(*train[:3], *val[:3], names, lm.tokenizer, key)


def classifier_config(profile: Profile | None = None, task: ClassifierData | None = None,
                      **overrides: Any) -> TransformerConfig:
    """The book's encoder classifier: the GPT's sizes (profile), bidirectional, mean-pooled, a linear head."""
    profile = profile or get_profile()
    task = task or classifier_data(profile)
    fields = {"n_classes": task.n_classes, "pad_id": task.tokenizer.pad_id,
              "max_len": max(profile.get("cls_seq_len"), profile.seq_len), **overrides}
    return TransformerConfig.from_profile(profile, vocab_size=task.tokenizer.vocab_size, **fields)


def classifier_settings(profile: Profile | None = None, **overrides: Any) -> dict[str, Any]:
    """Training settings of the book's classifier in a profile (steps, batch, lr, evaluation, seed)."""
    profile = profile or get_profile()
    steps = profile.get("cls_steps")
    settings = {"steps": steps, "batch_size": profile.get("cls_batch_size"), "lr": profile.get("cls_lr"),
                "eval_every": max(1, steps // 6), "seed": 0}
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise TypeError(f"unknown training setting(s) {unknown}; expected some of {sorted(settings)}")
    settings.update(overrides)
    return settings


def train_or_load_classifier(task: ClassifierData, config: TransformerConfig, settings: dict[str, Any], *,
                             name: str = "classifier", profile: Profile | None = None,
                             customise: Callable[[EncoderClassifier], nn.Module] | None = None,
                             device: str | torch.device | None = None, progress: bool = True,
                             ) -> tuple[nn.Module, train.History, bool]:
    """Train an EncoderClassifier(``config``) on ``task`` with ``settings``, or load it:
    ``(model, history, loaded_from_cache)``; ``customise`` and ``name`` as in :func:`train_or_load_gpt`."""
    profile = profile or get_profile()
    key = {"name": name, "config": config.to_dict(), "data": task.key, "profile": profile.name, **settings}

    def build() -> nn.Module:
        torch.manual_seed(settings["seed"])
        model = EncoderClassifier(config)
        return customise(model) if customise else model

    def run(model: nn.Module) -> train.History:
        return train.train_classifier(
            model, task.train_ids, task.train_labels, padding_mask=task.train_padding, steps=settings["steps"],
            batch_size=settings["batch_size"], lr=settings["lr"], val_ids=task.val_ids, val_labels=task.val_labels,
            val_padding_mask=task.val_padding, eval_every=settings["eval_every"], device=device,
            progress=progress, seed=settings["seed"])

    return train.cached_train(key, build, run, device=device)


def book_classifier(profile: Profile | None = None, *, device: str | torch.device | None = None,
                    progress: bool = True) -> tuple[nn.Module, train.History, ClassifierData]:
    """The book's trained encoder classifier for a profile: ``(model, history, task)``. Chapters that compress
    or speed up a classifier start from this one."""
    profile = profile or get_profile()
    task = classifier_data(profile)
    model, history, _ = train_or_load_classifier(task, classifier_config(profile, task), classifier_settings(profile),
                                                 name="book-classifier", profile=profile, device=device,
                                                 progress=progress)
    return model, history, task
