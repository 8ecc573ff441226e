"""The lazy optimizers on every backend: against torch (sparse, and dense for exact
SGD), a NumPy row-wise Adagrad and the step-by-step catch-up recurrence; fused against
unfused steps; checkpoints; SciPy gradients; bad input leaving weight and state
untouched.  The GPU runs fewer steps, and a covering subset where the CPU runs a
product of options (see tests/backends.py)."""

import re

import numpy as np
import pytest
import scipy.sparse
from backends import covering, on_backends, product
from strategies import FIXED_PADDING, MODES, fixed_bags

import nbbag
from nbbag import optim, reference
from nbbag.sparse import RowSparseGrad

try:
    import torch
except ImportError:  # only the parity tests need it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="pip install torch==2.13.0")

STATE_NAMES = ("momentum_buffer", "last_step", "state_sum", "exp_avg", "exp_avg_sq")
OPTIMIZERS = {
    "SGD": lambda w: optim.SGD(w, lr=0.1),
    "SGD-momentum-wd": lambda w: optim.SGD(w, lr=0.1, momentum=0.9, weight_decay=0.01),
    "Adagrad": lambda w: optim.Adagrad(w, lr=0.1, initial_accumulator_value=0.2),
    "RowWiseAdagrad": lambda w: optim.RowWiseAdagrad(w, lr=0.1),
    "Adam": lambda w: optim.Adam(w, lr=0.01, betas=(0.8, 0.95), eps=1e-6),
}


def zipf_batches(rng, num_steps, num_rows, dim, dtype=np.float64):
    """Bags of Zipf ids (a few hot rows, many untouched for long stretches, some empty
    bags), each with a random grad_output."""
    batches = []
    for _ in range(num_steps):
        num_bags = int(rng.integers(3, 9))
        num_tokens = int(rng.integers(num_bags, 4 * num_bags + 1))
        indices = (rng.zipf(1.2, num_tokens) - 1) % num_rows
        offsets = np.sort(rng.integers(0, num_tokens + 1, num_bags))
        offsets[0] = 0
        grad_output = rng.standard_normal((num_bags, dim)).astype(dtype)
        batches.append((indices, offsets, grad_output))
    return batches


def state_arrays(opt) -> dict:
    return {name: getattr(opt, name) for name in STATE_NAMES if hasattr(opt, name)}


def snapshot(opt, backend) -> dict:
    """Host copies of everything an optimizer holds: weight, state, step count, hypers."""
    copies = {name: backend.host(array).copy() for name, array in state_arrays(opt).items()}
    copies.update({name: getattr(opt, name) for name in opt.hyper_names})
    weight = backend.host(opt.weight).copy()
    return {"weight": weight, "step_count": opt.step_count, **copies}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key, strict=True)


def train_step(opt, batch, backend, mode="mean"):
    """catch_up (the ids on the backend), forward, backward, step."""
    indices, offsets, grad_output = batch
    opt.catch_up(backend.array(indices))
    _, ctx = nbbag.embedding_bag_fwd(opt.weight, indices, offsets, mode=mode)
    opt.step(nbbag.embedding_bag_bwd(backend.array(grad_output), ctx))


# Lazy optimizers against torch on sparse gradients.


class RowWiseAdagradReference:
    """FBGEMM's exact row-wise Adagrad on a torch parameter's sparse gradient."""

    def __init__(self, param, lr, eps=1e-10):
        self.param, self.lr, self.eps = param, lr, eps
        self.state = np.zeros(param.shape[0])

    def step(self):
        grad = self.param.grad.coalesce()
        rows, values = grad.indices()[0].numpy(), grad.values().numpy()
        weight = self.param.detach().numpy()  # shares the parameter's memory
        for r, g in zip(rows, values, strict=True):
            self.state[r] += np.mean(g**2)
            weight[r] -= self.lr * g / (np.sqrt(self.state[r]) + self.eps)

    def zero_grad(self):
        self.param.grad = None


LAZY = {
    "SGD": (lambda w: optim.SGD(w, 0.3), lambda p: torch.optim.SGD([p], 0.3)),
    "Adagrad": (lambda w: optim.Adagrad(w, 0.2), lambda p: torch.optim.Adagrad([p], 0.2)),
    "Adagrad-initial": (
        lambda w: optim.Adagrad(w, 0.2, initial_accumulator_value=0.3),
        lambda p: torch.optim.Adagrad([p], 0.2, initial_accumulator_value=0.3),
    ),
    "Adam": (
        lambda w: optim.Adam(w, 0.05, betas=(0.8, 0.95), eps=1e-6),
        lambda p: torch.optim.SparseAdam([p], 0.05, betas=(0.8, 0.95), eps=1e-6),
    ),
    "RowWiseAdagrad": (
        lambda w: optim.RowWiseAdagrad(w, 0.2),
        lambda p: RowWiseAdagradReference(p, 0.2),
    ),
}
SPARSE_MODES = ("sum", "mean")  # torch's sparse gradients, as the tests below use them
LAZY_CASES = product(LAZY, SPARSE_MODES)


