"""A table in a file through a row cache (``nbbag.CachedEmbeddingBag``): training
equals the in-memory layer's bit for bit while rows come and go (a cache smaller than
the rows training touches), the files hold every change after ``flush``, and a batch
larger than the cache is refused with nothing changed."""

from __future__ import annotations

import numpy as np
import pytest

import nbbag
from nbbag import _files

V, D = 97, 5
OPTIMIZERS = {
    "sgd": (nbbag.optim.SGD, {"lr": 0.2}),
    "adagrad": (nbbag.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.5}),
    "rowwise-adagrad": (nbbag.optim.RowWiseAdagrad, {"lr": 0.1}),
    "adam": (nbbag.optim.Adam, {"lr": 0.05}),
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(_files, "CHUNK_BYTES", 200)


def batch(rng, num_bags=6):
    lengths = rng.integers(0, 6, num_bags)
    ids = rng.integers(0, V, lengths.sum())
    ids[rng.random(ids.shape[0]) < 0.2] = 2  # padding
    return ids, np.concatenate([[0], np.cumsum(lengths)[:-1]])


# every optimizer, each with one mode (the cache does not look at the mode)
@pytest.mark.parametrize(
    ("mode", "optimizer"),
    [("mean", "sgd"), ("max", "adagrad"), ("mean", "rowwise-adagrad"), ("max", "adam")],
)
def test_training_through_a_small_cache_equals_training_in_memory(
    tmp_path, rng, mode, optimizer
):
    kind, kwargs = OPTIMIZERS[optimizer]
    options = {"padding_idx": 2, "seed": 3}
    cached = nbbag.CachedEmbeddingBag(
        V, D, mode, path=tmp_path / "t.npy", cache_rows=40, **options
    )
    layer = nbbag.EmbeddingBag(V, D, mode, **options)
    np.testing.assert_array_equal(cached.weight, layer.weight)
    cached.attach(kind, state_dir=tmp_path, **kwargs)
    layer.attach(kind(layer.weight, **kwargs))
    for _ in range(12):  # ~20 rows a batch: rows are evicted and read back
        ids, offsets = batch(rng)
        np.testing.assert_array_equal(cached(ids, offsets), layer(ids, offsets))
        grad_output = rng.standard_normal((6, D)).astype(np.float32)
        if rng.random() < 0.3:  # the unfused path, by the table's rows
            expected = layer.backward(grad_output)
            got = cached.backward(grad_output)
            np.testing.assert_array_equal(got.rows, expected.rows)
            np.testing.assert_array_equal(got.values, expected.values)
        cached.step(grad_output)
        layer.step(grad_output)
    cached.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), layer.weight)
    for name in layer.optimizer.state_names:
        np.testing.assert_array_equal(
            np.load(tmp_path / f"{name}.npy"), getattr(layer.optimizer, name)
        )


def test_a_batch_larger_than_the_cache_is_refused(tmp_path, rng):
    cached = nbbag.CachedEmbeddingBag(V, D, "sum", path=tmp_path / "t.npy", cache_rows=4)
    cached.attach(nbbag.optim.SGD, lr=0.1, state_dir=tmp_path)
    cached(np.array([1, 2, 3]), np.array([0]))
    before = cached._row_of.copy()
    with pytest.raises(ValueError, match="reads 5 distinct rows, more than the cache's 4"):
        cached(np.array([5, 6, 7, 8, 9]), np.array([0]))
    np.testing.assert_array_equal(cached._row_of, before)
    with pytest.raises(IndexError):
        cached(np.array([1, V]), np.array([0]))
    with pytest.raises(ValueError, match="momentum or weight decay"):
        nbbag.CachedEmbeddingBag(V, D, path=tmp_path / "u.npy", cache_rows=4).attach(
            nbbag.optim.SGD, lr=0.1, momentum=0.9, state_dir=tmp_path / "x"
        )
    with pytest.raises(ValueError, match="cache_rows must be at least 2"):
        nbbag.CachedEmbeddingBag(V, D, path=tmp_path / "v.npy", cache_rows=1, padding_idx=0)
