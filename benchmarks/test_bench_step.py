"""Training-step benchmarks: forward + backward + optimizer update, per optimizer,
against torch's sparse optimizers and a dense NumPy step (``benchmarks/steps.py``).

The forward's workload (V = 1M x D = 64 float32, 64-byte aligned, 4096 bags of ~50
Zipf(1.05) ids), mode "mean", a fixed random grad_output (B, D) standing in for dL/dout.
Every impl steps its own aligned copy of the table (a step changes it), made once per
test, outside the timed region.  Optimizers: SGD, SGD with momentum, Adagrad, row-wise
Adagrad (no torch peer), Adam (torch: SparseAdam).  FBGEMM's CPU TBE (``tbe``, with
PoolingMode.MEAN) for SGD, Adagrad and row-wise Adagrad (EXACT_SGD, EXACT_ADAGRAD,
EXACT_ROWWISE_ADAGRAD, fused into its backward), stepping its own copy of the table;
skipped where fbgemm_gpu cannot be imported (``benchmarks/tbe.py`` says how to install
it).

One step from the same starting table is checked first (it is also the warm-up, and
compiles nbbag's kernels): each impl's touched rows must match nbbag's, and no other
row may change.  Groups are ``step-{opt}-zipf``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.common import aligned_copy, time_case
from benchmarks.steps import (
    MODE,
    OPTS,
    TBE_OPTS,
    TORCH_OPTS,
    StepBatch,
    check_only_rows_changed,
    check_rows,
    make_step,
)

DIST = "zipf"
IMPLS = ("nbbag", "torch", "dense", "tbe")
PEER_OPTS = {"torch": TORCH_OPTS, "tbe": TBE_OPTS}  # the optimizers each peer has
SEED = 20240602  # the backward benchmark's grad_output

# impl varies fastest, so each nbbag case runs right before its peers: the two OpenMP
# runtimes and the machine's drift then hit both sides of a ratio alike.
CASES = [
    pytest.param(opt, impl, id=f"op=step-opt={opt}-dist={DIST}-impl={impl}")
    for opt, impl in itertools.product(OPTS, IMPLS)
    if opt in PEER_OPTS.get(impl, OPTS)
]


class StepCase:
    """The Zipf workload's batch, and per optimizer the rows one nbbag step from the
    table touches, after that step: the reference every impl's first step must match."""

    def __init__(self, workload):
        self.table = workload.table
        num_bags, dim = workload.starts.shape[0], workload.table.shape[1]
        rng = np.random.default_rng(SEED)
        grad_output = rng.standard_normal((num_bags, dim), dtype=np.float32)
        self.batch = StepBatch(workload.ids, workload.offsets, grad_output)
        self._expected: dict[str, np.ndarray] = {}

    def expected(self, opt: str) -> np.ndarray:
        """The batch's rows after one nbbag step with ``opt`` from the table."""
        if opt not in self._expected:
            weight = aligned_copy(self.table)
            make_step("nbbag", self.batch, weight, opt)()  # compiles or loads the cache
            self._expected[opt] = weight[self.batch.rows]
            del weight  # and the optimizer's state with it
        return self._expected[opt]


@pytest.fixture(scope="module")
def step_case(forward_workloads) -> StepCase:
    return StepCase(forward_workloads[DIST])


@pytest.mark.parametrize(("opt", "impl"), CASES)
def test_step(benchmark, request, step_case, opt, impl):
    batch = step_case.batch
    expected = step_case.expected(opt)
    weight = aligned_copy(step_case.table)  # this impl's own table, stepped in place
    torch = request.getfixturevalue("torch_module") if impl == "torch" else None
    if impl == "tbe":
        request.getfixturevalue("tbe_module")  # a skip without fbgemm_gpu
    step = make_step(impl, batch, weight, opt, torch)
    weight = getattr(step, "table", weight)  # TBE steps its own copy of the table

    # One step from the reference's starting table, checked outside the timed region;
    # it is also the warm-up (nbbag compiles or loads its kernels here).
    step()
    if impl == "nbbag":
        np.testing.assert_array_equal(weight[batch.rows], expected)  # deterministic
    else:
        check_rows(weight[batch.rows], expected)
    check_only_rows_changed(step_case.table, weight, batch.rows)

    benchmark.group = f"step-{opt}-{DIST}"
    benchmark.extra_info.update(
        impl=impl,
        op="step",
        opt=opt,
        mode=MODE,
        dist=DIST,
        V=weight.shape[0],
        num_bags=batch.starts.shape[0],
        num_ids=batch.ids.shape[0],
        dim=weight.shape[1],
        nnz_rows=batch.rows.shape[0],
    )
    time_case(benchmark, step, "slow" if impl == "dense" else "fast")