@needs_torch
@on_backends("fused", [False, True])
def test_adam_moves_rows_with_zero_weights_as_sparse_adam_does(fused, rng, backend):
    """torch's sparse gradient keeps a row whose per-sample weights are 0 (with zeros),
    so SparseAdam still moves it along its moments; nbbag's gradient keeps it too."""
    num_rows, dim = 20, 4
    weight = rng.standard_normal((num_rows, dim))
    param = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    table = backend.array(weight)
    ours = optim.Adam(table, 0.05, betas=(0.8, 0.95), eps=1e-6)
    theirs = torch.optim.SparseAdam([param], 0.05, betas=(0.8, 0.95), eps=1e-6)
    indices = np.array([1, 2, 3, 4, 5, 6])
    offsets = np.array([0, 3])
    after_first = None
    for step in range(3):
        weights = rng.uniform(0.5, 2.0, indices.size)
        if step:
            weights[[1, 4]] = 0.0  # then rows 2 and 5 weigh nothing: moments alone
        grad_output = rng.standard_normal((2, dim))
        out, ctx = nbbag.embedding_bag_fwd(
            table, indices, offsets, mode="sum", per_sample_weights=weights
        )
        if fused:
            ours.step_fused(backend.array(grad_output), ctx)
        else:
            ours.step(nbbag.embedding_bag_bwd(backend.array(grad_output), ctx))
        out_t = torch.nn.functional.embedding_bag(
            torch.from_numpy(indices), param, torch.from_numpy(offsets), mode="sum",
            per_sample_weights=torch.from_numpy(weights), sparse=True,
        )  # fmt: skip
        out_t.backward(torch.from_numpy(grad_output))
        theirs.step()
        theirs.zero_grad()
        if after_first is None:
            after_first = backend.host(table)[[2, 5]].copy()
    np.testing.assert_allclose(
        backend.host(table), param.detach().numpy(), rtol=1e-10, atol=1e-13
    )
    assert np.all(backend.host(table)[[2, 5]] != after_first)  # they moved


def torch_bags(param, indices, offsets, mode, sparse):
    indices, offsets = torch.from_numpy(indices), torch.from_numpy(offsets)
    return torch.nn.functional.embedding_bag(
        indices, param, offsets, mode=mode, sparse=sparse
    )


@needs_torch
@on_backends("name, mode", LAZY_CASES, cuda=covering(LAZY_CASES))
def test_lazy_optimizers_match_torch_on_sparse_gradients(name, mode, rng, backend):
    """32 steps on a table of 200 rows (the GPU: 4 steps, 60 rows)."""
    num_rows = backend.pick(cpu=200, cuda=60)
    weight = rng.standard_normal((num_rows, 6))
    start = weight.copy()
    param = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    table = backend.array(weight)
    ours, theirs = LAZY[name][0](table), LAZY[name][1](param)
    batches = zipf_batches(rng, backend.pick(cpu=32, cuda=4), num_rows, 6)
    seen = np.unique(np.concatenate([b[0] for b in batches]))
    assert seen.size < 0.75 * num_rows  # rows left out
    for indices, offsets, grad_output in batches:
        out, ctx = nbbag.embedding_bag_fwd(table, indices, offsets, mode=mode)
        out_t = torch_bags(param, indices, offsets, mode, sparse=True)
        np.testing.assert_allclose(
            backend.host(out), out_t.detach().numpy(), rtol=1e-10, atol=1e-13
        )
        ours.step(nbbag.embedding_bag_bwd(backend.array(grad_output), ctx))
        out_t.backward(torch.from_numpy(grad_output))
        theirs.step()
        theirs.zero_grad()
        np.testing.assert_allclose(
            backend.host(table), param.detach().numpy(), rtol=1e-10, atol=1e-13
        )
    assert not np.allclose(backend.host(table), start)


# Exact SGD (momentum, weight decay) against dense torch.

EXACT = {
    "momentum": {"momentum": 0.9},
    "momentum-wd": {"momentum": 0.9, "weight_decay": 0.01},
    "wd": {"weight_decay": 0.01},
}
EXACT_CASES = product(EXACT, SPARSE_MODES, [True, False])


