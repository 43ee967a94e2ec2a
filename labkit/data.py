"""Data without a network: a docstring corpus, tokenizers, batching and synthetic tasks.

Everything here is built offline and is deterministic:

* :func:`docstring_corpus` -- English documents parsed (with :mod:`ast`, never imported or run) from the
  sources of a fixed list of Python standard-library modules; each is labelled by its top-level module.
* :class:`ByteTokenizer`, :class:`CharTokenizer` and a byte-level :class:`BPETokenizer` trainer;
  :func:`get_tokenizer` trains or loads one from the cache.
* :func:`lm_batches` / :func:`batch_windows` -- next-token windows for language modelling,
  :func:`classification_dataset` -- padded documents with labels, :func:`long_range_task` -- a synthetic
  recall task whose answer lies a fixed distance back.

Cached files live in :func:`cache_dir` (``$LABKIT_CACHE``, else ``~/.cache/labkit``).
"""

from __future__ import annotations

import ast
import gc
import hashlib
import heapq
import inspect
import json
import os
import platform
import random
import re
import sys
import sysconfig
import tokenize
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from labkit.cache import atomic_write, cache_dir

__all__ = [
    "Document",
    "STDLIB_MODULES",
    "docstring_corpus",
    "corpus_text",
    "train_val_split",
    "ByteTokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "get_tokenizer",
    "lm_batches",
    "batch_windows",
    "LONG_RANGE_MARKER",
    "long_range_task",
    "classification_dataset",
]


# Pure-Python standard-library modules present on Linux, macOS and Windows from Python 3.10 on (one that a
# given Python lacks is skipped). Their sources are parsed, not imported, so nothing in them runs.
STDLIB_MODULES: tuple[str, ...] = tuple(
    sorted(
        """
        _pydecimal _pyio abc argparse ast asyncio base64 bdb bisect bz2 calendar cmd code codecs codeop
        collections colorsys compileall concurrent configparser contextlib contextvars copy copyreg csv ctypes
        curses dataclasses datetime dbm difflib dis doctest email enum filecmp fileinput fnmatch fractions
        ftplib functools getopt getpass gettext glob graphlib gzip hashlib heapq hmac html http imaplib
        importlib inspect ipaddress json keyword linecache locale logging lzma mailbox mimetypes modulefinder
        multiprocessing netrc ntpath numbers opcode operator optparse os pathlib pdb pickle pickletools pkgutil
        platform plistlib poplib posixpath pprint profile pstats pty py_compile pyclbr pydoc queue quopri random
        re reprlib rlcompleter runpy sched secrets selectors shelve shlex shutil signal site smtplib socket
        socketserver sqlite3 ssl stat statistics string stringprep struct subprocess symtable sysconfig tabnanny
        tarfile tempfile textwrap threading timeit token tokenize tomllib trace traceback tracemalloc turtle
        types typing unittest urllib uuid venv warnings wave weakref webbrowser wsgiref xml xmlrpc zipapp
        zipfile zipimport zoneinfo
        """.split()
    )
)
# The pure-Python implementations of `decimal` and `io` document those modules.
_LABEL_OF = {"_pydecimal": "decimal", "_pyio": "io"}
# Inside packages: folders and files that are tests, demos or entry points, never walked.
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})
_SKIPPED_FILES = frozenset({"__main__.py"})
_CORPUS_FORMAT = 1
_MIN_CORPUS_DOCS = 100
_TOKENIZER_FORMAT = 1


# ----------------------------------------------------------------------------------------------------------
# argument checks and the cache
# ----------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; TypeError for a non-int, ValueError out of range."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write(path, lambda handle: json.dump(obj, handle, ensure_ascii=False))


def _store_json(path: Path, obj: Any) -> None:
    """Cache ``obj`` at ``path``; a cache that cannot be written only costs a warning (and a rebuild next time)."""
    try:
        _write_json_atomic(path, obj)
    except OSError as err:
        warnings.warn(f"labkit could not write its cache file {path}: {err}", RuntimeWarning, stacklevel=3)


def _read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (a cache miss, rebuilt by the caller)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (cache keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# the docstring corpus
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document: its ``text``, its ``label`` (top-level module) and the dotted name it documents."""

    text: str
    label: str
    source: str = ""


def _clean_docstring(doc: str) -> str:
    """Dedent, then collapse every run of whitespace inside a paragraph; paragraphs are joined by one newline."""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(doc))
    return "\n".join(p for p in (" ".join(par.split()) for par in paragraphs) if p)


def _stdlib_dir() -> Path:
    """Where this Python keeps the standard library's ``.py`` sources."""
    candidates = [sysconfig.get_paths().get("stdlib"), os.path.dirname(os.__file__)]
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "textwrap.py")):
            return Path(candidate)
    return Path(candidates[0] or os.path.dirname(os.__file__))


def _module_files(stdlib: Path, module: str) -> list[tuple[str, Path]]:
    """(dotted name, path) of every source file of a top-level module, packages walked in sorted order."""
    single = stdlib / f"{module}.py"
    if single.is_file():
        return [(module, single)]
    package = stdlib / module
    if not (package / "__init__.py").is_file():
        return []
    files = []
    for root, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and (Path(root) / d / "__init__.py").is_file())
        for name in sorted(names):
            if not name.endswith(".py") or name in _SKIPPED_FILES:
                continue
            parts = list(Path(root).relative_to(stdlib).parts)
            if name != "__init__.py":
                parts.append(name[:-3])
            files.append((".".join(parts), Path(root) / name))
    return sorted(files)


