"""Forward benchmarks: nbbag against torch.nn.functional.embedding_bag and NumPy.

V = 1M x D float32 (D = 16, 64, 256; 64-byte aligned), 4096 bags of ~50 uniform or
Zipf(1.05) ids, the threads of ``benchmarks/common.py`` for each library.

- nbbag: ``nbbag.embedding_bag`` (validation included).
- torch: ``F.embedding_bag`` under ``inference_mode`` (no sqrtn mode: no case).
- dense: the NumPy baseline, ``np.add.reduceat`` (``np.maximum.reduceat`` for max) over
  ``weight[indices]``, scaled for mean and sqrtn.

Groups are ``forward-{mode}-D{D}-{dist}``; ``extra_info`` holds the bytes of rows read
and output written, from which the report computes GB/s.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nbbag
from benchmarks.common import DIMS, DISTS, V, Workload, aligned_table, time_case

MODES = ("sum", "mean", "max", "sqrtn")
IMPLS = ("nbbag", "torch", "dense")
RTOL, ATOL = 1e-4, 1e-4  # float32 sums in different orders


def _cases():
    # D outermost (one table at a time); impl fastest, so each nbbag case runs right
    # before its peers and the machine's drift hits both sides of a ratio alike.
    for dim, mode, dist, impl in itertools.product(DIMS, MODES, DISTS, IMPLS):
        if mode == "sqrtn" and impl == "torch":
            continue
        yield pytest.param(
            dim, mode, dist, impl, id=f"D={dim}-mode={mode}-dist={dist}-impl={impl}"
        )


CASES = list(_cases())


class TablesByDim:
    """The forward workloads for one D at a time (the D = 256 table is 1 GB)."""

    def __init__(self, workloads: dict[str, Workload]):
        self.ids = {dist: w.ids for dist, w in workloads.items()}
        self.offsets = next(iter(workloads.values())).offsets
        self.dim: int | None = None
        self.workloads: dict[str, Workload] = {}

    def get(self, dim: int, dist: str) -> Workload:
        if dim != self.dim:
            self.workloads = {}
            table = aligned_table(V, dim)
            self.workloads = {
                d: Workload(table, ids, self.offsets) for d, ids in self.ids.items()
            }
            self.dim = dim
        return self.workloads[dist]


@pytest.fixture(scope="module")
def tables_by_dim(forward_workloads):
    tables = TablesByDim(forward_workloads)
    yield tables
    tables.workloads = {}


def _nbbag_call(workload, mode):
    table, ids, starts = workload.table, workload.ids, workload.starts
    return lambda: nbbag.embedding_bag(table, ids, starts, mode=mode)


def _torch_call(torch, workload, mode):
    # from_numpy shares memory (and the table's alignment); converting here keeps the
    # timed region to the call itself.
    table = torch.from_numpy(workload.table)
    ids = torch.from_numpy(workload.ids)
    starts = torch.from_numpy(workload.starts)
    embedding_bag = torch.nn.functional.embedding_bag

    def call():
        with torch.inference_mode():
            return embedding_bag(ids, table, starts, mode=mode).numpy()

    return call


def _dense_call(workload, mode):
    table, ids, starts = workload.table, workload.ids, workload.starts
    lengths = np.diff(workload.offsets).astype(np.float32)[:, None]
    assert lengths.min() > 0  # reduceat gives the next row for an empty bag
    reduce = np.maximum.reduceat if mode == "max" else np.add.reduceat
    scale = {"mean": 1.0 / lengths, "sqrtn": 1.0 / np.sqrt(lengths)}.get(mode)

    def call():
        out = reduce(table[ids], starts, axis=0)
        if scale is not None:
            out *= scale
        return out

    return call


def _make_call(request, workload, mode, impl):
    if impl == "nbbag":
        return _nbbag_call(workload, mode)
    if impl == "torch":
        return _torch_call(request.getfixturevalue("torch_module"), workload, mode)
    return _dense_call(workload, mode)


@pytest.mark.parametrize(("dim", "mode", "dist", "impl"), CASES)
def test_forward(benchmark, request, tables_by_dim, dim, mode, dist, impl):
    workload = tables_by_dim.get(dim, dist)
    call = _make_call(request, workload, mode, impl)
    out = call()  # compiles (or loads from the cache) outside the timed region
    if impl != "nbbag":
        expected = nbbag.embedding_bag(
            workload.table, workload.ids, workload.starts, mode=mode
        )
        np.testing.assert_allclose(out, expected, RTOL, ATOL)

    num_bags, num_ids = workload.starts.shape[0], workload.ids.shape[0]
    row_bytes = dim * workload.table.itemsize
    benchmark.group = f"forward-{mode}-D{dim}-{dist}"
    benchmark.extra_info.update(
        impl=impl,
        op="forward",
        mode=mode,
        dist=dist,
        dim=dim,
        V=workload.table.shape[0],
        num_bags=num_bags,
        num_ids=num_ids,
        bytes_moved=(num_ids + num_bags) * row_bytes,  # rows read + output written
    )
    time_case(benchmark, call, "slow" if impl == "dense" and dim == 256 else "fast")
