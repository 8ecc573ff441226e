"""Training-step benchmarks: forward + backward + optimizer update, against torch and a
dense NumPy step.

The forward's workload (V = 1M x D = 64 float32, 64-byte aligned, 4096 bags of ~50
Zipf(1.05) ids), mode "mean", a fixed random grad_output (B, D) standing in for dL/dout;
2 threads each.  Every impl steps its own aligned copy of the table (a step changes it),
made once per test, outside the timed region.

- nbbag: ``embedding_bag_fwd`` then ``opt.step_fused(grad_output, ctx)`` with
  ``nbbag.optim.SGD(lr=0.01)`` / ``nbbag.optim.Adam(lr=1e-3)``.
- torch: ``F.embedding_bag(..., sparse=True)``, ``zero_grad``, ``backward``, ``step``
  with ``torch.optim.SGD`` / ``torch.optim.SparseAdam`` over an ``nn.Parameter`` that
  shares the copy's memory.
- dense: what a NumPy user writes without nbbag: the mean by ``np.add.reduceat``, the
  gradient by ``np.zeros((V, D))`` + ``np.add.at``, then a dense update of every row
  (for Adam, Adam on the whole table and its two moments).

One step from the same starting table is checked first (it is also the warm-up, and
compiles nbbag's kernels): each impl's touched rows must match nbbag's, and no other row
may change.

Group ``step-scaling``: the SGD step as the table grows, V = 10**4 ... 10**7, for the
same batch (ids modulo 10**4, spread evenly over the table: the same distinct and hot
rows at every V).  nbbag and torch touch only the batch's rows; the dense step
allocates, reads and writes all V rows.

Run with ``pytest benchmarks/test_bench_step.py --benchmark-json=out.json`` and
summarise with ``python benchmarks/ratios.py out.json``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import nbbag
from nbbag._memory import ALIGNMENT, aligned_empty

MODE = "mean"
DIST = "zipf"
OPTS = ("sgd", "adam")
IMPLS = ("nbbag", "torch", "dense")
SGD_LR = 0.01
ADAM_LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8  # nbbag's and torch's defaults
ROUNDS = 50
DENSE_ROUNDS = 3  # a dense step over a 1M x 64 table takes ~0.3-1 s
WARMUP_ROUNDS = 3
DENSE_WARMUP_ROUNDS = 1
SCALING_ROWS = (10**4, 10**5, 10**6, 10**7)
BIG_ROWS = 10**7  # 2.56 GB of float32: the dense step takes seconds
BIG_DENSE_ROUNDS = 2
BIG_DENSE_WARMUP_ROUNDS = 0  # the checked step has paged the table in already
RTOL, ATOL = 1e-4, 1e-6  # float32 sums in different orders, scaled by the step size
SEED = 20240602  # the backward benchmark's grad_output

# impl varies fastest, so each nbbag case runs right before its peers: the two OpenMP
# runtimes and the machine's drift then hit both sides of a ratio alike.
CASES = [
    pytest.param(opt, impl, id=f"op=step-opt={opt}-dist={DIST}-impl={impl}")
    for opt, impl in itertools.product(OPTS, IMPLS)
]
# V outermost: one table per V, dropped before the next one is built.
SCALING_CASES = [
    pytest.param(v, impl, id=f"op=step-scaling-V={v}-impl={impl}")
    for v, impl in itertools.product(SCALING_ROWS, IMPLS)
]


def _aligned_empty(num_rows: int, dim: int) -> np.ndarray:
    """An uninitialised (num_rows, dim) float32 table, 64-byte aligned like conftest's
    (an unaligned table slows both libraries down; MEASURED.md, "Alignment")."""
    table = aligned_empty((num_rows, dim), np.float32)
    assert table.ctypes.data % ALIGNMENT == 0 and table.flags.c_contiguous
    return table


def _aligned_copy(table: np.ndarray) -> np.ndarray:
    copy = _aligned_empty(*table.shape)
    np.copyto(copy, table)
    return copy


def _tiled_table(source: np.ndarray, num_rows: int) -> np.ndarray:
    """A (num_rows, D) aligned table filled with ``source``'s rows, repeated: cheap,
    deterministic, and the same values as the 1M table where they overlap."""
    table = _aligned_empty(num_rows, source.shape[1])
    for start in range(0, num_rows, source.shape[0]):
        stop = min(start + source.shape[0], num_rows)
        table[start:stop] = source[: stop - start]
    return table


class StepBatch:
    """One batch: ids, bag starts, a fixed grad_output, and what the dense step and the
    checks precompute (the bag of each id, its mean coefficient, the distinct rows)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, grad_output: np.ndarray):
        self.ids = ids
        self.offsets = offsets
        self.starts = offsets[:-1]
        self.grad_output = grad_output
        lengths = np.diff(offsets)
        assert lengths.min() > 0  # np.add.reduceat gives the next row for an empty bag
        self.inverse_lengths = (1.0 / lengths).astype(np.float32)
        self.bag_of_token = np.repeat(np.arange(lengths.shape[0]), lengths)
        self.coefficients = np.repeat(self.inverse_lengths, lengths)  # mean
        self.rows, self.row_of_token = np.unique(ids, return_inverse=True)

    def sgd_rows(self, before: np.ndarray) -> np.ndarray:
        """The touched rows after one SGD step from ``before`` (their old values),
        with the gradient summed in float64: the scaling group's reference."""
        contributions = self.grad_output[self.bag_of_token].astype(np.float64)
        contributions *= self.coefficients[:, None]
        grad = np.zeros(before.shape, dtype=np.float64)
        np.add.at(grad, self.row_of_token, contributions)
        return before - SGD_LR * grad


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
        if opt not in self._expected:
            weight = _aligned_copy(self.table)
            _nbbag_step(self.batch, weight, opt)()  # compiles, or loads from the cache
            self._expected[opt] = weight[self.batch.rows]
            del weight  # and the optimizer's state with it
        return self._expected[opt]