def _docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    """(dotted name, raw docstring) of a module and of the classes, functions and methods defined at its
    top level or directly inside its classes (nested functions are not documentation)."""
    doc = ast.get_docstring(tree, clean=False)
    if doc:
        yield module, doc
    pending: list[tuple[str, list[ast.stmt]]] = [(module, tree.body)]
    while pending:
        prefix, body = pending.pop(0)
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{node.name}"
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    yield name, doc
                if isinstance(node, ast.ClassDef):
                    pending.append((name, node.body))


def _parse_source(path: Path) -> ast.Module:
    """The syntax tree of a source file. The cyclic garbage collector is paused meanwhile: a parse makes many
    objects but no cycles, and collections triggered by them would double the time."""
    with tokenize.open(path) as f:
        source = f.read()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename=str(path))
    finally:
        if was_enabled:
            gc.enable()


def _build_docstring_corpus(min_chars: int) -> tuple[list[Document], dict[str, Any]]:
    """Parse the sources of :data:`STDLIB_MODULES`; return the documents (canonical order) and a summary."""
    stdlib = _stdlib_dir()
    documents: list[Document] = []
    seen: set[str] = set()
    missing, unreadable = [], []
    for module in STDLIB_MODULES:
        files = _module_files(stdlib, module)
        if not files:
            missing.append(module)
        for dotted, path in files:
            try:
                tree = _parse_source(path)
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                unreadable.append(dotted)
                continue
            for source, raw in _docstrings(tree, dotted):
                text = _clean_docstring(raw)
                if len(text) >= min_chars and text not in seen:
                    seen.add(text)
                    documents.append(Document(text=text, label=_LABEL_OF.get(module, module), source=source))
    summary = {"stdlib": str(stdlib), "missing_modules": missing, "unreadable_files": unreadable}
    if len(documents) < _MIN_CORPUS_DOCS:
        raise RuntimeError(
            f"docstring_corpus built only {len(documents)} documents with min_chars={min_chars} "
            f"(expected at least {_MIN_CORPUS_DOCS}) from the standard library at {stdlib}: "
            f"{len(STDLIB_MODULES) - len(missing)} of {len(STDLIB_MODULES)} modules found, "
            f"{len(unreadable)} files unreadable. Lower min_chars, or use a Python whose standard library "
            "ships its .py sources (some minimal or embedded builds keep only compiled .pyc files)."
        )
    return documents, summary


def _balanced_subset(docs: list[Document], max_docs: int, seed: int) -> list[Document]:
    """``max_docs`` documents taken round-robin over the labels (each label's documents in a seeded
    shuffle, the label order shuffled too), returned in the corpus order."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, doc in enumerate(docs):
        by_label[doc.label].append(index)
    rng = random.Random(seed)
    labels = sorted(by_label)
    for label in labels:
        rng.shuffle(by_label[label])
    rng.shuffle(labels)
    chosen: list[int] = []
    for round_ in range(max(len(v) for v in by_label.values())):
        for label in labels:
            if round_ < len(by_label[label]):
                chosen.append(by_label[label][round_])
                if len(chosen) == max_docs:
                    return [docs[i] for i in sorted(chosen)]
    return [docs[i] for i in sorted(chosen)]


def docstring_corpus(
    max_docs: int | None = None, min_chars: int = 200, seed: int = 0, cache: bool = True
) -> list[Document]:
    """English documents from the docstrings of Python's standard library, labelled by top-level module.

    Module, class, function and method docstrings of :data:`STDLIB_MODULES` are parsed with :mod:`ast`
    (no module is imported), dedented, whitespace-collapsed, kept when at least ``min_chars`` long and
    de-duplicated. ``max_docs`` (None or 0: all) keeps a seeded, label-balanced subset. The order is the
    corpus order (modules and files sorted by name, definitions in source order), the same on every run of
    the same Python. The full corpus for a ``min_chars`` is cached as JSON in :func:`cache_dir`; fewer than
    100 documents raise RuntimeError. On CPython 3.11: about 1,750 documents, 0.95 M characters, 135 labels.
    """
    if max_docs is not None:
        max_docs = _check_int("max_docs", max_docs, minimum=0)
    min_chars = _check_int("min_chars", min_chars, minimum=1)
    seed = _check_int("seed", seed)
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be a bool, got {type(cache).__name__}")

    version = ".".join(str(v) for v in sys.version_info[:3])
    key = _digest(_CORPUS_FORMAT, platform.python_implementation(), version, min_chars, STDLIB_MODULES)
    path = cache_dir() / f"docstring_corpus-py{version}-min{min_chars}-{key}.json" if cache else None
    stored = _read_json(path) if path is not None and path.is_file() else None
    if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("documents"), list):
        docs = [Document(*row) for row in stored["documents"]]
    else:
        docs, summary = _build_docstring_corpus(min_chars)
        if path is not None:
            rows = [[d.text, d.label, d.source] for d in docs]
            _store_json(path, {"key": key, "python": version, **summary, "documents": rows})
    if max_docs:
        docs = _balanced_subset(docs, max_docs, seed)
    return docs


def _texts(docs: Iterable[Document | str], name: str = "docs") -> list[str]:
    """The texts of a sequence of Documents or strings."""
    if isinstance(docs, (str, bytes)) or not isinstance(docs, Iterable):
        raise TypeError(f"{name} must be a sequence of Document or str, got {type(docs).__name__}")
    texts = []
    for item in docs:
        if isinstance(item, Document):
            texts.append(item.text)
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise TypeError(f"{name} must contain Document or str items, got {type(item).__name__}")
    return texts


def corpus_text(docs: Iterable[Document | str], separator: str = "\n\n") -> str:
    """All documents' texts joined by ``separator`` (one string to tokenize for language modelling)."""
    return separator.join(_texts(docs))


