"""Each optimizer as one record: its hyperparameters, its state, and its update rule.

Everything that dispatches on the optimizer is derived from these records: the front
(:mod:`nbbag.optim`) builds the state arrays, checks hyperparameters and writes
``state_dict`` from a :class:`Rule`; the CPU and GPU kernels (:mod:`nbbag.cpu.optim`,
:mod:`nbbag.cuda.optim`) apply the rule's step record.

A *step record* is a NamedTuple (its numbers, in a base class; the class itself adds
the rule) of what the kernels need for one step (the
hyperparameters, in the weight's dtype, and any per-step constant).  Its class names
the state arrays its kernels read and write (``reads``, in the rule's order) and
carries the update, in three shared functions (:mod:`nbbag.base.shared`: one source for both
targets) that every kernel calls in this order for each row it updates::

    begun = begin(step, row, grad_row, row_state, t)     # reads only
    for each element i of the row:
        element(step, begun, w, state_rows, i, grad_row[i])
    end(step, begun, row, row_state, t)                    # writes the row's scalars

``t`` is the step number, counted from 1; ``w`` is the row of the weight,
``state_rows`` a tuple of the same row of each per-element state array, ``row_state``
the tuple of per-row state arrays (one value per row).  On the GPU a group of threads
shares a row: all of them run ``begin``, each runs ``element`` on its own elements, one
runs ``end`` after the others have read the row, so ``begin`` may not write.

A rule that keeps rows exact while they go untouched (SGD with momentum or weight
decay) also has ``advance(step, last, target)`` (what the gradient-free steps
``last`` + 1 .. ``target`` do to a row) and ``advance_element(step, advanced, w,
state_rows, i)``, and keeps as its first per-row state the step each row was last
brought up to date at.  The catch-up kernels use these; its record carries the log of
the steps' hyperparameters, so that any schedule (a learning rate set every step) is
caught up exactly.

Adding an optimizer: a step record class with its three functions and a :class:`Rule`
here, a class in :mod:`nbbag.optim` that gives its signature, and its tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from numba import types
from numba.extending import overload

from nbbag.base.schedule import ScheduleLog, span
from nbbag.base.shared import shared


class Hyper(NamedTuple):
    """A hyperparameter: its name and the interval it must lie in."""

    name: str
    low: float = 0.0
    high: float = math.inf
    high_open: bool = False


class State(NamedTuple):
    """A state array: (V, D) for ``per="element"``, (V,) for ``per="row"``; of the
    weight's dtype unless ``dtype`` is given; filled with ``fill``, a number or the name
    of a constructor option."""

    name: str
    per: str
    dtype: str | None = None
    fill: float | str = 0.0
    low: float | None = None  # the least value a real run leaves (a checkpoint's check)


@dataclass(frozen=True)
class Rule:
    """An optimizer: its hyperparameters, its state and its step record.

    ``step(values, t, log)`` is the step record of step ``t`` (counted from 1) for the
    hyperparameters ``values`` (a dict by name, in float64); the kernels specialise on
    its class.  ``step_tracker`` names the per-row state that holds the step each row
    was last brought up to date at, if any.  A rule that changes rows without a
    gradient also gives ``step_matrix(values)`` (:mod:`nbbag.base.schedule`) and
    ``moves_rows(values)``: the optimizer then logs every step's matrix (``log``, a
    :class:`~nbbag.base.schedule.ScheduleLog`; None for the other rules).
    """

    name: str
    hypers: tuple[Hyper, ...]
    state: tuple[State, ...]
    step: Callable[..., NamedTuple]
    step_tracker: str | None = None
    step_matrix: Callable[[dict], tuple] | None = None
    moves_rows: Callable[[dict], bool] | None = None

    def hyper(self, name: str) -> Hyper:
        return next(h for h in self.hypers if h.name == name)


def catches_up(step_type: type) -> bool:
    """Whether a step record's rule changes rows that have no gradient."""
    return hasattr(step_type, "advance")


# -- the rules ---------------------------------------------------------------------------
@shared
def begin_nothing(step, row, grad_row, row_state, t):
    """``begin`` of a rule with no per-row value to compute."""
    return 0.0


@shared
def end_nothing(step, begun, row, row_state, t):
    """``end`` of a rule with no per-row state to write."""


