"""A learning-rate schedule's cost: the fused SGD step with the learning rate fixed
against the same step with the learning rate set before every step (fastText's linear
decay), on a table far larger than the batch.

V = 10**7 (quick mode: 10**6), D = 64 float32, the scaling sweep's batch (4096 bags of
~50 Zipf(1.05) ids over 10**4 distinct rows, ``common.spread_ids``).  Paths: ``fixed``
and ``per-step``, for plain SGD and SGD with momentum 0.9 (``opt.catch_up(ids)`` before
the forward, as ``EmbeddingBag.attach`` does).  Setting a hyperparameter is O(1): the
optimizer logs each step's values, and a row skipped for k steps of any schedule is
caught up in O(log k) (the log holds ``SCHEDULE_RUNS`` runs; a full log costs one
flush of the table, which a run this short never reaches).  Group ``step-schedule``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import nbbag
from benchmarks import common

NUM_ROWS = 10**6 if common.QUICK else 10**7
NUM_DISTINCT = 10**4
LR, MOMENTUM = 0.01, 0.9
DECAY_STEPS = 10**6  # the schedule's length: lr goes from LR to 0 over it
SEED = 20240602
SCHEDULES = ("fixed", "per-step")
OPTS = ("sgd", "momentum")

CASES = [
    pytest.param(opt, schedule, id=f"op=step-schedule-opt={opt}-impl={schedule}")
    for opt, schedule in itertools.product(OPTS, SCHEDULES)
]


@pytest.fixture(scope="module")
def schedule_case(forward_table):
    offsets = common.bag_offsets(common.NUM_BAGS)
    ranks = common.zipf_ranks(int(offsets[-1])) % NUM_DISTINCT
    ids = common.spread_ids(ranks, NUM_DISTINCT, NUM_ROWS)
    rng = np.random.default_rng(SEED)
    grad_output = rng.standard_normal((common.NUM_BAGS, forward_table.shape[1]), np.float32)
    table = common.tiled_table(forward_table, NUM_ROWS)
    yield table, ids, offsets[:-1], grad_output
    del table


def make_step(table, ids, starts, grad_output, opt: str, schedule: str):
    momentum = MOMENTUM if opt == "momentum" else 0.0
    optimizer = nbbag.optim.SGD(table, lr=LR, momentum=momentum)
    count = [0]

    def step():
        if schedule == "per-step":
            optimizer.lr = LR * (1 - count[0] / DECAY_STEPS)
            count[0] += 1
        if momentum:
            optimizer.catch_up(ids)
        _, ctx = nbbag.embedding_bag_fwd(table, ids, starts, mode="mean")
        optimizer.step_fused(grad_output, ctx)

    return step


@pytest.mark.parametrize(("opt", "schedule"), CASES)
def test_step_schedule(benchmark, schedule_case, opt, schedule):
    table, ids, starts, grad_output = schedule_case
    step = make_step(table, ids, starts, grad_output, opt, schedule)
    step()  # the warm-up (compiles or loads the cache)
    benchmark.group = "step-schedule"
    benchmark.extra_info.update(
        impl=schedule, op="step-schedule", opt=opt, V=NUM_ROWS, dim=table.shape[1]
    )
    common.time_case(benchmark, step)
