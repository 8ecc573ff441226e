"""The lazy optimizers: against torch (sparse, and dense for exact SGD), a NumPy row-wise
Adagrad and the step-by-step catch-up recurrence; fused against unfused steps;
checkpoints; SciPy gradients; bad input leaving weight and state untouched."""

import re

import numpy as np
import pytest
import scipy.sparse

import nbbag
from nbbag import optim
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


def snapshot(opt) -> dict:
    """Copies of everything an optimizer holds: weight, state, step count, hypers."""
    copies = {name: array.copy() for name, array in state_arrays(opt).items()}
    copies.update({name: getattr(opt, name) for name in opt.hyper_names})
    return {"weight": opt.weight.copy(), "step_count": opt.step_count, **copies}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key, strict=True)


def train_step(opt, batch, mode="mean"):
    indices, offsets, grad_output = batch
    opt.catch_up(indices)
    _, ctx = nbbag.embedding_bag_fwd(opt.weight, indices, offsets, mode=mode)
    opt.step(nbbag.embedding_bag_bwd(grad_output, ctx))


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


def torch_bags(param, indices, offsets, mode, sparse):
    indices, offsets = torch.from_numpy(indices), torch.from_numpy(offsets)
    return torch.nn.functional.embedding_bag(
        indices, param, offsets, mode=mode, sparse=sparse
    )


@needs_torch
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("name", list(LAZY))
def test_lazy_optimizers_match_torch_on_sparse_gradients(name, mode, rng):
    weight = rng.standard_normal((200, 6))
    start = weight.copy()
    param = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    ours, theirs = LAZY[name][0](weight), LAZY[name][1](param)
    batches = zipf_batches(rng, 32, 200, 6)
    assert np.unique(np.concatenate([b[0] for b in batches])).size < 150  # rows left out
    for indices, offsets, grad_output in batches:
        out, ctx = nbbag.embedding_bag_fwd(weight, indices, offsets, mode=mode)
        out_t = torch_bags(param, indices, offsets, mode, sparse=True)
        np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-13)
        ours.step(nbbag.embedding_bag_bwd(grad_output, ctx))
        out_t.backward(torch.from_numpy(grad_output))
        theirs.step()
        theirs.zero_grad()
        np.testing.assert_allclose(weight, param.detach().numpy(), rtol=1e-10, atol=1e-13)
    assert not np.allclose(weight, start)


# Exact SGD (momentum, weight decay) against dense torch.

EXACT = {
    "momentum": {"momentum": 0.9},
    "momentum-wd": {"momentum": 0.9, "weight_decay": 0.01},
    "wd": {"weight_decay": 0.01},
}


def run_exact_sgd(rng, hyper, mode, catch_up, change=None):
    """SGD over a Zipf stream, nbbag and dense torch side by side; ``change`` = (step,
    name, value) sets a hyperparameter on both mid-stream."""
    weight = rng.standard_normal((200, 6))
    param = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    ours = optim.SGD(weight, lr=0.05, **hyper)
    theirs = torch.optim.SGD([param], lr=0.05, **hyper)
    for step, (indices, offsets, grad_output) in enumerate(zipf_batches(rng, 32, 200, 6)):
        if change is not None and step == change[0]:
            setattr(ours, change[1], change[2])
            theirs.param_groups[0][change[1]] = change[2]
        if catch_up:
            ours.catch_up(indices)
        out, ctx = nbbag.embedding_bag_fwd(weight, indices, offsets, mode=mode)
        out_t = torch_bags(param, indices, offsets, mode, sparse=False)
        if catch_up:
            np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-9, atol=1e-13)
        ours.step(nbbag.embedding_bag_bwd(grad_output, ctx))
        out_t.backward(torch.from_numpy(grad_output))
        theirs.step()
        theirs.zero_grad()
    ours.flush()
    np.testing.assert_allclose(weight, param.detach().numpy(), rtol=1e-9, atol=1e-13)
    if ours.momentum:
        buffer = theirs.state[param]["momentum_buffer"].numpy()
        np.testing.assert_allclose(ours.momentum_buffer, buffer, rtol=1e-9, atol=1e-13)


