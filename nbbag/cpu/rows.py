"""Row helpers of the CPU kernels: summing rows (a bag's output, a row's gradient) and
the width specialisation; the forward, the backward and the optimizers all use them.

``lanes`` is how a kernel learns D at compile time: None (the generic kernel reads D
from the array) or a tuple of ``D // LANE`` entries, whose length is part of its type.
With it a sum runs in a :func:`~nbbag.cpu._intrinsics.stack_row` LLVM keeps in
registers, added as LANE-wide vectors: bit-identical to the scalar loops (the same
operations element by element), 1.3-2.6x faster at D = 16 and 256 (V = 1M, Zipf ids).
:mod:`nbbag.cpu.variants` is the one place that builds it.
"""

from numba import njit

from nbbag.base.halves import widen
from nbbag.cpu._intrinsics import LANE, add_row_lanes, stack_row, store_row_lanes

# Widths the sum kernels are specialised for: multiples of LANE up to LANE * MAX_LANES
# (a stack row of at most 4 KB).  Each width used compiles its own kernels once (cached
# on disk); other widths run the generic kernels.
MAX_LANES = 32
_LANES = {count * LANE: (0,) * count for count in range(1, MAX_LANES + 1)}

# How far ahead rows are prefetched: enough bytes in flight to cover the ~200 ns of a
# cache miss on a large table, in whole rows, at most MAX_PREFETCH_TOKENS tokens ahead.
# At D = 256 float32 (1 KB rows) 8 tokens ahead beat 32 by 8-10%; at D = 64, 4 to 32
# tied; at D = 16 (64-byte rows), 32 beat 4 and 8 by 1.3-1.8x (the hints then asked
# for whole rows; asking for half, a C kernel's best was still 6-12 tokens at D = 256
# and 16-32 at D = 64).  Baked in at compile time.
PREFETCH_BYTES = 8192
MAX_PREFETCH_TOKENS = 32


def lanes_for(width: int):
    """The ``lanes`` argument of the sum-family kernels for rows of ``width`` elements:
    a tuple of ``width // LANE`` zeros (the kernel then knows D at compile time), or
    None where ``width`` is not a multiple of ``LANE`` up to ``LANE * MAX_LANES``."""
    return _LANES.get(width)


# The helpers below are inlined into their callers' Numba IR (compiled with them, not
# on their own), where a ``lanes`` (or ``scale``) of None removes the branches that test
# it.
@njit(cache=True, inline="always")
def add_row(total, table, row, scale, lanes):
    """``total += table[row]`` (``scale`` None) or ``total += scale * table[row]``:
    in vectors of LANE elements when ``lanes`` is a tuple (:func:`add_row_lanes`), in
    a scalar loop when it is None.  Bit-identical either way.  A half table's
    elements are widened to float32 (``total`` float32) as they are read."""
    if lanes is not None:
        add_row_lanes(total, table, row, scale, lanes)
    elif scale is None:
        for d in range(total.shape[0]):
            total[d] += widen(table[row, d])
    else:
        for d in range(total.shape[0]):
            total[d] += scale * widen(table[row, d])


@njit(cache=True, inline="always")
def sum_buffer(out_row, like, lanes):
    """Where a sum of rows (a bag's output, a row's gradient) is made, zeroed:
    ``out_row`` itself (``lanes`` None), or a stack row of ``like``'s dtype (that of
    the sum) LLVM keeps in registers
    (``lanes`` a tuple: its width a compile-time constant, so the zeroing unrolls),
    copied to ``out_row`` by :func:`store_sum` or :func:`store_scaled`."""
    if lanes is None:
        for d in range(out_row.shape[0]):  # a loop: see store_scaled
            out_row[d] = 0
        return out_row
    total = stack_row(like, lanes)
    for d in range(total.shape[0]):
        total[d] = 0
    return total


@njit(cache=True, inline="always")
def store_sum(total, out_row, lanes):
    """Copy a sum made in :func:`sum_buffer`'s stack row into ``out_row`` (nothing to
    do where it was made in place)."""
    if lanes is not None:
        store_row_lanes(total, out_row, lanes)


@njit(cache=True, inline="always")
def store_scaled(total, out_row, denominator):
    """``out_row`` = the sum in ``total`` (:func:`sum_buffer`) divided by
    ``denominator``, or zeros where ``denominator`` is 0 (an empty bag, or weights that
    sum to 0: TensorFlow's div_no_nan).  The same arithmetic as a copy followed by
    ``out_row *= 1.0 / denominator``."""
    if denominator == 0:
        # Element by element: ``out_row[:] = 0`` here, inlined into a bag loop's
        # prange, did not run (an empty bag's row kept its old values; Numba 0.68).
        for d in range(out_row.shape[0]):
            out_row[d] = 0
        return
    inverse = 1.0 / denominator
    for d in range(out_row.shape[0]):
        out_row[d] = total[d] * inverse


@njit(cache=True, inline="always")
def prefetch_distance(row_bytes):
    """Tokens ahead whose rows are prefetched, for rows of ``row_bytes`` bytes."""
    return max(1, min(MAX_PREFETCH_TOKENS, PREFETCH_BYTES // max(row_bytes, 1)))
