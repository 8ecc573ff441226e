"""The sparse-vs-dense scaling sweep: one SGD step for the same batch as V grows.

V = 10**4, 10**5, 10**6, 10**7 (quick mode: up to 10**6), D = 64 float32, 4096 bags of
~50 Zipf(1.05) ids drawn over 10**4 distinct ids and mapped onto a fixed random sorted
set of 10**4 distinct rows of the table (``common.spread_ids``): the same distinct and
hot rows at every V, without the cache-set aliasing an even spread would cause.

Paths (``benchmarks/steps.py``): ``nbbag`` (step_fused), ``nbbag-grad`` (RowSparseGrad
then ``opt.step``), ``nbbag-scipy`` (``to_scipy()`` then ``opt.step``: its CSR row
pointer grows with V), ``dense`` (scatter-add into a (V, D) zero array + dense update:
grows with V), ``torch`` (sparse=True + SGD).  Group ``step-scaling``, V in extra_info.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.common import (
    NUM_BAGS,
    QUICK,
    bag_offsets,
    spread_ids,
    tiled_table,
    time_case,
    zipf_ranks,
)
from benchmarks.steps import MODE, StepBatch, make_step

NUM_DISTINCT = 10**4
SCALING_ROWS = (10**4, 10**5, 10**6) if QUICK else (10**4, 10**5, 10**6, 10**7)
BIG_ROWS = 10**7  # 2.56 GB of float32: the dense step takes seconds
PATHS = ("nbbag", "nbbag-grad", "nbbag-scipy", "torch", "dense")
RTOL, ATOL = 1e-4, 1e-6
SEED = 20240602

# V outermost: one table per V, dropped before the next one is built; the path varies
# fastest, so the paths of one V run back to back.
CASES = [
    pytest.param(v, path, id=f"op=step-scaling-V={v}-impl={path}")
    for v, path in itertools.product(SCALING_ROWS, PATHS)
]


class ScalingCases:
    """One table at a time and the same batch (ranks) in each, spread over its rows.
    The paths of one V share the table: a step's values do not change its cost."""

    def __init__(self, source: np.ndarray):
        self.source = source
        offsets = bag_offsets(NUM_BAGS)
        self.ranks = zipf_ranks(int(offsets[-1])) % NUM_DISTINCT
        self.offsets = offsets
        rng = np.random.default_rng(SEED)
        self.grad_output = rng.standard_normal((NUM_BAGS, source.shape[1]), np.float32)
        self.num_rows: int | None = None
        self.case: tuple[np.ndarray, StepBatch] | None = None

    def get(self, num_rows: int) -> tuple[np.ndarray, StepBatch]:
        """The table of ``num_rows`` rows and the batch spread over it."""
        if num_rows != self.num_rows:
            self.clear()
            ids = spread_ids(self.ranks, NUM_DISTINCT, num_rows)
            batch = StepBatch(ids, self.offsets, self.grad_output)
            self.case = (tiled_table(self.source, num_rows), batch)
            self.num_rows = num_rows
        return self.case

    def clear(self) -> None:
        """Drop the current table (the 10**7 one is 2.56 GB)."""
        self.case, self.num_rows = None, None


@pytest.fixture(scope="module")
def scaling_cases(forward_table):
    cases = ScalingCases(forward_table)
    yield cases
    cases.clear()


@pytest.mark.parametrize(("num_rows", "impl"), CASES)
def test_step_scaling(benchmark, request, scaling_cases, num_rows, impl):
    """The SGD step for one batch in a table of ``num_rows`` rows."""
    weight, batch = scaling_cases.get(num_rows)
    torch = request.getfixturevalue("torch_module") if impl == "torch" else None
    step = make_step(impl, batch, weight, "sgd", torch)

    before = weight[batch.rows]
    step()  # checked, outside the timed region; also the warm-up
    np.testing.assert_allclose(weight[batch.rows], batch.sgd_rows(before), RTOL, ATOL)

    benchmark.group = "step-scaling"
    benchmark.extra_info.update(
        impl=impl,
        op="step-scaling",
        opt="sgd",
        mode=MODE,
        dist="zipf",
        V=num_rows,
        num_bags=NUM_BAGS,
        num_ids=batch.ids.shape[0],
        dim=weight.shape[1],
        nnz_rows=batch.rows.shape[0],
    )
    cost = "fast"
    if impl == "dense":
        cost = "slowest" if num_rows >= BIG_ROWS else "slow"
    time_case(benchmark, step, cost)
