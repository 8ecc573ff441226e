"""How the GPU's optimizer kernels update a row's elements, whatever the table's dtype.

A float32/float64 table's elements are updated in place by the rule
(:mod:`nbbag.rules`).  A half table (its int16/uint16 view, as on the CPU) has each
element widened into a one-element float32 array, updated there by the rule (its state
elements passed as one-element views of the state rows), then rounded back to the
table's format (:mod:`nbbag.base.halves`: the CPU's conversions and rounding, so the GPU
writes the bits the CPU writes).  The CPU updates a half row through a float32 row on
the stack; a GPU thread holds only its own elements, one at a time.

:func:`update_elements` is one function for every table type: its Python body (what
Numba's CUDA simulator runs) and its overload for the GPU target pick, by the table's
dtype, one of the same two functions, ``_in_place`` and ``_widened``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda
from numba.extending import overload, register_jitable

from nbbag import rules
from nbbag.base.halves import code_format, rounded, widen


def element_views(element_state, row, i):
    """The tuple of one-element views ``state[row, i:i + 1]`` of each per-element state
    array (a rule keeps at most two)."""
    return tuple(state[row, i : i + 1] for state in element_state)


@overload(element_views, target="cuda")
def _element_views(element_state, row, i):
    count = len(element_state)
    if count == 0:
        return lambda element_state, row, i: ()
    if count == 1:
        return lambda element_state, row, i: (element_state[0][row, i : i + 1],)
    if count == 2:
        return lambda element_state, row, i: (
            element_state[0][row, i : i + 1],
            element_state[1][row, i : i + 1],
        )
    raise TypeError(f"a rule keeps at most two per-element state arrays, got {count}")


def update_elements(
    step, begun, weight, row, grad_row, element_state, rounding, t, first, stride
):  # fmt: skip
    """Run ``step``'s rule on elements ``first``, ``first + stride``, ... of
    ``weight[row]``: an update with ``grad_row``, or a catch-up with ``grad_row`` None
    (``begun`` then what ``rules.advance`` returned).  A half table's elements are
    updated in float32 and rounded back with ``rounding`` (``t`` the step); see the
    module's docstring.

    Ownership: the caller owns those elements of the row of weight and state.
    """
    if weight.dtype.itemsize != 2:  # the simulator's arrays: NumPy dtypes
        _in_place(step, begun, weight, row, grad_row, element_state, rounding, t, first,
                  stride)  # fmt: skip
    else:
        _widened(step, begun, weight, row, grad_row, element_state, rounding, t, first,
                 stride, np.zeros(1, dtype=np.float32))  # fmt: skip


def _in_place(
    step, begun, weight, row, grad_row, element_state, rounding, t, first, stride
):  # fmt: skip
    """:func:`update_elements` of a float table."""
    w, state_rows = weight[row], rules.state_rows(element_state, row)
    for i in range(first, weight.shape[1], stride):
        rules.element_or_advance(step, begun, w, state_rows, i, grad_row, i)


@register_jitable
def _widened(
    step, begun, weight, row, grad_row, element_state, rounding, t, first, stride, w
):  # fmt: skip
    """:func:`update_elements` of a half table, ``w`` a one-element float32 array."""
    for i in range(first, weight.shape[1], stride):
        w[0] = widen(weight[row, i])
        rules.element_or_advance(
            step, begun, w, element_views(element_state, row, i), 0, grad_row, i
        )
        weight[row, i] = rounded(weight[row, i], w[0], rounding, t, row, i)


@overload(update_elements, target="cuda")
def _update_elements(
    step, begun, weight, row, grad_row, element_state, rounding, t, first, stride
):  # fmt: skip
    if code_format(weight.dtype) is None:
        return _in_place

    def widened(
        step, begun, weight, row, grad_row, element_state, rounding, t, first, stride
    ):  # fmt: skip
        _widened(
            step, begun, weight, row, grad_row, element_state, rounding, t, first, stride,
            cuda.local.array(1, np.float32),
        )  # fmt: skip

    return widened