def run_exact_sgd(rng, backend, hyper, mode, catch_up, change=None):
    """SGD over a Zipf stream (32 steps on 200 rows; the GPU: 4 steps, 60 rows), nbbag
    and dense torch side by side; ``change`` = (step, name, value) sets a
    hyperparameter on both mid-stream."""
    num_rows = backend.pick(cpu=200, cuda=60)
    weight = rng.standard_normal((num_rows, 6))
    param = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    table = backend.array(weight)
    ours = optim.SGD(table, lr=0.05, **hyper)
    theirs = torch.optim.SGD([param], lr=0.05, **hyper)
    batches = zipf_batches(rng, backend.pick(cpu=32, cuda=4), num_rows, 6)
    for step, (indices, offsets, grad_output) in enumerate(batches):
        if change is not None and step == change[0]:
            setattr(ours, change[1], change[2])
            theirs.param_groups[0][change[1]] = change[2]
        if catch_up:
            ours.catch_up(backend.array(indices))
        out, ctx = nbbag.embedding_bag_fwd(table, indices, offsets, mode=mode)
        out_t = torch_bags(param, indices, offsets, mode, sparse=False)
        if catch_up:
            np.testing.assert_allclose(
                backend.host(out), out_t.detach().numpy(), rtol=1e-9, atol=1e-13
            )
        ours.step(nbbag.embedding_bag_bwd(backend.array(grad_output), ctx))
        out_t.backward(torch.from_numpy(grad_output))
        theirs.step()
        theirs.zero_grad()
    ours.flush()
    np.testing.assert_allclose(
        backend.host(table), param.detach().numpy(), rtol=1e-9, atol=1e-13
    )
    if ours.momentum:
        buffer = theirs.state[param]["momentum_buffer"].numpy()
        np.testing.assert_allclose(
            backend.host(ours.momentum_buffer), buffer, rtol=1e-9, atol=1e-13
        )


@needs_torch
@on_backends("hyper, mode, catch_up", EXACT_CASES, cuda=covering(EXACT_CASES))
def test_exact_sgd_matches_dense_torch(hyper, mode, catch_up, rng, backend):
    """With catch_up before each forward the outputs equal torch's; without, only the
    final (flushed) weights must."""
    run_exact_sgd(rng, backend, EXACT[hyper], mode, catch_up)


HYPER_CHANGES = [
    ("momentum-wd", "lr", 0.02),
    ("momentum", "momentum", 0.5),
    ("momentum-wd", "weight_decay", 0.0),
    ("plain", "weight_decay", 0.01),  # plain SGD becomes one that needs catch-up
    ("plain", "momentum", 0.9),
]


@needs_torch
@on_backends("hyper, name, value", HYPER_CHANGES)
def test_changing_a_hyperparameter_mid_stream_matches_dense_torch(
    hyper, name, value, rng, backend
):
    """The change at step 15 of 32 (2 of 4 on the GPU)."""
    change = (backend.pick(cpu=15, cuda=2), name, value)
    run_exact_sgd(rng, backend, EXACT.get(hyper, {}), "mean", True, change=change)


# The closed-form catch-up against the step-by-step recurrence.


def test_closed_form_catch_up_equals_the_recurrence(rng, backend):
    """1000 steps (24 on the GPU), a catch-up of one row in the middle."""
    lr, momentum, weight_decay = 0.05, 0.9, 0.01
    num_steps, catch_up_at = backend.pick(cpu=(1000, 400), cuda=(24, 10))

    def recurrence(w, u, steps):  # dense SGD with a zero gradient
        for _ in range(steps):
            u = momentum * u + weight_decay * w
            w = w - lr * u
        return w, u

    weight = rng.standard_normal((8, 6))
    untouched = weight[1].copy()
    table = backend.array(weight)
    opt = optim.SGD(table, lr, momentum=momentum, weight_decay=weight_decay)
    opt.step(RowSparseGrad([0, 3], rng.standard_normal((2, 6)), weight.shape))
    row0 = backend.host(table)[0].copy()
    buffer0 = backend.host(opt.momentum_buffer)[0].copy()
    assert np.all(buffer0 != 0)
    for step in range(num_steps):
        rows = np.sort(rng.choice(np.arange(2, 8), size=3, replace=False))
        opt.step(RowSparseGrad(rows, rng.standard_normal((3, 6)), weight.shape))
        if step == catch_up_at:
            opt.catch_up([1])  # a catch-up in the middle must compose with the rest
    opt.flush()
    weight, buffer = backend.host(table), backend.host(opt.momentum_buffer)
    expected_w, expected_u = recurrence(row0, buffer0, num_steps)
    np.testing.assert_allclose(weight[0], expected_w, rtol=1e-9)
    np.testing.assert_allclose(buffer[0], expected_u, rtol=1e-9)
    expected_w, expected_u = recurrence(untouched, np.zeros(6), num_steps + 1)
    np.testing.assert_allclose(weight[1], expected_w, rtol=1e-9)
    np.testing.assert_allclose(buffer[1], expected_u, rtol=1e-9)


