"""Tables and optimizer state in files (``EmbeddingBag(..., path=...)``, optimizers'
``state_dir``): the same values and the same training as in memory, written whole or
not at all, and refused where they do not fit."""

from __future__ import annotations

import numpy as np
import pytest

import nbbag
from nbbag import _files

OPTIMIZERS = {
    "sgd-momentum": lambda w, **kw: nbbag.optim.SGD(
        w, lr=0.1, momentum=0.9, weight_decay=0.01, **kw
    ),
    "adagrad": lambda w, **kw: nbbag.optim.Adagrad(
        w, lr=0.1, initial_accumulator_value=0.5, **kw
    ),
    "rowwise-adagrad": lambda w, **kw: nbbag.optim.RowWiseAdagrad(w, lr=0.1, **kw),
    "adam": lambda w, **kw: nbbag.optim.Adam(w, lr=0.01, **kw),
}


@pytest.fixture
def small_chunks(monkeypatch):
    """Files written in chunks of a few rows, so that the chunking runs."""
    monkeypatch.setattr(_files, "CHUNK_BYTES", 200)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_new_table_file_holds_the_in_memory_tables_values(tmp_path, small_chunks, dtype):
    path = tmp_path / "table.npy"
    bag = nbbag.EmbeddingBag(101, 7, padding_idx=3, seed=5, dtype=dtype, path=path)
    memory = nbbag.EmbeddingBag(101, 7, padding_idx=3, seed=5, dtype=dtype)
    assert isinstance(bag.weight, np.memmap) and bag.weight.dtype == dtype
    np.testing.assert_array_equal(bag.weight, memory.weight)
    np.testing.assert_array_equal(np.load(path), memory.weight)
    assert not (tmp_path / "table.npy.partial").exists()
    again = nbbag.EmbeddingBag(101, 7, dtype=dtype, path=path)  # opened as it is
    np.testing.assert_array_equal(again.weight, memory.weight)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_training_on_files_equals_training_in_memory(tmp_path, small_chunks, optimizer):
    rng = np.random.default_rng(0)
    on_files = nbbag.EmbeddingBag(60, 5, mode="mean", seed=1, path=tmp_path / "t.npy")
    in_memory = nbbag.EmbeddingBag(60, 5, mode="mean", seed=1)
    opt_files = OPTIMIZERS[optimizer](on_files.weight, state_dir=tmp_path)
    opt_memory = OPTIMIZERS[optimizer](in_memory.weight)
    on_files.attach(opt_files)
    in_memory.attach(opt_memory)
    for _ in range(4):
        ids, offsets = rng.integers(0, 60, 30), np.array([0, 7, 7, 20])
        grad_output = rng.standard_normal((4, 5)).astype(np.float32)
        for bag in (on_files, in_memory):
            bag(ids, offsets)
            bag.step(grad_output)
    opt_files.flush()
    opt_memory.flush()
    np.testing.assert_array_equal(on_files.weight, in_memory.weight)
    for name in opt_memory.state_names:
        assert isinstance(getattr(opt_files, name), np.memmap)
        np.testing.assert_array_equal(getattr(opt_files, name), getattr(opt_memory, name))
        assert (tmp_path / f"{name}.npy").exists()


def test_files_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "table.npy"
    nbbag.EmbeddingBag(10, 4, path=path)
    with pytest.raises(ValueError, match=r"holds float32 \(10, 4\), expected float32 \(11"):
        nbbag.EmbeddingBag(11, 4, path=path)
    with pytest.raises(ValueError, match="expected float64"):
        nbbag.EmbeddingBag(10, 4, dtype=np.float64, path=path)
    with pytest.raises(ValueError, match="pass weight or path, not both"):
        nbbag.EmbeddingBag(10, 4, weight=np.zeros((10, 4), np.float32), path=path)
    weight = nbbag.EmbeddingBag(10, 4, path=path).weight
    nbbag.optim.Adagrad(weight, lr=0.1, state_dir=tmp_path)
    with pytest.raises(FileExistsError, match="state_sum.npy' exists"):
        nbbag.optim.Adagrad(weight, lr=0.1, state_dir=tmp_path)
    # all the state files or none: the second one existing, the first is not written
    (tmp_path / "sgd").mkdir()
    (tmp_path / "sgd" / "last_step.npy").write_bytes(b"")
    with pytest.raises(FileExistsError, match="last_step.npy' exists"):
        nbbag.optim.SGD(weight, lr=0.1, momentum=0.9, state_dir=tmp_path / "sgd")
    assert [p.name for p in (tmp_path / "sgd").iterdir()] == ["last_step.npy"]
    coll = nbbag.EmbeddingBagCollection([nbbag.TableConfig("a", 5, 4)])
    with pytest.raises(ValueError, match="not a collection"):
        nbbag.optim.SGD(coll, lr=0.1, state_dir=tmp_path)


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch, small_chunks):
    def failing(chunk):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _files.mapped_array(tmp_path / "t.npy", (50, 4), np.float32, failing, "table")
    assert not list(tmp_path.iterdir())  # nor its temporary file
