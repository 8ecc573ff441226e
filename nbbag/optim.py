"""Lazy sparse optimizers: update only the rows a gradient touches, and their state.

``step(grad)`` takes a :class:`~nbbag.RowSparseGrad` or any SciPy sparse (V, D);
``step_fused(grad_output, ctx)`` does the backward and the update in one pass over the
batch's rows, without building a gradient, with the same result.

For plain SGD and Adagrad, updating only the touched rows is exactly the dense update.
For SGD with momentum or weight decay it is not (an untouched row still decays and
moves along its momentum), so :class:`SGD` keeps, per row, the step it was last brought
up to date at, and catches a row up in closed form before touching it: call
``catch_up(indices)`` before a forward reads those rows (``EmbeddingBag.attach`` does it
for you) and ``flush()`` before reading the whole table; training then equals dense
``torch.optim.SGD``.  :class:`Adam` is lazy, like ``torch.optim.SparseAdam``: a row's
moments only change when the row has a gradient.

On a GPU (a device ``weight``: Numba, CuPy, torch CUDA) the state lives on the device
and the kernels of :mod:`nbbag.cuda.optim` run; ``state_dict`` returns host copies.
The CPU kernels live in :mod:`nbbag.cpu.optim`; these classes hold the state and check
their inputs before any kernel runs, so bad input leaves weight and state untouched.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.sparse

from nbbag._device import cuda_backend, is_device_array
from nbbag._memory import aligned_empty, aligned_full, padded_length
from nbbag._validate import (
    BagContext,
    check_grad_output,
    check_index_range,
    check_indices,
    check_real,
    check_weight,
    flat_contiguous,
)
from nbbag.cpu import optim as kernels
from nbbag.cpu.forward import lanes_for
from nbbag.functional import group_tokens
from nbbag.sparse import RowSparseGrad

__all__ = ["SGD", "Adagrad", "Adam", "RowWiseAdagrad"]


# name: (slot in the kernels' hyper array, low, high, high end open)
HYPERPARAMETERS = {
    "lr": (kernels.LR, 0.0, math.inf, False),
    "momentum": (kernels.MOMENTUM, 0.0, 1.0, False),
    "weight_decay": (kernels.WEIGHT_DECAY, 0.0, math.inf, False),
    "eps": (kernels.EPS, 0.0, math.inf, False),
    "beta1": (kernels.BETA1, 0.0, 1.0, True),
    "beta2": (kernels.BETA2, 0.0, 1.0, True),
}


def _check_hyper(name: str, value) -> float:
    _, low, high, high_open = HYPERPARAMETERS[name]
    return check_real(value, name, low, high, high_open)


def _hyper_property(name: str) -> property:
    """A checked hyperparameter stored in the array the kernels read."""
    slot = HYPERPARAMETERS[name][0]

    def get(self) -> float:
        return float(self._hyper[slot])

    def set(self, value) -> None:
        value = _check_hyper(name, value)
        self._before_hyper_change()
        self._hyper[slot] = value

    return property(get, set, doc=f"The {name} hyperparameter.")


class _SparseOptimizer:
    """The shared machinery: state arrays, the two ways of stepping, state_dict."""

    kind: int
    # names of the per-row state arrays this optimizer keeps, and of its hyperparameters
    state_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ("lr",)

    def __init__(self, weight, **hyper):
        # On a GPU (a device weight) the state lives on the device too and the
        # kernels of nbbag.cuda.optim run; _gpu is that backend's front, else None.
        self._gpu = cuda_backend() if is_device_array(weight) else None
        if self._gpu is not None:
            weight = self._gpu.check_optimizer_weight(weight)
        else:
            check_weight(weight)
            if not weight.flags.writeable:
                raise ValueError(
                    "weight must be writeable: the optimizer updates it in place"
                )
        self.weight = weight
        self.step_count = 0
        self._hyper = np.zeros(kernels.HYPER_SIZE)
        self._empty_table = self._full((0, 0), 0, weight.dtype)
        self._empty_rows = self._full(0, 0, weight.dtype)
        self._no_steps = self._full(0, 0, np.int64)
        checked = {name: _check_hyper(name, value) for name, value in hyper.items()}
        for name, value in checked.items():
            self._hyper[HYPERPARAMETERS[name][0]] = value

    lr = _hyper_property("lr")

    def _full(self, shape, value, dtype):
        """A state array on the weight's device (64-byte aligned on the CPU)."""
        if self._gpu is not None:
            return self._gpu.state_full(shape, value, dtype)
        if isinstance(shape, tuple) and len(shape) == 2 and shape[0]:
            return aligned_full(shape, value, dtype)
        return np.full(shape, value, dtype=dtype)

    def _before_hyper_change(self) -> None:
        """Hook: SGD's catch-up must finish with the old hyperparameters."""

    # -- the state the kernels take, empty where unused ------------------------------
    def _kernel_state(self):
        return (self._empty_table, self._empty_table, self._empty_rows, self._no_steps)

    def step(self, grad) -> None:
        """Apply one step with a row-sparse gradient.

        Parameters
        ----------
        grad : RowSparseGrad or scipy.sparse matrix/array of the weight's shape (V, D)
            Duplicate entries of a SciPy gradient are summed.
        """
        grad = self._as_row_sparse(grad)
        if self._gpu is not None:
            self._gpu.optimizer_step(self, grad)
            return
        self.step_count += 1
        kernels.apply_row_gradients(
            self.kind,
            self.weight,
            grad.rows,
            grad.values,
            *self._kernel_state(),
            self._hyper,
            self.step_count,
        )

    def step_fused(self, grad_output, ctx: BagContext) -> None:
        """``step(embedding_bag_bwd(grad_output, ctx))`` in one pass over the batch's
        rows, bit for bit the same result, without allocating the (U, D) gradient
        (each row's gradient goes through a small per-thread scratch block)."""
        if self._gpu is not None:
            self._gpu.optimizer_step_fused(self, grad_output, ctx)
            return
        grad_output = check_grad_output(grad_output, ctx)
        if ctx.batch.weight is not self.weight:
            raise ValueError(
                "ctx's forward read another array than this optimizer's weight"
            )
        groups = group_tokens(ctx)
        # A block of scratch rows per thread, each row padded to whole cache lines:
        # threads never write the same line.
        scratch = aligned_empty(
            (
                numba.get_num_threads(),
                kernels.FUSED_BLOCK,
                padded_length(self.weight.shape[1], self.weight.itemsize),
            ),
            self.weight.dtype,
        )
        self.step_count += 1
        kernels.apply_fused(
            self.kind,
            self.weight,
            grad_output,
            *groups.token_args(),
            groups.rows,
            groups.value_index,
            ctx.batch.scale_grad_by_freq,
            *self._kernel_state(),
            self._hyper,
            self.step_count,
            scratch,
            lanes_for(self.weight.shape[1]),
        )

    def catch_up(self, indices) -> None:
        """Bring the rows in ``indices`` up to date before they are read.  Only SGD
        with momentum or weight decay has anything to do; the others are always up to
        date (Adam by its lazy definition).

        Raises
        ------
        IndexError
            An index outside [0, V).
        """
        if self._gpu is not None:
            self._catch_up(self._gpu.check_catch_up_indices(indices, self.weight.shape[0]))
            return
        indices = check_indices(indices)
        check_index_range(indices, self.weight.shape[0])
        self._catch_up(flat_contiguous(indices))

    def _catch_up(self, indices: np.ndarray) -> None:
        """Hook: bring these (valid, possibly repeated) rows up to date."""

    def flush(self) -> None:
        """Bring every row up to date (before evaluation or a checkpoint)."""

    def _as_row_sparse(self, grad) -> RowSparseGrad:
        if scipy.sparse.issparse(grad):
            grad = RowSparseGrad.from_scipy(grad)
        if not isinstance(grad, RowSparseGrad):
            raise TypeError(
                f"grad must be a RowSparseGrad or a SciPy sparse matrix, got "
                f"{type(grad).__name__}"
            )
        if tuple(grad.shape) != self.weight.shape:
            raise ValueError(
                f"grad must have the weight's shape {self.weight.shape}, got {grad.shape}"
            )
        if grad.values.dtype != self.weight.dtype and isinstance(grad.values, np.ndarray):
            grad = RowSparseGrad._trusted(
                grad.rows, grad.values.astype(self.weight.dtype), grad.shape
            )
        return grad

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state as plain NumPy arrays and numbers (``np.savez``-able):
        the step count, the hyperparameters and copies of the per-row state."""
        state = {"optimizer": type(self).__name__, "step_count": self.step_count}
        state.update({name: getattr(self, name) for name in self.hyper_names})
        state.update({name: self._state_copy(name) for name in self.state_names})
        return state

    def _state_copy(self, name: str) -> np.ndarray:
        array = getattr(self, name)
        return array.copy() if self._gpu is None else self._gpu.state_to_host(array)

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` (also one loaded back from ``np.savez``); the
        weight itself is not part of it.  Everything is checked before anything is
        changed."""
        saved_for = str(np.asarray(state.get("optimizer", "")))
        if saved_for != type(self).__name__:
            raise ValueError(
                f"state is for optimizer {saved_for!r}, not {type(self).__name__}"
            )
        missing = [
            key
            for key in (*self.state_names, *self.hyper_names, "step_count")
            if key not in state
        ]
        if missing:
            raise ValueError(f"state lacks {missing} for {type(self).__name__}")
        for key in self.state_names:
            ours, theirs = getattr(self, key), np.asarray(state[key])
            if theirs.shape != ours.shape:
                raise ValueError(
                    f"state[{key!r}] has shape {theirs.shape}, expected {ours.shape}"
                )
            if not np.can_cast(theirs.dtype, ours.dtype, casting="same_kind"):
                raise ValueError(
                    f"state[{key!r}] has dtype {theirs.dtype}, expected {ours.dtype}"
                )
        hyper = {
            name: _check_hyper(name, np.asarray(state[name]).item())
            for name in self.hyper_names
        }
        step_count = int(np.asarray(state["step_count"]))
        for key in self.state_names:
            if self._gpu is not None:
                self._gpu.state_from_host(getattr(self, key), np.asarray(state[key]))
            else:
                np.copyto(getattr(self, key), np.asarray(state[key]), casting="same_kind")
        for name, value in hyper.items():  # no flush: the state was replaced whole
            self._hyper[HYPERPARAMETERS[name][0]] = value
        self.step_count = step_count


