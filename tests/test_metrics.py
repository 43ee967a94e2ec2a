"""labkit.metrics against the established implementations: scikit-learn, sacrebleu and rouge-score, to 1e-9."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

sacrebleu = pytest.importorskip("sacrebleu")
sk_metrics = pytest.importorskip("sklearn.metrics")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

from labkit import metrics  # noqa: E402

TOL = 1e-9
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "hundred", "hundert", "zwei", "und", "vierzig",
         "fünf", "it's", "(hi)", "end.", "3.14", "1,000", "a-b", "x", "y"]


def random_labels(rng: random.Random, n: int, k: int) -> list[int]:
    return [rng.randrange(k) for _ in range(n)]


def random_sentence(rng: random.Random, max_words: int = 12, min_words: int = 0) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))


def noisy_copy(rng: random.Random, sentence: str) -> str:
    """A hypothesis that shares some n-grams with the reference (so BLEU is not trivially 0)."""
    words = sentence.split()
    out = [w if rng.random() < 0.7 else rng.choice(WORDS) for w in words]
    if out and rng.random() < 0.3:
        del out[rng.randrange(len(out))]
    if rng.random() < 0.3:
        out.append(rng.choice(WORDS))
    return " ".join(out)


# ---------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", range(40))
def test_classification_metrics_equal_sklearn(seed):
    rng = random.Random(seed)
    k = rng.randint(1, 6)
    n = rng.randint(1, 60)
    y_true = random_labels(rng, n, k)
    y_pred = random_labels(rng, n, k) if seed % 3 else [t if rng.random() < 0.7 else rng.randrange(k) for t in y_true]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred), abs=TOL)
    labels = sorted(set(y_true) | set(y_pred))
    assert metrics.confusion_matrix(y_true, y_pred).tolist() == sk_metrics.confusion_matrix(y_true, y_pred).tolist()
    for average in ("micro", "macro", None):
        ours = metrics.precision_recall_f1(y_true, y_pred, average)
        p, r, f, s = sk_metrics.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        if average is None:
            assert ours.labels == labels
            assert ours.support == s.tolist()
            for got, want in ((ours.precision, p), (ours.recall, r), (ours.f1, f)):
                assert len(got) == len(want)
                assert max(abs(a - b) for a, b in zip(got, want)) < TOL
        else:
            for got, want in ((ours.precision, p), (ours.recall, r), (ours.f1, f)):
                assert abs(got - want) < TOL, (average, got, want)


@pytest.mark.parametrize("zero_division", [0.0, 1.0])
def test_explicit_labels_and_zero_division_equal_sklearn(zero_division):
    rng = random.Random(7)
    for _ in range(20):
        y_true, y_pred = random_labels(rng, 30, 5), random_labels(rng, 30, 5)
        labels = rng.sample(range(7), rng.randint(1, 7))  # some labels never occur, some occur but are left out
        if y_true[0] not in labels:
            labels.append(y_true[0])  # scikit-learn's confusion matrix needs one label that occurs in y_true
        assert (metrics.confusion_matrix(y_true, y_pred, labels).tolist()
                == sk_metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist())
        for average in ("micro", "macro", None):
            ours = metrics.precision_recall_f1(y_true, y_pred, average, labels=labels, zero_division=zero_division)
            p, r, f, _ = sk_metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                                    zero_division=zero_division)
            for got, want in ((ours.precision, p), (ours.recall, r), (ours.f1, f)):
                got, want = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
                assert torch.allclose(got, want, atol=TOL, rtol=0), (labels, average, got, want)


def test_edge_cases_no_true_positives_one_class_strings_and_tensors():
    # no true positives at all: every ratio is 0 (or zero_division where undefined)
    ours = metrics.precision_recall_f1([0, 0, 1, 1], [1, 1, 0, 0], "macro")
    assert (ours.precision, ours.recall, ours.f1) == (0.0, 0.0, 0.0)
    # one class only: everything is perfect
    assert metrics.accuracy([3, 3, 3], [3, 3, 3]) == 1.0
    one = metrics.precision_recall_f1([3, 3, 3], [3, 3, 3], None)
    assert one.precision == one.recall == one.f1 == [1.0] and one.support == [3]
    assert metrics.confusion_matrix([3, 3], [3, 3]).tolist() == [[2]]
    # a class predicted but never true: its recall is 0/0 -> zero_division; sklearn agrees
    for zd in (0.0, 1.0):
        ours = metrics.precision_recall_f1([0, 0, 0], [0, 1, 0], None, zero_division=zd)
        want = sk_metrics.precision_recall_fscore_support([0, 0, 0], [0, 1, 0], zero_division=zd)
        assert ours.recall == want[1].tolist() and ours.f1 == pytest.approx(want[2].tolist(), abs=TOL)
    # string labels and tensors
    assert metrics.confusion_matrix(["b", "a", "b"], ["b", "b", "a"]).tolist() == [[0, 1], [1, 1]]
    t = torch.tensor([0, 1, 2, 2])
    assert metrics.accuracy(t, torch.tensor([0, 1, 1, 2])) == 0.75
    assert metrics.confusion_matrix(t, t).dtype == torch.int64


def test_micro_average_over_all_labels_is_accuracy():
    rng = random.Random(3)
    for _ in range(10):
        y_true, y_pred = random_labels(rng, 50, 4), random_labels(rng, 50, 4)
        micro = metrics.precision_recall_f1(y_true, y_pred, "micro")
        acc = metrics.accuracy(y_true, y_pred)
        assert micro.precision == pytest.approx(acc) and micro.recall == pytest.approx(acc)
        assert micro.f1 == pytest.approx(acc)


def test_classification_report_rows():
    rows = metrics.classification_report([0, 1, 1, 2], [0, 1, 2, 2], label_names=["a", "b", "c"])
    assert [r[0] for r in rows] == ["a", "b", "c", "micro avg", "macro avg"]
    assert rows[1][1:] == (1.0, 0.5, pytest.approx(2 / 3), 2)
    assert rows[-1][4] == 4


@pytest.mark.parametrize("bad, error, match", [
    (([0, 1], [0]), ValueError, "same length"),
    (([], []), ValueError, "empty"),
    (([0.5, 1.0], [0, 1]), TypeError, "class labels"),
    ((torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)), ValueError, "1-D"),
    (("ab", "ab"), TypeError, "sequence of labels"),
])
def test_classification_bad_input(bad, error, match):
    for fn in (metrics.accuracy, metrics.confusion_matrix, metrics.precision_recall_f1):
        with pytest.raises(error, match=match):
            fn(*bad)


def test_bad_average_and_zero_division():
    with pytest.raises(ValueError, match="average"):
        metrics.precision_recall_f1([0], [0], "weighted")
    with pytest.raises(ValueError, match="zero_division"):
        metrics.precision_recall_f1([0], [0], zero_division=2)
    with pytest.raises(ValueError, match="distinct"):
        metrics.confusion_matrix([0], [0], labels=[0, 0])


# ---------------------------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_perplexity_equals_exp_cross_entropy(dtype):
    g = torch.Generator().manual_seed(0)
    for shape in ((5, 7), (2, 3, 11), (1, 1, 2)):
        logits = torch.randn(*shape, generator=g, dtype=dtype) * 3
        targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
        if targets.numel() > 2:
            targets.view(-1)[0] = -100
        want = math.exp(F.cross_entropy(logits.double().reshape(-1, shape[-1]), targets.reshape(-1)).item())
        assert metrics.perplexity_from_logits(logits, targets) == pytest.approx(want, rel=1e-6 if dtype == torch.float32 else 1e-12)
        assert metrics.perplexity(F.cross_entropy(logits.double().reshape(-1, shape[-1]), targets.reshape(-1))) \
            == pytest.approx(want, rel=1e-12)
    # a uniform model over V tokens has perplexity V
    assert metrics.perplexity_from_logits(torch.zeros(4, 10), torch.arange(4)) == pytest.approx(10.0)


def test_perplexity_bad_input():
    with pytest.raises(ValueError, match=">= 0"):
        metrics.perplexity(-1.0)
    with pytest.raises(ValueError, match="finite"):
        metrics.perplexity(float("nan"))
    with pytest.raises(ValueError, match="shape"):
        metrics.perplexity_from_logits(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        metrics.perplexity_from_logits(torch.zeros(2, 4), torch.full((2,), -100))
    with pytest.raises(ValueError, match="lie in"):
        metrics.perplexity_from_logits(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="integer"):
        metrics.perplexity_from_logits(torch.zeros(2, 4), torch.zeros(2))


# ---------------------------------------------------------------------------------------------- BLEU


def sacre_bleu(hyps, refs_per_hyp, **kwargs):
    n_refs = max(len(r) if isinstance(r, list) else 1 for r in refs_per_hyp)
    groups = [r if isinstance(r, list) else [r] for r in refs_per_hyp]
    streams = [[g[i] if i < len(g) else g[0] for g in groups] for i in range(n_refs)]
    return sacrebleu.corpus_bleu(hyps, streams, **kwargs)


def random_corpus(rng, n, n_refs=1, empty_every=0):
    refs = [[random_sentence(rng, 14, 1) for _ in range(n_refs)] for _ in range(n)]
    hyps = [noisy_copy(rng, r[0]) for r in refs]
    if empty_every:
        hyps = ["" if i % empty_every == 0 else h for i, h in enumerate(hyps)]
    return hyps, [r if n_refs > 1 else r[0] for r in refs]


@pytest.mark.parametrize("smooth", ["exp", "floor", "add-k", "none"])
@pytest.mark.parametrize("tokenize", ["13a", "none"])
def test_corpus_bleu_equals_sacrebleu(smooth, tokenize):
    rng = random.Random(hash((smooth, tokenize)) % 1000)
    for case in range(25):
        n_refs = 1 + case % 3
        hyps, refs = random_corpus(rng, rng.randint(1, 6), n_refs, empty_every=4 if case % 5 == 0 else 0)
        if case % 7 == 0:  # references copied: BLEU 100
            hyps = [r if isinstance(r, str) else r[0] for r in refs]
        effective = case % 2 == 0
        ours = metrics.corpus_bleu(hyps, refs, smooth=smooth, tokenize=tokenize, effective_order=effective)
        want = sacre_bleu(hyps, refs, smooth_method=smooth, tokenize=tokenize, use_effective_order=effective)
        assert abs(ours.score - want.score) < TOL, (hyps, refs, ours, want)
        assert ours.brevity_penalty == pytest.approx(want.bp, abs=TOL)
        assert (ours.hyp_len, ours.ref_len) == (want.sys_len, want.ref_len)
        assert ours.precisions == pytest.approx(want.precisions, abs=TOL)


def test_corpus_bleu_edge_cases_against_sacrebleu():
    cases = [
        ([""], ["the cat sat"]),  # empty hypothesis: BP = 0, BLEU 0
        (["", ""], ["a b", "c"]),
        (["the cat"], ["the cat sat on the mat"]),  # shorter than 4 tokens: no 3- and 4-grams
        (["the cat sat on the mat"], ["the cat sat on the mat"]),
        (["x y z"], ["a b c"]),  # no match at all
        (["a"], ["a"]),
        (["the the the the"], ["the cat"]),  # clipping
        (["It's 3.14, isn't it?"], ["it's 3.14 , isn't it ?"]),
    ]
    for hyps, refs in cases:
        for smooth in metrics.BLEU_SMOOTHING:
            for lowercase in (False, True):
                ours = metrics.corpus_bleu(hyps, refs, smooth=smooth, lowercase=lowercase)
                want = sacrebleu.corpus_bleu(hyps, [refs], smooth_method=smooth, lowercase=lowercase)
                assert abs(ours.score - want.score) < TOL, (hyps, refs, smooth, ours, want)
    assert metrics.corpus_bleu([""], ["the cat"]).score == 0.0
    assert metrics.corpus_bleu(["a b c d"], ["a b c d"]).score == pytest.approx(100.0)


def test_bleu_max_order_and_smooth_value():
    rng = random.Random(11)
    for _ in range(10):
        hyps, refs = random_corpus(rng, 4)
        for order in (1, 2, 3):
            ours = metrics.corpus_bleu(hyps, refs, max_order=order, smooth="floor", smooth_value=0.3)
            want = sacrebleu.metrics.BLEU(max_ngram_order=order, smooth_method="floor", smooth_value=0.3)
            assert abs(ours.score - want.corpus_score(hyps, [refs]).score) < TOL


def test_tokenize_13a_equals_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    reference = Tokenizer13a()
    rng = random.Random(5)
    alphabet = "ab 12.,-!?()'\"&;:<>/\n{}[]~`$%"
    lines = ["Hello, world!", "3.14 and 1,000 - 5-3", "a&quot;b&amp;c", "tab-\nbed <skipped> x", ""]
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(200)]
    for line in lines:
        assert metrics.tokenize_13a(line) == reference(line), repr(line)


# ---------------------------------------------------------------------------------------------- chrF


@pytest.mark.parametrize("word_order", [0, 2])
def test_corpus_chrf_equals_sacrebleu(word_order):
    rng = random.Random(word_order)
    for case in range(40):
        n_refs = 1 + case % 2
        hyps, refs = random_corpus(rng, rng.randint(1, 5), n_refs, empty_every=3 if case % 4 == 0 else 0)
        groups = [r if isinstance(r, list) else [r] for r in refs]
        streams = [[g[i] for g in groups] for i in range(n_refs)]
        want = sacrebleu.corpus_chrf(hyps, streams, word_order=word_order).score
        assert abs(metrics.corpus_chrf(hyps, refs, word_order=word_order) - want) < TOL, (hyps, refs)


def test_chrf_edge_cases_and_options():
    for hyps, refs in (([""], ["abc"]), (["abc"], ["abc"]), (["x"], ["abc def"]), (["hundert"], ["hundred"]),
                       (["a b", ""], ["", "a"])):
        for beta, char_order in ((2, 6), (1, 3), (3, 1)):
            want = sacrebleu.metrics.CHRF(char_order=char_order, beta=beta).corpus_score(hyps, [refs]).score
            assert abs(metrics.corpus_chrf(hyps, refs, char_order=char_order, beta=beta) - want) < TOL
    assert metrics.corpus_chrf(["abc def"], ["abc def"]) == pytest.approx(100.0)


@pytest.mark.parametrize("fn", [metrics.corpus_bleu, metrics.corpus_chrf, metrics.corpus_rouge])
def test_corpus_metrics_bad_input(fn):
    with pytest.raises(ValueError, match="same length"):
        fn(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(TypeError, match="list of strings"):
        fn("a b", ["a b"])
    with pytest.raises(TypeError, match=r"hypotheses\[0\] must be a str"):
        fn([["a"]], ["a"])
    with pytest.raises(TypeError, match=r"references\[0\]"):
        fn(["a"], [[]])


def test_bleu_and_chrf_bad_options():
    with pytest.raises(ValueError, match="smooth"):
        metrics.corpus_bleu(["a"], ["a"], smooth="laplace")
    with pytest.raises(ValueError, match="tokenize"):
        metrics.corpus_bleu(["a"], ["a"], tokenize="intl")
    with pytest.raises(ValueError, match="max_order"):
        metrics.corpus_bleu(["a"], ["a"], max_order=0)
    with pytest.raises(ValueError, match="beta"):
        metrics.corpus_chrf(["a"], ["a"], beta=0)
    with pytest.raises(ValueError, match="positive"):
        metrics.corpus_chrf(["a"], ["a"], char_order=0, word_order=0)


# ---------------------------------------------------------------------------------------------- ROUGE


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rng = random.Random(2)
    pairs = [("", "the cat"), ("the cat", ""), ("", ""), ("The CAT sat.", "the cat sat"), ("fünf und", "fünf"),
             ("a a a a", "a"), ("x y", "y x")]
    for _ in range(150):
        ref = random_sentence(rng, 15)
        pairs.append((noisy_copy(rng, ref) if rng.random() < 0.8 else random_sentence(rng, 15), ref))
    for hyp, ref in pairs:
        want = scorer.score(ref, hyp)  # rouge-score takes (target, prediction)
        for name, ours in (("rouge1", metrics.rouge_n(hyp, ref, 1)), ("rouge2", metrics.rouge_n(hyp, ref, 2)),
                           ("rougeL", metrics.rouge_l(hyp, ref))):
            w = want[name]
            assert abs(ours.precision - w.precision) < TOL and abs(ours.recall - w.recall) < TOL
            assert abs(ours.fmeasure - w.fmeasure) < TOL, (hyp, ref, name, ours, w)
    hyps, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    corpus = metrics.corpus_rouge(hyps, refs)
    for name in ("rouge1", "rouge2", "rougeL"):
        mean_f = sum(scorer.score(r, h)[name].fmeasure for h, r in pairs) / len(pairs)
        assert abs(corpus[name].fmeasure - mean_f) < TOL


def test_rouge_tokenizer_and_lcs():
    from rouge_score import tokenize as rouge_tokenize

    for text in ("Hello, World! 3.14", "fünf-und-zwanzig", "", "  a\tb\nc  ", "ÄÖÜ ab_cd"):
        assert metrics.rouge_tokenize(text) == rouge_tokenize.tokenize(text, None)
    assert metrics.lcs_length("ABCBDAB", "BDCABA") == 4
    assert metrics.lcs_length([], [1]) == 0
    with pytest.raises(ValueError, match="positive"):
        metrics.rouge_n("a", "a", 0)
    with pytest.raises(TypeError, match="hypothesis must be a str"):
        metrics.rouge_l(None, "a")
    with pytest.raises(ValueError, match="one reference"):
        metrics.corpus_rouge(["a"], [["a", "b"]])
