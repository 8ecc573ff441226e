"""Collection benchmarks: 26 tables looked up and trained at once, a DLRM-like batch.

The tables have the Criteo-Kaggle cardinalities, each capped at 200,000 rows (1.48M rows
in all), D = 64 float32, one feature a table, mode sum; each feature's ids are Zipf(1.05)
folded into its table (``bag_ids``, a seed per table), in bags of exactly L ids: B =
2048 bags with L = 1 and 10, and B = 128 (the latency case) with L = 1 and 10.  A fixed
random grad_output (B, 26 * D) stands in for dL/dout.

Impls, each on its own copy of the tables (made per test, outside the timed region):

- ``nbbag``: one :class:`nbbag.EmbeddingBagCollection` (its 26 tables are one stack),
  ``coll(batch)``; a step is ``coll(batch); coll.step(grad_output)`` with the
  optimizer attached.
- ``nbbag-per-feature``: 26 calls of ``nbbag.embedding_bag_fwd`` and the outputs
  concatenated to (B, 26 * D); a step adds each table's optimizer's ``step_fused`` on
  its columns of grad_output.
- ``tbe``: FBGEMM's CPU table-batched embeddings (``benchmarks/tbe.py``), its forward
  under ``no_grad``; a step is its forward and the backward that applies the optimizer
  (skipped where fbgemm_gpu cannot be imported).

Groups: ``collection-forward-B{B}-L{L}`` and ``collection-step-{opt}-B{B}-L{L}`` for
SGD, row-wise Adagrad and Adagrad (learning rates and eps of ``benchmarks/steps.py``).
Every impl's first call is checked outside the timed region (it is also the warm-up):
the forward against per-table ``nbbag.embedding_bag``, a step's touched rows against
one ``nbbag-per-feature`` step from the same tables, and no other row may change.

``NBBAG_BENCH_QUICK=1``: tables capped at 10,000 rows, B = 256 and 16.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nbbag
from benchmarks.common import (
    QUICK,
    SEED,
    D,
    aligned_copy,
    aligned_table,
    bag_ids,
    time_case,
)
from benchmarks.steps import (
    ADAGRAD_EPS,
    LR,
    check_only_rows_changed,
    check_rows,
    nbbag_optimizer,
)

# Criteo Kaggle (Display Advertising Challenge): the 26 categorical features' cardinalities
CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
MAX_ROWS = 10_000 if QUICK else 200_000
ROWS = tuple(min(c, MAX_ROWS) for c in CARDINALITIES)
NAMES = tuple(f"C{t + 1}" for t in range(len(ROWS)))  # Criteo's column names
MODE = "sum"
DIST = "zipf"
BATCHES = ((256, 1), (256, 10), (16, 1), (16, 10)) if QUICK else (
    (2048, 1), (2048, 10), (128, 1), (128, 10)
)  # fmt: skip
OPS = ("forward", "sgd", "rowwise_adagrad", "adagrad")
IMPLS = ("nbbag", "nbbag-per-feature", "tbe")
FORWARD_RTOL, FORWARD_ATOL = 1e-4, 1e-4  # float32 sums in different orders

# Batches outermost (one batch's fixtures at a time), impl fastest: each nbbag case runs
# right before its peers, so the machine's drift hits both sides of a ratio alike.
CASES = [
    pytest.param(
        num_bags, bag_len, op, impl, id=f"op={op}-B={num_bags}-L={bag_len}-impl={impl}"
    )
    for (num_bags, bag_len), op, impl in itertools.product(BATCHES, OPS, IMPLS)
]


class CollectionBatch:
    """One batch of the 26 features: ids, bag starts, grad_output, touched rows."""

    def __init__(self, num_bags: int, bag_len: int):
        n = num_bags * bag_len
        self.ids = [
            bag_ids(DIST, n, rows, seed=SEED + 10 * t) for t, rows in enumerate(ROWS)
        ]
        self.starts = [np.arange(0, n, bag_len, dtype=np.int64) for _ in ROWS]
        rng = np.random.default_rng(SEED + num_bags + bag_len)
        self.grad_output = rng.standard_normal((num_bags, len(ROWS) * D), dtype=np.float32)
        self.rows = [np.unique(ids) for ids in self.ids]

    def features(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The collection's batch: {feature: (ids, starts)}."""
        return dict(zip(NAMES, zip(self.ids, self.starts, strict=True), strict=True))


class CollectionCase:
    """The initial tables, and per batch and optimizer the reference: the touched rows
    after one ``nbbag-per-feature`` step from the tables."""

    def __init__(self):
        self.tables = [aligned_table(rows, D, seed=SEED + t) for t, rows in enumerate(ROWS)]
        self.batches: dict[tuple[int, int], CollectionBatch] = {}
        self._forward: dict[tuple[int, int], np.ndarray] = {}
        self._stepped: dict[tuple[int, int, str], list[np.ndarray]] = {}

    def batch(self, num_bags: int, bag_len: int) -> CollectionBatch:
        key = (num_bags, bag_len)
        if key not in self.batches:  # one batch, and its references, at a time
            self.batches = {key: CollectionBatch(num_bags, bag_len)}
            self._forward, self._stepped = {}, {}
        return self.batches[key]

    def expected_forward(self, batch: CollectionBatch) -> np.ndarray:
        """The (B, 26 * D) output, from per-table ``nbbag.embedding_bag``."""
        key = (batch.starts[0].shape[0], batch.ids[0].shape[0])
        if key not in self._forward:
            outs = [
                nbbag.embedding_bag(table, ids, starts, mode=MODE)
                for table, ids, starts in zip(
                    self.tables, batch.ids, batch.starts, strict=True
                )
            ]
            self._forward[key] = np.concatenate(outs, axis=1)
        return self._forward[key]

    def expected_rows(self, batch: CollectionBatch, opt: str) -> list[np.ndarray]:
        """Each table's touched rows after one ``nbbag-per-feature`` step."""
        key = (batch.starts[0].shape[0], batch.ids[0].shape[0], opt)
        if key not in self._stepped:
            weights = [aligned_copy(table) for table in self.tables]
            per_feature_step(batch, weights, opt)()
            self._stepped[key] = [
                w[rows] for w, rows in zip(weights, batch.rows, strict=True)
            ]
        return self._stepped[key]