class SGD(_SparseOptimizer):
    """Sparse SGD with momentum and L2 weight decay, exactly as dense torch.optim.SGD.

    Parameters
    ----------
    weight : ndarray (V, D), float32 or float64, C-contiguous
        Updated in place.
    lr : float
    momentum : float, default 0
    weight_decay : float, default 0
        L2 penalty added to the gradient (torch semantics).

    Notes
    -----
    With momentum or weight decay every row changes at every step, gradient or not.
    Rows are caught up in closed form when the optimizer touches them; call
    ``catch_up(indices)`` before a forward reads rows and ``flush()`` before reading the
    whole table.  Changing a hyperparameter flushes first, so the skipped steps are
    applied with the values they were taken with.

    Examples
    --------
    >>> import numpy as np, nbbag
    >>> weight = np.ones((5, 2))
    >>> opt = nbbag.optim.SGD(weight, lr=0.1, momentum=0.9, weight_decay=0.01)
    >>> opt.step(nbbag.RowSparseGrad(np.array([1]), np.ones((1, 2)), (5, 2)))
    >>> opt.flush()  # row 0 decayed too, as in dense SGD
    >>> weight[:2, 0].round(6)
    array([0.999, 0.899])
    """

    kind = kernels.SGD
    hyper_names = ("lr", "momentum", "weight_decay")

    def __init__(self, weight, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(weight, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.momentum_buffer = self._full(self.weight.shape, 0, self.weight.dtype)
        self.last_step = self._full(self.weight.shape[0], 0, np.int64)

    momentum = _hyper_property("momentum")
    weight_decay = _hyper_property("weight_decay")

    state_names = ("momentum_buffer", "last_step")

    @property
    def _needs_catch_up(self) -> bool:
        return self.momentum != 0 or self.weight_decay != 0

    def _before_hyper_change(self) -> None:
        if self._needs_catch_up:
            self.flush()  # the skipped steps were taken with the old values
        elif self._gpu is not None:  # plain SGD is exact: every row is up to date now
            self._gpu.fill(self.last_step, self.step_count)
        else:
            self.last_step[:] = self.step_count

    def _kernel_state(self):
        if not self._needs_catch_up:
            return super()._kernel_state()
        return (self.momentum_buffer, self._empty_table, self._empty_rows, self.last_step)

    def flush(self) -> None:
        if self._gpu is not None:
            if self._needs_catch_up:
                self._gpu.sgd_flush(self)
            return
        self._catch_up(np.arange(self.weight.shape[0]))

    def _catch_up(self, indices: np.ndarray) -> None:
        if not self._needs_catch_up:
            return
        if self._gpu is not None:
            self._gpu.sgd_catch_up(self, indices)
            return
        rows, behind = kernels.rows_behind(indices, self.last_step, self.step_count)
        kernels.advance_rows(self.weight, rows, behind, self.momentum_buffer, self._hyper)


class Adagrad(_SparseOptimizer):
    """Sparse Adagrad, as torch.optim.Adagrad on sparse gradients (= dense Adagrad).

    ``state_sum += g**2``, ``w -= lr * g / (sqrt(state_sum) + eps)``, per element.
    """

    kind = kernels.ADAGRAD
    state_names = ("state_sum",)
    hyper_names = ("lr", "eps")

    def __init__(self, weight, lr, eps=1e-10, initial_accumulator_value=0.0):
        super().__init__(weight, lr=lr, eps=eps)
        initial = check_real(initial_accumulator_value, "initial_accumulator_value")
        self.state_sum = self._full(self.weight.shape, initial, self.weight.dtype)

    eps = _hyper_property("eps")

    def _kernel_state(self):
        return (self.state_sum, self._empty_table, self._empty_rows, self._no_steps)


class RowWiseAdagrad(Adagrad):
    """FBGEMM's exact row-wise Adagrad: one accumulator per row.

    ``state[r] += mean(g**2)`` over the row, ``w -= lr * g / (sqrt(state[r]) + eps)``.
    """

    kind = kernels.ROW_WISE_ADAGRAD
    state_names = ("state_sum",)

    def __init__(self, weight, lr, eps=1e-10):
        _SparseOptimizer.__init__(self, weight, lr=lr, eps=eps)
        self.state_sum = self._full(self.weight.shape[0], 0, np.float64)

    def _kernel_state(self):
        return (self._empty_table, self._empty_table, self.state_sum, self._no_steps)


class Adam(_SparseOptimizer):
    """Lazy Adam, as torch.optim.SparseAdam: only rows with a gradient update their
    moments; bias correction uses the optimizer's step count."""

    kind = kernels.ADAM
    state_names = ("exp_avg", "exp_avg_sq")
    hyper_names = ("lr", "beta1", "beta2", "eps")

    def __init__(self, weight, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(weight, lr=lr, eps=eps, **_split_betas(betas))
        self.exp_avg = self._full(self.weight.shape, 0, self.weight.dtype)
        self.exp_avg_sq = self._full(self.weight.shape, 0, self.weight.dtype)

    eps = _hyper_property("eps")
    beta1 = _hyper_property("beta1")
    beta2 = _hyper_property("beta2")

    @property
    def betas(self) -> tuple[float, float]:
        return self.beta1, self.beta2

    @betas.setter
    def betas(self, value) -> None:
        checked = _split_betas(value)
        self.beta1, self.beta2 = checked["beta1"], checked["beta2"]

    def _kernel_state(self):
        return (self.exp_avg, self.exp_avg_sq, self._empty_rows, self._no_steps)


def _split_betas(betas) -> dict:
    """``betas`` as {"beta1": ..., "beta2": ...}, each checked to lie in [0, 1)."""
    try:
        pair = tuple(betas)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return {
        name: check_real(beta, f"betas[{i}]", 0.0, 1.0, high_open=True)
        for i, (name, beta) in enumerate(zip(("beta1", "beta2"), pair, strict=True))
    }