class _PlainSGDNumbers(NamedTuple):
    lr: float


class PlainSGDStep(_PlainSGDNumbers):
    """SGD without momentum or weight decay: w -= lr g."""

    __slots__ = ()
    reads: tuple[str, ...] = ()

    begin = staticmethod(begin_nothing)

    @staticmethod
    @shared
    def element(step, begun, w, state_rows, i, g):
        w[i] -= step.lr * g

    end = staticmethod(end_nothing)


def sgd_step_matrix(values: dict) -> tuple:
    """One gradient-free step of SGD with the hyperparameters ``values``, as the 2x2
    matrix (a, b, c, d) that maps a weight element and its momentum (w, u) to
    (a w + b u, c w + d u).  With momentum, u' = m u + wd w and w' = w - lr u'; without,
    torch keeps no buffer, so u stays and w' = (1 - lr wd) w."""
    lr, momentum = values["lr"], values["momentum"]
    weight_decay = values["weight_decay"]
    if momentum == 0:
        return (1.0 - lr * weight_decay, 0.0, 0.0, 1.0)
    return (1.0 - lr * weight_decay, -lr * momentum, weight_decay, momentum)


def sgd_moves_rows(values: dict) -> bool:
    """Whether a step with ``values`` changes rows that have no gradient."""
    return bool(values["momentum"] or values["weight_decay"])


@shared
def _momentum_advance(step, last, target):
    """(steps, a, b, c, d): the steps ``last`` + 1 .. ``target`` without a gradient are
    w_k = a w + b u, u_k = c w + d u (:func:`nbbag.base.schedule.span`, in float64)."""
    a, b, c, d = span(step, last + 1, target)
    return target - last, a, b, c, d


@shared
def _momentum_advance_element(step, advanced, w, state_rows, i):
    steps, a, b, c, d = advanced
    if steps > 0:
        u = state_rows[0]
        w_i, u_i = w[i], u[i]
        w[i] = a * w_i + b * u_i
        u[i] = c * w_i + d * u_i


@shared
def _momentum_begin(step, row, grad_row, row_state, t):
    """The steps the row skipped before this one (its last_step is row_state[0])."""
    return _momentum_advance(step, row_state[0][row], t - 1)


@shared
def _momentum_element(step, begun, w, state_rows, i, g):
    _momentum_advance_element(step, begun, w, state_rows, i)
    if step.momentum == 0:  # torch keeps no buffer then: u is left as it is
        w[i] -= step.lr * (g + step.weight_decay * w[i])
    else:
        u = state_rows[0]
        u[i] = step.momentum * u[i] + (g + step.weight_decay * w[i])
        w[i] -= step.lr * u[i]


@shared
def _momentum_end(step, begun, row, row_state, t):
    row_state[0][row] = t


class _MomentumSGDNumbers(NamedTuple):
    lr: float
    momentum: float
    weight_decay: float
    # the log (the fields of a Schedule)
    starts: Any
    matrices: Any
    products: Any
    runs: int


class MomentumSGDStep(_MomentumSGDNumbers):
    """torch's SGD with momentum and/or L2 weight decay, exact for untouched rows.

    With no gradient one step is linear in a weight element w and its momentum u::

        u' = m u + wd w            w' = w - lr u' = (1 - lr wd) w - lr m u

    so k skipped steps are a product of k 2x2 matrices (:func:`sgd_step_matrix`), the
    same for every element of a row, taken from the optimizer's log of the steps'
    hyperparameters (its last four fields, :mod:`nbbag.base.schedule`: O(log k)
    products for any schedule) and applied when the row is next updated (``begin``)
    or caught up (``advance``).
    """

    __slots__ = ()
    reads = ("momentum_buffer", "last_step")
    advance = staticmethod(_momentum_advance)
    advance_element = staticmethod(_momentum_advance_element)
    begin = staticmethod(_momentum_begin)
    element = staticmethod(_momentum_element)
    end = staticmethod(_momentum_end)


def _sgd_step(values: dict, t: int, log: ScheduleLog):
    """Plain SGD's record while no logged step and not this one moves untouched rows;
    else the one that catches rows up through ``log``."""
    if sgd_moves_rows(values) or log.moves:
        return MomentumSGDStep(
            values["lr"], values["momentum"], values["weight_decay"], *log.schedule()
        )
    return PlainSGDStep(values["lr"])