@pytest.fixture(scope="module")
def collection_case() -> CollectionCase:
    return CollectionCase()


# -- the impls: (call, the tables it updates) ----------------------------------------------
def collection_call(batch: CollectionBatch, tables, opt: str | None):
    """nbbag's collection over a copy of ``tables``; a forward, or a step with ``opt``."""
    configs = [
        nbbag.TableConfig(name, rows, D, mode=MODE)
        for name, rows in zip(NAMES, ROWS, strict=True)
    ]
    coll = nbbag.EmbeddingBagCollection(configs, dtype=np.float32, seed=0)
    for name, table in zip(NAMES, tables, strict=True):
        np.copyto(coll.weights[name], table)
    features, grad_output = batch.features(), batch.grad_output
    weights = [coll.weights[name] for name in NAMES]
    if opt is None:
        return (lambda: coll(features)), weights
    coll.attach(nbbag_optimizer(opt, coll))

    def step():
        out = coll(features)
        coll.step(grad_output)
        return out

    return step, weights


def per_feature_forward(batch: CollectionBatch, weights):
    """26 ``embedding_bag_fwd`` calls, the outputs side by side."""
    pairs = list(zip(weights, batch.ids, batch.starts, strict=True))

    def forward():
        outs = [nbbag.embedding_bag_fwd(w, ids, s, mode=MODE)[0] for w, ids, s in pairs]
        return np.concatenate(outs, axis=1)

    return forward


def per_feature_step(batch: CollectionBatch, weights, opt: str):
    """26 forwards and 26 ``step_fused`` calls, each on the table's columns of
    grad_output (a strided view: nbbag takes it as it is)."""
    optimizers = [nbbag_optimizer(opt, w) for w in weights]
    grad_output = batch.grad_output
    parts = [
        (w, ids, s, optimizer, grad_output[:, t * D : (t + 1) * D])
        for t, (w, ids, s, optimizer) in enumerate(
            zip(weights, batch.ids, batch.starts, optimizers, strict=True)
        )
    ]

    def step():
        outs = []
        for w, ids, s, optimizer, grad in parts:
            out, ctx = nbbag.embedding_bag_fwd(w, ids, s, mode=MODE)
            optimizer.step_fused(grad, ctx)
            outs.append(out)
        return np.concatenate(outs, axis=1)

    return step


def per_feature_call(batch: CollectionBatch, tables, opt: str | None):
    weights = [aligned_copy(table) for table in tables]
    if opt is None:
        return per_feature_forward(batch, weights), weights
    return per_feature_step(batch, weights, opt), weights


def tbe_call(tbe, batch: CollectionBatch, tables, opt: str | None):
    """FBGEMM's TBE over a copy of ``tables`` (a forward alone never applies its
    optimizer, SGD there)."""
    module = tbe.TBE(tables, opt or "sgd", lr=LR.get(opt, 0.01), eps=ADAGRAD_EPS, mode=MODE)
    indices, offsets = module.inputs(batch.ids, batch.starts)
    if opt is None:
        return (lambda: module.forward(indices, offsets).numpy()), module.weights
    grad_output = module.torch.from_numpy(batch.grad_output)
    return (lambda: module.step(indices, offsets, grad_output)), module.weights


@pytest.mark.parametrize(("num_bags", "bag_len", "op", "impl"), CASES)
def test_collection(benchmark, request, collection_case, num_bags, bag_len, op, impl):
    case = collection_case
    batch = case.batch(num_bags, bag_len)
    opt = None if op == "forward" else op
    if impl == "tbe":
        tbe = request.getfixturevalue("tbe_module")  # a skip without fbgemm_gpu
        call, weights = tbe_call(tbe, batch, case.tables, opt)
    elif impl == "nbbag":
        call, weights = collection_call(batch, case.tables, opt)
    else:
        call, weights = per_feature_call(batch, case.tables, opt)

    # The first call, checked outside the timed region: the warm-up too.
    out = call()
    if opt is None:
        expected = case.expected_forward(batch)
        np.testing.assert_allclose(
            np.asarray(out), expected, FORWARD_RTOL, FORWARD_ATOL, err_msg=impl
        )
    else:
        expected_rows = case.expected_rows(batch, opt)
        for t, weight in enumerate(weights):
            rows = batch.rows[t]
            if impl == "nbbag-per-feature":
                np.testing.assert_array_equal(weight[rows], expected_rows[t])
            else:
                check_rows(weight[rows], expected_rows[t])
            check_only_rows_changed(case.tables[t], weight, rows)

    group_op = "forward" if opt is None else f"step-{opt}"
    benchmark.group = f"collection-{group_op}-B{num_bags}-L{bag_len}"
    benchmark.extra_info.update(
        impl=impl,
        op=f"collection-{'forward' if opt is None else 'step'}",
        opt=opt,
        mode=MODE,
        dist=DIST,
        num_tables=len(ROWS),
        V=sum(ROWS),
        max_rows=MAX_ROWS,
        num_bags=num_bags,
        bag_len=bag_len,
        num_ids=num_bags * bag_len * len(ROWS),
        dim=D,
        nnz_rows=sum(rows.shape[0] for rows in batch.rows),
    )
    time_case(benchmark, call, "fast")
