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

Each optimizer is a record of :mod:`nbbag.rules` (its hyperparameters, state and
update); these classes hold the state, check their inputs before any kernel runs (bad
input leaves weight and state untouched) and hand the rest to the table's backend (a
device ``weight``, Numba, CuPy or torch CUDA, keeps its state on the device;
``state_dict`` returns host copies).  The step count and every other change of an
optimizer's own state happen here, after the backend's kernels have succeeded.

A float16 or bfloat16 table keeps its state in float32; each update is computed in
float32 from the table's values and rounded to the table's dtype: to nearest (ties to
even) by default, or stochastically with ``stochastic_rounding=True`` (each element
rounded up or down with probabilities that make the rounding unbiased, as FBGEMM offers
for its half tables; the random bits a hash of ``seed``, the step, the row and the
column: reproducible, and the same whatever the thread count).

``state_dir=`` (every optimizer, one table on the host) keeps the state arrays in new
``.npy`` files there, mapped into memory, as ``EmbeddingBag(..., path=...)`` keeps a
table: for tables larger than RAM.  They are written chunk by chunk when the optimizer
is made (an existing file is refused: a new optimizer starts from fresh state); a
checkpoint is ``state_dict()`` as for any optimizer (it copies the arrays into memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse

from nbbag import _files, rules
from nbbag._device import backend_for
from nbbag._validate import (
    check_flag,
    check_real,
    check_updatable_width,
    checked_state_array,
    is_integer,
)
from nbbag.base.dtypes import compute_dtype, is_half
from nbbag.base.records import BagContext
from nbbag.base.schedule import Schedule, ScheduleLog
from nbbag.collection import EmbeddingBagCollection
from nbbag.sparse import RowSparseGrad

__all__ = ["SGD", "Adagrad", "Adam", "CollectionOptimizer", "RowWiseAdagrad"]

# The most runs of equal hyperparameters SGD's log keeps (80 bytes each): a schedule
# that changes the learning rate every step flushes the table once in this many steps.
SCHEDULE_RUNS = 1 << 14


def _hyper_property(hyper: rules.Hyper) -> property:
    """A checked hyperparameter."""
    name = hyper.name

    def get(self) -> float:
        return self._values[name]

    def set(self, value) -> None:
        # O(1): the steps already taken are in the log with the values they had.
        self._values = {**self._values, name: _check_hyper(hyper, value)}

    return property(get, set, doc=f"The {name} hyperparameter.")


def _check_hyper(hyper: rules.Hyper, value, name: str | None = None) -> float:
    return check_real(value, name or hyper.name, hyper.low, hyper.high, hyper.high_open)


class _SparseOptimizer:
    """The machinery every optimizer shares, derived from its :class:`~nbbag.rules.Rule`:
    state arrays, hyperparameters, the two ways of stepping, catch-up, state_dict."""

    rule: rules.Rule
    state_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.state_names = tuple(spec.name for spec in cls.rule.state)
        cls.hyper_names = tuple(hyper.name for hyper in cls.rule.hypers)
        for hyper in cls.rule.hypers:
            if hyper.name not in cls.__dict__:
                setattr(cls, hyper.name, _hyper_property(hyper))

    def __new__(cls, weight=None, *args, **kwargs):
        """Built on an :class:`~nbbag.EmbeddingBagCollection`, an optimizer of this
        kind over each of its tables: a :class:`CollectionOptimizer`."""
        if isinstance(weight, EmbeddingBagCollection):
            return CollectionOptimizer(cls, weight, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        weight,
        *,
        options: dict | None = None,
        state_dir=None,
        stochastic_rounding=False,
        seed=None,
        **values,
    ):
        self._backend = backend_for(weight)
        self.weight = self._backend.check_table(
            weight, writeable_for="the optimizer updates it in place"
        )
        check_updatable_width(self.weight)
        self._rounding = _rounding_key(stochastic_rounding, seed, self.weight.dtype)
        self._values = {
            hyper.name: _check_hyper(hyper, values[hyper.name])
            for hyper in self.rule.hypers
        }
        options = options or {}
        num_rows, dim = self.weight.shape
        if state_dir is not None and self._backend.NAME != "cpu":
            raise ValueError("state_dir keeps state in files on the host: not on a GPU")
        specs = {}  # name: (shape, dtype, initial value)
        for spec in self.rule.state:
            shape = (num_rows, dim) if spec.per == "element" else (num_rows,)
            dtype = (
                compute_dtype(self.weight.dtype)
                if spec.dtype is None
                else np.dtype(spec.dtype)
            )
            fill = options[spec.fill] if isinstance(spec.fill, str) else spec.fill
            specs[spec.name] = (shape, dtype, fill)
        self.state_specs = specs  # a state file's layout (a cached table's, too)
        if state_dir is None:
            arrays = {
                name: self._backend.state_array(shape, fill, dtype)
                for name, (shape, dtype, fill) in specs.items()
            }
        else:
            arrays = _files.state_arrays(state_dir, specs)
        for name, array in arrays.items():
            setattr(self, name, array)
        self.step_count = 0
        # The log of the steps' hyperparameters, for rules that catch rows up.
        step_matrix, moves_rows = self.rule.step_matrix, self.rule.moves_rows
        self._log: ScheduleLog | None = None
        if step_matrix is not None and moves_rows is not None:
            self._log = ScheduleLog(SCHEDULE_RUNS, step_matrix, moves_rows)
        self._log_on_backend: Schedule | None = None  # its arrays on the table's backend

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        shape = "x".join(str(n) for n in self.weight.shape)
        return (
            f"{type(self).__name__}({values}, step_count={self.step_count}, "
            f"weight={shape} {self.weight.dtype})"
        )

    # -- what the kernels take ----------------------------------------------------------
    @property
    def step_type(self) -> type:
        """The class of the step record the kernels run now (see :mod:`nbbag.rules`)."""
        return type(self.rule.step(self._values, 1, self._log))

    def _record(self, t: int, dtype=None):
        """Step ``t``'s record, its numbers in ``dtype`` (the weight's compute dtype
        for an update: a float32 table, or a half table, is updated in float32
        arithmetic, as torch does; float64 if None), its log on the table's backend."""
        record = self.rule.step(self._values, t, self._log)
        if "runs" in record._fields:  # it carries the log
            on_backend = self._backend.sync_schedule(self._log, self._log_on_backend)
            self._log_on_backend = on_backend
            record = record._replace(**on_backend._asdict())
        if dtype is None:
            return record
        return type(record)(
            *(dtype.type(value) if isinstance(value, float) else value for value in record)
        )

    def _kernel_state(self, step_type: Any):
        """(per-element state arrays, per-row state arrays) that ``step_type`` reads."""
        specs = [spec for spec in self.rule.state if spec.name in step_type.reads]
        return (
            tuple(getattr(self, spec.name) for spec in specs if spec.per == "element"),
            tuple(getattr(self, spec.name) for spec in specs if spec.per == "row"),
        )

    def _check_writes(self, why: str) -> None:
        """The weight and the state arrays writeable (checked before each write: their
        flags may have been cleared since the optimizer was built)."""
        arrays = {"weight": self.weight}
        arrays.update((name, getattr(self, name)) for name in self.state_names)
        self._backend.check_writes(arrays, why)

    def _advance(self, apply) -> None:
        """Run ``apply(record, state, t)`` for the next step; the step count moves only
        once it has succeeded."""
        self._check_writes("the optimizer updates it in place")
        t = self.step_count + 1
        self._log_step(t)
        record = self._record(t, compute_dtype(self.weight.dtype))
        apply(record, self._kernel_state(type(record)), t)
        self.step_count = t

    # -- stepping -----------------------------------------------------------------------
    def step(self, grad) -> None:
        """Apply one step with a row-sparse gradient.

        Parameters
        ----------
        grad : RowSparseGrad or scipy.sparse matrix/array of the weight's shape (V, D)
            Duplicate entries of a SciPy gradient are summed.
        """
        grad = self._backend.as_gradient(self._as_row_sparse(grad), self.weight)
        self._advance(
            lambda record, state, t: self._backend.apply_gradient(
                record, self.weight, grad, state, t, self._rounding
            )
        )

    def step_fused(self, grad_output, ctx: BagContext) -> None:
        """``step(embedding_bag_bwd(grad_output, ctx))`` in one pass over the batch's
        rows, bit for bit the same result, without allocating the (U, D) gradient
        (each row's gradient goes through a small per-thread scratch block)."""
        grad_output = self._backend.check_grad_output(grad_output, ctx)
        if not self._backend.same_table(ctx.batch.weight, self.weight):
            raise ValueError(
                "ctx's forward read another array than this optimizer's weight"
            )
        self._advance(
            lambda record, state, t: self._backend.apply_fused(
                record, self.weight, grad_output, ctx, state, t, self._rounding
            )
        )

    def _as_row_sparse(self, grad) -> RowSparseGrad:
        return _row_sparse(grad, tuple(self.weight.shape))

    # -- catch-up -----------------------------------------------------------------------
    def catch_up(self, indices) -> None:
        """Bring the rows in ``indices`` up to date before they are read.  Only SGD
        with momentum or weight decay has anything to do; the others are always up to
        date (Adam by its lazy definition).

        Raises
        ------
        IndexError
            An index outside [0, V).
        """
        rows = self._backend.check_rows(indices, self.weight.shape[0])
        if rules.catches_up(self.step_type):
            self._check_writes("catch_up updates its rows in place")
            self._backend.catch_up(
                self._exact_record(), self.weight, rows, self._catch_up_state(),
                self.step_count, self._rounding,
            )  # fmt: skip

    def flush(self) -> None:
        """Bring every row up to date (before evaluation or a checkpoint)."""
        if rules.catches_up(self.step_type):
            self._check_writes("flush updates the rows in place")
            self._backend.catch_up_all(
                self._exact_record(), self.weight, self._catch_up_state(), self.step_count,
                self._rounding,
            )  # fmt: skip

    def _exact_record(self):
        """The record the catch-up runs: its numbers in float64."""
        return self._record(max(self.step_count, 1))

    def _catch_up_state(self):
        return self._kernel_state(self.step_type)

    # -- the log of the steps' hyperparameters (rules that catch rows up) ---------------
    def _log_step(self, t: int) -> None:
        """Log step ``t``'s hyperparameters before its kernels run (they read those of
        the steps before it); a full log is emptied first.  A step that then fails
        leaves an entry that the retry of step ``t`` takes over."""
        log = self._log
        if log is None:
            return
        if log.full and log.opens_run(self._values):
            self._restart_log(log)
        log.append(t, self._values)

    def _restart_log(self, log: ScheduleLog) -> None:
        """Bring every row up to date and forget the logged steps."""
        if rules.catches_up(self.step_type):
            self.flush()
        else:  # the logged steps leave untouched rows as they are
            self._backend.fill(getattr(self, str(self.rule.step_tracker)), self.step_count)
        log.restart()

    def _settle_log(self) -> None:
        """Before a checkpoint, which holds one set of hyperparameters: restart the log
        unless it is one run of the current ones."""
        log = self._log
        if log is not None and log.count and (log.count > 1 or log.opens_run(self._values)):
            self._restart_log(log)

    def _log_loaded(
        self, log: ScheduleLog, values: dict, last_step: np.ndarray, step_count: int
    ) -> None:
        """After a checkpoint is loaded: its rows behind were left behind with its
        hyperparameters, the steps since the oldest of them one run."""
        log.restart()
        oldest = int(last_step.min()) if last_step.size else step_count
        if oldest < step_count:
            log.append(oldest + 1, values)

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state as plain NumPy arrays and numbers (``np.savez``-able):
        the step count, the hyperparameters and copies of the per-row state.  SGD
        first brings every row up to date if its hyperparameters changed since then
        (the checkpoint holds one set)."""
        self._settle_log()
        state = {"optimizer": type(self).__name__, "step_count": self.step_count}
        state.update(self._values)
        state.update(
            {name: self._backend.to_host(getattr(self, name)) for name in self.state_names}
        )
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a ``state_dict()`` (also one loaded back from ``np.savez``); the
        weight itself is not part of it.

        Everything is checked before anything is changed, and a value no real run
        could leave is refused with a message naming its key: a ``step_count`` that is
        not a non-negative int, a hyperparameter out of its range, a state array of
        another shape or of a dtype that does not cast, a negative accumulator, or a
        row's ``last_step`` (SGD) below 0 or past ``step_count``.

        Raises
        ------
        TypeError
            ``state`` not a mapping, or a value of the wrong type.
        ValueError
            A missing key, a state for another optimizer, a value out of range.
        """
        arrays, values, step_count = self._checked_state(state)
        for key, array in arrays.items():
            self._backend.copy_into(getattr(self, key), array)
        self._values = values  # no flush: the state was replaced whole
        self.step_count = step_count
        if self._log is not None:
            tracker = str(self.rule.step_tracker)
            self._log_loaded(self._log, values, arrays[tracker], step_count)

    def _checked_state(self, state) -> tuple[dict, dict, int]:
        """``state``'s arrays by key, hyperparameters and step count, all checked."""
        if not isinstance(state, Mapping) and not hasattr(state, "files"):  # np.load
            raise TypeError(
                f"state must be a mapping (a state_dict(), or np.load of one), got "
                f"{type(state).__name__}"
            )
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
        step_count = _checked_step_count(state["step_count"])
        values = {
            hyper.name: _check_hyper(
                hyper, _scalar(state[hyper.name], hyper.name), f"state[{hyper.name!r}]"
            )
            for hyper in self.rule.hypers
        }
        arrays = {
            spec.name: self._checked_array(spec, state[spec.name], step_count)
            for spec in self.rule.state
        }
        return arrays, values, step_count

    def _checked_array(self, spec: rules.State, value, step_count: int) -> np.ndarray:
        key = spec.name
        theirs = checked_state_array(key, value, getattr(self, key))
        low, high = spec.low, None
        if key == self.rule.step_tracker:  # the step each row was last brought up to
            low, high = 0, step_count
        if theirs.size and low is not None and not np.all(theirs >= low):
            where = int(np.argmin((theirs >= low).reshape(-1)))  # NaN fails it too
            raise ValueError(
                f"state[{key!r}] must be >= {low} (a real run leaves no less), got "
                f"{theirs.reshape(-1)[where]} at flat position {where}"
            )
        if theirs.size and high is not None and theirs.max() > high:
            where = int(np.argmax(theirs.reshape(-1) > high))
            raise ValueError(
                f"state[{key!r}] must be <= step_count = {high}, got "
                f"{theirs.reshape(-1)[where]} at position {where}"
            )
        return theirs


def _rounding_key(stochastic_rounding, seed, dtype) -> int | None:
    """How a table of ``dtype`` has its updates rounded, as the kernels take it: None
    (to nearest; every float32/float64 table) or the key of stochastic rounding (from
    ``seed``, or a fresh random one)."""
    if not check_flag(stochastic_rounding, "stochastic_rounding"):
        if seed is not None:
            raise ValueError("seed is the seed of stochastic_rounding=True: leave it out")
        return None
    if not is_half(dtype):
        raise ValueError(
            f"stochastic_rounding=True rounds a float16 or bfloat16 table's updates; the "
            f"weight is {dtype} (its updates are not rounded)"
        )
    if seed is None:
        return int(np.random.default_rng().integers(1, 2**63))
    if not is_integer(seed):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed) & (2**63 - 1)


