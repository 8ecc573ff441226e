"""Hyperparameter schedules: SGD logs each step's hyperparameters, so that changing
them costs O(1) and a row skipped for any number of steps is caught up exactly."""

import numpy as np
import pytest
from backends import CUDA

import nbbag
from nbbag import optim
from nbbag.base.schedule import ScheduleLog, span

torch = pytest.importorskip("torch")


def random_values(rng) -> dict:
    """SGD's hyperparameters, with momentum (some runs none) and weight decay."""
    momentum = rng.choice([0.0, rng.uniform(0, 0.95)])
    return {
        "lr": rng.uniform(0, 0.2),
        "momentum": momentum,
        "weight_decay": rng.uniform(0, 0.1),
    }


@pytest.mark.parametrize("capacity", [1, 4, 64])
def test_span_is_the_product_of_the_step_matrices(rng, capacity):
    """Runs of random lengths (one step, a few, many), random spans, against the
    step-by-step product."""
    log = ScheduleLog(capacity, nbbag.rules.sgd_step_matrix, nbbag.rules.sgd_moves_rows)
    per_step = [None]  # step t's matrix at index t
    step = 1
    while log.count < capacity:
        values = random_values(rng)
        for _ in range(int(rng.choice([1, 2, 3, 50]))):
            log.append(step, values)
            per_step.append(nbbag.rules.sgd_step_matrix(values))
            step += 1
    schedule = log.schedule()
    for _ in range(200):
        first, last = sorted(rng.integers(1, step, 2))
        expected = np.eye(2)
        for t in range(first, last + 1):
            expected = np.array(per_step[t]).reshape(2, 2) @ expected
        got = np.array(span.py_func(schedule, int(first), int(last))).reshape(2, 2)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert span.py_func(schedule, 5, 4) == (1.0, 0.0, 0.0, 1.0)


def linear_decay(step: int, steps: int) -> dict:
    """fastText's schedule, with momentum turned off and on and weight decay changed
    on the way."""
    momentum = 0.0 if steps // 4 <= step < steps // 2 else 0.9
    weight_decay = 0.01 if step < 3 * steps // 4 else 0.03
    return {
        "lr": 0.1 * (1 - step / steps),
        "momentum": momentum,
        "weight_decay": weight_decay,
    }


def train_both(rng, backend, steps: int, hot_rows=2, catch_up_every=0):
    """nbbag's SGD and dense torch SGD under ``linear_decay``, a gradient on the hot rows
    each step and on another row now and then (the rest are skipped for all or most of
    the steps): (nbbag's table, flushed, and buffer; torch's)."""
    num_rows, dim = 8, 3
    weight = rng.standard_normal((num_rows, dim))
    table = backend.array(weight.copy())
    ours = optim.SGD(table, **linear_decay(0, steps))
    param = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    theirs = torch.optim.SGD([param], **linear_decay(0, steps))
    for step in range(steps):
        values = linear_decay(step, steps)
        for name, value in values.items():
            setattr(ours, name, value)
            theirs.param_groups[0][name] = value
        rows = np.arange(hot_rows)
        if step % 97 == 0:
            rows = np.append(rows, hot_rows + step % (num_rows - hot_rows - 1))
        grad = rng.standard_normal((rows.size, dim))
        ours.step(nbbag.RowSparseGrad(rows, backend.array(grad), (num_rows, dim)))
        dense = np.zeros((num_rows, dim))
        dense[rows] = grad
        param.grad = torch.from_numpy(dense)
        theirs.step()
        if catch_up_every and step % catch_up_every == 0:
            ours.catch_up(backend.array(np.arange(num_rows)))
    ours.flush()
    buffer = theirs.state[param]["momentum_buffer"].numpy()
    return backend.host(table), backend.host(ours.momentum_buffer), param, buffer


@pytest.mark.parametrize(
    "backend, catch_up_every",
    [("cpu", 0), ("cpu", 1000), pytest.param("cuda", 0, marks=CUDA)],
    indirect=["backend"],
)
def test_a_per_step_schedule_matches_dense_torch(rng, backend, catch_up_every):
    """10,000 steps (24 on the GPU), the last row never touched: float64 within
    1e-10 of dense torch SGD."""
    steps = backend.pick(cpu=10_000, cuda=24)
    table, buffer, param, their_buffer = train_both(
        rng, backend, steps, catch_up_every=catch_up_every
    )
    np.testing.assert_allclose(table, param.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(buffer, their_buffer, rtol=1e-10, atol=1e-12)


def test_a_full_log_flushes_and_stays_exact(rng, backend, monkeypatch):
    """A log of 4 runs under a schedule that changes every step: a flush every few
    steps, the result still torch's."""
    monkeypatch.setattr(optim, "SCHEDULE_RUNS", 4)
    steps = backend.pick(cpu=60, cuda=11)
    table, buffer, param, their_buffer = train_both(rng, backend, steps)
    np.testing.assert_allclose(table, param.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(buffer, their_buffer, rtol=1e-10, atol=1e-12)


def test_setting_a_hyperparameter_does_not_touch_the_table(rng):
    """O(1): no flush (the table and every row's last step stay as they were)."""
    weight = rng.standard_normal((1000, 4))
    opt = optim.SGD(weight, lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        opt.step(nbbag.RowSparseGrad([1, 7], rng.standard_normal((2, 4)), weight.shape))
    before, last_step = weight.copy(), opt.last_step.copy()
    opt.lr, opt.momentum, opt.weight_decay = 0.05, 0.5, 0.02
    np.testing.assert_array_equal(weight, before)
    np.testing.assert_array_equal(opt.last_step, last_step)


def test_a_checkpoint_mid_schedule_resumes_bit_identically(rng, backend):
    """state_dict after the learning rate changed (the log holds several runs), loaded
    into a fresh optimizer on a copy of the table: the two then train alike."""
    weight = backend.array(rng.standard_normal((20, 3)))
    opt = optim.SGD(weight, lr=0.1, momentum=0.9, weight_decay=0.01)

    def grad(step):
        rows = np.array([step % 3, 5 + step % 7])
        values = np.random.default_rng(step).standard_normal((2, 3))
        return nbbag.RowSparseGrad(rows, backend.array(values), (20, 3))

    for step in range(6):
        opt.lr = 0.1 / (step + 1)
        opt.step(grad(step))
    state = opt.state_dict()
    copy = backend.copy(weight)
    restored = optim.SGD(copy, lr=1.0)
    restored.load_state_dict(state)
    for step in range(6, 12):
        for each in (opt, restored):
            each.lr = 0.1 / (step + 1)
            each.step(grad(step))
    opt.flush()
    restored.flush()
    np.testing.assert_array_equal(backend.host(copy), backend.host(weight))
