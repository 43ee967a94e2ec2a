"""Tests for labkit.data: the offline corpus, tokenizers, batching and synthetic tasks."""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import sys
from collections import Counter

import pytest
import torch

from labkit.cache import CACHE_ENV
from labkit import data
from labkit.data import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Document,
    batch_windows,
    classification_dataset,
    corpus_text,
    docstring_corpus,
    get_tokenizer,
    lm_batches,
    long_range_task,
    train_val_split,
)

UNICODE_SAMPLES = [
    "",
    "a",
    "hello world",
    "  leading and trailing  \n\n\t",
    "héllo wörld — naïve café",
    "中文文本，带标点。 日本語のテキスト",
    "emoji 🙂👍🏽 and math ∑ x² ½",
    "tabs\tand\r\nnewlines\n\n  indented",
    "it's we're they'll I'd __dunder__ snake_case 3.14159 1e-5",
]


def random_text(rng: random.Random, n: int) -> str:
    """A random string over ASCII, Latin, CJK, emoji and whitespace code points (no lone surrogates)."""
    ranges = [(32, 127), (9, 14), (0xC0, 0x17F), (0x4E00, 0x4E80), (0x1F600, 0x1F650), (0x2000, 0x2070)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        chars.append(chr(rng.randrange(lo, hi)))
    return "".join(chars)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """A private cache folder for the whole module (LABKIT_CACHE points there)."""
    root = tmp_path_factory.mktemp("labkit_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root))
        yield root


@pytest.fixture(scope="module")
def corpus(cache_root):
    return docstring_corpus()


@pytest.fixture(scope="module")
def small_docs(corpus):
    return docstring_corpus(max_docs=300)


@pytest.fixture(scope="module")
def bpe_300(small_docs):
    train, _ = train_val_split(small_docs, 0.1, seed=0)
    return BPETokenizer.train(train, vocab_size=300)


# ----------------------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------------------


def test_corpus_size_and_clean_text(corpus):
    assert len(corpus) >= 1000
    labels = Counter(doc.label for doc in corpus)
    assert len(labels) >= 50
    texts = [doc.text for doc in corpus]
    assert len(set(texts)) == len(texts), "documents are de-duplicated"
    for doc in corpus:
        assert isinstance(doc, Document)
        assert len(doc.text) >= 200
        assert doc.text == doc.text.strip()
        assert "  " not in doc.text and "\t" not in doc.text and "\n\n" not in doc.text
        assert doc.source == doc.label or doc.source.split(".")[0] in (doc.label, "_py" + doc.label)


def test_corpus_is_deterministic(corpus):
    rebuilt = docstring_corpus(cache=False)
    assert rebuilt == corpus
    sources = [(doc.label, doc.source) for doc in corpus]
    assert len(set(sources)) == len(sources)


def test_labels_come_from_the_documented_module(corpus):
    """Every document labelled 'json' is the docstring of an object of the json package."""
    json_docs = [doc for doc in corpus if doc.label == "json"]
    assert len(json_docs) >= 5
    for doc in json_docs + [doc for doc in corpus if doc.label in ("textwrap", "decimal")][:20]:
        parts = doc.source.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        assert " ".join(inspect.cleandoc(obj.__doc__).split()) == " ".join(doc.text.split()), doc.source
    assert all(doc.source.startswith("json") for doc in json_docs)


def test_max_docs_subset_is_seeded_and_balanced(corpus, small_docs):
    assert len(small_docs) == 300
    assert docstring_corpus(max_docs=300, seed=0) == small_docs
    other = docstring_corpus(max_docs=300, seed=1)
    assert other != small_docs and len(other) == 300
    position = {doc: i for i, doc in enumerate(corpus)}
    assert [position[d] for d in small_docs] == sorted(position[d] for d in small_docs), "kept in corpus order"
    available = Counter(doc.label for doc in corpus)
    taken = Counter(doc.label for doc in small_docs)
    top = max(taken.values())
    for label, count in available.items():
        assert taken[label] == count or taken[label] >= top - 1, label
    email_picks = {doc.source for seed in range(4) for doc in docstring_corpus(max_docs=300, seed=seed)
                   if doc.label == "email"}
    assert len(email_picks) > taken["email"] + 2, "each label's documents are drawn at random too"
    assert docstring_corpus(max_docs=0) == corpus
    assert docstring_corpus(max_docs=10**6) == corpus


def test_corpus_cache_is_used(corpus, cache_root, monkeypatch):
    files = sorted(cache_root.glob("docstring_corpus-*.json"))
    assert len(files) == 1 and f"py{sys.version_info.major}.{sys.version_info.minor}." in files[0].name

    def no_build(min_chars):
        raise AssertionError("the corpus was rebuilt instead of loaded from the cache")

    monkeypatch.setattr(data, "_build_docstring_corpus", no_build)
    assert docstring_corpus() == corpus
    with pytest.raises(AssertionError, match="rebuilt"):
        docstring_corpus(cache=False)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(data, "STDLIB_MODULES", ("_pydecimal", "email", "json"))
    first = docstring_corpus(min_chars=150)
    assert {d.label for d in first} == {"decimal", "email", "json"} and all(len(d.text) >= 150 for d in first)
    (path,) = tmp_path.glob("docstring_corpus-*min150*.json")
    path.write_text("{not json")
    assert docstring_corpus(min_chars=150) == first
    assert json.loads(path.read_text())["documents"][0][0] == first[0].text


def test_too_small_corpus_raises(monkeypatch):
    monkeypatch.setattr(data, "STDLIB_MODULES", ("json",))
    with pytest.raises(RuntimeError, match=r"only \d+ documents.*min_chars=200"):
        docstring_corpus(cache=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_docs": -1}, ValueError, "max_docs"),
        ({"max_docs": 2.5}, TypeError, "max_docs"),
        ({"min_chars": 0}, ValueError, "min_chars"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"cache": "yes"}, TypeError, "cache"),
    ],
)
def test_corpus_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        docstring_corpus(**kwargs)


