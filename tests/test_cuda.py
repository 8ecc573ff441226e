"""The GPU backend against the CPU path, through the public API, under the simulator.

Sizes are tiny (the simulator runs each GPU thread as a Python thread) and the launch
configuration is shrunk to odd sizes so that partial groups and partial blocks run.
"""

from __future__ import annotations

import numpy as np
import pytest

import nbbag

cuda_api = pytest.importorskip("nbbag.cuda.api")
from numba import cuda  # noqa: E402

from nbbag.cuda import launch  # noqa: E402

MODES = ("sum", "mean", "max", "sqrtn")
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def tiny_launches(monkeypatch):
    """Groups of 3 lanes (D = 5 leaves a partial group), 7 threads a block (2 bags a
    block, so an odd bag count leaves a partial block)."""
    monkeypatch.setattr(launch, "GROUP_SIZE", 3)
    monkeypatch.setattr(launch, "BLOCK_SIZE", 7)


def host(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)


def make_case(rng, *, dtype=np.float32, index_dtype=np.int64, num_rows=9, dim=5):
    """Five bags, one empty and one holding only padding row 2, a repeated row."""
    weight = rng.standard_normal((num_rows, dim)).astype(dtype)
    indices = np.array([1, 2, 4, 4, 2, 2, 7, 0, 8, 4, 3], dtype=index_dtype)
    offsets = np.array([0, 3, 3, 6, 7], dtype=index_dtype)  # bag 1 empty, bag 2 = {2}?
    weights = rng.uniform(0.5, 2.0, indices.shape[0]).astype(dtype)
    return weight, indices, offsets, weights


def assert_matches(gpu, cpu, dtype=np.float32):
    np.testing.assert_allclose(host(gpu), cpu, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_forward_matches_cpu(mode, index_dtype, rng):
    weight, indices, offsets, _ = make_case(rng, index_dtype=index_dtype)
    for options in ({}, {"padding_idx": 2}, {"padding_idx": -1}):
        expected = nbbag.embedding_bag(weight, indices, offsets, mode=mode, **options)
        out = nbbag.embedding_bag(
            cuda.to_device(weight), cuda.to_device(indices), offsets, mode=mode, **options
        )
        assert cuda.devicearray.is_cuda_ndarray(out)
        assert out.dtype == weight.dtype
        assert_matches(out, expected)
