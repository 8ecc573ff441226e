"""The examples' word bigram buckets are fastText's, checked against the ``fasttext``
package itself: a supervised model's sentence vector is the mean of the input rows of a
line's words, its end-of-line token and its bigrams' buckets, so the buckets computed
here must pick the same rows for the mean to match."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _data import EOS, Vocabulary, bigram_buckets, word_hashes  # noqa: E402

BUCKETS = 10007
ATTEMPTS = 20
# Non-ASCII words (bytes >= 0x80, which fastText XORs in sign-extended), a word that is
# not in the training file, and repeats.
SENTENCES = [
    "the café serves crème brûlée",
    "naïve dogs chase the cat",
    "the unseenword barks",
    "ok",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    fasttext = pytest.importorskip("fasttext")
    words = "the cat dog dogs chase café serves crème brûlée naïve barks ok".split()
    rng = np.random.default_rng(0)
    lines = [
        f"__label__{'ab'[i % 2]} " + " ".join(rng.choice(words, 6)) for i in range(1000)
    ]
    path = tmp_path_factory.mktemp("fasttext") / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # On a file this small, fastText's check of the loss sometimes reads it before its
    # training thread has counted an example (0 / 0: "Encountered NaN"): try again.
    for _ in range(ATTEMPTS):
        try:
            return fasttext.train_supervised(
                str(path), dim=8, epoch=1, lr=0.01, wordNgrams=2, bucket=BUCKETS,
                minCount=1, thread=1, seed=0, verbose=0,
            )  # fmt: skip
        except RuntimeError as error:
            if "NaN" not in str(error):
                raise
    pytest.fail(f"fastText reported NaN in each of {ATTEMPTS} attempts")


@pytest.mark.parametrize("sentence", SENTENCES)
def test_bigram_buckets_pick_fasttexts_rows(model, sentence):
    tokens = sentence.split()
    # fastText's rows: its words (</s> among them), then the buckets
    num_words = len(model.words)
    word_rows = [model.get_word_id(word) for word in [*tokens, EOS]]
    rows = [row for row in word_rows if row >= 0]
    rows += (num_words + bigram_buckets(tokens, BUCKETS)).tolist()
    expected = model.get_input_matrix()[rows].mean(axis=0)
    np.testing.assert_allclose(model.get_sentence_vector(sentence), expected, rtol=1e-5)


def test_word_hashes_are_fasttexts_signed_fnv1a():
    # fastText's hash of "a": (2166136261 ^ 0x61) * 16777619 mod 2**32, as an int32
    assert word_hashes(["a"])[0] == np.uint32(0xE40C292C).view(np.int32)
    # a byte >= 0x80 is XORed in sign-extended: é is 0xC3 0xA9
    value = 2166136261
    for byte in "é".encode():
        value = (value ^ (byte - 256) % 2**32) * 16777619 % 2**32
    assert word_hashes(["é"])[0] == np.uint32(value).view(np.int32)
    assert word_hashes([]).shape == (0,)


def test_vocabulary_appends_the_buckets_after_the_words():
    vocabulary = Vocabulary.build([["b", "a"]], buckets=BUCKETS)
    ids = vocabulary.encode(["a", "b", "unknown"])
    assert ids[:2] == [0, 1]
    assert ids[2:] == (2 + bigram_buckets(["a", "b", "unknown"], BUCKETS)).tolist()
    assert len(ids[2:]) == 3  # (a, b), (b, unknown), (unknown, </s>)