def test_corpus_text_and_split(small_docs):
    text = corpus_text(small_docs[:3])
    assert text == "\n\n".join(d.text for d in small_docs[:3])
    assert corpus_text(["a", "b"], separator="|") == "a|b"
    train, val = train_val_split(small_docs, val_fraction=0.1, seed=0)
    assert len(val) == 30 and len(train) == 270
    assert sorted(map(id, train + val)) == sorted(map(id, small_docs))
    assert train_val_split(small_docs, 0.1, seed=0) == (train, val)
    assert train_val_split(small_docs, 0.1, seed=1)[1] != val
    tokens = torch.arange(100)
    head, tail = train_val_split(tokens, 0.2)
    assert torch.equal(head, torch.arange(80)) and torch.equal(tail, torch.arange(80, 100))


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True])
def test_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split([1, 2, 3], fraction)


def test_split_bad_items():
    with pytest.raises(ValueError, match="at least 2"):
        train_val_split([1])
    with pytest.raises(TypeError, match="items"):
        train_val_split("abc")
    with pytest.raises(ValueError, match="1-D"):
        train_val_split(torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_byte_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.vocab_size == 256 and tok.pad_id is None


def test_byte_tokenizer_special_tokens():
    tok = ByteTokenizer(special_tokens=("<pad>", "<eos>"))
    assert tok.vocab_size == 258 and tok.pad_id == 256 and tok.special_ids == {"<pad>": 256, "<eos>": 257}
    assert tok.encode("<pad>") == list(b"<pad>"), "special tokens are never produced from text"
    assert tok.decode([104, 105, 257, 256]) == "hi<eos><pad>"
    assert tok.decode(torch.tensor([104, 105])) == "hi"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([258])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="distinct"):
        ByteTokenizer(special_tokens=("<pad>", "<pad>"))


def test_char_tokenizer(small_docs):
    tok = CharTokenizer.fit(small_docs[:50])
    assert list(tok.chars) == sorted(set("".join(d.text for d in small_docs[:50])))
    for doc in small_docs[:50]:
        ids = tok.encode(doc.text)
        assert len(ids) == len(doc.text) and tok.decode(ids) == doc.text
    assert tok.encode("") == [] and tok.decode([]) == ""
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("中")
    with_unk = CharTokenizer.fit(["abc"], special_tokens=("<pad>", "<unk>"))
    assert with_unk.vocab_size == 5 and with_unk.encode("a中c") == [0, 4, 2]
    assert with_unk.decode(with_unk.encode("a中c")) == "a<unk>c"