def _row_sparse(grad, shape: tuple) -> RowSparseGrad:
    """``grad`` (a RowSparseGrad or SciPy sparse) as a RowSparseGrad of ``shape``."""
    if scipy.sparse.issparse(grad):
        grad = RowSparseGrad.from_scipy(grad)
    if not isinstance(grad, RowSparseGrad):
        raise TypeError(
            f"grad must be a RowSparseGrad or a SciPy sparse matrix, got "
            f"{type(grad).__name__}"
        )
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(
            f"grad must have the weight's shape {tuple(shape)}, got {grad.shape}"
        )
    return grad


def _scalar(value, key: str):
    """A checkpoint's scalar: a number, or a 0-d array (np.savez makes one)."""
    array = np.asarray(value)
    if array.ndim != 0:
        raise TypeError(
            f"state[{key!r}] must be a number, got an array of shape {array.shape}"
        )
    return array.item()


def _checked_step_count(value) -> int:
    step_count = _scalar(value, "step_count")
    if isinstance(step_count, bool) or not isinstance(step_count, int):
        raise TypeError(f"state['step_count'] must be an int, got {step_count!r}")
    if step_count < 0:
        raise ValueError(f"state['step_count'] must not be negative, got {step_count}")
    return step_count


class SGD(_SparseOptimizer):
    """Sparse SGD with momentum and L2 weight decay, exactly as dense torch.optim.SGD.

    Parameters
    ----------
    weight : ndarray (V, D), float32, float64, float16 or bfloat16, C-contiguous
        Updated in place.
    lr : float
    momentum : float, default 0
    weight_decay : float, default 0
        L2 penalty added to the gradient (torch semantics).
    state_dir : path, optional
        Keep the state arrays in new ``.npy`` files there (see the module's docstring).
    stochastic_rounding : bool, default False
        For a float16/bfloat16 table: round each updated element up or down at random,
        unbiased, instead of to nearest (every optimizer takes this and ``seed``).
    seed : int, optional
        The seed of stochastic rounding (None: a fresh one); runs with the same seed
        round the same way, whatever the thread count.

    Notes
    -----
    With momentum or weight decay every row changes at every step, gradient or not.
    Rows are caught up in closed form when the optimizer touches them; call
    ``catch_up(indices)`` before a forward reads rows and ``flush()`` before reading the
    whole table.  Hyperparameters may change at any step (a learning-rate schedule)
    at O(1) cost: the optimizer logs each step's values (runs of equal ones kept once,
    at most ``SCHEDULE_RUNS`` runs, 80 bytes each; a full log costs one flush), and a
    row skipped for k steps is caught up exactly in O(log k).  Without momentum torch
    keeps no momentum buffer, and neither does this: a step with ``momentum=0`` leaves
    ``momentum_buffer`` as it is, for when momentum is turned back on.

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

    rule = rules.SGD
    # hyperparameters: checked properties made from the rule (for type checkers here)
    lr: float
    momentum: float
    weight_decay: float

    def __init__(
        self, weight, lr, momentum=0.0, weight_decay=0.0, *, state_dir=None,
        stochastic_rounding=False, seed=None,
    ):  # fmt: skip
        super().__init__(
            weight, lr=lr, momentum=momentum, weight_decay=weight_decay,
            state_dir=state_dir, stochastic_rounding=stochastic_rounding, seed=seed,
        )  # fmt: skip


class Adagrad(_SparseOptimizer):
    """Sparse Adagrad, as torch.optim.Adagrad on sparse gradients (= dense Adagrad).

    ``state_sum += g**2``, ``w -= lr * g / (sqrt(state_sum) + eps)``, per element.
    """

    rule = rules.ADAGRAD
    lr: float
    eps: float

    def __init__(
        self, weight, lr, eps=1e-10, initial_accumulator_value=0.0, *, state_dir=None,
        stochastic_rounding=False, seed=None,
    ):  # fmt: skip
        initial = check_real(initial_accumulator_value, "initial_accumulator_value")
        super().__init__(
            weight, lr=lr, eps=eps, options={"initial_accumulator_value": initial},
            state_dir=state_dir, stochastic_rounding=stochastic_rounding, seed=seed,
        )  # fmt: skip


class RowWiseAdagrad(_SparseOptimizer):
    """FBGEMM's exact row-wise Adagrad: one accumulator per row.

    ``state[r] += mean(g**2)`` over the row, ``w -= lr * g / (sqrt(state[r]) + eps)``.
    """

    rule = rules.ROW_WISE_ADAGRAD
    lr: float
    eps: float

    def __init__(
        self, weight, lr, eps=1e-10, *, state_dir=None, stochastic_rounding=False,
        seed=None,
    ):  # fmt: skip
        super().__init__(
            weight, lr=lr, eps=eps, state_dir=state_dir,
            stochastic_rounding=stochastic_rounding, seed=seed,
        )  # fmt: skip


class Adam(_SparseOptimizer):
    """Lazy Adam, as torch.optim.SparseAdam: only rows with a gradient update their
    moments; bias correction uses the optimizer's step count."""

    rule = rules.ADAM
    lr: float
    beta1: float
    beta2: float
    eps: float

    def __init__(
        self, weight, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, state_dir=None,
        stochastic_rounding=False, seed=None,
    ):  # fmt: skip
        super().__init__(
            weight, lr=lr, eps=eps, state_dir=state_dir,
            stochastic_rounding=stochastic_rounding, seed=seed, **_split_betas(betas),
        )  # fmt: skip

    @property
    def betas(self) -> tuple[float, float]:
        return self.beta1, self.beta2

    @betas.setter
    def betas(self, value) -> None:
        checked = _split_betas(value)
        self.beta1, self.beta2 = checked["beta1"], checked["beta2"]


