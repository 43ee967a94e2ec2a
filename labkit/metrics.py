"""Evaluation metrics from scratch: classification, language modelling, translation and summarisation.

The article lists them in 003 §9.7 (accuracy, precision and recall, F1, BLEU, ROUGE) without a formula; the
definitions here follow the established implementations, and the tests check every function against them to
1e-9: scikit-learn (classification), ``sacrebleu`` (BLEU, chrF) and Google's ``rouge-score`` (ROUGE).

* :func:`accuracy`, :func:`confusion_matrix`, :func:`precision_recall_f1` (per class, micro, macro),
  :func:`classification_report`
* :func:`perplexity` (``exp`` of a mean loss), :func:`perplexity_from_logits`
* :func:`corpus_bleu` (Papineni et al. 2002, with the smoothing methods of Chen and Cherry 2014),
  :func:`tokenize_13a` (the WMT tokenizer BLEU is usually reported with)
* :func:`corpus_chrf` (Popović 2015): a character n-gram F-score
* :func:`rouge_n`, :func:`rouge_l` (Lin 2004) and :func:`corpus_rouge`
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Hashable, Sequence

import torch
from torch import Tensor

__all__ = [
    "accuracy",
    "confusion_matrix",
    "PRF",
    "precision_recall_f1",
    "classification_report",
    "perplexity",
    "perplexity_from_logits",
    "BLEUResult",
    "BLEU_SMOOTHING",
    "tokenize_13a",
    "ngram_counts",
    "corpus_bleu",
    "corpus_chrf",
    "RougeScore",
    "rouge_tokenize",
    "rouge_n",
    "rouge_l",
    "lcs_length",
    "corpus_rouge",
]


# ----------------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------------


def _as_labels(name: str, values: Any) -> list[Hashable]:
    """A list of hashable labels from a 1-D sequence, tensor or array (TypeError / ValueError otherwise)."""
    if isinstance(values, Tensor):
        if values.dim() != 1 or values.is_floating_point() or values.is_complex():
            raise ValueError(f"{name} must be a 1-D integer tensor of labels, got shape {tuple(values.shape)} "
                             f"dtype {values.dtype}")
        return values.tolist()
    if hasattr(values, "tolist") and hasattr(values, "ndim"):  # numpy
        if values.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got an array of shape {values.shape}")
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of labels, got {type(values).__name__}")
    out = list(values)
    for v in out:
        if isinstance(v, float) or not isinstance(v, Hashable):
            raise TypeError(f"{name} must hold class labels (ints or strings), got {type(v).__name__} ({v!r})")
    return out


def _pair(y_true: Any, y_pred: Any) -> tuple[list[Hashable], list[Hashable]]:
    true, pred = _as_labels("y_true", y_true), _as_labels("y_pred", y_pred)
    if len(true) != len(pred):
        raise ValueError(f"y_true and y_pred must have the same length, got {len(true)} and {len(pred)}")
    if not true:
        raise ValueError("y_true and y_pred are empty: a metric needs at least one example")
    return true, pred


def _label_set(true: list[Hashable], pred: list[Hashable], labels: Sequence[Hashable] | None) -> list[Hashable]:
    """``labels`` as given, else the sorted union of the labels that occur (scikit-learn's convention)."""
    if labels is None:
        return sorted(set(true) | set(pred))
    labels = _as_labels("labels", labels)
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}")
    return labels


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of examples whose predicted label equals the true one: ``(1/N) sum_i [y_i == yhat_i]``."""
    true, pred = _pair(y_true, y_pred)
    return sum(t == p for t, p in zip(true, pred)) / len(true)


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[Hashable] | None = None) -> Tensor:
    """``C[i, j]`` = number of examples of true class ``labels[i]`` predicted as ``labels[j]`` (int64, K x K).

    Rows are true classes, columns predictions (scikit-learn's layout); the diagonal counts the correct ones.
    Examples whose true or predicted label is not in ``labels`` are left out."""
    true, pred = _pair(y_true, y_pred)
    labels = _label_set(true, pred, labels)
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    flat = [index[t] * k + index[p] for t, p in zip(true, pred) if t in index and p in index]
    return torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=k * k).reshape(k, k)


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F1 (floats for ``micro``/``macro``, one per label for ``average=None``) and the
    number of true examples of each label (``support``)."""

    precision: Any
    recall: Any
    f1: Any
    support: Any
    labels: list[Hashable] = field(default_factory=list)


def _safe_ratio(numerator: float, denominator: float, zero_division: float) -> float:
    return numerator / denominator if denominator > 0 else zero_division


def precision_recall_f1(y_true: Any, y_pred: Any, average: str | None = "macro",
                        labels: Sequence[Hashable] | None = None, zero_division: float = 0.0) -> PRF:
    """Precision ``TP/(TP+FP)``, recall ``TP/(TP+FN)`` and ``F1 = 2TP/(2TP+FP+FN)`` (the harmonic mean of the two).

    ``average=None``: one value per label; ``"micro"``: pool TP, FP, FN over the labels first (with every label
    kept this equals accuracy); ``"macro"``: the unweighted mean of the per-label values, so a rare class counts
    as much as a frequent one. A ratio whose denominator is zero (no prediction of a class, no example of it)
    is ``zero_division`` -- scikit-learn's convention with ``zero_division=0``.
    """
    if average not in (None, "micro", "macro"):
        raise ValueError(f"average must be None, 'micro' or 'macro', got {average!r}")
    if not isinstance(zero_division, (int, float)) or isinstance(zero_division, bool) or not 0 <= zero_division <= 1:
        raise ValueError(f"zero_division must be a number in [0, 1], got {zero_division!r}")
    true, pred = _pair(y_true, y_pred)
    labels = _label_set(true, pred, labels)
    matrix = confusion_matrix(true, pred, labels)
    # counts over all examples, not only those whose other label is kept (FP/FN against classes outside `labels`)
    predicted = [sum(p == label for p in pred) for label in labels]
    support = [sum(t == label for t in true) for label in labels]
    tp = [int(matrix[i, i]) for i in range(len(labels))]
    fp = [predicted[i] - tp[i] for i in range(len(labels))]
    fn = [support[i] - tp[i] for i in range(len(labels))]
    if average == "micro":
        TP, FP, FN = sum(tp), sum(fp), sum(fn)
        return PRF(_safe_ratio(TP, TP + FP, zero_division), _safe_ratio(TP, TP + FN, zero_division),
                   _safe_ratio(2 * TP, 2 * TP + FP + FN, zero_division), sum(support), labels)
    precision = [_safe_ratio(tp[i], tp[i] + fp[i], zero_division) for i in range(len(labels))]
    recall = [_safe_ratio(tp[i], tp[i] + fn[i], zero_division) for i in range(len(labels))]
    f1 = [_safe_ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i], zero_division) for i in range(len(labels))]
    if average is None:
        return PRF(precision, recall, f1, support, labels)
    n = len(labels)
    return PRF(sum(precision) / n, sum(recall) / n, sum(f1) / n, sum(support), labels)


