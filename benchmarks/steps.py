"""Training steps to time: forward (mean) + backward + optimizer update, per path.

Paths:

- ``nbbag``: ``embedding_bag_fwd`` + ``opt.step_fused(grad_output, ctx)`` (with
  momentum, ``opt.catch_up(ids)`` first, as ``EmbeddingBag.attach`` does).
- ``nbbag-grad``: ``embedding_bag_bwd`` to a ``RowSparseGrad``, then ``opt.step``.
- ``nbbag-scipy``: the same gradient through ``to_scipy()`` (a CSR of V + 1 row
  pointers), then ``opt.step``.
- ``torch``: ``F.embedding_bag(..., sparse=True)``, ``backward``, the sparse-capable
  torch optimizer (SGD, SGD with momentum, Adagrad, SparseAdam; none for row-wise
  Adagrad).
- ``dense``: what a NumPy user writes without nbbag: the mean by ``np.add.reduceat``,
  the gradient by ``np.zeros((V, D))`` + ``np.add.at``, then the optimizer's update of
  every row of the table and its state.
- ``tbe``: FBGEMM's table-batched embeddings on the CPU (``benchmarks/tbe.py``), the
  optimizer fused into its backward (SGD, Adagrad, row-wise Adagrad: ``TBE_OPTS``), on
  its own copy of the table (``step.table`` is that copy, as NumPy).

:func:`check_rows` and :func:`check_only_rows_changed` compare a step's rows with a
reference's.
"""

from __future__ import annotations

import math

import numpy as np

import nbbag
from benchmarks import tbe

MODE = "mean"
OPTS = ("sgd", "momentum", "adagrad", "rowwise_adagrad", "adam")
TORCH_OPTS = ("sgd", "momentum", "adagrad", "adam")  # torch has no row-wise Adagrad
TBE_OPTS = tuple(tbe.OPTIMIZERS)  # FBGEMM's EXACT_SGD, EXACT_ADAGRAD, EXACT_ROWWISE_ADAGRAD
LR = {"sgd": 0.01, "momentum": 0.01, "adagrad": 0.01, "rowwise_adagrad": 0.01, "adam": 1e-3}
MOMENTUM = 0.9
ADAGRAD_EPS = 1e-10
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # nbbag's and torch's defaults
# float32 sums in different orders, scaled by the step size.  Elementwise Adagrad's and
# Adam's first step is lr * g / (|g| + eps): where |g| is tiny, the order of the sum
# moves it by up to ~lr * 1e-3 (torch's sparse Adagrad, whose order varies from run to
# run, differed by up to 3.2e-6 in 0.1% of the elements once), hence atol 1e-5.
RTOL, ATOL = 1e-4, 1e-5
# Where g is ~0 the summation order can flip the sign: a few elements may differ.
MAX_MISMATCH = 1e-5


class StepBatch:
    """One batch: ids, bag offsets (B + 1), a fixed grad_output, and what the dense step
    and the checks precompute (the bag of each id, its mean coefficient, the rows)."""

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
        """The touched rows after one plain SGD step from ``before`` (their old values),
        the gradient summed in float64: a reference for any table size."""
        contributions = self.grad_output[self.bag_of_token].astype(np.float64)
        contributions *= self.coefficients[:, None]
        grad = np.zeros(before.shape, dtype=np.float64)
        np.add.at(grad, self.row_of_token, contributions)
        return before - LR["sgd"] * grad


def nbbag_optimizer(opt: str, weight: np.ndarray):
    """nbbag's optimizer ``opt`` over ``weight``."""
    optim = nbbag.optim
    if opt == "sgd":
        return optim.SGD(weight, lr=LR[opt])
    if opt == "momentum":
        return optim.SGD(weight, lr=LR[opt], momentum=MOMENTUM)
    if opt == "adagrad":
        return optim.Adagrad(weight, lr=LR[opt], eps=ADAGRAD_EPS)
    if opt == "rowwise_adagrad":
        return optim.RowWiseAdagrad(weight, lr=LR[opt], eps=ADAGRAD_EPS)
    return optim.Adam(weight, lr=LR[opt], betas=BETAS, eps=ADAM_EPS)


def torch_optimizer(torch, opt: str, param):
    """torch's sparse-capable optimizer ``opt`` over ``param``."""
    if opt == "sgd":
        return torch.optim.SGD([param], lr=LR[opt])
    if opt == "momentum":
        return torch.optim.SGD([param], lr=LR[opt], momentum=MOMENTUM)
    if opt == "adagrad":
        return torch.optim.Adagrad([param], lr=LR[opt], eps=ADAGRAD_EPS)
    if opt == "adam":
        return torch.optim.SparseAdam([param], lr=LR[opt], betas=BETAS, eps=ADAM_EPS)
    raise ValueError(f"torch has no sparse {opt!r}")


def nbbag_fused_step(batch: StepBatch, weight: np.ndarray, opt: str):
    """The step through ``step_fused``: no gradient is built."""
    optimizer = nbbag_optimizer(opt, weight)
    ids, starts, grad_output = batch.ids, batch.starts, batch.grad_output
    catch_up = opt == "momentum"

    def step():
        if catch_up:
            optimizer.catch_up(ids)
        out, ctx = nbbag.embedding_bag_fwd(weight, ids, starts, mode=MODE)
        optimizer.step_fused(grad_output, ctx)
        return out

    return step