def _split_betas(betas) -> dict:
    """``betas`` as {"beta1": ..., "beta2": ...}, each checked to lie in [0, 1)."""
    try:
        pair = tuple(betas)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return {
        name: _check_hyper(rules.ADAM.hyper(name), beta, f"betas[{i}]")
        for i, (name, beta) in enumerate(zip(("beta1", "beta2"), pair, strict=True))
    }


class CollectionOptimizer:
    """One optimizer over every table of an :class:`~nbbag.EmbeddingBagCollection`,
    made by any optimizer class given the collection
    (``nbbag.optim.Adagrad(coll, lr=0.1)``).

    The state is per table (per row, as each optimizer keeps it: a table's rows are
    caught up exactly, on their own), one step count for the collection.  Under it,
    one optimizer of the class per stack of the collection (tables of one D and mode).

    Attributes
    ----------
    collection : the collection
    kind : the optimizer class
    the class's hyperparameters (``lr``, ...) : read and set for every table at once
    """

    def __init__(self, kind: type, collection: EmbeddingBagCollection, *args, **kwargs):
        if kwargs.get("state_dir") is not None:
            raise ValueError("state_dir is for an optimizer of one table, not a collection")
        parts = [kind(weight, *args, **kwargs) for weight, _ in collection.stacks()]
        object.__setattr__(self, "collection", collection)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "_tables", [tables for _, tables in collection.stacks()])

    def __getattr__(self, name: str):
        if name in self.kind.hyper_names or name == "betas":
            return getattr(self._parts[0], name)
        raise AttributeError(f"{self.kind.__name__} over a collection has no {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name not in self.kind.hyper_names and name != "betas":
            raise AttributeError(f"cannot set {name!r} on an optimizer over a collection")
        for part in self._parts:  # the first checks the value before any is changed
            setattr(part, name, value)

    @property
    def step_count(self) -> int:
        return self._parts[0].step_count

    @property
    def step_type(self) -> type:
        return self._parts[0].step_type

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self._parts[0]._values.items())
        tables = len(self.collection.tables)
        return (
            f"{self.kind.__name__}({values}, step_count={self.step_count}, "
            f"collection of {tables} tables)"
        )

    # -- what the collection calls ----------------------------------------------------
    @property
    def catches_up(self) -> bool:
        """Whether the rule changes rows without a gradient: a forward catches up the
        rows it reads first (:meth:`catch_up_stacks`)."""
        return rules.catches_up(self.step_type)

    def catch_up_stacks(self, ids_per_stack) -> None:
        """Catch up the rows each stack's forward is about to read."""
        for part, ids in zip(self._parts, ids_per_stack, strict=True):
            part.catch_up(ids)

    def step_fused_stacks(self, grads, contexts) -> None:
        """One fused step of every stack; all or none (what can fail is checked
        first)."""
        for part in self._parts:
            part._check_writes("the optimizer updates it in place")
        for part, grad, ctx in zip(self._parts, grads, contexts, strict=True):
            part.step_fused(grad, ctx)

    # -- the public methods -----------------------------------------------------------
    def step(self, grads: Mapping) -> None:
        """One step with ``{table name: RowSparseGrad or SciPy sparse (V, D)}`` (a
        table left out has no gradient this step; it still counts as a step)."""
        if not isinstance(grads, Mapping):
            raise TypeError(
                f"grads must be a mapping of table name to gradient, got "
                f"{type(grads).__name__}"
            )
        known = {name for tables in self._tables for name, _, _ in tables}
        for name in grads:
            if name not in known:
                raise ValueError(f"grads: unknown table {name!r}, the tables are {known}")
        stacked = []
        for part, tables in zip(self._parts, self._tables, strict=True):
            rows, values = [], []
            for name, base, _ in tables:
                if name not in grads:
                    continue
                weight = self.collection.weights[name]
                try:
                    grad = _row_sparse(grads[name], weight.shape)
                except (TypeError, ValueError) as error:
                    raise type(error)(f"grads[{name!r}]: {error}") from None
                rows.append(np.asarray(grad.rows) + base)
                values.append(np.asarray(grad.values, dtype=compute_dtype(weight.dtype)))
            dim = part.weight.shape[1]
            stacked.append(
                RowSparseGrad(
                    np.concatenate(rows) if rows else np.empty(0, np.int64),
                    np.concatenate(values)
                    if values
                    else np.empty((0, dim), compute_dtype(part.weight.dtype)),
                    part.weight.shape,
                )
            )
        for part in self._parts:
            part._check_writes("the optimizer updates it in place")
        for part, grad in zip(self._parts, stacked, strict=True):
            part.step(grad)

    def flush(self) -> None:
        """Bring every row of every table up to date."""
        for part in self._parts:
            part.flush()

    def state_dict(self) -> dict:
        """Plain arrays and numbers: the step count, the hyperparameters, and each
        table's state arrays under ``"<table>/<state>"``."""
        parts = [part.state_dict() for part in self._parts]
        state = {
            key: value
            for key, value in parts[0].items()
            if not isinstance(value, np.ndarray)
        }
        for part_state, tables in zip(parts, self._tables, strict=True):
            for name, base, num_rows in tables:
                for key in self.kind.state_names:
                    state[f"{name}/{key}"] = part_state[key][base : base + num_rows].copy()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict`; everything is checked before anything is
        changed (as a single optimizer's ``load_state_dict``)."""
        if not isinstance(state, Mapping) and not hasattr(state, "files"):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        assembled = []
        for part, tables in zip(self._parts, self._tables, strict=True):
            # the stack's own arrays (its spare padding row's state stays as it is)
            part_state = {
                key: part._backend.to_host(getattr(part, key)).copy()
                for key in self.kind.state_names
            }
            part_state.update({key: state[key] for key in state if "/" not in key})
            for name, base, num_rows in tables:
                for key in self.kind.state_names:
                    entry = f"{name}/{key}"
                    if entry not in state:
                        raise ValueError(f"state lacks {entry!r}")
                    rows = part_state[key][base : base + num_rows]
                    rows[...] = checked_state_array(entry, state[entry], rows)
            part._checked_state(part_state)
            assembled.append(part_state)
        for part, part_state in zip(self._parts, assembled, strict=True):
            part.load_state_dict(part_state)
