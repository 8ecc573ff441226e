"""Backward benchmarks: nbbag's row-sparse gradient against torch and a dense NumPy one.

The forward's workload (V = 1M x D = 64 float32, 64-byte aligned, 4096 bags of ~50
Zipf(1.05) ids), mode "mean", a fixed random grad_output (B, D); 2 threads each.

- nbbag: ``embedding_bag_bwd(grad_output, ctx)``, ctx from one forward (it is reusable).
- torch: ``out.backward(grad_output)`` after ``F.embedding_bag(..., sparse=True)``; the
  forward runs before each round, outside the timed region.
- dense: what a NumPy user would write, ``np.zeros((V, D))`` + ``np.add.at`` of the
  scaled rows of grad_output (the bag of each id and 1 / bag length precomputed).

Group ``to_scipy``: the cost of ``RowSparseGrad.to_scipy()`` (CSR) for the same rows and
values in a table of V = 1M and 10M rows (its index pointer is O(V)).

Run with ``pytest benchmarks/test_bench_backward.py --benchmark-json=out.json`` and
summarise with ``python benchmarks/ratios.py out.json``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nbbag
from benchmarks.common import time_case
from nbbag import RowSparseGrad

MODE = "mean"
DISTS = ("zipf",)
IMPLS = ("nbbag", "torch", "dense")
SCIPY_ROWS = (1_000_000, 10_000_000)
RTOL, ATOL = 1e-4, 1e-5  # float32 sums in different orders
SEED = 20240602

# impl varies fastest, so each nbbag case runs right before its peers: the two OpenMP
# runtimes and the machine's drift then hit both sides of a ratio alike.
CASES = [
    pytest.param(dist, impl, id=f"op=backward-dist={dist}-impl={impl}")
    for dist, impl in itertools.product(DISTS, IMPLS)
]
SCIPY_CASES = [pytest.param(v, id=f"op=to_scipy-V={v}") for v in SCIPY_ROWS]


class BackwardCase:
    """A workload with its grad_output, the forward's context and nbbag's gradient."""

    def __init__(self, workload):
        self.workload = workload
        num_bags, dim = workload.starts.shape[0], workload.table.shape[1]
        rng = np.random.default_rng(SEED)
        self.grad_output = rng.standard_normal((num_bags, dim), dtype=np.float32)
        _, self.ctx = nbbag.embedding_bag_fwd(
            workload.table, workload.ids, workload.starts, mode=MODE
        )
        # Compiles the backward; the peers' results are checked against this gradient.
        self.grad = nbbag.embedding_bag_bwd(self.grad_output, self.ctx)


@pytest.fixture(scope="module")
def backward_cases(forward_workloads) -> dict[str, BackwardCase]:
    return {dist: BackwardCase(forward_workloads[dist]) for dist in DISTS}


def _nbbag_call(case):
    grad_output, ctx = case.grad_output, case.ctx
    return lambda: nbbag.embedding_bag_bwd(grad_output, ctx)


def _torch_call(torch, case):
    """``(setup, target)``: setup runs a fresh forward, target only its backward."""
    workload = case.workload
    weight = torch.from_numpy(workload.table).requires_grad_()
    ids = torch.from_numpy(workload.ids)
    starts = torch.from_numpy(workload.starts)
    grad_output = torch.from_numpy(case.grad_output)
    embedding_bag = torch.nn.functional.embedding_bag

    def setup():
        weight.grad = None
        out = embedding_bag(ids, weight, starts, mode=MODE, sparse=True)
        return (out,), {}

    def target(out):
        out.backward(grad_output)
        return weight.grad

    return setup, target


def _dense_call(case):
    workload = case.workload
    ids, grad_output = workload.ids, case.grad_output
    num_rows, dim = workload.table.shape
    lengths = np.diff(workload.offsets)
    bag_of_token = np.repeat(np.arange(lengths.shape[0]), lengths)
    coefficients = np.repeat((1.0 / lengths).astype(np.float32), lengths)  # mean

    def call():
        grad = np.zeros((num_rows, dim), dtype=np.float32)
        np.add.at(grad, ids, coefficients[:, None] * grad_output[bag_of_token])
        return grad

    return call


def _check_torch(grad, torch_grad):
    torch_grad = torch_grad.coalesce()
    np.testing.assert_array_equal(torch_grad.indices()[0].numpy(), grad.rows)
    np.testing.assert_allclose(torch_grad.values().numpy(), grad.values, RTOL, ATOL)


def _check_dense(grad, dense):
    listed = dense[grad.rows]
    np.testing.assert_allclose(listed, grad.values, RTOL, ATOL)
    # Zero off the listed rows: every non-zero of the table lies in a listed row.
    assert np.count_nonzero(dense) == np.count_nonzero(listed)


@pytest.mark.parametrize(("dist", "impl"), CASES)
def test_backward(benchmark, request, backward_cases, dist, impl):
    case = backward_cases[dist]
    workload = case.workload
    setup, cost = None, "fast"
    # Each call's result is checked once, outside the timed region, which also warms up.
    if impl == "nbbag":
        call = _nbbag_call(case)
        grad = call()
        np.testing.assert_array_equal(grad.rows, case.grad.rows)
        np.testing.assert_array_equal(grad.values, case.grad.values)  # deterministic
    elif impl == "torch":
        setup, call = _torch_call(request.getfixturevalue("torch_module"), case)
        args, _ = setup()
        _check_torch(case.grad, call(*args))
    else:
        call = _dense_call(case)
        _check_dense(case.grad, call())
        cost = "slow"  # np.add.at over a 1M x 64 table takes ~0.2-0.3 s a call

    benchmark.group = f"backward-{dist}"
    benchmark.extra_info.update(
        impl=impl,
        mode=MODE,
        dist=dist,
        num_bags=workload.starts.shape[0],
        num_ids=workload.ids.shape[0],
        dim=workload.table.shape[1],
        nnz_rows=case.grad.nnz_rows,
    )
    time_case(benchmark, call, cost, setup=setup)


@pytest.mark.parametrize("num_rows", SCIPY_CASES)
def test_to_scipy(benchmark, backward_cases, num_rows):
    grad = backward_cases["zipf"].grad
    dim = grad.shape[1]
    sparse_grad = RowSparseGrad(grad.rows, grad.values, (num_rows, dim))
    call = sparse_grad.to_scipy
    csr = call()  # outside the timed region, like every other case
    assert csr.shape == (num_rows, dim) and csr.nnz == grad.nnz_rows * dim
    assert np.shares_memory(csr.data, grad.values)

    benchmark.group = "to_scipy"
    benchmark.extra_info.update(
        impl="nbbag", format="csr", V=num_rows, dim=dim, nnz_rows=grad.nnz_rows
    )
    time_case(benchmark, call)


@pytest.mark.parametrize(
    "num_rows", [pytest.param(v, id=f"op=backward-V={v}") for v in SCIPY_ROWS]
)
def test_backward_does_not_grow_with_v(benchmark, forward_workloads, num_rows):
    """The same batch's backward in a table of V = 1M and 10M rows: the RowSparseGrad
    path costs O(batch), whatever V.  The 10M table is np.empty: only the rows the batch
    looks up are ever paged in, and the mean backward never reads the table's values."""
    workload = forward_workloads["zipf"]
    dim = workload.table.shape[1]
    table = (
        workload.table
        if num_rows == workload.table.shape[0]
        else np.empty((num_rows, dim), dtype=np.float32)
    )
    grad_output = np.random.default_rng(SEED).standard_normal(
        (workload.starts.shape[0], dim), dtype=np.float32
    )
    _, ctx = nbbag.embedding_bag_fwd(table, workload.ids, workload.starts, mode=MODE)
    grad = nbbag.embedding_bag_bwd(grad_output, ctx)  # outside the timed region
    assert grad.shape == (num_rows, dim)

    benchmark.group = "backward-V"
    benchmark.extra_info.update(impl="nbbag", V=num_rows, dim=dim, nnz_rows=grad.nnz_rows)
    time_case(benchmark, lambda: nbbag.embedding_bag_bwd(grad_output, ctx))