@pytest.fixture(scope="module")
def step_case(forward_workloads) -> StepCase:
    return StepCase(forward_workloads[DIST])


class ScalingCases:
    """One table at a time, and the same batch in each: its ids taken modulo the
    smallest V, then spread evenly over the table (id * (V // smallest V)), so every V
    sees the same number of distinct rows and hot rows.  The impls of one V share the
    table (a step's values do not change its cost); asking for another V drops the
    previous table first."""

    def __init__(self, source: np.ndarray, batch: StepBatch):
        self.source = source
        self.batch = batch
        self.num_rows: int | None = None
        self.case: tuple[np.ndarray, StepBatch] | None = None

    def get(self, num_rows: int) -> tuple[np.ndarray, StepBatch]:
        if num_rows != self.num_rows:
            self.clear()
            batch = self.batch
            spread = num_rows // min(SCALING_ROWS)
            remapped = StepBatch(
                (batch.ids % min(SCALING_ROWS)) * spread, batch.offsets, batch.grad_output
            )
            self.case = (_tiled_table(self.source, num_rows), remapped)
            self.num_rows = num_rows
        return self.case

    def clear(self) -> None:
        self.case, self.num_rows = None, None


@pytest.fixture(scope="module")
def scaling_cases(forward_table, step_case):
    cases = ScalingCases(forward_table, step_case.batch)
    yield cases
    cases.clear()  # the 10**7 table is 2.56 GB


def _nbbag_optimizer(opt: str, weight: np.ndarray):
    if opt == "sgd":
        return nbbag.optim.SGD(weight, lr=SGD_LR)
    return nbbag.optim.Adam(weight, lr=ADAM_LR, betas=BETAS, eps=EPS)


def _torch_optimizer(torch, opt: str, param):
    if opt == "sgd":
        return torch.optim.SGD([param], lr=SGD_LR)
    return torch.optim.SparseAdam([param], lr=ADAM_LR, betas=BETAS, eps=EPS)


def _nbbag_step(batch: StepBatch, weight: np.ndarray, opt: str):
    optimizer = _nbbag_optimizer(opt, weight)
    ids, starts, grad_output = batch.ids, batch.starts, batch.grad_output

    def step():
        out, ctx = nbbag.embedding_bag_fwd(weight, ids, starts, mode=MODE)
        optimizer.step_fused(grad_output, ctx)
        return out

    return step


def _torch_step(torch, batch: StepBatch, weight: np.ndarray, opt: str):
    # The parameter shares the copy's memory (and alignment): the checks read the copy.
    param = torch.nn.Parameter(torch.from_numpy(weight))
    assert param.data_ptr() == weight.ctypes.data
    optimizer = _torch_optimizer(torch, opt, param)
    ids = torch.from_numpy(batch.ids)
    starts = torch.from_numpy(batch.starts)
    grad_output = torch.from_numpy(batch.grad_output)
    embedding_bag = torch.nn.functional.embedding_bag

    def step():
        out = embedding_bag(ids, param, starts, mode=MODE, sparse=True)
        optimizer.zero_grad()
        out.backward(grad_output)
        optimizer.step()
        return out

    return step


def _dense_sgd_update(weight, grad, step):
    weight -= SGD_LR * grad