def classification_report(y_true: Any, y_pred: Any, label_names: Sequence[str] | None = None,
                          labels: Sequence[Hashable] | None = None) -> list[tuple[str, float, float, float, int]]:
    """Rows ``(name, precision, recall, F1, support)``: one per label, then ``micro avg`` and ``macro avg``.
    ``label_names[label]`` names an integer label when given."""
    true, pred = _pair(y_true, y_pred)
    labels = _label_set(true, pred, labels)
    per = precision_recall_f1(true, pred, None, labels)
    name = (lambda label: str(label_names[label])) if label_names is not None else str
    rows = [(name(label), p, r, f, s) for label, p, r, f, s in zip(labels, per.precision, per.recall, per.f1,
                                                                    per.support)]
    for average in ("micro", "macro"):
        agg = precision_recall_f1(true, pred, average, labels)
        rows.append((f"{average} avg", agg.precision, agg.recall, agg.f1, agg.support))
    return rows


# ----------------------------------------------------------------------------------------------------------
# language modelling
# ----------------------------------------------------------------------------------------------------------


def perplexity(mean_loss: float) -> float:
    """``exp(L)`` for a mean next-token cross-entropy ``L`` in nats: the size of a uniform choice that is as
    uncertain as the model (a uniform model over V tokens has perplexity V)."""
    if isinstance(mean_loss, Tensor):
        mean_loss = float(mean_loss)
    if isinstance(mean_loss, bool) or not isinstance(mean_loss, (int, float)) or not math.isfinite(mean_loss):
        raise ValueError(f"mean_loss must be a finite number of nats, got {mean_loss!r}")
    if mean_loss < 0:
        raise ValueError(f"mean_loss must be >= 0 (a cross-entropy), got {mean_loss}")
    return math.exp(mean_loss)


