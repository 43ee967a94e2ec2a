"""labkit.data's offline translation task: number words English -> German, its tokenizer and tensors."""

from __future__ import annotations

import pytest
import torch

from labkit import data

KNOWN = {
    0: ("zero", "null"),
    1: ("one", "eins"),
    7: ("seven", "sieben"),
    11: ("eleven", "elf"),
    16: ("sixteen", "sechzehn"),
    21: ("twenty one", "ein und zwanzig"),
    30: ("thirty", "dreißig"),
    42: ("forty two", "zwei und vierzig"),
    77: ("seventy seven", "sieben und siebzig"),
    100: ("one hundred", "ein hundert"),
    101: ("one hundred one", "ein hundert eins"),
    110: ("one hundred ten", "ein hundert zehn"),
    999: ("nine hundred ninety nine", "neun hundert neun und neunzig"),
    1000: ("one thousand", "ein tausend"),
    1001: ("one thousand one", "ein tausend eins"),
    21000: ("twenty one thousand", "ein und zwanzig tausend"),
    101001: ("one hundred one thousand one", "ein hundert ein tausend eins"),
    342015: ("three hundred forty two thousand fifteen", "drei hundert zwei und vierzig tausend fünfzehn"),
    999999: ("nine hundred ninety nine thousand nine hundred ninety nine",
             "neun hundert neun und neunzig tausend neun hundert neun und neunzig"),
}


@pytest.mark.parametrize("number", sorted(KNOWN))
def test_known_spellings(number):
    english, german = KNOWN[number]
    assert data.number_to_english(number) == english
    assert data.number_to_german(number) == german


def _english_to_int(text: str) -> int:
    """An independent parser of the English words: the spelling must be invertible."""
    values = {w: i for i, w in enumerate(data._EN_ONES)} | {w: 10 * i for i, w in enumerate(data._EN_TENS) if w != "_"}
    total = current = 0
    for word in text.split():
        if word == "hundred":
            current *= 100
        elif word == "thousand":
            total, current = (total + current) * 1000, 0
        else:
            current += values[word]
    return total + current


def test_spellings_are_invertible_and_distinct():
    numbers = list(range(0, 2100)) + list(range(2100, 999_999, 997)) + [999_999]
    german = set()
    for n in numbers:
        assert _english_to_int(data.number_to_english(n)) == n
        german.add(data.number_to_german(n))
    assert len(german) == len(numbers)  # no two numbers share a German spelling


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1_000_000, ValueError), (1.5, TypeError), (True, TypeError)])
def test_number_out_of_range(bad, error):
    for fn in (data.number_to_english, data.number_to_german):
        with pytest.raises(error, match="n must"):
            fn(bad)


def test_task_is_deterministic_disjoint_and_seeded():
    a = data.translation_task(300, 50, 50, seed=0)
    b = data.translation_task(300, 50, 50, seed=0)
    c = data.translation_task(300, 50, 50, seed=1)
    assert a.train_pairs == b.train_pairs and a.test_pairs == b.test_pairs
    assert a.train_numbers != c.train_numbers
    splits = [set(a.train_numbers), set(a.val_numbers), set(a.test_numbers)]
    assert [len(s) for s in splits] == [300, 50, 50]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    for numbers, pairs in ((a.train_numbers, a.train_pairs), (a.test_numbers, a.test_pairs)):
        assert pairs == [(data.number_to_english(n), data.number_to_german(n)) for n in numbers]
    # both short and long numbers are common
    digits = [len(str(n)) for n in a.train_numbers]
    assert min(digits) <= 2 and sum(d == 6 for d in digits) < 0.5 * len(digits)
    assert a.pairs("val") == a.val_pairs and a.key["seed"] == 0


def test_task_bad_arguments():
    with pytest.raises(ValueError, match="do not fit"):
        data.translation_task(10, 5, 5, max_number=15)
    with pytest.raises(ValueError, match="n_train"):
        data.translation_task(0)
    with pytest.raises(ValueError, match="split"):
        data.translation_task(10, 5, 5).pairs("dev")


def test_word_tokenizer_round_trip_and_save(tmp_path):
    task = data.translation_task(200, 20, 20)
    tok = task.tokenizer
    for source, target in task.train_pairs:
        assert tok.decode(tok.encode(source)) == source
        assert tok.decode(torch.tensor(tok.encode(target))) == target
    assert {tok.pad_id, tok.bos_id, tok.eos_id} == {tok.vocab_size - 3, tok.vocab_size - 2, tok.vocab_size - 1}
    assert tok.decode([tok.bos_id, tok.encode("eins")[0], tok.eos_id]) == "<bos> eins <eos>"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("one million")
    path = tmp_path / "words.json"
    tok.save(path)
    loaded = data.WordTokenizer.load(path)
    assert loaded.words == tok.words and loaded.special_tokens == tok.special_tokens
    with pytest.raises(ValueError, match="distinct"):
        data.WordTokenizer(["a", "a"])


def test_translation_tensors_teacher_forcing_layout():
    task = data.translation_task(50, 5, 5)
    tok = task.tokenizer
    pairs = [("forty two", "zwei und vierzig"), ("one", "eins")]
    t = data.translation_tensors(pairs, tok)
    assert t["src"].shape == (2, 2) and t["tgt_in"].shape == (2, 4) == t["tgt_out"].shape
    assert t["tgt_in"][0].tolist() == [tok.bos_id] + tok.encode("zwei und vierzig")
    assert t["tgt_out"][0].tolist() == tok.encode("zwei und vierzig") + [tok.eos_id]
    assert t["tgt_out"][1].tolist() == tok.encode("eins") + [tok.eos_id, tok.pad_id, tok.pad_id]
    assert t["src_padding"].tolist() == [[False, False], [False, True]]
    assert t["tgt_padding"][1].tolist() == [False, False, True, True]
    shifted = t["tgt_in"][:, 1:] == t["tgt_out"][:, :-1]  # the input is the output shifted by one ...
    assert (shifted | (t["tgt_out"][:, :-1] == tok.eos_id)).all()  # ... except where the output has <eos>
    wide = data.translation_tensors(pairs, tok, source_len=5, target_len=6)
    assert wide["src"].shape == (2, 5) and wide["tgt_in"].shape == (2, 6)
    with pytest.raises(ValueError, match="longer than"):
        data.translation_tensors(pairs, tok, source_len=1)
    with pytest.raises(ValueError, match="non-empty"):
        data.translation_tensors([], tok)
    with pytest.raises(ValueError, match=r"pairs\[0\]"):
        data.translation_tensors([("a",)], tok)