@needs_torch
@pytest.mark.parametrize("catch_up", [True, False], ids=["catch_up", "flush_only"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("hyper", list(EXACT))
def test_exact_sgd_matches_dense_torch(hyper, mode, catch_up, rng):
    """With catch_up before each forward the outputs equal torch's; without, only the
    final (flushed) weights must."""
    run_exact_sgd(rng, EXACT[hyper], mode, catch_up)


@needs_torch
@pytest.mark.parametrize(
    ("hyper", "name", "value"),
    [
        ("momentum-wd", "lr", 0.02),
        ("momentum", "momentum", 0.5),
        ("momentum-wd", "weight_decay", 0.0),
        ("plain", "weight_decay", 0.01),  # plain SGD becomes one that needs catch-up
        ("plain", "momentum", 0.9),
    ],
)
def test_changing_a_hyperparameter_mid_stream_matches_dense_torch(hyper, name, value, rng):
    run_exact_sgd(rng, EXACT.get(hyper, {}), "mean", True, change=(15, name, value))


# The closed-form catch-up against the step-by-step recurrence.


def test_closed_form_catch_up_equals_the_recurrence(rng):
    lr, momentum, weight_decay = 0.05, 0.9, 0.01

    def recurrence(w, u, steps):  # dense SGD with a zero gradient
        for _ in range(steps):
            u = momentum * u + weight_decay * w
            w = w - lr * u
        return w, u

    weight = rng.standard_normal((8, 6))
    untouched = weight[1].copy()
    opt = optim.SGD(weight, lr, momentum=momentum, weight_decay=weight_decay)
    opt.step(RowSparseGrad([0, 3], rng.standard_normal((2, 6)), weight.shape))
    row0, buffer0 = weight[0].copy(), opt.momentum_buffer[0].copy()
    assert np.all(buffer0 != 0)
    for step in range(1000):
        rows = np.sort(rng.choice(np.arange(2, 8), size=3, replace=False))
        opt.step(RowSparseGrad(rows, rng.standard_normal((3, 6)), weight.shape))
        if step == 400:
            opt.catch_up([1])  # a catch-up in the middle must compose with the rest
    opt.flush()
    expected_w, expected_u = recurrence(row0, buffer0, 1000)
    np.testing.assert_allclose(weight[0], expected_w, rtol=1e-9)
    np.testing.assert_allclose(opt.momentum_buffer[0], expected_u, rtol=1e-9)
    expected_w, expected_u = recurrence(untouched, np.zeros(6), 1001)
    np.testing.assert_allclose(weight[1], expected_w, rtol=1e-9)
    np.testing.assert_allclose(opt.momentum_buffer[1], expected_u, rtol=1e-9)


# step_fused against step(embedding_bag_bwd(...)), bit for bit.

BATCH_OPTIONS = {
    "sum": ("sum", {}),
    "mean": ("mean", {}),
    "max": ("max", {}),
    "sqrtn": ("sqrtn", {}),
    "sum-weighted": ("sum", {"per_sample_weights": True}),
    "mean-weighted": ("mean", {"per_sample_weights": True}),
    "mean-padding": ("mean", {"padding_idx": 0}),  # row 0 is the hottest Zipf row
    "sum-freq": ("sum", {"scale_grad_by_freq": True}),
    "max-padding-freq": ("max", {"padding_idx": 1, "scale_grad_by_freq": True}),
    "sqrtn-weighted-padding": ("sqrtn", {"per_sample_weights": True, "padding_idx": 0}),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", list(BATCH_OPTIONS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_fused_equals_step_of_the_backward(name, options, dtype, rng):
    mode, kwargs = BATCH_OPTIONS[options]
    unfused_weight = rng.standard_normal((40, 5)).astype(dtype)
    fused_weight = unfused_weight.copy()
    unfused, fused = OPTIMIZERS[name](unfused_weight), OPTIMIZERS[name](fused_weight)
    for indices, offsets, grad_output in zipf_batches(rng, 6, 40, 5, dtype):
        batch_kwargs = dict(kwargs, mode=mode)
        if kwargs.get("per_sample_weights"):
            batch_kwargs["per_sample_weights"] = rng.uniform(0.2, 2.0, indices.size)
        outs = []
        for opt in (unfused, fused):
            opt.catch_up(indices)
            outs.append(
                nbbag.embedding_bag_fwd(opt.weight, indices, offsets, **batch_kwargs)
            )
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        unfused.step(nbbag.embedding_bag_bwd(grad_output, outs[0][1]))
        fused.step_fused(grad_output, outs[1][1])
        assert_same(snapshot(unfused), snapshot(fused))


# Checkpoints.


@pytest.mark.parametrize(
    "built_with", ["same", "other"], ids=["same_hypers", "default_hypers"]
)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_through_npz_continues_bit_identically(name, built_with, rng, tmp_path):
    weight = rng.standard_normal((40, 5))
    original = OPTIMIZERS[name](weight)
    batches = zipf_batches(rng, 20, 40, 5)
    for batch in batches[:13]:
        train_step(original, batch)
    np.savez(tmp_path / "state.npz", **original.state_dict())
    if built_with == "same":
        restored = OPTIMIZERS[name](weight.copy())
    else:  # the state_dict's hyperparameters must replace the constructor's
        restored = type(original)(weight.copy(), lr=1.0)
    with np.load(tmp_path / "state.npz") as loaded:
        restored.load_state_dict(loaded)
    assert_same(snapshot(original), snapshot(restored))
    for batch in batches[13:]:
        train_step(original, batch)
        train_step(restored, batch)
        assert_same(snapshot(original), snapshot(restored))
    original.flush()
    restored.flush()
    assert_same(snapshot(original), snapshot(restored))


def _with(key, value):
    return lambda state: {**state, key: value}


SGD_MWD = "SGD-momentum-wd"
REFUSED_STATES = {
    "Adagrad-into-Adam": ("Adagrad", "Adam", lambda s: s, "optimizer 'Adagrad'"),
    "Adagrad-into-RowWise": ("Adagrad", "RowWiseAdagrad", lambda s: s, "'Adagrad'"),
    "Adam-into-SGD": ("Adam", SGD_MWD, lambda s: s, "optimizer 'Adam'"),
    "state_sum": ("Adagrad", "Adagrad", _with("state_sum", np.ones((39, 5))), "state_sum"),
    "row_state": ("RowWiseAdagrad",) * 2 + (_with("state_sum", np.ones(41)), "state_sum"),
    "exp_avg_sq": ("Adam", "Adam", _with("exp_avg_sq", np.ones((40, 4))), "exp_avg_sq"),
    "last_step": (SGD_MWD, SGD_MWD, _with("last_step", np.ones(3, np.int64)), "last_step"),
    "lr": (SGD_MWD, SGD_MWD, _with("lr", -1.0), "lr"),
    # the right shape, a dtype that cannot be cast: refused before anything changes
    "float": (SGD_MWD, SGD_MWD, _with("last_step", np.full(40, 0.5)), "last_step"),
}


@pytest.mark.parametrize("case", list(REFUSED_STATES))
def test_load_state_dict_refuses_and_changes_nothing(case, rng):
    source, target, change, message = REFUSED_STATES[case]
    other = OPTIMIZERS[source](rng.standard_normal((40, 5)))
    opt = OPTIMIZERS[target](rng.standard_normal((40, 5)))
    for batch in zipf_batches(rng, 3, 40, 5):
        train_step(other, batch)
        train_step(opt, batch)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.load_state_dict(change(other.state_dict()))
    assert_same(snapshot(opt), before)


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


@pytest.mark.parametrize("form", [*SCIPY_FORMS, "coo-duplicates"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_scipy_gradients_give_the_row_sparse_result(name, form, rng):
    weight = rng.standard_normal((40, 5))
    expected, ours = OPTIMIZERS[name](weight.copy()), OPTIMIZERS[name](weight)
    for _ in range(3):
        grad = random_grad(rng)
        if form == "coo-duplicates":
            matrix, grad = duplicated_coo(rng, grad)
            assert matrix.nnz == 2 * grad.values.size
        else:
            matrix = SCIPY_FORMS[form](grad)
        ours.step(matrix)
        expected.step(grad)
        assert_same(snapshot(ours), snapshot(expected))


# Bad input: the argument named, weight and state untouched.


def trained(name, rng, num_rows=40, dim=5):
    """An optimizer after a few steps, so that its state is not trivial.  Weight and
    state are views of larger buffers, so that an out-of-range write (a bug) lands in
    the padding instead of corrupting the heap."""
    opt = OPTIMIZERS[name](rng.standard_normal((num_rows + 8, dim))[:num_rows])
    for attribute, array in state_arrays(opt).items():
        padded = np.zeros((num_rows + 8, *array.shape[1:]), dtype=array.dtype)
        padded[:num_rows] = array
        setattr(opt, attribute, padded[:num_rows])
    for batch in zipf_batches(rng, 3, num_rows, dim):
        train_step(opt, batch)
    return opt


def refuses(opt, error, message, call):
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        call()
    assert_same(snapshot(opt), before)


OUT_OF_RANGE = {
    **{f"lr-{name}": (name, "lr", -0.5, r"lr.*-0\.5") for name in OPTIMIZERS},
    "betas[0]": ("Adam", "betas", (1.0, 0.9), r"betas\[0\].*1\.0"),
    "betas[1]": ("Adam", "betas", (0.9, -0.1), r"betas\[1\].*-0\.1"),
    "momentum": (SGD_MWD, "momentum", 1.5, r"momentum.*1\.5"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_a_hyperparameter_out_of_range(case, rng):
    """Refused by the constructor, and by the setter before it flushes (SGD)."""
    name, attribute, value, message = OUT_OF_RANGE[case]
    opt = trained(name, rng)
    weight = opt.weight.copy()
    with pytest.raises(ValueError, match=message):
        type(opt)(weight, **{"lr": 0.1, attribute: value})
    np.testing.assert_array_equal(weight, opt.weight)
    refuses(opt, ValueError, message, lambda: setattr(opt, attribute, value))


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


@pytest.mark.parametrize("bad", list(BAD_GRADS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_bad_gradient(name, bad, rng):
    opt = trained(name, rng)
    grad = BAD_GRADS[bad][0]()
    refuses(opt, BAD_GRADS[bad][1], BAD_GRAD_MESSAGES[bad], lambda: opt.step(grad))


@pytest.mark.parametrize("bad", ["grad_output", "ctx"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_fused_refuses_a_bad_grad_output_or_ctx(name, bad, rng):
    opt = trained(name, rng)
    read = opt.weight.copy() if bad == "ctx" else opt.weight  # ctx: another array
    out, ctx = nbbag.embedding_bag_fwd(read, [1, 2, 3], [0, 1], mode="mean")
    grad_output = rng.standard_normal((2, 4) if bad == "grad_output" else out.shape)
    message = r"grad_output.*\(2, 5\).*\(2, 4\)" if bad == "grad_output" else "ctx"
    refuses(opt, ValueError, message, lambda: opt.step_fused(grad_output, ctx))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("index", [40, -1])
def test_catch_up_with_an_index_outside_the_table(name, index, rng):
    """Every optimizer checks, not only those with something to catch up."""
    opt = trained(name, rng)
    opt.step(random_grad(rng))  # rows left behind: a catch-up would change them
    refuses(opt, IndexError, rf"indices.*{index}.*40", lambda: opt.catch_up([3, index]))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_read_only_weight(name, rng):
    weight = rng.standard_normal((40, 5))
    weight.flags.writeable = False
    with pytest.raises(ValueError, match="weight.*writeable"):
        OPTIMIZERS[name](weight)