def train_val_split(items: Sequence[Any] | torch.Tensor, val_fraction: float = 0.1, seed: int = 0):
    """Split into (train, val). A list/tuple is split by a seeded random choice of ``round(n * val_fraction)``
    validation items (at least one), both parts kept in the original order; a 1-D tensor (a token stream)
    is split contiguously, its last ``val_fraction`` becoming the validation part (``seed`` unused)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a float strictly between 0 and 1, got {val_fraction!r}")
    seed = _check_int("seed", seed)
    if isinstance(items, torch.Tensor):
        if items.dim() != 1:
            raise ValueError(f"a tensor to split must be 1-D (a token stream), got shape {tuple(items.shape)}")
        n = items.numel()
        if n < 2:
            raise ValueError(f"items must hold at least 2 elements to split, got {n}")
        n_val = min(n - 1, max(1, round(n * val_fraction)))
        return items[: n - n_val], items[n - n_val :]
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a list, tuple or 1-D tensor, got {type(items).__name__}")
    n = len(items)
    if n < 2:
        raise ValueError(f"items must hold at least 2 elements to split, got {n}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    val_indices = set(random.Random(seed).sample(range(n), n_val))
    train = [item for i, item in enumerate(items) if i not in val_indices]
    val = [item for i, item in enumerate(items) if i in val_indices]
    return train, val


# ----------------------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------------------


class _Tokenizer:
    """Shared behaviour: ``n_base`` ordinary ids first, then one id per special token (in the given order).

    ``encode`` never produces special ids (text that looks like ``"<pad>"`` is encoded as ordinary text);
    ``decode`` renders a special id as its token string.
    """

    kind = ""

    def __init__(self, special_tokens: Sequence[str] = ()):
        if isinstance(special_tokens, str) or not all(isinstance(t, str) and t for t in special_tokens):
            raise TypeError(f"special_tokens must be a sequence of non-empty str, got {special_tokens!r}")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special_tokens must be distinct, got {list(special_tokens)}")
        self.special_tokens: tuple[str, ...] = tuple(special_tokens)

    # subclasses define these three
    @property
    def n_base(self) -> int:
        raise NotImplementedError

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode_base(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    @property
    def vocab_size(self) -> int:
        """Number of ids: ordinary tokens plus special tokens."""
        return self.n_base + len(self.special_tokens)

    @property
    def special_ids(self) -> dict[str, int]:
        """Special token -> id."""
        return {token: self.n_base + i for i, token in enumerate(self.special_tokens)}

    @property
    def pad_id(self) -> int | None:
        """The id of ``"<pad>"`` when it is a special token, else None."""
        return self.special_ids.get("<pad>")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (byte-level tokenizers need text that UTF-8 can encode: no lone surrogates)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._encode_text(text)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of token ids (ids of partial UTF-8 sequences decode to U+FFFD)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = list(ids)
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, Integral):
                raise TypeError(f"ids must be ints, got {type(i).__name__} ({i!r})")
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range [0, {self.vocab_size}) of this {self.kind} tokenizer")
        pieces, run = [], []
        for i in ids:
            if i < self.n_base:
                run.append(int(i))
            else:
                pieces.append(self._decode_base(run))
                pieces.append(self.special_tokens[i - self.n_base])
                run = []
        pieces.append(self._decode_base(run))
        return "".join(pieces)

    def _to_json(self) -> dict[str, Any]:
        state = {"format": "labkit-tokenizer", "version": _TOKENIZER_FORMAT, "kind": self.kind}
        state.update(special_tokens=list(self.special_tokens), **self._state())
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON (atomically)."""
        _write_json_atomic(Path(path), self._to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "_Tokenizer":
        """Read a tokenizer written by :meth:`save` (of this class's kind when called on a subclass)."""
        state = _read_json(Path(path))
        if not isinstance(state, dict) or state.get("format") != "labkit-tokenizer":
            raise ValueError(f"{path} is not a labkit tokenizer file")
        kind = state.get("kind")
        if kind not in _TOKENIZER_KINDS or (cls.kind and kind != cls.kind):
            raise ValueError(f"{path} holds a {kind!r} tokenizer, expected {cls.kind or sorted(_TOKENIZER_KINDS)!r}")
        return _TOKENIZER_KINDS[kind]._from_state(state)

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "_Tokenizer":
        return cls(special_tokens=state["special_tokens"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={list(self.special_tokens)})"


class ByteTokenizer(_Tokenizer):
    """UTF-8 bytes as tokens: ids 0..255 are the byte values, then the special tokens."""

    kind = "byte"

    @property
    def n_base(self) -> int:
        return 256

    def _encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _decode_base(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class CharTokenizer(_Tokenizer):
    """Characters as tokens: ``chars[i]`` has id ``i``. With ``"<unk>"`` among the special tokens, unseen
    characters encode to it; without, encoding one raises ValueError."""

    kind = "char"

    def __init__(self, chars: Sequence[str], special_tokens: Sequence[str] = ()):
        super().__init__(special_tokens)
        chars = list(chars)
        if not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("chars must be distinct single characters")
        self.chars: tuple[str, ...] = tuple(chars)
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, texts: Iterable[Document | str], special_tokens: Sequence[str] = ()) -> "CharTokenizer":
        """A vocabulary of every character in ``texts``, sorted by code point."""
        return cls(sorted(set().union(*map(set, _texts(texts, "texts")))), special_tokens)

    @property
    def n_base(self) -> int:
        return len(self.chars)

    def _encode_text(self, text: str) -> list[int]:
        unk = self.special_ids.get("<unk>")
        ids = [self._ids.get(c, unk) for c in text]
        if unk is None and None in ids:
            bad = text[ids.index(None)]
            raise ValueError(f"character {bad!r} is not in the vocabulary (fit with special_tokens=['<unk>'])")
        return ids

    def _decode_base(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def _state(self) -> dict[str, Any]:
        return {"chars": list(self.chars)}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "CharTokenizer":
        return cls(state["chars"], special_tokens=state["special_tokens"])


# Pre-tokenization (GPT-2 style, with the stdlib `re`): contractions, words (letters and `_`) with an optional
# leading space, digit runs, punctuation runs, whitespace. The pieces concatenate back to the text exactly.
BPE_PATTERN = r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+"""


def _merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids``, left to right, by ``new_id``."""
    first, second = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _learn_merges(word_counts: dict[str, int], n_merges: int, min_frequency: int) -> list[tuple[int, int]]:
    """Byte-pair merges: repeatedly merge the most frequent adjacent pair (ties: the smallest pair).

    Pair counts are updated incrementally: a merge re-counts only the words that contain the pair
    (found through a pair -> words index), and a heap with lazy deletion yields the next best pair.
    """
    words = [list(word.encode("utf-8")) for word in sorted(word_counts)]
    freqs = [word_counts[word] for word in sorted(word_counts)]
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for index, (ids, freq) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += freq
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while heap and len(merges) < n_merges:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count:
            continue  # stale heap entry
        if -negative_count < min_frequency:
            break
        new_id = 256 + len(merges)
        merges.append(pair)
        changed = set()
        for index in where.pop(pair):
            ids, freq = words[index], freqs[index]
            merged = _merge_pair(ids, pair, new_id)
            if len(merged) == len(ids):
                continue  # the pair left this word in an earlier merge
            for old in zip(ids, ids[1:]):
                pair_counts[old] -= freq
                changed.add(old)
            for new in zip(merged, merged[1:]):
                pair_counts[new] += freq
                where[new].add(index)
                changed.add(new)
            words[index] = merged
        for changed_pair in changed:
            count = pair_counts[changed_pair]
            if count > 0:
                heapq.heappush(heap, (-count, changed_pair))
            else:
                del pair_counts[changed_pair]
    return merges


class BPETokenizer(_Tokenizer):
    """Byte-level byte-pair encoding: ids 0..255 are bytes, id ``256 + r`` is merge ``r``, then specials.

    Text is pre-split with :data:`BPE_PATTERN` (merges never cross a word boundary); each piece's bytes
    are merged by applying the learned merges in rank order, as in training.
    """

    kind = "bpe"

    def __init__(self, merges: Sequence[Sequence[int]], special_tokens: Sequence[str] = (), pattern: str = BPE_PATTERN):
        super().__init__(special_tokens)
        self.merges: list[tuple[int, int]] = []
        self._bytes: list[bytes] = [bytes([b]) for b in range(256)]
        for rank, pair in enumerate(merges):
            pair = tuple(pair)
            if len(pair) != 2 or not all(isinstance(i, Integral) and 0 <= i < 256 + rank for i in pair):
                raise ValueError(f"merge {rank} must be a pair of ids below {256 + rank}, got {pair!r}")
            self.merges.append((int(pair[0]), int(pair[1])))
            self._bytes.append(self._bytes[pair[0]] + self._bytes[pair[1]])
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.pattern = pattern
        self._split = re.compile(pattern)
        self._piece_cache: dict[str, list[int]] = {}

    @classmethod
    def train(
        cls,
        texts: Iterable[Document | str],
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = (),
        pattern: str = BPE_PATTERN,
    ) -> "BPETokenizer":
        """Learn up to ``vocab_size - 256 - len(special_tokens)`` merges from ``texts``; merging stops early
        when no pair occurs ``min_frequency`` times (so ``vocab_size`` is an upper bound)."""
        texts = _texts(texts, "texts")
        vocab_size = _check_int("vocab_size", vocab_size, minimum=256 + len(special_tokens))
        min_frequency = _check_int("min_frequency", min_frequency, minimum=1)
        split = re.compile(pattern)
        word_counts: Counter[str] = Counter()
        for text in texts:
            word_counts.update(split.findall(text))
        merges = _learn_merges(word_counts, vocab_size - 256 - len(special_tokens), min_frequency)
        return cls(merges, special_tokens=special_tokens, pattern=pattern)

    @property
    def n_base(self) -> int:
        return 256 + len(self.merges)

    def _encode_piece(self, piece: str) -> list[int]:
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, len(self._ranks)))
            rank = self._ranks.get(pair)
            if rank is None:
                break
            ids = _merge_pair(ids, pair, 256 + rank)
        return ids

    def _encode_text(self, text: str) -> list[int]:
        cache = self._piece_cache
        if len(cache) > 200_000:
            cache.clear()
        ids: list[int] = []
        for piece in self._split.findall(text):
            encoded = cache.get(piece)
            if encoded is None:
                encoded = cache[piece] = self._encode_piece(piece)
            ids.extend(encoded)
        return ids

    def _decode_base(self, ids: list[int]) -> str:
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes an ordinary id stands for (for showing what the merges learned)."""
        token_id = _check_int("token_id", token_id, minimum=0, maximum=self.n_base - 1)
        return self._bytes[token_id]

    def _state(self) -> dict[str, Any]:
        return {"merges": [list(p) for p in self.merges], "pattern": self.pattern}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "BPETokenizer":
        return cls(state["merges"], special_tokens=state["special_tokens"], pattern=state["pattern"])


_TOKENIZER_KINDS: dict[str, type[_Tokenizer]] = {t.kind: t for t in (ByteTokenizer, CharTokenizer, BPETokenizer)}


def get_tokenizer(
    kind: str,
    docs: Iterable[Document | str] | None = None,
    vocab_size: int | None = None,
    *,
    special_tokens: Sequence[str] = ("<pad>",),
    min_frequency: int = 2,
    cache: bool = True,
) -> _Tokenizer:
    """A tokenizer of ``kind`` ``"byte"``, ``"char"`` (fit on ``docs``) or ``"bpe"`` (trained on ``docs`` to at
    most ``vocab_size`` ids, special tokens included). A trained BPE is cached in :func:`cache_dir` under a
    hash of the texts and settings. ``vocab_size`` only applies to ``"bpe"``. By default ``"<pad>"`` is a
    special token, so ``tokenizer.pad_id`` is set."""
    if kind not in _TOKENIZER_KINDS:
        raise ValueError(f"kind must be one of {sorted(_TOKENIZER_KINDS)}, got {kind!r}")
    special_tokens = tuple(special_tokens)
    if kind == "byte":
        return ByteTokenizer(special_tokens)
    if docs is None:
        raise ValueError(f"a {kind!r} tokenizer is fit on docs, got docs=None")
    texts = _texts(docs)
    if kind == "char":
        return CharTokenizer.fit(texts, special_tokens)
    if vocab_size is None:
        raise ValueError("vocab_size is required for a 'bpe' tokenizer, got None")
    vocab_size = _check_int("vocab_size", vocab_size, minimum=256 + len(special_tokens))
    min_frequency = _check_int("min_frequency", min_frequency, minimum=1)
    path = None
    if cache:
        texts_hash = hashlib.sha256()
        for text in texts:
            texts_hash.update(text.encode("utf-8") + b"\0")
        key = _digest(_TOKENIZER_FORMAT, texts_hash.hexdigest(), vocab_size, min_frequency, special_tokens, BPE_PATTERN)
        path = cache_dir() / f"bpe-{vocab_size}-{key}.json"
        if path.is_file():
            try:
                return BPETokenizer.load(path)
            except (ValueError, KeyError, TypeError):
                pass  # unreadable cache file: train again and overwrite it
    tokenizer = BPETokenizer.train(texts, vocab_size, min_frequency=min_frequency, special_tokens=special_tokens)
    if path is not None:
        _store_json(path, tokenizer._to_json())
    return tokenizer


# ----------------------------------------------------------------------------------------------------------
# batches and datasets
# ----------------------------------------------------------------------------------------------------------


def _check_tokens(tokens: Any, seq_len: int) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a 1-D integer torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be a 1-D integer tensor, got shape {tuple(tokens.shape)} dtype {tokens.dtype}")
    if tokens.numel() < seq_len + 1:
        raise ValueError(f"tokens must hold at least seq_len + 1 = {seq_len + 1} tokens, got {tokens.numel()}")


def lm_batches(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random training batches: ``x[b] = tokens[s_b : s_b + T]``, ``y[b] = tokens[s_b + 1 : s_b + T + 1]``
    (next-token targets), start ``s_b`` uniform; both ``(batch_size, seq_len)`` int64 on ``device`` (default:
    the tokens' device). Randomness comes from ``generator`` (else torch's global RNG)."""
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    seq_len = _check_int("seq_len", seq_len, minimum=1)
    _check_tokens(tokens, seq_len)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    offsets = torch.arange(seq_len + 1)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_starts = tokens.numel() - seq_len
        while True:
            starts = torch.randint(n_starts, (batch_size, 1), generator=generator)
            windows = tokens[(starts + offsets).to(tokens.device)].long()
            if device is not None:
                windows = windows.to(device)
            yield windows[:, :-1], windows[:, 1:]

    return batches()


def batch_windows(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    *,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches: the consecutive non-overlapping windows ``x = tokens[kT : kT + T]``,
    ``y = tokens[kT + 1 : kT + T + 1]`` for k = 0, 1, ..., grouped ``batch_size`` at a time (the last batch may
    be smaller), at most ``max_batches`` batches. Deterministic; every token is predicted at most once."""
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    seq_len = _check_int("seq_len", seq_len, minimum=1)
    if max_batches is not None:
        max_batches = _check_int("max_batches", max_batches, minimum=1)
    _check_tokens(tokens, seq_len)
    n_windows = (tokens.numel() - 1) // seq_len
    n_batches = -(-n_windows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    offsets = torch.arange(seq_len + 1, device=tokens.device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(n_batches):
            starts = torch.arange(b * batch_size, min((b + 1) * batch_size, n_windows), device=tokens.device)
            windows = tokens[starts[:, None] * seq_len + offsets].long()
            if device is not None:
                windows = windows.to(device)
            yield windows[:, :-1], windows[:, 1:]

    return batches()


LONG_RANGE_MARKER = 0


def long_range_task(
    n_samples: int, seq_len: int, distance: int, vocab_size: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic recall task whose answer lies ``distance`` positions back from the last token.

    Construction (T = ``seq_len``, V = ``vocab_size``): every position holds a content token drawn uniformly
    from 1..V-1, except position ``T - 2 - distance``, which holds the marker :data:`LONG_RANGE_MARKER` (0,
    nowhere else). The token right after the marker, at position ``T - 1 - distance``, is the key, and the
    target is that key: ``targets == inputs[:, T - 1 - distance]``. The last position ``T - 1`` is exactly
    ``distance`` steps after the key, so a model reading out at the end must look back ``distance`` positions.
    Keys are uniform over V - 1 values: chance accuracy is ``1 / (V - 1)``. Needs ``1 <= distance <= T - 2``.
    Returns ``inputs`` (N, T) and ``targets`` (N,), int64, the same for the same ``seed``.
    """
    n_samples = _check_int("n_samples", n_samples, minimum=1)
    seq_len = _check_int("seq_len", seq_len, minimum=3)
    distance = _check_int("distance", distance, minimum=1)
    if distance > seq_len - 2:
        raise ValueError(f"distance must be <= seq_len - 2 = {seq_len - 2} (room for marker and key), got {distance}")
    vocab_size = _check_int("vocab_size", vocab_size, minimum=3)
    seed = _check_int("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, vocab_size, (n_samples, seq_len), generator=generator)
    key_position = seq_len - 1 - distance
    inputs[:, key_position - 1] = LONG_RANGE_MARKER
    targets = inputs[:, key_position].clone()
    return inputs, targets


def classification_dataset(
    docs: Sequence[Document],
    tokenizer: _Tokenizer,
    seq_len: int,
    n_classes: int,
    pad_id: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    windows: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Documents of the ``n_classes`` most frequent labels (ties: alphabetical), each encoded, cut to its
    first ``seq_len`` tokens and right-padded with ``pad_id`` (default: ``tokenizer.pad_id``).

    ``labels`` fixes the kept labels instead (``n_classes`` must equal its length), so that two splits
    share one label set. ``windows=True`` makes every consecutive ``seq_len``-token window of a document an
    example (a last partial window is kept if it has at least ``seq_len // 4`` tokens) instead of its first.

    Returns ``ids`` (N, seq_len) int64, ``padding_mask`` (N, seq_len) bool (True = pad), ``labels`` (N,)
    int64 indexing ``label_names`` (the kept labels, alphabetical). Documents keep their order; a document
    that encodes to no token is dropped.
    """
    if isinstance(docs, (str, bytes)) or not isinstance(docs, Sequence):
        raise TypeError(f"docs must be a sequence of Document, got {type(docs).__name__}")
    for doc in docs:
        if not isinstance(doc, Document):
            raise TypeError(f"docs must contain Document items, got {type(doc).__name__}")
    if not isinstance(tokenizer, _Tokenizer):
        raise TypeError(f"tokenizer must be a labkit tokenizer, got {type(tokenizer).__name__}")
    seq_len = _check_int("seq_len", seq_len, minimum=1)
    counts = Counter(doc.label for doc in docs)
    n_classes = _check_int("n_classes", n_classes, minimum=2)
    if labels is None and n_classes > len(counts):
        raise ValueError(f"n_classes must be <= the number of labels in docs ({len(counts)}), got {n_classes}")
    if pad_id is None:
        pad_id = tokenizer.pad_id
        if pad_id is None:
            raise ValueError("pad_id is None and the tokenizer has no '<pad>' special token: pass pad_id")
    pad_id = _check_int("pad_id", pad_id, minimum=0)

    if labels is None:
        kept = sorted(label for label, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n_classes])
    else:
        kept = sorted(set(labels))
        if len(kept) != n_classes:
            raise ValueError(f"labels must hold n_classes = {n_classes} distinct labels, got {len(kept)}")
    class_of = {label: i for i, label in enumerate(kept)}
    rows, lengths, targets = [], [], []
    for doc in docs:
        if doc.label not in class_of:
            continue
        tokens = tokenizer.encode(doc.text)
        starts = range(0, len(tokens), seq_len) if windows else range(min(1, len(tokens)))
        for start in starts:
            ids = tokens[start:start + seq_len]
            if start > 0 and len(ids) < max(1, seq_len // 4):
                continue
            lengths.append(len(ids))
            rows.append(ids + [pad_id] * (seq_len - len(ids)))
            targets.append(class_of[doc.label])
    ids_tensor = torch.tensor(rows, dtype=torch.long).reshape(len(rows), seq_len)
    padding_mask = torch.arange(seq_len)[None, :] >= torch.tensor(lengths, dtype=torch.long)[:, None]
    return ids_tensor, padding_mask.reshape(len(rows), seq_len), torch.tensor(targets, dtype=torch.long), kept


# ----------------------------------------------------------------------------------------------------------
# an offline translation task: number words, English -> German
# ----------------------------------------------------------------------------------------------------------

_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_DE_ONES = ("null ein zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn "
            "sechzehn siebzehn achtzehn neunzehn").split()
_DE_TENS = "_ _ zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()
MAX_NUMBER = 999_999
TRANSLATION_SPECIALS = ("<pad>", "<bos>", "<eos>")


def _check_number(n: Any) -> int:
    return _check_int("n", n, minimum=0, maximum=MAX_NUMBER)


def _english_below_1000(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_EN_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_EN_TENS[n // 10])
        n %= 10
    if n:
        words.append(_EN_ONES[n])
    return words


def number_to_english(n: int) -> str:
    """English number words, space-separated and without "and": 342015 -> "three hundred forty two thousand
    fifteen"; 0 -> "zero". Defined for 0 <= n <= 999,999."""
    n = _check_number(n)
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = _english_below_1000(thousands) + ["thousand"] if thousands else []
    return " ".join(words + _english_below_1000(rest))


def _german_below_1000(n: int, final: bool) -> list[str]:
    """German number words of 1..999 as separate pieces; a unit 1 is "ein" inside a compound and "eins" when
    it ends the number (``final``); units come before tens, joined by "und" (zwei und vierzig = 42)."""
    words = []
    if n >= 100:
        words += [_DE_ONES[n // 100], "hundert"]
        n %= 100
    if n >= 20 and n % 10:
        words += [_DE_ONES[n % 10], "und", _DE_TENS[n // 10]]
    elif n >= 20:
        words.append(_DE_TENS[n // 10])
    elif n == 1 and final:
        words.append("eins")
    elif n:
        words.append(_DE_ONES[n])
    return words


def number_to_german(n: int) -> str:
    """German number words, one piece per morpheme of the written compound: 342015 -> "drei hundert zwei und
    vierzig tausend fünfzehn" (German writes "dreihundertzweiundvierzigtausendfünfzehn"). The units-before-tens
    order ("zwei und vierzig", two and forty) makes the alignment with English non-monotonic."""
    n = _check_number(n)
    if n == 0:
        return "null"
    thousands, rest = divmod(n, 1000)
    words = _german_below_1000(thousands, final=False) + ["tausend"] if thousands else []
    return " ".join(words + _german_below_1000(rest, final=True))


class WordTokenizer(_Tokenizer):
    """Whitespace-separated words as tokens: ``words[i]`` has id ``i``, then the special tokens. ``decode``
    joins words with single spaces (a special token is rendered as its own word)."""

    kind = "word"

    def __init__(self, words: Sequence[str], special_tokens: Sequence[str] = TRANSLATION_SPECIALS):
        super().__init__(special_tokens)
        words = list(words)
        if not all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in words):
            raise ValueError("words must be non-empty strings without whitespace")
        if len(set(words)) != len(words):
            raise ValueError("words must be distinct")
        self.words: tuple[str, ...] = tuple(words)
        self._ids = {w: i for i, w in enumerate(words)}

    @classmethod
    def fit(cls, texts: Iterable[str], special_tokens: Sequence[str] = TRANSLATION_SPECIALS) -> "WordTokenizer":
        """A vocabulary of every whitespace-separated word in ``texts``, sorted."""
        return cls(sorted({w for text in _texts(texts, "texts") for w in text.split()}), special_tokens)

    @property
    def n_base(self) -> int:
        return len(self.words)

    @property
    def bos_id(self) -> int | None:
        return self.special_ids.get("<bos>")

    @property
    def eos_id(self) -> int | None:
        return self.special_ids.get("<eos>")

    def _encode_text(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self._ids:
                raise ValueError(f"word {word!r} is not in the vocabulary of {len(self.words)} words")
            ids.append(self._ids[word])
        return ids

    def _decode_base(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The words (and special tokens) of ``ids`` joined by single spaces."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return " ".join(_Tokenizer.decode(self, [i]) for i in ids)

    def _state(self) -> dict[str, Any]:
        return {"words": list(self.words)}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> "WordTokenizer":
        return cls(state["words"], special_tokens=state["special_tokens"])


_TOKENIZER_KINDS[WordTokenizer.kind] = WordTokenizer


@dataclass
class TranslationTask:
    """English number words -> German number words, split by number into train, validation and test.

    ``*_pairs`` are ``(source, target)`` strings and ``*_numbers`` the numbers they spell; no number is in two
    splits. One :class:`WordTokenizer` covers both languages (with ``<pad>``, ``<bos>``, ``<eos>``), as an
    encoder-decoder with shared embeddings needs. ``key`` describes the task for checkpoint names."""

    train_pairs: list[tuple[str, str]]
    val_pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, str]]
    train_numbers: list[int]
    val_numbers: list[int]
    test_numbers: list[int]
    tokenizer: WordTokenizer
    key: dict[str, Any]

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """The ``(source, target)`` pairs of ``"train"``, ``"val"`` or ``"test"``."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, f"{split}_pairs")

    @property
    def max_source_len(self) -> int:
        return max(len(s.split()) for s, _ in self.train_pairs + self.val_pairs + self.test_pairs)

    @property
    def max_target_len(self) -> int:
        return max(len(t.split()) for _, t in self.train_pairs + self.val_pairs + self.test_pairs)


def translation_task(n_train: int = 4000, n_val: int = 500, n_test: int = 500, max_number: int = MAX_NUMBER,
                     seed: int = 0) -> TranslationTask:
    """Distinct numbers in 1..``max_number``, spelled in English (source) and German (target), split
    ``n_train``/``n_val``/``n_test``. A number's digit count is drawn uniformly first, then the number
    uniformly among those with that many digits, so short and long numbers are both common (uniform
    sampling would make nearly all six digits long). Deterministic given ``seed``; no number is repeated."""
    n_train = _check_int("n_train", n_train, minimum=1)
    n_val = _check_int("n_val", n_val, minimum=1)
    n_test = _check_int("n_test", n_test, minimum=1)
    max_number = _check_int("max_number", max_number, minimum=3, maximum=MAX_NUMBER)
    seed = _check_int("seed", seed)
    total = n_train + n_val + n_test
    if total > max_number:
        raise ValueError(f"n_train + n_val + n_test = {total} distinct numbers do not fit in 1..{max_number}")
    rng = random.Random(seed)
    n_digits = len(str(max_number))
    chosen: dict[int, None] = {}  # insertion-ordered set
    while len(chosen) < total:
        digits = rng.randint(1, n_digits)
        low, high = 10 ** (digits - 1), min(10**digits - 1, max_number)
        chosen.setdefault(rng.randint(low, high), None)
    numbers = list(chosen)
    rng.shuffle(numbers)
    splits = numbers[:n_train], numbers[n_train:n_train + n_val], numbers[n_train + n_val:]
    pairs = [[(number_to_english(n), number_to_german(n)) for n in split] for split in splits]
    spelled = range(0, 1001)  # every word of either language occurs in the numbers up to 1000
    tokenizer = WordTokenizer.fit([number_to_english(n) for n in spelled] + [number_to_german(n) for n in spelled])
    key = {"task": "number words en-de", "n_train": n_train, "n_val": n_val, "n_test": n_test,
           "max_number": max_number, "seed": seed, "vocab": tokenizer.vocab_size}
    return TranslationTask(*pairs, *map(list, splits), tokenizer, key)


def translation_tensors(pairs: Sequence[tuple[str, str]], tokenizer: WordTokenizer, source_len: int | None = None,
                        target_len: int | None = None) -> dict[str, torch.Tensor]:
    """Padded id tensors for an encoder-decoder (teacher forcing):

    ``src`` (N, S) source ids, ``src_padding`` (N, S) bool (True = pad); ``tgt_in`` (N, T) = ``<bos> y_1 .. y_m``
    and ``tgt_out`` (N, T) = ``y_1 .. y_m <eos>`` (the next token at each position), ``tgt_padding`` (N, T).
    ``S``/``T`` default to the longest source / target + 1; a longer sentence raises ValueError."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError("pairs must be a non-empty list of (source, target) strings")
    if not isinstance(tokenizer, WordTokenizer) or None in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id):
        raise TypeError("tokenizer must be a WordTokenizer with <pad>, <bos> and <eos>")
    sources, targets = [], []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"pairs[{i}] must be a (source, target) pair of strings, got {pair!r}")
        sources.append(tokenizer.encode(pair[0]))
        targets.append(tokenizer.encode(pair[1]))
    longest_source, longest_target = max(map(len, sources)), max(map(len, targets)) + 1
    source_len = longest_source if source_len is None else _check_int("source_len", source_len, minimum=1)
    target_len = longest_target if target_len is None else _check_int("target_len", target_len, minimum=2)
    if longest_source > source_len or longest_target > target_len:
        raise ValueError(f"a pair is longer than source_len={source_len} / target_len={target_len} "
                         f"(longest: {longest_source} source tokens, {longest_target - 1} target tokens + 1)")
    pad, bos, eos = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id

    def padded(rows: list[list[int]], length: int) -> torch.Tensor:
        return torch.tensor([row + [pad] * (length - len(row)) for row in rows], dtype=torch.long)

    src = padded(sources, source_len)
    tgt_in = padded([[bos] + t for t in targets], target_len)
    tgt_out = padded([t + [eos] for t in targets], target_len)
    return {"src": src, "src_padding": src == pad, "tgt_in": tgt_in, "tgt_out": tgt_out,
            "tgt_padding": tgt_out == pad}


__all__ += ["MAX_NUMBER", "TRANSLATION_SPECIALS", "number_to_english", "number_to_german", "WordTokenizer",
            "TranslationTask", "translation_task", "translation_tensors"]