def _dense_adam_update(weight, grad, exp_avg, exp_avg_sq, step):
    """Adam on every row (a row without a gradient still moves with its moments), eps
    added as torch's SparseAdam and nbbag's Adam add it, to sqrt(v) before the bias
    correction: with it after, the textbook's way, rows whose gradient is near 0
    (|g| ~ 1e-5) step differently and the first step could not be checked."""
    beta1, beta2 = BETAS
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    step_size = ADAM_LR * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    weight -= step_size * exp_avg / (np.sqrt(exp_avg_sq) + EPS)


def _dense_step(batch: StepBatch, weight: np.ndarray, opt: str):
    ids, starts, grad_output = batch.ids, batch.starts, batch.grad_output
    inverse_lengths, bag_of_token = batch.inverse_lengths[:, None], batch.bag_of_token
    coefficients = batch.coefficients[:, None]
    # The optimizer's state, allocated once like the other impls' (zero pages until the
    # first step writes them).
    state = () if opt == "sgd" else (np.zeros_like(weight), np.zeros_like(weight))
    update = _dense_sgd_update if opt == "sgd" else _dense_adam_update
    step_count = 0

    def step():
        nonlocal step_count
        step_count += 1
        out = np.add.reduceat(weight[ids], starts, axis=0) * inverse_lengths
        grad = np.zeros_like(weight)
        np.add.at(grad, ids, coefficients * grad_output[bag_of_token])
        update(weight, grad, *state, step_count)
        return out

    return step


def _make_step(request, impl: str, batch: StepBatch, weight: np.ndarray, opt: str):
    if impl == "nbbag":
        return _nbbag_step(batch, weight, opt)
    if impl == "torch":
        torch = request.getfixturevalue("torch_module")
        return _torch_step(torch, batch, weight, opt)
    return _dense_step(batch, weight, opt)


def _check_only_rows_changed(before: np.ndarray, after: np.ndarray, rows: np.ndarray):
    changed = np.flatnonzero((after != before).any(axis=1))
    assert np.isin(changed, rows).all(), "a row without a gradient changed"


@pytest.mark.parametrize(("opt", "impl"), CASES)
def test_step(benchmark, request, step_case, opt, impl):
    batch = step_case.batch
    expected = step_case.expected(opt)
    weight = _aligned_copy(step_case.table)  # this impl's own table, stepped in place
    step = _make_step(request, impl, batch, weight, opt)

    # One step from the reference's starting table, checked outside the timed region;
    # it is also the warm-up (nbbag compiles or loads its kernels here).
    step()
    if impl == "nbbag":
        np.testing.assert_array_equal(weight[batch.rows], expected)  # deterministic
    else:
        np.testing.assert_allclose(weight[batch.rows], expected, RTOL, ATOL)
    _check_only_rows_changed(step_case.table, weight, batch.rows)

    _time_step(benchmark, step, f"step-{opt}-{DIST}", impl, opt, batch, weight)


@pytest.mark.parametrize(("num_rows", "impl"), SCALING_CASES)
def test_step_scaling(benchmark, request, scaling_cases, num_rows, impl):
    """The SGD step for one batch in tables of 10**4 to 10**7 rows."""
    weight, batch = scaling_cases.get(num_rows)
    step = _make_step(request, impl, batch, weight, "sgd")

    before = weight[batch.rows]
    step()  # checked, outside the timed region; also the warm-up
    np.testing.assert_allclose(weight[batch.rows], batch.sgd_rows(before), RTOL, ATOL)

    _time_step(benchmark, step, "step-scaling", impl, "sgd", batch, weight, V=num_rows)


def _time_step(benchmark, step, group, impl, opt, batch, weight, **extra_info):
    """Time ``step`` in ``group``: fewer rounds for the slow dense step (fewest on the
    largest tables), and the batch's sizes in extra_info."""
    rounds, warmup_rounds = ROUNDS, WARMUP_ROUNDS
    if impl == "dense":
        rounds, warmup_rounds = DENSE_ROUNDS, DENSE_WARMUP_ROUNDS
        if weight.shape[0] >= BIG_ROWS:
            rounds, warmup_rounds = BIG_DENSE_ROUNDS, BIG_DENSE_WARMUP_ROUNDS
    benchmark.group = group
    benchmark.extra_info.update(
        impl=impl,
        opt=opt,
        mode=MODE,
        dist=DIST,
        num_bags=batch.starts.shape[0],
        num_ids=batch.ids.shape[0],
        dim=weight.shape[1],
        nnz_rows=batch.rows.shape[0],
        **extra_info,
    )
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