# A training sequence (step, step_fused, catch_up, flush, state_dict) against torch fed
# the reference's gradient: every optimizer, on every backend.

TWINS = {
    "SGD": lambda p: torch.optim.SGD([p], lr=0.1),
    "SGD-momentum-wd": lambda p: torch.optim.SGD(
        [p], lr=0.1, momentum=0.9, weight_decay=0.01
    ),
    "Adagrad": lambda p: torch.optim.Adagrad([p], lr=0.1, initial_accumulator_value=0.2),
    "RowWiseAdagrad": lambda p: RowWiseAdagradReference(p, lr=0.1),
    "Adam": lambda p: torch.optim.SparseAdam([p], lr=0.01, betas=(0.8, 0.95), eps=1e-6),
}
SPARSE_TWINS = ("RowWiseAdagrad", "Adam")  # lazy: fed only the gradient's rows
TORCH_STATE_NAMES = {  # torch's state under nbbag's names
    "momentum_buffer": "momentum_buffer",
    "sum": "state_sum",
    "exp_avg": "exp_avg",
    "exp_avg_sq": "exp_avg_sq",
}


def twin_state(twin, param) -> dict:
    """The per-row and per-element state of a torch twin, under nbbag's names."""
    if isinstance(twin, RowWiseAdagradReference):
        return {"state_sum": twin.state}
    state = twin.state[param]
    return {
        ours: state[theirs].numpy()
        for theirs, ours in TORCH_STATE_NAMES.items()
        if torch.is_tensor(state.get(theirs))
    }


def feed_twin(name, twin, param, dense, rows) -> None:
    """One step of the torch twin with the gradient ``dense`` (whose rows are ``rows``)."""
    if name in SPARSE_TWINS:
        index = torch.from_numpy(rows)[None]
        grad = torch.sparse_coo_tensor(index, torch.from_numpy(dense[rows]), dense.shape)
        param.grad = grad
    else:
        param.grad = torch.from_numpy(dense)
    twin.step()
    twin.zero_grad()


def test_twins_cover_every_optimizer():
    assert TWINS.keys() == OPTIMIZERS.keys()


SEQUENCE_TOLERANCE = {np.float32: (1e-5, 1e-5), np.float64: (1e-10, 1e-13)}


@needs_torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_training_sequence_matches_torch_fed_the_reference_gradient(
    name, dtype, rng, backend
):
    """A step (mean, padding), a fused step (max), a step (weighted sqrtn), each after
    catching its rows up; then a catch-up of rows no batch touched, a flush,
    state_dict (host arrays, torch's state) and load_state_dict into a fresh optimizer.
    The table equals torch's, its optimizer stepped with the reference's gradient."""
    rtol, atol = SEQUENCE_TOLERANCE[dtype]
    weight, indices, offsets, weights = fixed_bags(rng, dtype=dtype)
    param = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    table = backend.array(weight)
    ours, twin = OPTIMIZERS[name](table), TWINS[name](param)
    batches = [
        ("step", indices, offsets, {"mode": "mean", "padding_idx": FIXED_PADDING}),
        ("step_fused", indices[3:], np.array([0, 2, 5]), {"mode": "max"}),
        ("step", indices, offsets, {"mode": "sqrtn", "per_sample_weights": weights}),
    ]

    def assert_rows_match(rows):
        expected = param.detach().numpy()[rows]
        np.testing.assert_allclose(
            backend.host(table)[rows], expected, rtol=rtol, atol=atol
        )

    for how, batch_indices, batch_offsets, kwargs in batches:
        ours.catch_up(backend.array(batch_indices))
        out, ctx = nbbag.embedding_bag_fwd(table, batch_indices, batch_offsets, **kwargs)
        grad_output = rng.standard_normal(backend.host(out).shape).astype(dtype)
        dense, rows, _ = reference.embedding_bag_backward(
            grad_output, param.detach().numpy(), batch_indices, batch_offsets, **kwargs
        )
        dense = dense.astype(dtype)
        if how == "step_fused":
            ours.step_fused(backend.array(grad_output), ctx)
        else:
            ours.step(nbbag.embedding_bag_bwd(backend.array(grad_output), ctx))
        feed_twin(name, twin, param, dense, rows)
        assert_rows_match(rows)  # the rows with a gradient (padding lags a step)
    ours.catch_up(backend.array(np.array([0, 5, 5])))  # row 5: in no batch; twice
    assert_rows_match([0, 5])
    ours.flush()
    assert_rows_match(slice(None))

    state = ours.state_dict()
    assert state["step_count"] == len(batches)
    for state_name in ours.state_names:
        assert isinstance(state[state_name], np.ndarray), state_name
    for state_name, expected in twin_state(twin, param).items():
        np.testing.assert_allclose(
            state[state_name], expected, rtol=rtol, atol=atol, err_msg=state_name
        )
    if "last_step" in state and ours.momentum:
        np.testing.assert_array_equal(state["last_step"], len(batches))  # flushed
    restored = OPTIMIZERS[name](backend.copy(table))
    restored.load_state_dict(state)
    assert_same(snapshot(restored, backend), snapshot(ours, backend))


