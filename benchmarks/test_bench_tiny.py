"""Tiny-batch benchmarks: what one call costs when the batch is a handful of bags.

V = 100,000 x D = 64 float32 (64-byte aligned), B = 1 or 32 bags of exactly 20 uniform
int64 ids each, mode "sum"; the threads of ``benchmarks/common.py`` for each library.
Here the work is a few microseconds and the call's fixed cost (validation, dispatch,
allocation) is most of the time.

- ``tiny-forward-B{B}``: nbbag's ``embedding_bag`` against ``F.embedding_bag`` under
  ``inference_mode`` (entered once, outside the timed region: entering it costs about
  as much as the whole call at B = 1).  The outputs are checked to agree first.
- ``tiny-step-B{B}``: a training step with Adagrad (lr 0.1): nbbag's
  ``embedding_bag_fwd`` + ``step_fused`` against ``F.embedding_bag(..., sparse=True)``,
  ``backward`` and ``torch.optim.Adagrad``, each on its own aligned copy of the table,
  with a fixed random grad_output (B, D).  One step from the same table is checked
  first: the touched rows must agree.

One call is below the timer's resolution, so a round is a loop of calls (about
``ROUND_SECONDS``); ``extra_info["calls_per_round"]`` holds its length and the report
divides each round's median by it.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest

import nbbag
from benchmarks.common import (
    TINY_BAG_COUNTS,
    TINY_V,
    D,
    TinyBatch,
    aligned_copy,
    aligned_table,
    calls_per_round,
    time_calls,
)

MODE = "sum"
LR = 0.1
IMPLS = ("nbbag", "torch")
ROUND_SECONDS = 1e-3
RTOL, ATOL = 1e-5, 1e-5  # a bag of 20 float32 rows, summed in different orders
STEP_RTOL, STEP_ATOL = 1e-4, 1e-5  # Adagrad's first step: lr * g / |g|, g summed


# impl varies fastest, so each nbbag case runs right before its torch peer: the two
# OpenMP runtimes and the machine's drift then hit both sides of a ratio alike.
def _cases(op: str) -> list:
    return [
        pytest.param(num_bags, impl, id=f"op=tiny-{op}-B={num_bags}-impl={impl}")
        for num_bags, impl in itertools.product(TINY_BAG_COUNTS, IMPLS)
    ]


@pytest.fixture(scope="module")
def tiny_table() -> np.ndarray:
    """The V = 100k x D = 64 float32 table, 64-byte aligned."""
    return aligned_table(TINY_V, D)


def nbbag_forward(table: np.ndarray, batch: TinyBatch):
    """One nbbag forward call of ``batch``."""
    ids, starts = batch.ids, batch.starts
    return lambda: nbbag.embedding_bag(table, ids, starts, mode=MODE)


def torch_forward(torch, table: np.ndarray, batch: TinyBatch):
    """One torch forward call of ``batch`` (the caller enters ``inference_mode``)."""
    table_t, ids_t, starts_t = map(torch.from_numpy, (table, batch.ids, batch.starts))
    embedding_bag = torch.nn.functional.embedding_bag
    return lambda: embedding_bag(ids_t, table_t, starts_t, mode=MODE)


def nbbag_step(weight: np.ndarray, batch: TinyBatch):
    """One nbbag training step (forward + fused Adagrad update) over ``weight``."""
    opt = nbbag.optim.Adagrad(weight, lr=LR)
    ids, starts, grad_output = batch.ids, batch.starts, batch.grad_output

    def step():
        out, ctx = nbbag.embedding_bag_fwd(weight, ids, starts, mode=MODE)
        opt.step_fused(grad_output, ctx)
        return out

    return step


def torch_step(torch, weight: np.ndarray, batch: TinyBatch):
    """One torch training step (sparse forward, backward, Adagrad) over ``weight``."""
    param = torch.nn.Parameter(torch.from_numpy(weight))
    assert param.data_ptr() == weight.ctypes.data  # steps ``weight`` in place
    optimizer = torch.optim.Adagrad([param], lr=LR)
    ids, starts, grad_output = map(
        torch.from_numpy, (batch.ids, batch.starts, batch.grad_output)
    )
    embedding_bag = torch.nn.functional.embedding_bag

    def step():
        out = embedding_bag(ids, param, starts, mode=MODE, sparse=True)
        optimizer.zero_grad()
        out.backward(grad_output)
        optimizer.step()
        return out

    return step


def _record(benchmark, op: str, batch: TinyBatch, impl: str) -> None:
    num_bags = batch.starts.shape[0]
    benchmark.group = f"tiny-{op}-B{num_bags}"
    benchmark.extra_info.update(
        impl=impl,
        op=f"tiny-{op}",
        mode=MODE,
        dist="uniform",
        dim=D,
        V=TINY_V,
        num_bags=num_bags,
        num_ids=batch.ids.shape[0],
    )


@pytest.mark.parametrize(("num_bags", "impl"), _cases("forward"))
def test_tiny_forward(benchmark, request, tiny_table, num_bags, impl):
    batch = TinyBatch(num_bags)
    context = contextlib.nullcontext()
    if impl == "nbbag":
        call = nbbag_forward(tiny_table, batch)
    else:
        torch = request.getfixturevalue("torch_module")
        call, context = torch_forward(torch, tiny_table, batch), torch.inference_mode()
    with context:
        out = np.asarray(call())  # compiles (or loads from the cache) outside the timing
        expected = nbbag.embedding_bag(tiny_table, batch.ids, batch.starts, mode=MODE)
        np.testing.assert_allclose(out, expected, RTOL, ATOL)
        _record(benchmark, "forward", batch, impl)
        time_calls(benchmark, call, calls_per_round(call, ROUND_SECONDS))


@pytest.mark.parametrize(("num_bags", "impl"), _cases("step"))
def test_tiny_step(benchmark, request, tiny_table, num_bags, impl):
    torch = request.getfixturevalue("torch_module") if impl == "torch" else None
    batch = TinyBatch(num_bags)
    reference = aligned_copy(tiny_table)
    nbbag_step(reference, batch)()  # compiles (or loads from the cache)
    weight = aligned_copy(tiny_table)  # this impl's own table, stepped in place
    step = nbbag_step(weight, batch) if torch is None else torch_step(torch, weight, batch)

    step()  # one step from the reference's starting table, checked; also the warm-up
    rows = batch.rows
    np.testing.assert_allclose(weight[rows], reference[rows], STEP_RTOL, STEP_ATOL)
    changed = np.flatnonzero((weight != tiny_table).any(axis=1))
    assert np.isin(changed, rows).all(), "a row without a gradient changed"
    _record(benchmark, "step", batch, impl)
    benchmark.extra_info.update(opt="adagrad", nnz_rows=rows.shape[0])
    time_calls(benchmark, step, calls_per_round(step, ROUND_SECONDS))