SGD = Rule(
    name="SGD",
    hypers=(
        Hyper("lr"),
        Hyper("momentum", high=1.0),
        Hyper("weight_decay"),
    ),
    state=(
        State("momentum_buffer", "element"),
        State("last_step", "row", dtype="int64"),
    ),
    step=_sgd_step,
    step_tracker="last_step",
    step_matrix=sgd_step_matrix,
    moves_rows=sgd_moves_rows,
)


class _LearningRateAndEps(NamedTuple):
    lr: float
    eps: float


class AdagradStep(_LearningRateAndEps):
    """Adagrad, per element: s += g**2; w -= lr g / (sqrt(s) + eps)."""

    __slots__ = ()
    reads = ("state_sum",)

    begin = staticmethod(begin_nothing)

    @staticmethod
    @shared
    def element(step, begun, w, state_rows, i, g):
        squares = state_rows[0]
        squares[i] += g * g
        w[i] -= step.lr * g / (math.sqrt(squares[i]) + step.eps)

    end = staticmethod(end_nothing)


ADAGRAD = Rule(
    name="Adagrad",
    hypers=(Hyper("lr"), Hyper("eps")),
    state=(State("state_sum", "element", fill="initial_accumulator_value", low=0.0),),
    step=lambda values, t, log: AdagradStep(values["lr"], values["eps"]),
)