# step_fused against step(embedding_bag_bwd(...)), bit for bit.

BATCH_OPTIONS = {
    **{mode: (mode, {}) for mode in MODES},
    "sum-weighted": ("sum", {"per_sample_weights": True}),
    "mean-weighted": ("mean", {"per_sample_weights": True}),
    "mean-padding": ("mean", {"padding_idx": 0}),  # row 0 is the hottest Zipf row
    "sum-freq": ("sum", {"scale_grad_by_freq": True}),
    "max-padding-freq": ("max", {"padding_idx": 1, "scale_grad_by_freq": True}),
    "sqrtn-weighted-padding": ("sqrtn", {"per_sample_weights": True, "padding_idx": 0}),
}
FUSED_CASES = product(OPTIMIZERS, BATCH_OPTIONS, [np.float32, np.float64])


@on_backends("name, options, dtype", FUSED_CASES, cuda=covering(FUSED_CASES, 2))
def test_step_fused_equals_step_of_the_backward(name, options, dtype, rng, backend):
    """6 batches (2 on the GPU, where every pair of optimizer, options and dtype
    runs)."""
    mode, kwargs = BATCH_OPTIONS[options]
    unfused_weight = rng.standard_normal((40, 5)).astype(dtype)
    fused_weight = unfused_weight.copy()
    unfused = OPTIMIZERS[name](backend.array(unfused_weight))
    fused = OPTIMIZERS[name](backend.array(fused_weight))
    num_batches = backend.pick(cpu=6, cuda=2)
    for indices, offsets, grad_output in zipf_batches(rng, num_batches, 40, 5, dtype):
        batch_kwargs = dict(kwargs, mode=mode)
        if kwargs.get("per_sample_weights"):
            batch_kwargs["per_sample_weights"] = rng.uniform(0.2, 2.0, indices.size)
        outs = []
        for opt in (unfused, fused):
            opt.catch_up(indices)
            outs.append(
                nbbag.embedding_bag_fwd(opt.weight, indices, offsets, **batch_kwargs)
            )
        np.testing.assert_array_equal(backend.host(outs[0][0]), backend.host(outs[1][0]))
        unfused.step(nbbag.embedding_bag_bwd(backend.array(grad_output), outs[0][1]))
        fused.step_fused(grad_output, outs[1][1])  # a host grad_output on the GPU too
        assert_same(snapshot(unfused, backend), snapshot(fused, backend))


# Checkpoints.

CHECKPOINT_CASES = product(OPTIMIZERS, ["same", "other"])


@on_backends("name, built_with", CHECKPOINT_CASES, cuda=covering(CHECKPOINT_CASES))
def test_state_dict_through_npz_continues_bit_identically(
    name, built_with, rng, tmp_path, backend
):
    """13 steps, a checkpoint, 7 more (2 and 2 on the GPU); ``other``: the restored
    optimizer was built with default hyperparameters, which the state replaces."""
    table = backend.array(rng.standard_normal((40, 5)))
    original = OPTIMIZERS[name](table)
    num_batches, checkpoint_at = backend.pick(cpu=(20, 13), cuda=(4, 2))
    batches = zipf_batches(rng, num_batches, 40, 5)
    for batch in batches[:checkpoint_at]:
        train_step(original, batch, backend)
    np.savez(tmp_path / "state.npz", **original.state_dict())
    if built_with == "same":
        restored = OPTIMIZERS[name](backend.copy(table))
    else:  # the state_dict's hyperparameters must replace the constructor's
        restored = type(original)(backend.copy(table), lr=1.0)
    with np.load(tmp_path / "state.npz") as loaded:
        restored.load_state_dict(loaded)
    assert_same(snapshot(original, backend), snapshot(restored, backend))
    for batch in batches[checkpoint_at:]:
        train_step(original, batch, backend)
        train_step(restored, batch, backend)
        assert_same(snapshot(original, backend), snapshot(restored, backend))
    original.flush()
    restored.flush()
    assert_same(snapshot(original, backend), snapshot(restored, backend))