def perplexity_from_logits(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> float:
    """``exp(-(1/N) sum_t log softmax(z_t)[y_t])`` over the targets that are not ``ignore_index``.

    ``logits`` (..., V) and integer ``targets`` (...) as for a language model's output (B, T, V) and (B, T)."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise TypeError(f"logits must be a floating-point tensor (..., V), got {getattr(logits, 'dtype', logits)!r}")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got {getattr(targets, 'dtype', type(targets).__name__)}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(logits.shape[:-1])} (logits without the last dim), "
                         f"got {tuple(targets.shape)}")
    keep = targets != ignore_index
    if not keep.any():
        raise ValueError("every target is ignore_index: no token to score")
    z = logits[keep].double()
    y = targets[keep].long()
    if int(y.min()) < 0 or int(y.max()) >= z.size(-1):
        raise ValueError(f"targets must lie in [0, {z.size(-1)}), got values in [{int(y.min())}, {int(y.max())}]")
    log_probs = z.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)
    return math.exp(float(-log_probs.mean()))


# ----------------------------------------------------------------------------------------------------------
# BLEU and chrF
# ----------------------------------------------------------------------------------------------------------

BLEU_SMOOTHING = ("exp", "floor", "add-k", "none")
_SMOOTH_DEFAULTS = {"floor": 0.1, "add-k": 1.0}

_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols become tokens
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma, unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # a dash after a digit
)


def tokenize_13a(line: str) -> str:
    """The ``mteval-v13a`` tokenization WMT reports BLEU with (sacrebleu's default ``"13a"``): punctuation split
    from words, numbers such as ``3.14`` and ``1,000`` kept whole; tokens joined by single spaces."""
    if not isinstance(line, str):
        raise TypeError(f"line must be a str, got {type(line).__name__}")
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """How often each n-gram (a tuple of ``n`` consecutive tokens) occurs in ``tokens``."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class BLEUResult:
    """Corpus BLEU on a 0-100 scale, its n-gram precisions (percent), brevity penalty, lengths and the clipped
    match counts ``correct[n-1]`` out of ``total[n-1]`` hypothesis n-grams."""

    score: float
    precisions: list[float]
    brevity_penalty: float
    hyp_len: int
    ref_len: int
    correct: list[int]
    total: list[int]

    def __str__(self) -> str:
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return (f"BLEU = {self.score:.2f} {precisions} (BP = {self.brevity_penalty:.3f} "
                f"ratio = {self.hyp_len / max(self.ref_len, 1):.3f} hyp_len = {self.hyp_len} ref_len = {self.ref_len})")


def _check_corpus(hypotheses: Any, references: Any) -> tuple[list[str], list[list[str]]]:
    """Hypotheses as a list of str; references as, per hypothesis, a non-empty list of str."""
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        raise TypeError(f"hypotheses must be a list of strings, got {type(hypotheses).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references must be a list (one str or list of str per hypothesis), "
                        f"got {type(references).__name__}")
    if len(hypotheses) != len(references):
        raise ValueError(f"hypotheses and references must have the same length, got {len(hypotheses)} and "
                         f"{len(references)}")
    if not hypotheses:
        raise ValueError("the corpus is empty: give at least one hypothesis with its reference(s)")
    refs = []
    for i, (hyp, ref) in enumerate(zip(hypotheses, references)):
        if not isinstance(hyp, str):
            raise TypeError(f"hypotheses[{i}] must be a str, got {type(hyp).__name__}")
        group = [ref] if isinstance(ref, str) else list(ref) if isinstance(ref, Sequence) else None
        if not group or not all(isinstance(r, str) for r in group):
            raise TypeError(f"references[{i}] must be a str or a non-empty list of str, got {ref!r}")
        refs.append(group)
    return list(hypotheses), refs


def _closest_length(hyp_len: int, ref_lens: list[int]) -> int:
    """The reference length closest to the hypothesis length (ties: the shorter)."""
    return min(ref_lens, key=lambda length: (abs(length - hyp_len), length))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *, max_order: int = 4,
                smooth: str = "exp", smooth_value: float | None = None, tokenize: str = "13a",
                lowercase: bool = False, effective_order: bool = False) -> BLEUResult:
    """Corpus BLEU (Papineni et al. 2002): ``BP * exp((1/N) sum_n log p_n)``, 0-100 scale.

    ``p_n``: matches of hypothesis n-grams, each clipped to its largest count in one reference, summed over the
    corpus, over all hypothesis n-grams. ``BP = exp(1 - r/c)`` if the corpus is shorter than the references
    (c < r, r summing the reference length closest to each hypothesis), else 1. A zero ``p_n`` makes BLEU 0;
    ``smooth`` (Chen and Cherry 2014) avoids it: ``"exp"`` replaces the k-th zero by ``1/(2^k total_n)``,
    ``"floor"`` by ``smooth_value/total_n`` (0.1), ``"add-k"`` adds ``smooth_value`` (1) to matches and totals
    of n > 1. ``references[i]`` is one string or a list of strings for hypothesis ``i``; ``tokenize`` is
    ``"13a"`` or ``"none"`` (split on whitespace). Equals ``sacrebleu.corpus_bleu`` with the same options.
    """
    hyps, refs = _check_corpus(hypotheses, references)
    if smooth not in BLEU_SMOOTHING:
        raise ValueError(f"smooth must be one of {BLEU_SMOOTHING}, got {smooth!r}")
    if tokenize not in ("13a", "none"):
        raise ValueError(f"tokenize must be '13a' or 'none', got {tokenize!r}")
    if isinstance(max_order, bool) or not isinstance(max_order, Integral) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    if smooth_value is None:
        smooth_value = _SMOOTH_DEFAULTS.get(smooth, 0.0)

    def prepare(text: str) -> list[str]:
        text = text.lower() if lowercase else text
        return (tokenize_13a(text.rstrip()) if tokenize == "13a" else text.rstrip()).split()

    correct, total = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for hyp, group in zip(hyps, refs):
        hyp_tokens = prepare(hyp)
        ref_tokens = [prepare(r) for r in group]
        hyp_len += len(hyp_tokens)
        ref_len += _closest_length(len(hyp_tokens), [len(r) for r in ref_tokens])
        for n in range(1, max_order + 1):
            max_ref = Counter()
            for tokens in ref_tokens:
                max_ref |= ngram_counts(tokens, n)  # | keeps the largest count of each n-gram
            hyp_ngrams = ngram_counts(hyp_tokens, n)
            total[n - 1] += sum(hyp_ngrams.values())
            correct[n - 1] += sum(min(count, max_ref[gram]) for gram, count in hyp_ngrams.items())

    brevity = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0)
    precisions = [0.0] * max_order
    if not any(correct):
        return BLEUResult(0.0, precisions, brevity, hyp_len, ref_len, correct, total)
    smoothed_correct, smoothed_total = [float(c) for c in correct], [float(t) for t in total]
    n_orders, halvings = max_order, 1.0
    for n in range(1, max_order + 1):
        if smooth == "add-k" and n > 1:
            smoothed_correct[n - 1] += smooth_value
            smoothed_total[n - 1] += smooth_value
        if smoothed_total[n - 1] == 0:
            break  # no hypothesis is n tokens long: higher orders cannot have n-grams either
        if effective_order:
            n_orders = n
        if smoothed_correct[n - 1] == 0:
            if smooth == "exp":
                halvings *= 2
                precisions[n - 1] = 100.0 / (halvings * smoothed_total[n - 1])
            elif smooth == "floor":
                precisions[n - 1] = 100.0 * smooth_value / smoothed_total[n - 1]
        else:
            precisions[n - 1] = 100.0 * smoothed_correct[n - 1] / smoothed_total[n - 1]
    log_mean = sum(math.log(p) if p > 0 else -9999999999.0 for p in precisions[:n_orders]) / n_orders
    return BLEUResult(brevity * math.exp(log_mean), precisions, brevity, hyp_len, ref_len, correct, total)