def nbbag_grad_step(batch: StepBatch, weight: np.ndarray, opt: str, to_scipy: bool):
    """The step through a ``RowSparseGrad`` (or its SciPy CSR) and ``opt.step``."""
    optimizer = nbbag_optimizer(opt, weight)
    ids, starts, grad_output = batch.ids, batch.starts, batch.grad_output

    def step():
        if opt == "momentum":
            optimizer.catch_up(ids)
        out, ctx = nbbag.embedding_bag_fwd(weight, ids, starts, mode=MODE)
        grad = nbbag.embedding_bag_bwd(grad_output, ctx)
        optimizer.step(grad.to_scipy() if to_scipy else grad)
        return out

    return step


def torch_step(torch, batch: StepBatch, weight: np.ndarray, opt: str):
    """torch's sparse step over a parameter sharing ``weight``'s memory."""
    param = torch.nn.Parameter(torch.from_numpy(weight))
    assert param.data_ptr() == weight.ctypes.data
    optimizer = torch_optimizer(torch, opt, param)
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


def tbe_step(batch: StepBatch, weight: np.ndarray, opt: str):
    """FBGEMM TBE's step (forward, then the backward that applies the optimizer) on its
    own copy of ``weight``: ``step.table``."""
    module = tbe.TBE([weight], opt, lr=LR[opt], eps=ADAGRAD_EPS, mode=MODE)
    indices, offsets = module.inputs([batch.ids], [batch.starts])
    grad_output = module.torch.from_numpy(batch.grad_output)

    def step():
        return module.step(indices, offsets, grad_output)

    step.table = module.weights[0]  # type: ignore[attr-defined]
    return step


def check_rows(actual: np.ndarray, expected: np.ndarray) -> None:
    """``actual`` close to ``expected`` (RTOL, ATOL), but for a fraction MAX_MISMATCH."""
    close = np.isclose(actual, expected, RTOL, ATOL)
    if close.mean() < 1 - MAX_MISMATCH:
        np.testing.assert_allclose(actual, expected, RTOL, ATOL)


def check_only_rows_changed(before: np.ndarray, after: np.ndarray, rows: np.ndarray):
    """No row outside ``rows`` differs between ``before`` and ``after``."""
    changed = np.flatnonzero((after != before).any(axis=1))
    assert np.isin(changed, rows).all(), "a row without a gradient changed"


def _dense_sgd(weight, grad, state, step):
    grad *= LR["sgd"]  # in place: no third (V, D) array at V = 10**7
    weight -= grad


def _dense_momentum(weight, grad, state, step):
    (buffer,) = state
    buffer *= MOMENTUM
    buffer += grad
    weight -= LR["momentum"] * buffer


def _dense_adagrad(weight, grad, state, step):
    (state_sum,) = state
    state_sum += grad * grad
    weight -= LR["adagrad"] * grad / (np.sqrt(state_sum) + ADAGRAD_EPS)


def _dense_rowwise_adagrad(weight, grad, state, step):
    (state_sum,) = state
    state_sum += (grad.astype(np.float64) ** 2).mean(axis=1)
    denominator = (np.sqrt(state_sum) + ADAGRAD_EPS).astype(weight.dtype)
    weight -= LR["rowwise_adagrad"] * grad / denominator[:, None]


def _dense_adam(weight, grad, state, step):
    """Adam on every row, eps added to sqrt(v) before the bias correction, where
    torch's SparseAdam and nbbag's Adam add it."""
    exp_avg, exp_avg_sq = state
    beta1, beta2 = BETAS
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    step_size = LR["adam"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    weight -= step_size * exp_avg / (np.sqrt(exp_avg_sq) + ADAM_EPS)


DENSE_UPDATES = {
    "sgd": _dense_sgd,
    "momentum": _dense_momentum,
    "adagrad": _dense_adagrad,
    "rowwise_adagrad": _dense_rowwise_adagrad,
    "adam": _dense_adam,
}


def _dense_state(opt: str, weight: np.ndarray) -> tuple[np.ndarray, ...]:
    """The optimizer's state, allocated once (zero pages until the first step)."""
    if opt == "rowwise_adagrad":
        return (np.zeros(weight.shape[0], dtype=np.float64),)
    count = {"sgd": 0, "adam": 2}.get(opt, 1)
    return tuple(np.zeros_like(weight) for _ in range(count))


def dense_step(batch: StepBatch, weight: np.ndarray, opt: str):
    """The NumPy step: dense gradient by scatter-add, dense update of every row."""
    ids, starts, grad_output = batch.ids, batch.starts, batch.grad_output
    inverse_lengths, bag_of_token = batch.inverse_lengths[:, None], batch.bag_of_token
    coefficients = batch.coefficients[:, None]
    state, update = _dense_state(opt, weight), DENSE_UPDATES[opt]
    step_count = 0

    def step():
        nonlocal step_count
        step_count += 1
        out = np.add.reduceat(weight[ids], starts, axis=0) * inverse_lengths
        grad = np.zeros_like(weight)
        np.add.at(grad, ids, coefficients * grad_output[bag_of_token])
        update(weight, grad, state, step_count)
        return out

    return step


def make_step(path: str, batch: StepBatch, weight: np.ndarray, opt: str, torch=None):
    """The step of ``path`` ("nbbag", "nbbag-grad", "nbbag-scipy", "torch", "dense",
    "tbe")."""
    if path == "nbbag":
        return nbbag_fused_step(batch, weight, opt)
    if path in ("nbbag-grad", "nbbag-scipy"):
        return nbbag_grad_step(batch, weight, opt, to_scipy=path == "nbbag-scipy")
    if path == "torch":
        return torch_step(torch, batch, weight, opt)
    if path == "dense":
        return dense_step(batch, weight, opt)
    if path == "tbe":
        return tbe_step(batch, weight, opt)
    raise ValueError(f"unknown step path {path!r}")
