"""CPU optimizer kernels: update only the rows a gradient touches, and their state.

One per-row template, :func:`update_row`, serves every optimizer: it runs the rule of
the step record it is given (:mod:`nbbag.rules`; Numba compiles one specialisation per
rule, so a kernel holds only the rule it runs).  Two ways in: :func:`apply_row_gradients`
takes a row-sparse gradient, :func:`apply_fused` computes each row's gradient from the
forward's tokens (:func:`nbbag.cpu.backward.row_gradient`) into a per-thread scratch
block of FUSED_BLOCK rows and applies them, so no (U, D) gradient is ever built.  Both
give bit-identical results.

Arguments: ``step`` a rule's step record; ``weight`` (V, D), a half table as its integer
view (:mod:`nbbag.base.dtypes`); ``element_state`` the tuple of the rule's (V, D) state
arrays and ``row_state`` of its (V,) ones (float32 for a half table); ``t`` the step
number, counted from 1; ``rounding`` how a half table's updates are rounded: None (to
nearest, ties to even) or the key of stochastic rounding (:mod:`nbbag.cpu.elements`);
not read for float tables.

Exact catch-up (rules with ``advance``: SGD with momentum or weight decay): a row's
first per-row state is the step it was last brought up to date at; a row is caught up
before its gradient is applied, and on request (:func:`catch_up_rows`) before it is read.
"""

import numpy as np
from numba import njit, prange
from numba.extending import overload

from nbbag import rules
from nbbag.cpu import PARALLEL
from nbbag.cpu._intrinsics import prefetch_item, prefetch_row
from nbbag.cpu.backward import row_gradient
from nbbag.cpu.elements import update_elements

# Rows whose gradients the fused step computes before it applies their updates: two
# loops over a block overlap more cache misses than one alternating the two (16 rows:
# -17%; 256 rows, whose gradients still fit in L2: another -5 to -9%).
FUSED_BLOCK = 256
# Rows ahead whose weight and state are prefetched: an update is a read-modify-write of
# random rows of a table far larger than the cache, latency-bound like the forward.
ROW_PREFETCH_DISTANCE = 8


def _prefetch_states(element_state, row):
    """Prefetch row ``row`` of each per-element state array."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


def _prefetch_row_states(row_state, row):
    """Prefetch item ``row`` of each per-row state array."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@njit(cache=True, inline="always")
def _prefetch_whole_row(table, row):
    prefetch_row(table, row, None)


def _each_state(prefetch):
    """The overload of a ``(states, row)`` stub that runs ``prefetch(array, row)`` on
    each array of ``states`` (a tuple of at most two: the rules keep no more)."""

    def each_state(states, row):
        count = len(states)
        if count == 0:
            return lambda states, row: None
        if count == 1:
            return lambda states, row: prefetch(states[0], row)

        def prefetch_two(states, row):
            prefetch(states[0], row)
            prefetch(states[1], row)

        return prefetch_two

    return each_state


overload(_prefetch_states, inline="always")(_each_state(_prefetch_whole_row))
overload(_prefetch_row_states, inline="always")(_each_state(prefetch_item))


@njit(cache=True, inline="always")
def prefetch_update(row, weight, element_state, row_state):
    """Start loading the rows :func:`update_row` will read and write for ``row``."""
    prefetch_row(weight, row, None)
    _prefetch_states(element_state, row)
    _prefetch_row_states(row_state, row)


@njit(cache=True, inline="always")
def _prefetch_gradient(grad_output, groups, k, lanes):
    """Start loading the row of ``grad_output`` that row k's first token reads."""
    bag = groups.bag_of[groups.positions[groups.row_ptr[k]]]
    if bag >= 0:
        prefetch_row(grad_output, bag, lanes)


# Inlined into the calling kernels (Numba IR): inside a parfor the arrays are known not
# to alias, so LLVM vectorises the element loop; a separate function stayed scalar
# (Adam's update 2x slower).
@njit(cache=True, inline="always")
def update_row(step, row, grad_row, weight, element_state, row_state, t, rounding=None):
    """Apply step ``t`` of ``step``'s rule to ``weight[row]`` with gradient
    ``grad_row``, reading and writing only that row of the state.

    Ownership: the caller owns row ``row`` of weight and of every state array.
    """
    begun = rules.begin(step, row, grad_row, row_state, t)
    state_rows = rules.state_rows(element_state, row)
    update_elements(step, begun, weight, row, grad_row, state_rows, rounding, t)
    rules.end(step, begun, row, row_state, t)


@njit(parallel=PARALLEL, cache=True)
def apply_row_gradients(
    step, weight, rows, values, element_state, row_state, t, rounding=None
):
    """Apply a row-sparse gradient (``rows`` unique) with :func:`update_row`.

    Ownership: iteration k of the prange writes row ``rows[k]`` of weight and state.
    """
    for k in prange(rows.shape[0]):
        if k + ROW_PREFETCH_DISTANCE < rows.shape[0]:
            prefetch_update(
                rows[k + ROW_PREFETCH_DISTANCE], weight, element_state, row_state
            )
        update_row(step, rows[k], values[k], weight, element_state, row_state, t, rounding)


