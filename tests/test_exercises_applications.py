"""Chapter "Applications and evaluation" exercises: references pass, independent right answers pass (some written
with scikit-learn, sacrebleu and rouge-score), plausible wrong answers fail on a named case."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from labkit import exercises
from labkit.exercises import check

CHAPTER = ["applications.macro_f1", "applications.clipped_ngram_matches", "applications.brevity_penalty",
           "applications.rouge_l_f"]


# ---------------------------------------------------------------------------------------------- learners


def macro_f1_right(y_true, y_pred):
    classes = sorted(set(y_true) | set(y_pred))
    scores = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def macro_f1_with_sklearn(y_true, y_pred):
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def macro_f1_of_mean_precision_and_recall(y_true, y_pred):
    """Wrong: the harmonic mean of macro precision and macro recall is not the mean of per-class F1."""
    classes = sorted(set(y_true) | set(y_pred))
    ps, rs = [], []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        predicted, actual = sum(p == c for p in y_pred), sum(t == c for t in y_true)
        ps.append(tp / predicted if predicted else 0.0)
        rs.append(tp / actual if actual else 0.0)
    p, r = sum(ps) / len(ps), sum(rs) / len(rs)
    return 2 * p * r / (p + r) if p + r else 0.0


def macro_f1_is_accuracy(y_true, y_pred):
    """Wrong: micro F1 (= accuracy) instead of macro."""
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def clipped_right(hypothesis, reference, n):
    hyp, ref = ngrams(hypothesis, n), ngrams(reference, n)
    return sum(min(c, ref[g]) for g, c in hyp.items()), sum(hyp.values())


def clipped_with_sacrebleu(hypothesis, reference, n):
    from sacrebleu.metrics import BLEU

    stats = BLEU(max_ngram_order=n, tokenize="none")._extract_corpus_statistics([" ".join(hypothesis)],
                                                                                [[" ".join(reference)]])[0]
    return int(stats[2 + n - 1]), int(stats[2 + n + n - 1])


def clipped_without_clipping(hypothesis, reference, n):
    """Wrong: counts every hypothesis n-gram that occurs in the reference, however often ("the the the ...")."""
    hyp, ref = ngrams(hypothesis, n), ngrams(reference, n)
    return sum(c for g, c in hyp.items() if g in ref), sum(hyp.values())


def brevity_right(hyp_len, ref_len):
    if hyp_len == 0:
        return 0.0
    return min(1.0, math.exp(1 - ref_len / hyp_len))


def brevity_swapped(hyp_len, ref_len):
    """Wrong: c/r instead of r/c in the exponent."""
    if hyp_len == 0:
        return 0.0
    return 1.0 if hyp_len >= ref_len else math.exp(1 - hyp_len / ref_len)


def brevity_penalises_long_outputs(hyp_len, ref_len):
    """Wrong: a penalty for output longer than the reference too."""
    if hyp_len == 0:
        return 0.0
    return math.exp(-abs(1 - ref_len / hyp_len))


def lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def rouge_l_right(hypothesis, reference):
    if not hypothesis or not reference:
        return 0.0
    common = lcs(hypothesis, reference)
    if not common:
        return 0.0
    p, r = common / len(hypothesis), common / len(reference)
    return 2 * p * r / (p + r)


def rouge_l_with_rouge_score(hypothesis, reference):
    from rouge_score.rouge_scorer import _score_lcs

    return _score_lcs(reference, hypothesis).fmeasure


def rouge_l_contiguous(hypothesis, reference):
    """Wrong: the longest common substring (contiguous) instead of subsequence."""
    best = 0
    for i in range(len(hypothesis)):
        for j in range(len(reference)):
            k = 0
            while i + k < len(hypothesis) and j + k < len(reference) and hypothesis[i + k] == reference[j + k]:
                k += 1
            best = max(best, k)
    if not best:
        return 0.0
    p, r = best / len(hypothesis), best / len(reference)
    return 2 * p * r / (p + r)


def rouge_l_recall_only(hypothesis, reference):
    """Wrong: ROUGE-L recall instead of F."""
    return lcs(hypothesis, reference) / len(reference) if hypothesis and reference else 0.0


# ---------------------------------------------------------------------------------------------- tests


def test_chapter_exercises_are_registered():
    names = [e.name for e in exercises.list_exercises("applications.")]
    assert names == sorted(CHAPTER)


@pytest.mark.parametrize("name", CHAPTER)
def test_reference_passes_its_own_check(name):
    result = check(name, exercises.get_exercise(name).reference, verbose=False)
    assert result.n_cases >= 10


@pytest.mark.parametrize("name, learner", [
    ("applications.macro_f1", macro_f1_right),
    ("applications.macro_f1", macro_f1_with_sklearn),
    ("applications.clipped_ngram_matches", clipped_right),
    ("applications.clipped_ngram_matches", clipped_with_sacrebleu),
    ("applications.brevity_penalty", brevity_right),
    ("applications.rouge_l_f", rouge_l_right),
    ("applications.rouge_l_f", rouge_l_with_rouge_score),
])
def test_independent_right_answers_pass(name, learner):
    check(name, learner, verbose=False)


@pytest.mark.parametrize("name, learner", [
    ("applications.macro_f1", macro_f1_of_mean_precision_and_recall),
    ("applications.macro_f1", macro_f1_is_accuracy),
    ("applications.clipped_ngram_matches", clipped_without_clipping),
    ("applications.brevity_penalty", brevity_swapped),
    ("applications.brevity_penalty", brevity_penalises_long_outputs),
    ("applications.rouge_l_f", rouge_l_contiguous),
    ("applications.rouge_l_f", rouge_l_recall_only),
])
def test_wrong_answers_fail_on_a_named_case(name, learner, rejection):
    message = rejection(name, learner)
    assert "case" in message and "expected" in message


@pytest.mark.parametrize("name", CHAPTER)
def test_stub_is_reported_as_not_implemented(name):
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(exercises.ExerciseError, match="not implemented yet"):
        check(name, stub, verbose=False)