def _with(key, value):
    return lambda state: {**state, key: value}


SGD_MWD = "SGD-momentum-wd"


def _negated(key):
    """The state with ``key``'s array made negative somewhere."""

    def change(state):
        array = np.array(state[key], copy=True)
        array.reshape(-1)[-1] = -1.0
        return {**state, key: array}

    return change


def _last_step_past_the_count(state):
    last_step = np.array(state["last_step"], copy=True)
    last_step[0] = state["step_count"] + 1
    return {**state, "last_step": last_step}


# (source, target, change, error, what the message names)
REFUSED_STATES = {
    "Adagrad-into-Adam": (
        "Adagrad",
        "Adam",
        lambda s: s,
        ValueError,
        "optimizer 'Adagrad'",
    ),
    "Adagrad-into-RowWise": (
        "Adagrad",
        "RowWiseAdagrad",
        lambda s: s,
        ValueError,
        "'Adagrad'",
    ),
    "Adam-into-SGD": ("Adam", SGD_MWD, lambda s: s, ValueError, "optimizer 'Adam'"),
    "state_sum": ("Adagrad",) * 2
    + (_with("state_sum", np.ones((39, 5))), ValueError, "state_sum"),
    "row_state": ("RowWiseAdagrad",) * 2
    + (_with("state_sum", np.ones(41)), ValueError, "state_sum"),
    "exp_avg_sq": (
        "Adam",
        "Adam",
        _with("exp_avg_sq", np.ones((40, 4))),
        ValueError,
        "exp_avg_sq",
    ),
    "last_step": (
        SGD_MWD,
        SGD_MWD,
        _with("last_step", np.ones(3, np.int64)),
        ValueError,
        "last_step",
    ),
    "lr": (SGD_MWD, SGD_MWD, _with("lr", -1.0), ValueError, "lr"),
    "lr-string": (SGD_MWD, SGD_MWD, _with("lr", "0.1"), TypeError, "lr"),
    # the right shape, a dtype that cannot be cast: refused before anything changes
    "float": (
        SGD_MWD,
        SGD_MWD,
        _with("last_step", np.full(40, 0.5)),
        TypeError,
        "last_step",
    ),
    # values no real run leaves
    "step_count-negative": (
        "Adam",
        "Adam",
        _with("step_count", -5),
        ValueError,
        "step_count",
    ),
    "step_count-fraction": (
        "Adam",
        "Adam",
        _with("step_count", 2.7),
        TypeError,
        "step_count",
    ),
    "step_count-string": (
        SGD_MWD,
        SGD_MWD,
        _with("step_count", "7"),
        TypeError,
        "step_count",
    ),
    "step_count-bool": (
        SGD_MWD,
        SGD_MWD,
        _with("step_count", True),
        TypeError,
        "step_count",
    ),
    "last_step-ahead": (
        SGD_MWD,
        SGD_MWD,
        _last_step_past_the_count,
        ValueError,
        "last_step",
    ),
    "last_step-negative": (
        SGD_MWD,
        SGD_MWD,
        _negated("last_step"),
        ValueError,
        "last_step",
    ),
    "state_sum-negative": (
        "Adagrad",
        "Adagrad",
        _negated("state_sum"),
        ValueError,
        "state_sum",
    ),
    "row_sum-negative": ("RowWiseAdagrad",) * 2
    + (_negated("state_sum"), ValueError, "state_sum"),
    "exp_avg_sq-negative": (
        "Adam",
        "Adam",
        _negated("exp_avg_sq"),
        ValueError,
        "exp_avg_sq",
    ),
    "none": ("Adam", "Adam", lambda s: None, TypeError, "state must be a mapping"),
    "list": (
        "Adam",
        "Adam",
        lambda s: list(s.items()),
        TypeError,
        "state must be a mapping",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_STATES))
def test_load_state_dict_refuses_and_changes_nothing(case, rng, backend):
    source, target, change, error, message = REFUSED_STATES[case]
    other = OPTIMIZERS[source](backend.array(rng.standard_normal((40, 5))))
    opt = OPTIMIZERS[target](backend.array(rng.standard_normal((40, 5))))
    for batch in zipf_batches(rng, backend.pick(cpu=3, cuda=1), 40, 5):
        train_step(other, batch, backend)
        train_step(opt, batch, backend)
    before = snapshot(opt, backend)
    with pytest.raises(error, match=re.escape(message)):
        opt.load_state_dict(change(other.state_dict()))
    assert_same(snapshot(opt, backend), before)


# SciPy gradients.