@njit(parallel=PARALLEL, cache=True)
def apply_fused(
    step, weight, grad_output, groups, scale_grad_by_freq, element_state, row_state, t,
    scratch, rounding=None, lanes=None,
):  # fmt: skip
    """Backward and update in one pass over the rows with ``groups.value_index[k] >=
    0``: the gradients of a block of rows into ``scratch[chunk]``
    (:func:`~nbbag.cpu.backward.row_gradient`, with ``lanes`` as there), then their
    updates (:func:`update_row`).  ``scratch`` is (chunks, FUSED_BLOCK, >= D).

    Ownership: iteration c of the prange owns ``scratch[c]`` and a contiguous chunk of
    the (unique) rows: their rows of weight and state.
    """
    num_chunks = scratch.shape[0]
    rows, row_ptr, value_index = groups.rows, groups.row_ptr, groups.value_index
    num_rows = rows.shape[0]
    dim = weight.shape[1]
    for c in prange(num_chunks):
        end = (c + 1) * num_rows // num_chunks
        for first in range(c * num_rows // num_chunks, end, FUSED_BLOCK):
            last = min(first + FUSED_BLOCK, end)
            for k in range(first, last):
                ahead = k + ROW_PREFETCH_DISTANCE
                if ahead < last:
                    _prefetch_gradient(grad_output, groups, ahead, lanes)
                if value_index[k] >= 0:
                    row_gradient(
                        grad_output, groups, row_ptr[k], row_ptr[k + 1],
                        scale_grad_by_freq, scratch[c, k - first, :dim], lanes,
                    )  # fmt: skip
            for k in range(first, last):
                if k + ROW_PREFETCH_DISTANCE < end:
                    prefetch_update(
                        rows[k + ROW_PREFETCH_DISTANCE], weight, element_state, row_state
                    )
                if value_index[k] >= 0:
                    update_row(
                        step, rows[k], scratch[c, k - first, :dim], weight,
                        element_state, row_state, t, rounding,
                    )  # fmt: skip


# -- exact catch-up ----------------------------------------------------------------------
@njit(cache=True, inline="always")
def advance_row(step, row, last, target, weight, element_state, rounding=None):
    """Apply the gradient-free steps ``last`` + 1 .. ``target`` of ``step``'s rule to
    ``weight[row]`` and its state, in closed form (a half table's row rounded once, at
    the end, with the random bits of step ``target``).

    Ownership: the caller owns row ``row`` of weight and of every state array.
    """
    advanced = rules.advance(step, last, target)
    state_rows = rules.state_rows(element_state, row)
    update_elements(step, advanced, weight, row, None, state_rows, rounding, target)


@njit(cache=True)
def rows_behind(indices, last_step, target_step):
    """List the distinct rows of ``indices`` last brought up to date before
    ``target_step``, with the step each was last up to date at, and mark them as up to
    date.

    A serial O(N) scan: ``last_step`` itself marks the rows already listed, so no sort
    and no array of size V is needed.
    Ownership: serial; writes ``last_step`` at the listed rows.
    """
    rows = np.empty(indices.shape[0], dtype=np.int64)
    last = np.empty(indices.shape[0], dtype=np.int64)
    count = 0
    for i in range(indices.shape[0]):
        row = indices[i]
        if last_step[row] < target_step:
            rows[count] = row
            last[count] = last_step[row]
            last_step[row] = target_step
            count += 1
    return rows[:count], last[:count]


@njit(parallel=PARALLEL, cache=True)
def advance_rows(step, weight, rows, last, target_step, element_state, rounding=None):
    """:func:`advance_row` for each of ``rows`` (unique) from ``last`` to
    ``target_step``.

    Ownership: iteration k of the prange writes row ``rows[k]`` of weight and state.
    """
    for k in prange(rows.shape[0]):
        advance_row(step, rows[k], last[k], target_step, weight, element_state, rounding)


@njit(cache=True)
def catch_up_rows(
    step, weight, indices, element_state, row_state, target_step, rounding=None
):
    """Bring the rows of ``indices`` (repeats allowed) up to ``target_step``: the steps
    each skipped are applied in closed form (:func:`rows_behind`, then
    :func:`advance_rows`); ``row_state[0]`` holds each row's last step.

    Ownership: serial marking, then one prange iteration per distinct row.
    """
    rows, last = rows_behind(indices, row_state[0], target_step)
    advance_rows(step, weight, rows, last, target_step, element_state, rounding)


@njit(parallel=PARALLEL, cache=True)
def catch_up_all_rows(step, weight, element_state, row_state, target_step, rounding=None):
    """Bring every row up to ``target_step`` (a flush).

    Ownership: iteration r of the prange writes row r of weight and state.
    """
    last_step = row_state[0]
    for row in prange(weight.shape[0]):
        if last_step[row] < target_step:
            advance_row(
                step, row, last_step[row], target_step, weight, element_state, rounding
            )
            last_step[row] = target_step