def test_bpe_hand_worked_example():
    # words: "ab" x1, " ab" x2, " abc" x1. Pair counts (a,b)=4, (' ',a)=3, (b,c)=1 -> merge (a,b) as 256;
    # then (' ',256)=3, (256,c)=1 -> merge (' ',256) as 257; then (257,c)=1 < min_frequency -> stop.
    tok = BPETokenizer.train(["ab ab ab abc"], vocab_size=1000)
    assert tok.merges == [(97, 98), (32, 256)]
    assert tok.vocab_size == 258
    assert tok.encode("ab abc") == [256, 257, 99]
    assert tok.encode("cab") == [99, 256]
    assert tok.token_bytes(257) == b" ab"
    assert BPETokenizer.train(["ab ab ab abc"], vocab_size=257).merges == [(97, 98)]
    assert BPETokenizer.train(["ab ab ab abc"], vocab_size=1000, min_frequency=1).merges[-1] == (257, 99)


def naive_bpe_merges(texts, n_merges, min_frequency=2):
    """Reference trainer: re-count every pair of every word before each merge (slow but obviously right)."""
    words = Counter(w for t in texts for w in re.findall(data.BPE_PATTERN, t))
    pieces = {w: list(w.encode("utf-8")) for w in words}
    merges = []
    while len(merges) < n_merges:
        counts = Counter()
        for word, freq in words.items():
            for pair in zip(pieces[word], pieces[word][1:]):
                counts[pair] += freq
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        if counts[best] < min_frequency:
            break
        pieces = {w: data._merge_pair(ids, best, 256 + len(merges)) for w, ids in pieces.items()}
        merges.append(best)
    return merges


@pytest.mark.parametrize("n_docs, vocab_size, min_frequency", [(40, 330, 2), (5, 400, 3), (3, 700, 1)])
def test_bpe_trainer_matches_naive_recount(small_docs, n_docs, vocab_size, min_frequency):
    texts = [d.text for d in small_docs[:n_docs]] + ["aaaa aaaaa ababab"]
    fast = BPETokenizer.train(texts, vocab_size, min_frequency=min_frequency).merges
    assert fast == naive_bpe_merges(texts, vocab_size - 256, min_frequency)


def test_bpe_applies_merges_in_rank_order():
    bc_first = BPETokenizer([(98, 99), (97, 98)])
    assert bc_first.encode("abc") == [97, 256], "merge 0 (b,c) must be applied before merge 1 (a,b)"
    ab_first = BPETokenizer([(97, 98), (98, 99)])
    assert ab_first.encode("abc") == [256, 99]
    overlapping = BPETokenizer([(97, 97)])
    assert overlapping.encode("aaaaa") == [256, 256, 97], "non-overlapping, left to right"
    with pytest.raises(ValueError, match="merge 0"):
        BPETokenizer([(97, 300)])


def test_bpe_encoding_matches_training_segmentation(small_docs):
    """Encoding a training word reproduces the segmentation the trainer reached."""
    texts = [d.text for d in small_docs[:100]]
    tok = BPETokenizer.train(texts, vocab_size=400)
    words = Counter(w for t in texts for w in tok._split.findall(t))
    frequent = [w for w, c in words.most_common(50)]
    for word in frequent:
        ids = list(word.encode("utf-8"))
        for rank, pair in enumerate(tok.merges):  # replay training order
            ids = data._merge_pair(ids, pair, 256 + rank)
        assert tok.encode(word) == ids


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_bpe_round_trip(bpe_300, text):
    assert bpe_300.decode(bpe_300.encode(text)) == text


def test_bpe_round_trip_random_unicode(bpe_300):
    rng = random.Random(0)
    for _ in range(50):
        text = random_text(rng, rng.randrange(0, 60))
        assert bpe_300.decode(bpe_300.encode(text)) == text


def test_bpe_compresses_held_out_text(small_docs, bpe_300):
    _, val = train_val_split(small_docs, 0.1, seed=0)
    held_out = corpus_text(val)
    ids = bpe_300.encode(held_out)
    assert bpe_300.decode(ids) == held_out
    n_bytes = len(held_out.encode("utf-8"))
    assert len(ids) < 0.75 * n_bytes
    bigger = BPETokenizer.train(train_val_split(small_docs, 0.1, seed=0)[0], vocab_size=600)
    assert len(bigger.encode(held_out)) < len(ids), "more merges, shorter encoding"


