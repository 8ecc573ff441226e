"""How the CPU kernels read and write a table's elements, whatever its dtype.

A float32/float64 table is read and written as it is.  A half table (float16 or
bfloat16) arrives as an integer view of its bits (:mod:`nbbag.base.dtypes`: int16 for
float16, uint16 for bfloat16); its elements are widened to float32 as they are read
and float32 results are rounded back to the table's format as they are written.  Each
helper here is one function for every table type, resolved at compile time from the
type of the table (``numba.extending.overload``): a kernel is written once, and its
float32 and float64 specialisations are the code they were before half tables.

The scalar conversions and rounding rules are :mod:`nbbag.base.halves`' (shared with
the GPU's kernels); ``rounding`` of the writes is None (to nearest) or the key of
stochastic rounding, as that module says.
"""

import numpy as np
from numba import types
from numba.extending import overload

from nbbag import rules
from nbbag.base.dtypes import MAX_HALF_DIM
from nbbag.base.halves import code_format, rounded, widen_code
from nbbag.cpu._intrinsics import LANE, stack_row

# A half table's row is updated in float32 in a buffer of MAX_HALF_DIM elements on the
# stack (16 KB a thread; nbbag.optim refuses wider rows).  One buffer for the whole
# row: updating rows block by block, the state rows sliced per block, made an update of
# rows of 32 elements 3x slower than float32's (1.3x as it is).
_ROW_LANES = (0,) * (MAX_HALF_DIM // LANE)


def _is_code(table_or_dtype) -> bool:
    return code_format(getattr(table_or_dtype, "dtype", table_or_dtype)) is not None


# -- reading ----------------------------------------------------------------------------
def copy_row(out_row, table, row):
    """``out_row[:] = table[row]``, widened (``out_row`` of the compute dtype)."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(copy_row)
def _copy_row(out_row, table, row):
    if not _is_code(table):

        def copy_as_is(out_row, table, row):
            out_row[:] = table[row]

        return copy_as_is

    def copy_widened(out_row, table, row):
        for d in range(out_row.shape[0]):
            out_row[d] = widen_code(table[row, d])

    return copy_widened


# -- writing -----------------------------------------------------------------------------
def store(table, row, col, value, rounding, t):
    """``table[row, col] = value``: as it is for a float table; for a half table,
    ``value`` as float32 rounded to the table's format: to nearest (``rounding`` None)
    or stochastically (``rounding`` the key; ``t`` the step):
    :func:`nbbag.base.halves.rounded`."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(store)
def _store(table, row, col, value, rounding, t):
    if not _is_code(table):

        def store_as_is(table, row, col, value, rounding, t):
            table[row, col] = value

        return store_as_is

    def store_rounded(table, row, col, value, rounding, t):
        # the element read only for its type: the load is dead code once inlined
        table[row, col] = rounded(table[row, col], value, rounding, t, row, col)

    return store_rounded


# -- an optimizer's row ------------------------------------------------------------------
def update_elements(step, begun, weight, row, grad_row, state_rows, rounding, t):
    """Run ``step``'s rule on each element of ``weight[row]``: ``rules.element`` with
    ``grad_row`` (an update), or ``rules.advance_element`` with ``grad_row`` None (a
    catch-up, ``begun`` then what ``rules.advance`` returned).  A float table's row is
    updated in place; a half table's row (at most MAX_HALF_DIM elements) is widened into
    a float32 row on the stack, updated there by the rule, then rounded back
    (:func:`store`): the float32 rule on the table's values, rounded once."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(update_elements, inline="always")
def _update_elements(step, begun, weight, row, grad_row, state_rows, rounding, t):
    if not _is_code(weight):

        def update_in_place(step, begun, weight, row, grad_row, state_rows, rounding, t):
            w = weight[row]
            for i in range(w.shape[0]):
                rules.element_or_advance(step, begun, w, state_rows, i, grad_row, i)

        return update_in_place

    def update_widened(step, begun, weight, row, grad_row, state_rows, rounding, t):
        dim = weight.shape[1]  # at most MAX_HALF_DIM
        w = stack_row(state_rows_like(state_rows, grad_row), _ROW_LANES)[:dim]
        for i in range(dim):
            w[i] = widen_code(weight[row, i])
        for i in range(dim):
            rules.element_or_advance(step, begun, w, state_rows, i, grad_row, i)
        for i in range(dim):
            store(weight, row, i, w[i], rounding, t)

    return update_widened


def state_rows_like(state_rows, grad_row):
    """A float32 array the stack buffer of :func:`update_elements` is made like."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(state_rows_like)
def _state_rows_like(state_rows, grad_row):
    if not isinstance(grad_row, (types.NoneType, types.Omitted)):
        return lambda state_rows, grad_row: grad_row
    if len(state_rows) > 0:
        return lambda state_rows, grad_row: state_rows[0]
    raise TypeError("a catch-up without per-element state has nothing to make a row of")


# -- arrays of the compute dtype ----------------------------------------------------------
def compute_empty(count, weight):
    """A new (count,) array of ``weight``'s compute dtype: its own, float32 for a half
    table (:func:`nbbag.base.dtypes.compute_dtype`)."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(compute_empty)
def _compute_empty(count, weight):
    if _is_code(weight):
        return lambda count, weight: np.empty(count, dtype=np.float32)
    return lambda count, weight: np.empty(count, dtype=weight.dtype)