_CHRF_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _chrf_words(text: str) -> list[str]:
    """Words for chrF++'s word n-grams: whitespace split, one punctuation mark split off a word's end or start."""
    words = []
    for word in text.split():
        if len(word) > 1 and word[-1] in _CHRF_PUNCTUATION:
            words += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in _CHRF_PUNCTUATION:
            words += [word[0], word[1:]]
        else:
            words.append(word)
    return words


def _chrf_ngrams(text: str, char_order: int, word_order: int) -> list[Counter]:
    chars = "".join(text.split())  # character n-grams ignore whitespace
    grams = [Counter(chars[i:i + n] for i in range(len(chars) - n + 1)) for n in range(1, char_order + 1)]
    words = _chrf_words(text) if word_order else []
    return grams + [ngram_counts(words, n) for n in range(1, word_order + 1)]


def _chrf_score(stats: list[tuple[int, int, int]], beta: float) -> float:
    """F_beta (0-100) of the precision and recall averaged over the orders that have hypothesis and reference
    n-grams (sacrebleu >= 2's default; an order with none on either side is left out of the average)."""
    precision = recall = 0.0
    used = 0
    for n_hyp, n_ref, n_match in stats:
        if n_hyp > 0 and n_ref > 0:
            precision += n_match / n_hyp
            recall += n_match / n_ref
            used += 1
    if used == 0:
        return 0.0
    precision, recall = precision / used, recall / used
    if precision + recall == 0:
        return 0.0
    factor = beta**2
    return 100 * (1 + factor) * precision * recall / (factor * precision + recall)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *, char_order: int = 6,
                word_order: int = 0, beta: float = 2.0) -> float:
    """Corpus chrF (Popović 2015) on a 0-100 scale: the F_beta score (recall weighted ``beta`` times as much as
    precision) of character n-grams, n = 1..``char_order``, whitespace removed; ``word_order=2`` adds word
    uni- and bigrams (chrF++). Matches, hypothesis and reference n-gram counts are summed over the corpus,
    choosing per sentence the reference with the best sentence score; precision and recall are averaged over
    the orders, then combined. Equals ``sacrebleu.corpus_chrf``. Partial credit for partly right words
    (``hundred`` / ``hundert``) is what BLEU's exact word matches cannot give."""
    hyps, refs = _check_corpus(hypotheses, references)
    for name, value in (("char_order", char_order), ("word_order", word_order)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if char_order + word_order == 0:
        raise ValueError("char_order + word_order must be positive")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta <= 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    totals = [[0, 0, 0] for _ in range(char_order + word_order)]
    for hyp, group in zip(hyps, refs):
        hyp_grams = _chrf_ngrams(hyp, char_order, word_order)
        best, best_score = None, -1.0
        for ref in group:
            stats = []
            for h, r in zip(hyp_grams, _chrf_ngrams(ref, char_order, word_order)):
                matches = sum(min(count, r[gram]) for gram, count in h.items() if gram in r)
                # hypothesis n-grams count only where the reference has n-grams of that order
                stats.append((sum(h.values()) if r else 0, sum(r.values()), matches))
            score = _chrf_score(stats, beta)
            if score > best_score:
                best, best_score = stats, score
        for total, stat in zip(totals, best):
            for j in range(3):
                total[j] += stat[j]
    return _chrf_score([tuple(t) for t in totals], beta)


# ----------------------------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RougeScore:
    """Precision, recall and F-measure ``2PR/(P+R)`` of one ROUGE variant."""

    precision: float
    recall: float
    fmeasure: float


_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """ROUGE's tokenization (Lin 2004, as in ``rouge-score``): lower case, every run of characters other than
    ``a-z0-9`` is a separator (so non-ASCII letters split words), no stemming."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return [token for token in _NON_ALPHANUMERIC.sub(" ", text.lower()).split() if token]


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _check_texts(hypothesis: Any, reference: Any) -> tuple[list[str], list[str]]:
    for name, value in (("hypothesis", hypothesis), ("reference", reference)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return rouge_tokenize(hypothesis), rouge_tokenize(reference)


def rouge_n(hypothesis: str, reference: str, n: int = 1) -> RougeScore:
    """ROUGE-N: clipped n-gram overlap ``m``; recall ``m / ref n-grams``, precision ``m / hyp n-grams`` (a
    side without n-grams counts as 1 in the denominator, so an empty hypothesis scores 0, not an error)."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    hyp, ref = _check_texts(hypothesis, reference)
    hyp_grams, ref_grams = ngram_counts(hyp, n), ngram_counts(ref, n)
    overlap = sum(min(count, hyp_grams[gram]) for gram, count in ref_grams.items())
    precision = overlap / max(sum(hyp_grams.values()), 1)
    recall = overlap / max(sum(ref_grams.values()), 1)
    return RougeScore(precision, recall, _fmeasure(precision, recall))


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence (not necessarily contiguous) of ``a`` and ``b``, by dynamic
    programming: ``L[i][j] = L[i-1][j-1] + 1`` if ``a_i == b_j`` else ``max(L[i-1][j], L[i][j-1])``."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> RougeScore:
    """ROUGE-L (sentence level): ``LCS / hyp length`` and ``LCS / ref length``, rewarding words in the right
    order without requiring them to be adjacent; 0 when either side has no token."""
    hyp, ref = _check_texts(hypothesis, reference)
    if not hyp or not ref:
        return RougeScore(0.0, 0.0, 0.0)
    common = lcs_length(ref, hyp)
    precision, recall = common / len(hyp), common / len(ref)
    return RougeScore(precision, recall, _fmeasure(precision, recall))


def corpus_rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, RougeScore]:
    """``{"rouge1", "rouge2", "rougeL"}``: each the mean over the corpus of the sentence scores (precision,
    recall and F-measure averaged separately), as reports built on ``rouge-score`` do."""
    hyps, refs = _check_corpus(hypotheses, references)
    if any(len(group) != 1 for group in refs):
        raise ValueError("corpus_rouge takes exactly one reference string per hypothesis")
    scores = {"rouge1": [], "rouge2": [], "rougeL": []}
    for hyp, (ref,) in zip(hyps, refs):
        scores["rouge1"].append(rouge_n(hyp, ref, 1))
        scores["rouge2"].append(rouge_n(hyp, ref, 2))
        scores["rougeL"].append(rouge_l(hyp, ref))
    return {name: RougeScore(*(sum(getattr(s, f) for s in values) / len(values)
                               for f in ("precision", "recall", "fmeasure")))
            for name, values in scores.items()}