def test_bpe_vocab_size_and_word_boundaries(bpe_300, small_docs):
    assert bpe_300.vocab_size == 300 and len(bpe_300.merges) == 44
    with_pad = BPETokenizer.train(small_docs[:100], vocab_size=300, special_tokens=("<pad>",))
    assert with_pad.vocab_size == 300 and with_pad.pad_id == 299 and len(with_pad.merges) == 299 - 256
    assert max(with_pad.encode(corpus_text(small_docs[:100]))) < 299
    for token_id in range(256, bpe_300.vocab_size):
        token = bpe_300.token_bytes(token_id)
        body = token[1:] if token.startswith(b" ") else token
        assert body.isspace() or not any(ch.isspace() for ch in body.decode("utf-8", "replace")), token
    assert BPETokenizer.train(small_docs[:100], vocab_size=300).merges == BPETokenizer.train(
        small_docs[:100], vocab_size=300
    ).merges


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"vocab_size": 255}, ValueError, "vocab_size"),
        ({"vocab_size": 256, "special_tokens": ("<pad>",)}, ValueError, "vocab_size"),
        ({"vocab_size": 300.0}, TypeError, "vocab_size"),
        ({"vocab_size": 300, "min_frequency": 0}, ValueError, "min_frequency"),
    ],
)
def test_bpe_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        BPETokenizer.train(["some text"], **kwargs)


def test_bpe_bad_texts():
    with pytest.raises(TypeError, match="texts"):
        BPETokenizer.train("a single string", vocab_size=300)
    with pytest.raises(TypeError, match="texts"):
        BPETokenizer.train([1, 2], vocab_size=300)


def test_tokenizer_save_load(tmp_path, bpe_300):
    path = tmp_path / "bpe.json"
    with_pad = BPETokenizer(bpe_300.merges, special_tokens=("<pad>",))
    with_pad.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe_300.merges and loaded.special_tokens == ("<pad>",)
    text = UNICODE_SAMPLES[5] + " the quick brown fox"
    assert loaded.encode(text) == with_pad.encode(text)
    char = CharTokenizer.fit(["hello"], special_tokens=("<pad>",))
    char.save(tmp_path / "char.json")
    assert CharTokenizer.load(tmp_path / "char.json").chars == char.chars
    with pytest.raises(ValueError, match="'char' tokenizer, expected 'bpe'"):
        BPETokenizer.load(tmp_path / "char.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a labkit tokenizer"):
        BPETokenizer.load(tmp_path / "other.json")


