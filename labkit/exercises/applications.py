"""Chapter "Applications and evaluation" exercises, checked against :mod:`labkit.metrics`.

* ``applications.macro_f1`` -- the unweighted mean of per-class F1 (:func:`labkit.metrics.precision_recall_f1`).
* ``applications.clipped_ngram_matches`` -- BLEU's modified n-gram precision: matches clipped to the reference
  count, and the number of hypothesis n-grams (Papineni et al. 2002, §2.1).
* ``applications.brevity_penalty`` -- BLEU's penalty for short output (Papineni et al. 2002, §2.2.2).
* ``applications.rouge_l_f`` -- ROUGE-L's F-measure from the longest common subsequence (Lin 2004, §3).
"""

from __future__ import annotations

import math

import torch

from labkit.exercises import Case, Exercise, add_exercise
from labkit.exercises.transformer import _randint

__all__: list[str] = []

_WORDS = ("the", "cat", "sat", "on", "a", "mat", "dog", "ein", "und", "zwanzig")


def _labels(generator: torch.Generator, n: int, k: int) -> list[int]:
    return [_randint(generator, 0, k - 1) for _ in range(n)]


def _sentence(generator: torch.Generator, low: int, high: int, vocabulary: int = len(_WORDS)) -> list[str]:
    return [_WORDS[_randint(generator, 0, vocabulary - 1)] for _ in range(_randint(generator, low, high))]


# ----------------------------------------------------------------------------------------------------------
# macro F1
# ----------------------------------------------------------------------------------------------------------


def _macro_f1_reference(y_true: list[int], y_pred: list[int]) -> float:
    from labkit.metrics import precision_recall_f1

    return precision_recall_f1(y_true, y_pred, "macro").f1


def _macro_f1_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case(([0, 1, 2, 2], [0, 1, 2, 2]), "all right: 1.0"),
             Case(([0, 0, 1, 1], [1, 1, 0, 0]), "no true positive: 0.0"),
             Case(([3, 3, 3], [3, 3, 3]), "one class"),
             Case(([0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0]), "a rare class never predicted"),
             Case(([0, 1, 1, 2], [0, 1, 2, 2]), "F1 per class, then the mean (not F1 of mean P and R)"),
             Case(([0, 0, 1], [0, 2, 1]), "a class predicted but never true")]
    for _ in range(n_random):
        k, n = _randint(generator, 2, 6), _randint(generator, 1, 40)
        truth = _labels(generator, n, k)
        guess = [t if _randint(generator, 0, 9) < 6 else _randint(generator, 0, k - 1) for t in truth]
        cases.append(Case((truth, guess), f"random, {k} classes, {n} examples"))
    return cases


add_exercise(Exercise(
    name="applications.macro_f1",
    title="Macro-averaged F1",
    goal="my_macro_f1(y_true, y_pred) -> float: the mean over the classes that occur in y_true or y_pred of "
         "F1 = 2TP / (2TP + FP + FN)",
    make_cases=_macro_f1_cases,
    reference=_macro_f1_reference,
    atol=1e-9,
    rtol=1e-9,
    signature="my_macro_f1(y_true, y_pred)",
    n_cases=20,
))


# ----------------------------------------------------------------------------------------------------------
# BLEU's clipped n-gram matches
# ----------------------------------------------------------------------------------------------------------


def _clipped_reference(hypothesis: list[str], reference: list[str], n: int) -> tuple[int, int]:
    from labkit.metrics import ngram_counts

    hyp, ref = ngram_counts(hypothesis, n), ngram_counts(reference, n)
    return sum(min(count, ref[gram]) for gram, count in hyp.items()), sum(hyp.values())


