"""The machine's large-copy bandwidth: the ceiling the forward's GB/s is read against.

A 1 GiB float32 array (256 MiB in quick mode) copied into another, both paged in
first: by a parallel Numba loop on the benchmark threads, and by ``np.copyto`` (one
thread).  Bandwidth counts bytes read + written, as the forward's does.  Group
``copy``; the report takes the faster impl's median.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from benchmarks.common import QUICK, time_case

NBYTES = (256 if QUICK else 1024) * 2**20
IMPLS = ("numba", "numpy")


@numba.njit(parallel=True)
def _parallel_copy(src, dst):
    """dst[:] = src[:], one contiguous chunk per thread.  Ownership: chunk c of dst."""
    num_chunks = numba.get_num_threads()
    chunk = (src.shape[0] + num_chunks - 1) // num_chunks
    for c in numba.prange(num_chunks):
        stop = min((c + 1) * chunk, src.shape[0])
        for i in range(c * chunk, stop):
            dst[i] = src[i]


@pytest.fixture(scope="module")
def copy_arrays():
    """A source and a destination of NBYTES each, every page touched."""
    src = np.ones(NBYTES // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    dst.fill(2.0)
    yield src, dst


@pytest.mark.parametrize("impl", IMPLS, ids=[f"op=copy-impl={i}" for i in IMPLS])
def test_copy(benchmark, copy_arrays, impl):
    src, dst = copy_arrays
    if impl == "numba":
        call = lambda: _parallel_copy(src, dst)  # noqa: E731
    else:
        call = lambda: np.copyto(dst, src)  # noqa: E731
    dst.fill(2.0)
    call()  # compiles outside the timed region
    assert np.array_equal(dst[:: 2**16], src[:: 2**16])

    benchmark.group = "copy"
    benchmark.extra_info.update(
        impl=impl,
        op="copy",
        nbytes=NBYTES,
        threads=numba.get_num_threads() if impl == "numba" else 1,
        bytes_moved=2 * NBYTES,  # read + written
    )
    time_case(benchmark, call)
