"""CUDA optimizer kernels: update only the rows a gradient touches, and their state.

The CPU kernels (:mod:`nbbag.cpu.optim`) with the same arguments in the same order and
the same rules: each kernel runs the rule of the step record it is given
(:mod:`nbbag.rules`; one specialisation per rule, the rule's functions shared with the
CPU).  A half table (its int16/uint16 view) is updated in float32 and rounded back
(:mod:`nbbag.cuda.elements`); ``rounding`` is how: a negative int rounds to nearest,
an int >= 0 is the key of stochastic rounding (:mod:`nbbag.base.halves`: a launch
cannot take None, the CPU's nearest).

One thread group per row, lanes along D; the group's blocks stride over the rows so
that every thread of a block runs the same iterations and can meet at
``cuda.syncthreads()``: every lane runs the rule's ``begin`` (which only reads), the
block meets, each lane updates its dimensions, lane 0 runs ``end`` (the row's scalar
state), and the block meets again.
"""

from __future__ import annotations

from numba import cuda

from nbbag import rules
from nbbag.cuda.backward import row_gradient_dev
from nbbag.cuda.elements import update_elements

__all__ = [
    "apply_fused",
    "apply_row_gradients",
    "catch_up_all_rows",
    "catch_up_rows",
]


@cuda.jit(device=True)
def update_group_dev(
    step, weight, row, active, grad_row, element_state, row_state, t, rounding
):  # fmt: skip
    """The calling group's step of row ``row`` with gradient ``grad_row`` (D,) when
    ``active``.  Every thread of the block must call it, active or not (two
    ``syncthreads``).

    Ownership: the group writes row ``row`` of weight and state (lane l, dimensions
    l, l + group, ...; lane 0 the row's scalar state).
    """
    if active:
        begun = rules.begin(step, row, grad_row, row_state, t)
    cuda.syncthreads()
    if active:
        update_elements(
            step, begun, weight, row, grad_row, element_state, rounding, t,
            cuda.threadIdx.x, cuda.blockDim.x,
        )  # fmt: skip
        if cuda.threadIdx.x == 0:
            rules.end(step, begun, row, row_state, t)
    cuda.syncthreads()


@cuda.jit
def apply_row_gradients(step, weight, rows, values, element_state, row_state, t, rounding):
    """Apply a row-sparse gradient (``rows`` unique).  Launch with
    ``launch.grouped(U, D)``.

    Ownership: the group of row k writes row rows[k] of weight and state (lane l,
    dimensions l, l + group, ...; lane 0 the row's scalar state).
    """
    per_block = cuda.blockDim.y
    for base in range(
        cuda.blockIdx.x * per_block, rows.shape[0], cuda.gridDim.x * per_block
    ):
        k = base + cuda.threadIdx.y
        active = k < rows.shape[0]
        row = rows[k] if active else 0
        update_group_dev(
            step, weight, row, active, values[k if active else 0], element_state,
            row_state, t, rounding,
        )  # fmt: skip


@cuda.jit
def apply_fused(
    step, weight, grad_output, groups, scale_grad_by_freq, element_state, row_state, t,
    scratch, rounding,
):  # fmt: skip
    """Backward and update in one pass over the rows with value_index[k] >= 0: the
    group computes row k's gradient into its own row of ``scratch`` (one per group of
    the grid, (gridDim.x * blockDim.y, >= D)), then applies it.  No (U, D) gradient.

    Ownership: the group of row k writes its scratch row and row rows[k] of weight and
    state (lane l, dimensions l, l + group, ...; lane 0 the row's scalar state).
    """
    per_block = cuda.blockDim.y
    slot = cuda.blockIdx.x * per_block + cuda.threadIdx.y
    grad_row = scratch[slot, : weight.shape[1]]
    rows, row_ptr, value_index = groups.rows, groups.row_ptr, groups.value_index
    for base in range(
        cuda.blockIdx.x * per_block, rows.shape[0], cuda.gridDim.x * per_block
    ):
        k = base + cuda.threadIdx.y
        active = k < rows.shape[0] and value_index[k] >= 0
        if active:
            row_gradient_dev(
                grad_output, groups, row_ptr[k], row_ptr[k + 1], scale_grad_by_freq,
                grad_row,
            )  # fmt: skip
        cuda.syncthreads()
        update_group_dev(
            step, weight, rows[k] if active else 0, active, grad_row, element_state,
            row_state, t, rounding,
        )  # fmt: skip


@cuda.jit(device=True)
def advance_row_dev(step, row, last, target, weight, element_state, rounding):
    """Apply the gradient-free steps ``last`` + 1 .. ``target`` of ``step``'s rule to
    row ``row`` (one thread; a half row rounded with ``rounding`` at step ``target``).
    Ownership: the caller owns the row of weight and state."""
    advanced = rules.advance(step, last, target)
    update_elements(
        step, advanced, weight, row, None, element_state, rounding, target, 0, 1
    )


@cuda.jit
def catch_up_rows(step, weight, indices, element_state, row_state, target_step, rounding):
    """Bring the rows of ``indices`` (repeats allowed) up to ``target_step``;
    ``row_state[0]`` holds each row's last step.  The thread that raises a row's last
    step (``atomic.max``) advances the row over the steps it was behind; the others find
    it up to date.

    Ownership: the thread whose atomic.max saw the old step owns the row (grid-stride).
    """
    last_step = row_state[0]
    for p in range(cuda.grid(1), indices.shape[0], cuda.gridsize(1)):
        row = indices[p]
        old = cuda.atomic.max(last_step, row, target_step)
        if old < target_step:
            advance_row_dev(step, row, old, target_step, weight, element_state, rounding)


@cuda.jit
def catch_up_all_rows(step, weight, element_state, row_state, target_step, rounding):
    """Bring every row up to ``target_step`` (a flush).

    Ownership: thread r writes row r of weight and state (grid-stride).
    """
    last_step = row_state[0]
    for row in range(cuda.grid(1), weight.shape[0], cuda.gridsize(1)):
        if last_step[row] < target_step:
            advance_row_dev(
                step, row, last_step[row], target_step, weight, element_state, rounding
            )
            last_step[row] = target_step