def test_get_tokenizer_caches_bpe(tmp_path, monkeypatch, small_docs):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    docs = small_docs[:80]
    first = get_tokenizer("bpe", docs, 290)
    assert first.pad_id == 289 and first.vocab_size == 290
    assert len(list(tmp_path.glob("bpe-290-*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("BPE was trained again instead of loaded from the cache")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    second = get_tokenizer("bpe", docs, 290)
    assert second.merges == first.merges and second.special_tokens == first.special_tokens
    with pytest.raises(AssertionError, match="trained again"):
        get_tokenizer("bpe", docs[:79], 290)  # other texts: another cache key


def test_get_tokenizer_kinds_and_errors(small_docs):
    assert isinstance(get_tokenizer("byte"), ByteTokenizer) and get_tokenizer("byte").pad_id == 256
    char = get_tokenizer("char", small_docs[:20], special_tokens=())
    assert isinstance(char, CharTokenizer) and char.pad_id is None
    with pytest.raises(ValueError, match="kind must be one of"):
        get_tokenizer("wordpiece", small_docs)
    with pytest.raises(ValueError, match="docs=None"):
        get_tokenizer("bpe", None, 300)
    with pytest.raises(ValueError, match="vocab_size is required"):
        get_tokenizer("bpe", small_docs)


# ----------------------------------------------------------------------------------------------------------
# language-model batches
# ----------------------------------------------------------------------------------------------------------


def test_lm_batches_shapes_and_shift():
    tokens = torch.arange(1000)
    batches = lm_batches(tokens, batch_size=4, seq_len=16, generator=torch.Generator().manual_seed(0))
    seen = set()
    for _ in range(20):
        x, y = next(batches)
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.long
        assert torch.equal(y, x + 1), "y is x shifted by one token"
        assert torch.equal(x, x[:, :1] + torch.arange(16)), "each row is a contiguous window"
        assert int(x.min()) >= 0 and int(y.max()) <= 999
        seen.update(x[:, 0].tolist())
    assert len(seen) > 40, "start positions are random"


def test_lm_batches_deterministic_and_real_tokens():
    tokens = torch.tensor(ByteTokenizer().encode("the quick brown fox jumps over the lazy dog " * 5))
    a = lm_batches(tokens, 3, 8, generator=torch.Generator().manual_seed(7), device="cpu")
    b = lm_batches(tokens, 3, 8, generator=torch.Generator().manual_seed(7))
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])
    exact = lm_batches(torch.arange(9), 2, 8)
    x, y = next(exact)
    assert torch.equal(x, torch.arange(8).expand(2, 8)) and torch.equal(y, torch.arange(1, 9).expand(2, 8))


def test_batch_windows_cover_tokens_in_order():
    tokens = torch.arange(103)
    batches = list(batch_windows(tokens, batch_size=4, seq_len=10))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert torch.equal(x, torch.arange(100).reshape(10, 10)) and torch.equal(y, x + 1)
    assert len(list(batch_windows(tokens, 4, 10, max_batches=2))) == 2


@pytest.mark.parametrize(
    "tokens, kwargs, error, match",
    [
        (torch.arange(10).reshape(2, 5), {}, ValueError, "1-D"),
        (torch.rand(100), {}, ValueError, "integer"),
        (list(range(100)), {}, TypeError, "torch.Tensor"),
        (torch.arange(8), {}, ValueError, "at least seq_len"),
        (torch.arange(100), {"batch_size": 0}, ValueError, "batch_size"),
        (torch.arange(100), {"seq_len": 0}, ValueError, "seq_len"),
    ],
)
def test_batches_bad_inputs(tokens, kwargs, error, match):
    args = {"batch_size": 2, "seq_len": 8, **kwargs}
    with pytest.raises(error, match=match):
        lm_batches(tokens, **args)
    with pytest.raises(error, match=match):
        batch_windows(tokens, **args)


# ----------------------------------------------------------------------------------------------------------
# synthetic long-range task
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len, distance, vocab_size", [(32, 1, 16), (32, 30, 16), (64, 20, 5), (3, 1, 3)])
def test_long_range_task_targets(seq_len, distance, vocab_size):
    inputs, targets = long_range_task(500, seq_len, distance, vocab_size=vocab_size, seed=3)
    assert inputs.shape == (500, seq_len) and targets.shape == (500,)
    assert inputs.dtype == targets.dtype == torch.long
    key_position = seq_len - 1 - distance
    assert (seq_len - 1) - key_position == distance
    assert torch.equal(targets, inputs[:, key_position])
    assert (inputs[:, key_position - 1] == data.LONG_RANGE_MARKER).all()
    assert ((inputs == data.LONG_RANGE_MARKER).sum(dim=1) == 1).all(), "the marker appears exactly once"
    assert int(targets.min()) >= 1 and int(targets.max()) <= vocab_size - 1
    assert set(targets.tolist()) == set(range(1, vocab_size)), "keys cover every content token"


def test_long_range_task_is_seeded():
    a = long_range_task(50, 16, 5, seed=0)
    b = long_range_task(50, 16, 5, seed=0)
    c = long_range_task(50, 16, 5, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((0, 16, 4), ValueError, "n_samples"),
        ((10, 16, 15), ValueError, "distance"),
        ((10, 16, 16), ValueError, "distance"),
        ((10, 16, 0), ValueError, "distance"),
        ((10, 2, 1), ValueError, "seq_len"),
        ((10, 16, 4, 2), ValueError, "vocab_size"),
        ((10, 16, 4.0), TypeError, "distance"),
    ],
)
def test_long_range_task_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        long_range_task(*args)


# ----------------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------------


