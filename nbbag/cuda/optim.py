"""CUDA optimizer kernels: update only the rows a gradient touches, and their state.

The CPU kernels (:mod:`nbbag.cpu.optim`) with the same arguments in the same order,
the same rules (``kind``: SGD with exact catch-up, Adagrad, RowWiseAdagrad, lazy Adam)
and the same ``hyper`` layout; ``hyper`` must already come from ``step_hyper`` (on the
host: seven numbers, copied to the device with no round trip back).

One thread group per row, lanes along D; the group's blocks stride over the rows so
that every thread of a block runs the same iterations and can meet at
``cuda.syncthreads()``: a row's scalar state (``last_step``, RowWiseAdagrad's
accumulator) is read by every lane, then written by lane 0 only after the barrier.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from nbbag.cpu import optim as cpu_optim
from nbbag.cpu.optim import (
    ADAGRAD,
    ADAM,
    ADAM_STEP_SIZE,
    BETA1,
    BETA2,
    EPS,
    HYPER_SIZE,
    LR,
    MOMENTUM,
    ROW_WISE_ADAGRAD,
    SGD,
    WEIGHT_DECAY,
)
from nbbag.cuda.backward import row_gradient_dev
from nbbag.cuda.twin import device_twin

__all__ = [
    "ADAGRAD",
    "ADAM",
    "HYPER_SIZE",
    "ROW_WISE_ADAGRAD",
    "SGD",
    "advance_all_rows",
    "advance_rows",
    "apply_fused",
    "apply_row_gradients",
    "step_hyper",
]


def step_hyper(hyper: np.ndarray, step: int, dtype) -> np.ndarray:
    """``hyper`` in the weight's dtype with ADAM_STEP_SIZE filled in: the CPU's
    ``step_hyper``, run as plain Python on the host (in float64)."""
    return cpu_optim.step_hyper.py_func(hyper, step, np.empty(0, dtype=dtype))


# The per-element rules, one source with the CPU kernels (nbbag.cuda.twin).
skipped_steps_matrix_dev = device_twin(cpu_optim.skipped_steps_matrix)
advance_element_dev = device_twin(cpu_optim.advance_element)
momentum_element_dev = device_twin(cpu_optim.momentum_element)
adagrad_element_dev = device_twin(cpu_optim.adagrad_element)
adam_element_dev = device_twin(cpu_optim.adam_element)
row_wise_accumulator_dev = device_twin(cpu_optim.row_wise_accumulator)


@cuda.jit(device=True)
def advance_dims_dev(row, steps, weight, momentum_buffer, hyper, first, stride):
    """Apply ``steps`` gradient-free SGD steps to dimensions first, first + stride, ...
    of weight[row] and its momentum buffer.  Ownership: the caller owns them."""
    if steps <= 0:
        return
    a, b, c, d = skipped_steps_matrix_dev(
        float(hyper[LR]), float(hyper[MOMENTUM]), float(hyper[WEIGHT_DECAY]), steps
    )
    w = weight[row]
    u = momentum_buffer[row]
    for i in range(first, w.shape[0], stride):
        advance_element_dev(w, u, i, a, b, c, d)


@cuda.jit(device=True)
def row_prologue_dev(kind, row, grad_row, weight, row_state, last_step, hyper, step):
    """What every lane must read before lane 0 changes the row's scalar state:
    (steps SGD skipped, RowWiseAdagrad's new accumulator).  Writes nothing."""
    behind = 0
    accumulator = 0.0
    if kind == SGD and last_step.shape[0] > 0:
        behind = step - 1 - last_step[row]
    elif kind == ROW_WISE_ADAGRAD:
        accumulator = row_wise_accumulator_dev(row_state[row], grad_row)
    return behind, accumulator


@cuda.jit(device=True)
def update_dims_dev(
    kind, row, grad_row, weight, state, second_state, last_step, hyper, behind,
    accumulator, first, stride,
):  # fmt: skip
    """Step ``kind`` on dimensions first, first + stride, ... of weight[row] (and of
    its per-element state), the CPU ``update_row``'s rules.  Ownership: the caller
    owns those elements."""
    lr = hyper[LR]
    w = weight[row]
    dim = w.shape[0]
    if kind == SGD:
        if last_step.shape[0] == 0:
            for i in range(first, dim, stride):
                w[i] -= lr * grad_row[i]
            return
        advance_dims_dev(row, behind, weight, state, hyper, first, stride)
        u = state[row]
        momentum, weight_decay = hyper[MOMENTUM], hyper[WEIGHT_DECAY]
        for i in range(first, dim, stride):
            momentum_element_dev(w, u, i, grad_row[i], lr, momentum, weight_decay)
    elif kind == ADAGRAD:
        squares = state[row]
        eps = hyper[EPS]
        for i in range(first, dim, stride):
            adagrad_element_dev(w, squares, i, grad_row[i], lr, eps)
    elif kind == ROW_WISE_ADAGRAD:
        multiplier = lr / (math.sqrt(accumulator) + hyper[EPS])
        for i in range(first, dim, stride):
            w[i] -= multiplier * grad_row[i]
    else:  # ADAM, lazy: torch.optim.SparseAdam
        keep1, keep2 = 1.0 - hyper[BETA1], 1.0 - hyper[BETA2]
        step_size, eps = hyper[ADAM_STEP_SIZE], hyper[EPS]
        exp_avg = state[row]
        exp_avg_sq = second_state[row]
        for i in range(first, dim, stride):
            adam_element_dev(
                w, exp_avg, exp_avg_sq, i, grad_row[i], keep1, keep2, step_size, eps
            )


@cuda.jit(device=True)
def row_epilogue_dev(kind, row, row_state, last_step, step, accumulator):
    """Lane 0, after the barrier: the row's scalar state."""
    if kind == SGD and last_step.shape[0] > 0:
        last_step[row] = step
    elif kind == ROW_WISE_ADAGRAD:
        row_state[row] = accumulator


@cuda.jit(device=True)
def update_group_dev(
    kind, weight, rows, k, active, grad_rows, g, state, second_state, row_state,
    last_step, hyper, step,
):  # fmt: skip
    """The calling group's step of row rows[k] with gradient grad_rows[g, :D] when
    ``active``: every lane reads the row's scalar state (``row_prologue_dev``), the
    block meets, the lanes update their dimensions and lane 0 the scalar state
    (``row_epilogue_dev``), the block meets again.  Every thread of the block must
    call it, active or not (two ``syncthreads``).

    Ownership: the group writes row rows[k] of weight and state (lane l, dimensions
    l, l + group, ...; lane 0 the row's scalar state).
    """
    behind = 0
    accumulator = 0.0
    if active:
        behind, accumulator = row_prologue_dev(
            kind, rows[k], grad_rows[g, : weight.shape[1]], weight, row_state,
            last_step, hyper, step,
        )  # fmt: skip
    cuda.syncthreads()
    if active:
        update_dims_dev(
            kind, rows[k], grad_rows[g, : weight.shape[1]], weight, state, second_state,
            last_step, hyper, behind, accumulator, cuda.threadIdx.x, cuda.blockDim.x,
        )  # fmt: skip
        if cuda.threadIdx.x == 0:
            row_epilogue_dev(kind, rows[k], row_state, last_step, step, accumulator)
    cuda.syncthreads()


@cuda.jit
def apply_row_gradients(
    kind, weight, rows, values, state, second_state, row_state, last_step, hyper, step
):
    """Apply a row-sparse gradient (``rows`` unique); ``hyper`` from step_hyper.
    Launch with ``launch.grouped(U, D)``.

    Ownership: the group of row k writes row rows[k] of weight and state (lane l,
    dimensions l, l + group, ...; lane 0 the row's scalar state).
    """
    per_block = cuda.blockDim.y
    for base in range(
        cuda.blockIdx.x * per_block, rows.shape[0], cuda.gridDim.x * per_block
    ):
        k = base + cuda.threadIdx.y
        update_group_dev(
            kind, weight, rows, k, k < rows.shape[0], values, k, state, second_state,
            row_state, last_step, hyper, step,
        )  # fmt: skip


@cuda.jit
def apply_fused(
    kind,
    weight,
    grad_output,
    bag_of,
    coefficients,
    argmax,
    positions,
    row_ptr,
    rows,
    value_index,
    scale_grad_by_freq,
    state,
    second_state,
    row_state,
    last_step,
    hyper,
    step,
    scratch,
):
    """Backward and update in one pass over the rows with value_index[k] >= 0: the
    group computes row k's gradient into its own row of ``scratch`` (one per group of
    the grid, (gridDim.x * blockDim.y, >= D)), then applies it.  No (U, D) gradient.

    Ownership: the group of row k writes its scratch row and row rows[k] of weight and
    state (lane l, dimensions l, l + group, ...; lane 0 the row's scalar state).
    """
    per_block = cuda.blockDim.y
    slot = cuda.blockIdx.x * per_block + cuda.threadIdx.y
    dim = weight.shape[1]
    grad_row = scratch[slot, :dim]
    for base in range(
        cuda.blockIdx.x * per_block, rows.shape[0], cuda.gridDim.x * per_block
    ):
        k = base + cuda.threadIdx.y
        active = k < rows.shape[0] and value_index[k] >= 0
        if active:
            row_gradient_dev(
                grad_output, bag_of, coefficients, argmax, positions, row_ptr[k],
                row_ptr[k + 1], scale_grad_by_freq, grad_row,
            )  # fmt: skip
        cuda.syncthreads()
        update_group_dev(
            kind, weight, rows, k, active, scratch, slot, state, second_state, row_state,
            last_step, hyper, step,
        )  # fmt: skip


@cuda.jit
def advance_rows(weight, indices, momentum_buffer, last_step, target_step, hyper):
    """Catch up the rows of ``indices`` (repeats allowed) to ``target_step``: the
    thread that raises last_step[row] (``atomic.max``) advances the row by the steps
    it was behind; the others find it up to date.  ``hyper`` from step_hyper.

    Ownership: the thread whose atomic.max saw the old step owns the row (grid-stride).
    """
    for p in range(cuda.grid(1), indices.shape[0], cuda.gridsize(1)):
        row = indices[p]
        old = cuda.atomic.max(last_step, row, target_step)
        if old < target_step:
            advance_dims_dev(row, target_step - old, weight, momentum_buffer, hyper, 0, 1)


@cuda.jit
def advance_all_rows(weight, momentum_buffer, last_step, target_step, hyper):
    """Catch up every row to ``target_step`` (flush).

    Ownership: thread r writes row r of weight, momentum_buffer, last_step
    (grid-stride).
    """
    for row in range(cuda.grid(1), weight.shape[0], cuda.gridsize(1)):
        advance_dims_dev(
            row, target_step - last_step[row], weight, momentum_buffer, hyper, 0, 1
        )
        last_step[row] = target_step