SCIPY_FORMS = {
    "csr": lambda g: g.to_scipy("csr"),
    "coo": lambda g: g.to_scipy("coo"),
    "csc": lambda g: g.to_scipy("csr").tocsc(),
    "lil": lambda g: g.to_scipy("csr").tolil(),
    "dok": lambda g: g.to_scipy("csr").todok(),
    "bsr": lambda g: g.to_scipy("csr").tobsr(),
    "csr_matrix": lambda g: scipy.sparse.csr_matrix(g.to_scipy("csr")),
    "coo_matrix": lambda g: scipy.sparse.coo_matrix(g.to_scipy("coo")),
}


def random_grad(rng, num_rows=40, dim=5, count=7):
    rows = np.sort(rng.choice(num_rows, size=count, replace=False))
    return RowSparseGrad(rows, rng.standard_normal((count, dim)), (num_rows, dim))


def duplicated_coo(rng, grad):
    """``grad``'s entries each split in two parts, shuffled, as a COO; and the
    RowSparseGrad of the parts' sums (exact whichever part comes first)."""
    row = np.repeat(grad.rows, grad.shape[1])
    col = np.tile(np.arange(grad.shape[1]), grad.nnz_rows)
    part = rng.standard_normal(row.size)
    rest = grad.values.reshape(-1) - part
    summed = RowSparseGrad(grad.rows, (rest + part).reshape(grad.values.shape), grad.shape)
    order = rng.permutation(2 * row.size)
    data = np.concatenate([rest, part])[order]
    entries = (data, (np.tile(row, 2)[order], np.tile(col, 2)[order]))
    return scipy.sparse.coo_array(entries, shape=grad.shape), summed


SCIPY_CASES = product(OPTIMIZERS, [*SCIPY_FORMS, "coo-duplicates"])


@on_backends("name, form", SCIPY_CASES, cuda=covering(SCIPY_CASES))
def test_scipy_gradients_give_the_row_sparse_result(name, form, rng, backend):
    weight = rng.standard_normal((40, 5))
    expected = OPTIMIZERS[name](backend.array(weight.copy()))
    ours = OPTIMIZERS[name](backend.array(weight))
    for _ in range(backend.pick(cpu=3, cuda=2)):
        grad = random_grad(rng)
        if form == "coo-duplicates":
            matrix, grad = duplicated_coo(rng, grad)
            assert matrix.nnz == 2 * grad.values.size
        else:
            matrix = SCIPY_FORMS[form](grad)
        ours.step(matrix)
        expected.step(grad)
        assert_same(snapshot(ours, backend), snapshot(expected, backend))


CAST_CASES = product(OPTIMIZERS, ["RowSparseGrad", "scipy"])


@on_backends("name, form", CAST_CASES, cuda=covering(CAST_CASES))
def test_a_float64_gradient_steps_a_float32_table_as_in_float32(name, form, rng, backend):
    """The gradient is cast to the table's dtype (SciPy's float64 and integer matrices
    come in as float64): the result is that of the same gradient in float32."""
    weight = rng.standard_normal((40, 5)).astype(np.float32)
    expected = OPTIMIZERS[name](backend.array(weight.copy()))
    ours = OPTIMIZERS[name](backend.array(weight))
    grad = random_grad(rng)
    assert grad.values.dtype == np.float64
    ours.step(grad if form == "RowSparseGrad" else grad.to_scipy())
    expected.step(RowSparseGrad(grad.rows, grad.values.astype(np.float32), grad.shape))
    assert_same(snapshot(ours, backend), snapshot(expected, backend))


# Bad input: the argument named, weight and state untouched.


def trained(name, rng, backend, num_rows=40, dim=5):
    """An optimizer after a few steps, so that its state is not trivial.  Weight and
    state are views of larger buffers, so that an out-of-range write (a bug) lands in
    the padding instead of corrupting the heap."""
    buffer = backend.array(rng.standard_normal((num_rows + 8, dim)))
    opt = OPTIMIZERS[name](buffer[:num_rows])
    for attribute, array in state_arrays(opt).items():
        padded = np.zeros((num_rows + 8, *array.shape[1:]), dtype=array.dtype)
        padded[:num_rows] = backend.host(array)
        setattr(opt, attribute, backend.array(padded)[:num_rows])
    for batch in zipf_batches(rng, backend.pick(cpu=3, cuda=1), num_rows, dim):
        train_step(opt, batch, backend)
    return opt


def refuses(opt, backend, error, message, call):
    before = snapshot(opt, backend)
    with pytest.raises(error, match=message):
        call()
    assert_same(snapshot(opt, backend), before)