@shared
def squares_sum(values):
    """sum(values[i] ** 2) in float64, in eight running sums (element i goes to sum
    i % 8, each added in order; the sums added pairwise at the end).  Independent sums
    need not wait on one another: 25 against 40 ns a row of 64 float32 (measured)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    count = values.shape[0]
    whole = count - count % 8
    for i in range(0, whole, 8):
        s0 += float(values[i]) * values[i]
        s1 += float(values[i + 1]) * values[i + 1]
        s2 += float(values[i + 2]) * values[i + 2]
        s3 += float(values[i + 3]) * values[i + 3]
        s4 += float(values[i + 4]) * values[i + 4]
        s5 += float(values[i + 5]) * values[i + 5]
        s6 += float(values[i + 6]) * values[i + 6]
        s7 += float(values[i + 7]) * values[i + 7]
    for i in range(whole, count):
        s0 += float(values[i]) * values[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


class RowWiseAdagradStep(_LearningRateAndEps):
    """FBGEMM's exact row-wise Adagrad: s[r] += mean(g**2) over the row (in float64);
    w -= lr g / (sqrt(s[r]) + eps)."""

    __slots__ = ()
    reads = ("state_sum",)

    @staticmethod
    @shared
    def begin(step, row, grad_row, row_state, t):
        """(the row's new accumulator, the row's multiplier)."""
        accumulator = row_state[0][row]
        if grad_row.shape[0] > 0:
            accumulator += squares_sum(grad_row) / grad_row.shape[0]
        return accumulator, step.lr / (math.sqrt(accumulator) + step.eps)

    @staticmethod
    @shared
    def element(step, begun, w, state_rows, i, g):
        w[i] -= begun[1] * g

    @staticmethod
    @shared
    def end(step, begun, row, row_state, t):
        row_state[0][row] = begun[0]


ROW_WISE_ADAGRAD = Rule(
    name="RowWiseAdagrad",
    hypers=(Hyper("lr"), Hyper("eps")),
    state=(State("state_sum", "row", dtype="float64", low=0.0),),
    step=lambda values, t, log: RowWiseAdagradStep(values["lr"], values["eps"]),
)


class _AdamNumbers(NamedTuple):
    lr: float
    beta1: float
    beta2: float
    eps: float
    step_size: float


class AdamStep(_AdamNumbers):
    """Lazy Adam (torch's SparseAdam): only rows with a gradient move their moments;
    ``step_size`` = lr sqrt(1 - beta2**t) / (1 - beta1**t), the bias correction of
    the global step t."""

    __slots__ = ()
    reads = ("exp_avg", "exp_avg_sq")

    @staticmethod
    @shared
    def begin(step, row, grad_row, row_state, t):
        """(1 - beta1, 1 - beta2), in float64 as the update reads them."""
        return 1.0 - step.beta1, 1.0 - step.beta2

    @staticmethod
    @shared
    def element(step, begun, w, state_rows, i, g):
        exp_avg, exp_avg_sq = state_rows
        keep1, keep2 = begun
        exp_avg[i] += (g - exp_avg[i]) * keep1
        exp_avg_sq[i] += (g * g - exp_avg_sq[i]) * keep2
        w[i] -= step.step_size * exp_avg[i] / (math.sqrt(exp_avg_sq[i]) + step.eps)

    end = staticmethod(end_nothing)


def _adam_step(values: dict, t: int, log: None) -> AdamStep:
    beta1, beta2 = values["beta1"], values["beta2"]
    step_size = values["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    return AdamStep(values["lr"], beta1, beta2, values["eps"], step_size)


ADAM = Rule(
    name="Adam",
    hypers=(
        Hyper("lr"),
        Hyper("beta1", high=1.0, high_open=True),
        Hyper("beta2", high=1.0, high_open=True),
        Hyper("eps"),
    ),
    state=(State("exp_avg", "element"), State("exp_avg_sq", "element", low=0.0)),
    step=_adam_step,
)


# -- dispatch: a kernel calls these with a step record; they call its class's function ---
# The Python bodies run where device code runs as Python (the CUDA simulator); compiled
# code (CPU and GPU alike) picks the function at typing time from the record's class.
def begin(step, row, grad_row, row_state, t):
    return type(step).begin(step, row, grad_row, row_state, t)


def element(step, begun, w, state_rows, i, g):
    type(step).element(step, begun, w, state_rows, i, g)


def end(step, begun, row, row_state, t):
    type(step).end(step, begun, row, row_state, t)


def advance(step, last, target):
    return type(step).advance(step, last, target)


def advance_element(step, advanced, w, state_rows, i):
    type(step).advance_element(step, advanced, w, state_rows, i)


def element_or_advance(step, begun, w, state_rows, i, grad_row, g):
    """``element`` of element ``i`` with gradient ``grad_row[g]``, or, ``grad_row``
    None, ``advance_element`` (``begun`` then what ``advance`` returned): one call for
    the kernels that serve both an update and a catch-up (chosen at typing time)."""
    if grad_row is None:
        advance_element(step, begun, w, state_rows, i)
    else:
        element(step, begun, w, state_rows, i, grad_row[g])


@overload(begin)
def _begin(step, row, grad_row, row_state, t):
    function = step.instance_class.begin
    return lambda step, row, grad_row, row_state, t: function(
        step, row, grad_row, row_state, t
    )


@overload(element)
def _element(step, begun, w, state_rows, i, g):
    function = step.instance_class.element
    return lambda step, begun, w, state_rows, i, g: function(
        step, begun, w, state_rows, i, g
    )


@overload(end)
def _end(step, begun, row, row_state, t):
    function = step.instance_class.end
    return lambda step, begun, row, row_state, t: function(step, begun, row, row_state, t)


@overload(advance)
def _advance(step, last, target):
    function = step.instance_class.advance
    return lambda step, last, target: function(step, last, target)


@overload(advance_element)
def _advance_element(step, advanced, w, state_rows, i):
    function = step.instance_class.advance_element
    return lambda step, advanced, w, state_rows, i: function(
        step, advanced, w, state_rows, i
    )


@overload(element_or_advance, inline="always")
def _element_or_advance(step, begun, w, state_rows, i, grad_row, g):
    if isinstance(grad_row, (types.NoneType, types.Omitted)):

        def advancing(step, begun, w, state_rows, i, grad_row, g):
            advance_element(step, begun, w, state_rows, i)

        return advancing

    def updating(step, begun, w, state_rows, i, grad_row, g):
        element(step, begun, w, state_rows, i, grad_row[g])

    return updating


def state_rows(element_state, row):
    """The tuple of row ``row`` of each per-element state array (no copies); a rule
    keeps at most two."""
    return tuple(state[row] for state in element_state)


@overload(state_rows)
def _state_rows(element_state, row):
    count = len(element_state)
    if count == 0:
        return lambda element_state, row: ()
    if count == 1:
        return lambda element_state, row: (element_state[0][row],)
    if count == 2:
        return lambda element_state, row: (element_state[0][row], element_state[1][row])
    raise TypeError(f"a rule keeps at most two per-element state arrays, got {count}")