def test_classification_dataset_padding_and_labels():
    docs = [
        Document("alpha one", "a"),
        Document("c only", "c"),
        Document("bravo", "b"),
        Document("alpha two is a long document", "a"),
        Document("bravo again", "b"),
        Document("alpha three", "a"),
    ]
    tok = ByteTokenizer(special_tokens=("<pad>",))
    ids, mask, labels, names = classification_dataset(docs, tok, seq_len=10, n_classes=2)
    assert names == ["a", "b"]
    assert ids.shape == mask.shape == (5, 10) and labels.shape == (5,)
    assert ids.dtype == labels.dtype == torch.long and mask.dtype == torch.bool
    assert labels.tolist() == [0, 1, 0, 1, 0]
    kept = [d for d in docs if d.label != "c"]
    for row, doc in enumerate(kept):
        encoded = tok.encode(doc.text)[:10]
        n = len(encoded)
        assert ids[row, :n].tolist() == encoded
        assert (ids[row, n:] == tok.pad_id).all()
        assert mask[row].tolist() == [False] * n + [True] * (10 - n)
    explicit = classification_dataset(docs, ByteTokenizer(), seq_len=10, n_classes=2, pad_id=0)
    assert (explicit[0][explicit[1]] == 0).all() and torch.equal(explicit[1], mask)


def test_classification_dataset_windows_and_fixed_labels():
    docs = [Document("abcdefghij", "a"), Document("xyz", "b"), Document("klmnopqrstu", "a")]
    tok = ByteTokenizer(special_tokens=("<pad>",))
    ids, mask, labels, names = classification_dataset(docs, tok, seq_len=4, n_classes=2, windows=True)
    # "abcdefghij" -> 4 + 4 + 2 tokens, "xyz" -> 3, "klmnopqrstu" -> 4 + 4 + 3; partial windows of >= 1 token kept
    assert labels.tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert tok.decode(ids[2][~mask[2]].tolist()) == "ij" and tok.decode(ids[6][~mask[6]].tolist()) == "stu"
    long_windows = classification_dataset(docs, tok, seq_len=9, n_classes=2, windows=True)
    assert long_windows[2].tolist() == [0, 1, 0, 0], "a last window of 1 < 9 // 4 tokens is dropped, one of 2 kept"
    only_a = classification_dataset(docs[:1], tok, seq_len=4, n_classes=2, labels=["b", "a"], windows=True)
    assert only_a[3] == ["a", "b"] and only_a[2].tolist() == [0, 0, 0], "a fixed label set, even if absent"
    with pytest.raises(ValueError, match="labels must hold"):
        classification_dataset(docs, tok, seq_len=4, n_classes=3, labels=["a", "b"])


def test_classification_dataset_on_corpus(corpus):
    tok = get_tokenizer("byte")
    ids, mask, labels, names = classification_dataset(corpus, tok, seq_len=64, n_classes=4)
    counts = Counter(doc.label for doc in corpus)
    top = sorted(counts, key=lambda label: (-counts[label], label))[:4]
    assert names == sorted(top)
    assert len(labels) == sum(counts[label] for label in top)
    assert not mask.any(), "every corpus document is longer than 64 bytes"
    assert Counter(labels.tolist()) == Counter({i: counts[name] for i, name in enumerate(names)})


def test_classification_dataset_bad_arguments(corpus):
    docs = corpus[::10]
    tok = ByteTokenizer(special_tokens=("<pad>",))
    n_labels = len({d.label for d in docs})
    with pytest.raises(ValueError, match="n_classes"):
        classification_dataset(docs, tok, 16, n_labels + 1)
    with pytest.raises(ValueError, match="n_classes"):
        classification_dataset(docs, tok, 16, 1)
    with pytest.raises(ValueError, match="seq_len"):
        classification_dataset(docs, tok, 0, 2)
    with pytest.raises(ValueError, match="pad_id"):
        classification_dataset(docs, ByteTokenizer(), 16, 2)
    with pytest.raises(ValueError, match="pad_id"):
        classification_dataset(docs, tok, 16, 2, pad_id=-1)
    with pytest.raises(TypeError, match="Document"):
        classification_dataset(["text"], tok, 16, 2)
    with pytest.raises(TypeError, match="tokenizer"):
        classification_dataset(docs, "bytes", 16, 2)