OUT_OF_RANGE = {
    **{f"lr-{name}": (name, "lr", -0.5, r"lr.*-0\.5") for name in OPTIMIZERS},
    "betas[0]": ("Adam", "betas", (1.0, 0.9), r"betas\[0\].*1\.0"),
    "betas[1]": ("Adam", "betas", (0.9, -0.1), r"betas\[1\].*-0\.1"),
    "momentum": (SGD_MWD, "momentum", 1.5, r"momentum.*1\.5"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_a_hyperparameter_out_of_range(case, rng, backend):
    """Refused by the constructor, and by the setter before it flushes (SGD)."""
    name, attribute, value, message = OUT_OF_RANGE[case]
    opt = trained(name, rng, backend)
    weight = backend.copy(opt.weight)
    with pytest.raises(ValueError, match=message):
        type(opt)(weight, **{"lr": 0.1, attribute: value})
    np.testing.assert_array_equal(backend.host(weight), backend.host(opt.weight))
    refuses(opt, backend, ValueError, message, lambda: setattr(opt, attribute, value))


def scipy_row_outside():
    matrix = scipy.sparse.coo_array(([1.0, 2.0], ([1, 2], [0, 4])), shape=(40, 5))
    matrix.row[0] = 43  # past scipy's own check
    return matrix


BAD_GRADS = {
    "rows": (lambda: RowSparseGrad([1], np.ones((1, 5)), (41, 5)), ValueError),
    "dim": (lambda: RowSparseGrad([1], np.ones((1, 4)), (40, 4)), ValueError),
    "scipy-shape": (lambda: scipy.sparse.csr_array(np.ones((40, 6))), ValueError),
    "scipy-row-outside": (scipy_row_outside, ValueError),
    "dense": (lambda: np.ones((40, 5)), TypeError),
    "list": (lambda: [[1.0] * 5] * 40, TypeError),
    "None": (lambda: None, TypeError),
}
BAD_GRAD_MESSAGES = {
    "rows": r"grad.*\(40, 5\), got \(41, 5\)",
    "dim": r"grad.*\(40, 5\), got \(40, 4\)",
    "scipy-shape": r"grad.*\(40, 5\), got \(40, 6\)",
    "scipy-row-outside": r"(grad|row).*43",
    "dense": "grad.*ndarray",
    "list": "grad.*list",
    "None": "grad.*NoneType",
}
BAD_GRAD_CASES = product(OPTIMIZERS, BAD_GRADS)


@on_backends("name, bad", BAD_GRAD_CASES, cuda=covering(BAD_GRAD_CASES))
def test_a_bad_gradient(name, bad, rng, backend):
    opt = trained(name, rng, backend)
    grad = BAD_GRADS[bad][0]()
    error, message = BAD_GRADS[bad][1], BAD_GRAD_MESSAGES[bad]
    refuses(opt, backend, error, message, lambda: opt.step(grad))


FUSED_REFUSALS = product(OPTIMIZERS, ["grad_output", "ctx"])


@on_backends("name, bad", FUSED_REFUSALS, cuda=covering(FUSED_REFUSALS))
def test_step_fused_refuses_a_bad_grad_output_or_ctx(name, bad, rng, backend):
    opt = trained(name, rng, backend)
    read = backend.copy(opt.weight) if bad == "ctx" else opt.weight  # ctx: another array
    out, ctx = nbbag.embedding_bag_fwd(read, [1, 2, 3], [0, 1], mode="mean")
    shape = (2, 4) if bad == "grad_output" else backend.host(out).shape
    grad_output = rng.standard_normal(shape)
    message = r"grad_output.*\(2, 5\).*\(2, 4\)" if bad == "grad_output" else "ctx"
    refuses(opt, backend, ValueError, message, lambda: opt.step_fused(grad_output, ctx))


CATCH_UP_CASES = product(sorted(OPTIMIZERS), [40, -1])


@on_backends("name, index", CATCH_UP_CASES, cuda=covering(CATCH_UP_CASES))
def test_catch_up_with_an_index_outside_the_table(name, index, rng, backend):
    """Every optimizer checks, not only those with something to catch up (the ids on
    the backend: checked on the device on the GPU)."""
    opt = trained(name, rng, backend)
    opt.step(random_grad(rng))  # rows left behind: a catch-up would change them
    ids = backend.array(np.array([3, index])) if backend.tiny else [3, index]
    message = rf"indices.*{index}.*40"
    refuses(opt, backend, IndexError, message, lambda: opt.catch_up(ids))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_read_only_weight(name, rng):
    """NumPy only: a device array has no read-only flag."""
    weight = rng.standard_normal((40, 5))
    weight.flags.writeable = False
    with pytest.raises(ValueError, match="weight.*writeable"):
        OPTIMIZERS[name](weight)
