"""benchmarks.tbe, the FBGEMM TBE peer: its batch layout, its skip message, and its
correctness check on a tiny batch (skipped where fbgemm_gpu cannot be imported)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks import tbe


def test_pack_puts_the_features_one_after_another():
    ids = [np.array([4, 1, 1]), np.array([0, 2])]
    starts = [np.array([0, 2]), np.array([0, 0])]  # feature 1's bag 0 is empty
    indices, offsets = tbe.pack(ids, starts)
    assert indices.tolist() == [4, 1, 1, 0, 2] and indices.dtype == np.int64
    assert offsets.tolist() == [0, 2, 3, 3, 5] and offsets.dtype == np.int64
    with pytest.raises(ValueError, match="same number of bags"):
        tbe.pack(ids, [np.array([0, 2]), np.array([0])])


def test_without_fbgemm_the_reason_names_the_install_command(monkeypatch):
    for name in [
        m for m in sys.modules if m == "fbgemm_gpu" or m.startswith("fbgemm_gpu.")
    ]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "fbgemm_gpu", None)  # blocks a first import too
    with pytest.raises(ImportError) as raised:
        tbe.fbgemm.__wrapped__()  # uncached: the real one may have loaded already
    assert "pip install --no-deps fbgemm-gpu-cpu==1.8.0" in str(raised.value)
    assert "torch==2.13.0" in str(raised.value)


def test_tbe_matches_numpy():
    reason = tbe.unavailable()
    if reason is not None:
        pytest.skip(reason)
    tbe.check()