def _clipped_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((["the"] * 7, ["the", "cat", "is", "on", "the", "mat"], 1), "Papineni's example: 2/7"),
             Case((["the", "cat"], ["the", "cat", "sat"], 3), "shorter than n: 0 of 0"),
             Case(([], ["the", "cat"], 1), "empty hypothesis"),
             Case((["a", "b", "a", "b"], ["a", "b"], 2), "a repeated bigram is clipped"),
             Case((["x", "y"], ["y", "x"], 1), "order does not matter for unigrams"),
             Case((["x", "y"], ["y", "x"], 2), "it does for bigrams")]
    for _ in range(n_random):
        vocabulary = _randint(generator, 2, len(_WORDS))
        cases.append(Case((_sentence(generator, 0, 12, vocabulary), _sentence(generator, 1, 12, vocabulary),
                           _randint(generator, 1, 4)), "random"))
    return cases


add_exercise(Exercise(
    name="applications.clipped_ngram_matches",
    title="BLEU's clipped n-gram precision",
    goal="my_clipped_matches(hypothesis, reference, n) -> (matches, total): hypothesis n-grams found in the "
         "reference, each counted at most as often as it occurs there, and the number of hypothesis n-grams",
    make_cases=_clipped_cases,
    reference=_clipped_reference,
    signature="my_clipped_matches(hypothesis, reference, n)",
    n_cases=20,
))


# ----------------------------------------------------------------------------------------------------------
# the brevity penalty
# ----------------------------------------------------------------------------------------------------------


def _brevity_reference(hyp_len: int, ref_len: int) -> float:
    if hyp_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0


def _brevity_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((10, 10), "same length: 1"), Case((12, 10), "longer: no penalty"), Case((9, 10), "a bit short"),
             Case((1, 10), "much shorter"), Case((0, 5), "empty output: 0")]
    for _ in range(n_random):
        cases.append(Case((_randint(generator, 1, 60), _randint(generator, 1, 60)), "random"))
    return cases


add_exercise(Exercise(
    name="applications.brevity_penalty",
    title="BLEU's brevity penalty",
    goal="my_brevity_penalty(hyp_len, ref_len) -> float: 1 if hyp_len >= ref_len, else exp(1 - ref_len/hyp_len) "
         "(0 for an empty output)",
    make_cases=_brevity_cases,
    reference=_brevity_reference,
    atol=1e-12,
    rtol=1e-9,
    signature="my_brevity_penalty(hyp_len, ref_len)",
    n_cases=12,
))


# ----------------------------------------------------------------------------------------------------------
# ROUGE-L
# ----------------------------------------------------------------------------------------------------------


def _rouge_l_reference(hypothesis: list[str], reference: list[str]) -> float:
    from labkit.metrics import lcs_length

    if not hypothesis or not reference:
        return 0.0
    common = lcs_length(reference, hypothesis)
    precision, recall = common / len(hypothesis), common / len(reference)
    return 2 * precision * recall / (precision + recall) if common else 0.0


def _rouge_l_cases(generator: torch.Generator, n_random: int) -> list[Case]:
    cases = [Case((["the", "cat", "sat"], ["the", "cat", "sat"]), "identical: 1"),
             Case((["the", "sat", "cat"], ["the", "cat", "sat"]), "LCS 2: order matters"),
             Case((["a", "x", "b", "y", "c"], ["a", "b", "c"]), "a subsequence need not be contiguous"),
             Case(([], ["the"]), "empty hypothesis: 0"), Case((["x"], ["y"]), "nothing in common: 0")]
    for _ in range(n_random):
        vocabulary = _randint(generator, 2, len(_WORDS))
        cases.append(Case((_sentence(generator, 1, 12, vocabulary), _sentence(generator, 1, 12, vocabulary)),
                          "random"))
    return cases


add_exercise(Exercise(
    name="applications.rouge_l_f",
    title="ROUGE-L from the longest common subsequence",
    goal="my_rouge_l_f(hypothesis, reference) -> float: F = 2PR/(P+R) with P = LCS/len(hypothesis), "
         "R = LCS/len(reference); 0 when either is empty or nothing matches",
    make_cases=_rouge_l_cases,
    reference=_rouge_l_reference,
    atol=1e-12,
    rtol=1e-9,
    signature="my_rouge_l_f(hypothesis, reference)",
    n_cases=20,
))
