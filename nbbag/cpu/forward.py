"""CPU forward kernels: reduce each bag of embedding rows to one output row.

Two layers, both public through :mod:`nbbag.kernels`:

* per-bag functions (``sum_rows``, ``weighted_sum_rows``, ``max_rows``) reduce the
  tokens ``start:end`` of one bag into one output row and return what the mode needs to
  finish (a count or weight sums);
* bag kernels (``bag_sum``, ``bag_mean``, ...) run one bag per ``prange`` iteration and
  finish the mode.  Each mode and option has its own kernel, so the inner loop over the
  embedding dimension never branches on the mode.

Arguments, in this order everywhere: ``weight`` (V, D) float32/float64 C-contiguous;
``indices`` (N,) int32/int64 in [0, V); ``offsets`` (B + 1,) int, non-decreasing from 0
to at most N (bag ``b`` is ``indices[offsets[b]:offsets[b + 1]]``); ``per_sample_weights``
(N,) of weight's dtype (weighted kernels only); ``out`` (B, D) of weight's dtype;
``padding_idx`` a row in [0, V) left out of every bag, or -1 for none.  The kernels do no
validation: :func:`nbbag.embedding_bag` is the safe entry point.
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from nbbag.cpu._intrinsics import LANE, add_row_lanes, prefetch_row_head, stack_row

# How far ahead rows are prefetched: enough bytes in flight to cover the ~200 ns miss
# latency (MEASURED.md), in whole rows, at most MAX_PREFETCH_TOKENS tokens ahead.  At
# D = 256 float32 (1 KB rows) 8 tokens ahead beat 32 by 8-10%; at D = 64, 4 to 32
# tied; at D = 16 (64-byte rows), 32 beat 4 and 8 by 1.3-1.8x (the hints then asked
# for whole rows; asking for half, a C kernel's best was still 6-12 tokens at D = 256
# and 16-32 at D = 64).  Baked in at compile time: the on-disk cache is keyed on this
# file, so change them here only.
PREFETCH_BYTES = 8192
MAX_PREFETCH_TOKENS = 32

NO_PADDING = -1

# Widths the sum kernels are specialised for: multiples of LANE up to LANE * MAX_LANES
# (a stack row of at most 4 KB).  Each width used compiles its own kernel once (cached
# on disk); other widths run the generic kernels.
MAX_LANES = 32
_LANES = {count * LANE: (0,) * count for count in range(1, MAX_LANES + 1)}


def lanes_for(width: int):
    """The ``lanes`` argument of the sum-family kernels for rows of ``width`` elements:
    a tuple of ``width // LANE`` zeros (the kernel then knows D at compile time), or
    None where ``width`` is not a multiple of ``LANE`` up to ``LANE * MAX_LANES``."""
    return _LANES.get(width)


def row_width(row, lanes):
    """The number of elements of ``row``: ``len(lanes) * LANE``, a compile-time
    constant, when ``lanes`` is a tuple; ``row.shape[0]`` when it is None."""
    if lanes is None:
        return row.shape[0]
    return len(lanes) * LANE


@overload(row_width, inline="always")
def _row_width(row, lanes):
    if isinstance(lanes, (types.NoneType, types.Omitted)):
        return lambda row, lanes: row.shape[0]
    return lambda row, lanes: len(lanes) * LANE


def add_row(total, table, row, scale, lanes):
    """``total += table[row]`` (``scale`` None) or ``total += scale * table[row]``:
    in vectors of LANE elements when ``lanes`` is a tuple (:func:`add_row_lanes`), in
    a scalar loop when it is None.  Bit-identical either way.  The backward's row
    gradients use it too: Numba's cache is keyed on each kernel's own file, so after
    editing it delete the caches (``find nbbag -name '*.nb[ic]' -delete``)."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(add_row, inline="always")
def _add_row(total, table, row, scale, lanes):
    if not isinstance(lanes, (types.NoneType, types.Omitted)):
        return lambda total, table, row, scale, lanes: add_row_lanes(
            total, table, row, scale, lanes
        )
    if isinstance(scale, (types.NoneType, types.Omitted)):

        def add(total, table, row, scale, lanes):
            for d in range(total.shape[0]):
                total[d] += table[row, d]

        return add

    def add_scaled(total, table, row, scale, lanes):
        for d in range(total.shape[0]):
            total[d] += scale * table[row, d]

    return add_scaled


def sum_buffer(out_row, like, lanes):
    """Where a sum of rows (a bag's output, a row's gradient) is made, zeroed:
    ``out_row`` itself (``lanes`` None), or a :func:`~nbbag.cpu._intrinsics.stack_row`
    LLVM keeps in registers (``lanes`` a tuple; zeroed over a width known at compile
    time), copied to ``out_row`` by :func:`store_sum`."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(sum_buffer, inline="always")
def _sum_buffer(out_row, like, lanes):
    if isinstance(lanes, (types.NoneType, types.Omitted)):

        def in_place(out_row, like, lanes):
            out_row[:] = 0
            return out_row

        return in_place

    def on_stack(out_row, like, lanes):
        total = stack_row(like, lanes)
        for d in range(row_width(total, lanes)):  # a compile-time width: unrolled
            total[d] = 0
        return total

    return on_stack


def store_sum(total, out_row, lanes):
    """Copy a sum made in :func:`sum_buffer`'s stack row into ``out_row``."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(store_sum, inline="always")
def _store_sum(total, out_row, lanes):
    if isinstance(lanes, (types.NoneType, types.Omitted)):
        return lambda total, out_row, lanes: None

    def store(total, out_row, lanes):
        for d in range(out_row.shape[0]):
            out_row[d] = total[d]

    return store


@njit(cache=True, inline="always")
def prefetch_distance(row_bytes):
    """Tokens ahead whose rows are prefetched, for rows of ``row_bytes`` bytes."""
    return max(1, min(MAX_PREFETCH_TOKENS, PREFETCH_BYTES // max(row_bytes, 1)))


@njit(cache=True, inline="always")
def _add_rows(weight, indices, start, end, padding_idx, total, lanes):
    """Add the rows ``indices[start:end]`` (padding left out) to ``total`` (a zeroed
    :func:`sum_buffer`); return how many tokens were summed.  With ``lanes`` a tuple,
    the row's width is a compile-time constant here (see :func:`row_width`)."""
    count = 0
    distance = prefetch_distance(row_width(total, lanes) * weight.itemsize)
    # Prefetch past the bag's end too: with prange's contiguous chunks the next bag
    # belongs to the same thread.
    prefetch_end = indices.shape[0]
    for position in range(start, end):
        if position + distance < prefetch_end:
            prefetch_row_head(weight, indices[position + distance], lanes)
        row = indices[position]
        if row == padding_idx:
            continue
        count += 1
        add_row(total, weight, row, None, lanes)
    return count


@njit(cache=True, inline="always")
def _add_weighted_rows(
    weight, indices, per_sample_weights, start, end, padding_idx, total, lanes
):
    """Add sum_i w_i * weight[indices[i]] over ``start:end`` (padding left out) to
    ``total`` (a zeroed :func:`sum_buffer`); return (sum_i w_i, sum_i w_i**2) over the
    same tokens."""
    weight_sum = 0.0
    weight_square_sum = 0.0
    distance = prefetch_distance(row_width(total, lanes) * weight.itemsize)
    prefetch_end = indices.shape[0]
    for position in range(start, end):
        if position + distance < prefetch_end:
            prefetch_row_head(weight, indices[position + distance], lanes)
        row = indices[position]
        if row == padding_idx:
            continue
        w = per_sample_weights[position]
        weight_sum += w
        weight_square_sum += w * w
        add_row(total, weight, row, w, lanes)
    return weight_sum, weight_square_sum


@njit(cache=True)
def sum_rows(weight, indices, start, end, padding_idx, out_row, lanes=None):
    """Write the sum of rows ``indices[start:end]`` (padding left out) into ``out_row``
    and return how many tokens were summed.

    ``lanes``: None, or a tuple of ``D // LANE`` entries (any values; see
    :func:`lanes_for`) when ``LANE`` divides D: then the sum runs in a row on the
    stack, of D known at compile time, and is copied to ``out_row`` at the end.
    Ownership: the caller owns ``out_row``; nothing else is written.
    """
    total = sum_buffer(out_row, weight, lanes)
    count = _add_rows(weight, indices, start, end, padding_idx, total, lanes)
    store_sum(total, out_row, lanes)
    return count


@njit(cache=True)
def weighted_sum_rows(
    weight, indices, per_sample_weights, start, end, padding_idx, out_row, lanes=None
):
    """Write sum_i w_i * weight[indices[i]] over ``start:end`` (padding left out) into
    ``out_row``; return (sum_i w_i, sum_i w_i**2) over the same tokens.  ``lanes`` as
    in :func:`sum_rows`.

    Ownership: the caller owns ``out_row``; nothing else is written.
    """
    total = sum_buffer(out_row, weight, lanes)
    sums = _add_weighted_rows(
        weight, indices, per_sample_weights, start, end, padding_idx, total, lanes
    )
    store_sum(total, out_row, lanes)
    return sums


@njit(cache=True)
def max_rows(weight, indices, start, end, padding_idx, out_row, argmax_row):
    """Write the elementwise max of rows ``indices[start:end]`` (padding left out) into
    ``out_row`` (zeros if none); return how many tokens took part.

    If ``argmax_row`` is not empty, ``argmax_row[d]`` gets the position (in ``indices``)
    of the winner of dimension d, the first on ties, or -1 for an empty bag: the
    backward routes each dimension's gradient to that one token.
    Ownership: the caller owns ``out_row`` and ``argmax_row``; nothing else is written.
    """
    record = argmax_row.shape[0] > 0
    count = 0
    distance = prefetch_distance(out_row.shape[0] * weight.itemsize)
    prefetch_end = indices.shape[0]
    for position in range(start, end):
        if position + distance < prefetch_end:
            prefetch_row_head(weight, indices[position + distance], None)
        row = indices[position]
        if row == padding_idx:
            continue
        if count == 0:
            out_row[:] = weight[row]
            if record:
                argmax_row[:] = position
        else:
            for d in range(out_row.shape[0]):
                # strict '>' keeps the first occurrence on ties
                if weight[row, d] > out_row[d]:
                    out_row[d] = weight[row, d]
                    if record:
                        argmax_row[d] = position
        count += 1
    if count == 0:
        out_row[:] = 0
        if record:
            argmax_row[:] = -1
    return count


@njit(cache=True)
def scale_row(out_row, denominator):
    """Divide ``out_row`` by ``denominator``, or zero it when ``denominator`` is 0
    (an empty bag, or weights that sum to 0: TensorFlow's div_no_nan)."""
    if denominator == 0:
        out_row[:] = 0
    else:
        out_row *= 1.0 / denominator


@njit(parallel=True, cache=True)
def bag_sum(weight, indices, offsets, out, padding_idx=NO_PADDING, lanes=None):
    """out[b] = sum of the rows of bag b.

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    for b in prange(out.shape[0]):
        sum_rows(weight, indices, offsets[b], offsets[b + 1], padding_idx, out[b], lanes)


@njit(parallel=True, cache=True)
def bag_mean(weight, indices, offsets, out, padding_idx=NO_PADDING, lanes=None):
    """out[b] = mean of the rows of bag b (padding not counted).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    for b in prange(out.shape[0]):
        count = sum_rows(
            weight, indices, offsets[b], offsets[b + 1], padding_idx, out[b], lanes
        )
        scale_row(out[b], count)


@njit(parallel=True, cache=True)
def bag_sqrtn(weight, indices, offsets, out, padding_idx=NO_PADDING, lanes=None):
    """out[b] = sum of the rows of bag b / sqrt(number of rows).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    for b in prange(out.shape[0]):
        count = sum_rows(
            weight, indices, offsets[b], offsets[b + 1], padding_idx, out[b], lanes
        )
        scale_row(out[b], math.sqrt(count))


@njit(parallel=True, cache=True)
def bag_max(weight, indices, offsets, out, padding_idx=NO_PADDING):
    """out[b] = elementwise max of the rows of bag b.

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    no_argmax = np.empty((out.shape[0], 0), dtype=np.int64)
    for b in prange(out.shape[0]):
        max_rows(
            weight, indices, offsets[b], offsets[b + 1], padding_idx, out[b], no_argmax[b]
        )


@njit(parallel=True, cache=True)
def bag_max_argmax(weight, indices, offsets, out, argmax, padding_idx=NO_PADDING):
    """out[b] = elementwise max of the rows of bag b; argmax[b, d] = the position in
    ``indices`` of the winner of dimension d (first on ties), -1 for an empty bag.

    Ownership: iteration b of the prange writes ``out[b]`` and ``argmax[b]`` only.
    """
    for b in prange(out.shape[0]):
        max_rows(
            weight, indices, offsets[b], offsets[b + 1], padding_idx, out[b], argmax[b]
        )


@njit(parallel=True, cache=True)
def bag_weighted_sum(
    weight, indices, offsets, per_sample_weights, out, padding_idx=NO_PADDING, lanes=None
):
    """out[b] = sum_i w_i x_i over bag b.

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    for b in prange(out.shape[0]):
        weighted_sum_rows(
            weight,
            indices,
            per_sample_weights,
            offsets[b],
            offsets[b + 1],
            padding_idx,
            out[b],
            lanes,
        )


@njit(parallel=True, cache=True)
def bag_weighted_mean(
    weight, indices, offsets, per_sample_weights, out, padding_idx=NO_PADDING, lanes=None
):
    """out[b] = sum_i w_i x_i / sum_i w_i over bag b (zeros where sum_i w_i is 0).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    for b in prange(out.shape[0]):
        weight_sum, _ = weighted_sum_rows(
            weight,
            indices,
            per_sample_weights,
            offsets[b],
            offsets[b + 1],
            padding_idx,
            out[b],
            lanes,
        )
        scale_row(out[b], weight_sum)


@njit(parallel=True, cache=True)
def bag_weighted_sqrtn(
    weight, indices, offsets, per_sample_weights, out, padding_idx=NO_PADDING, lanes=None
):
    """out[b] = sum_i w_i x_i / sqrt(sum_i w_i**2) over bag b (zeros where all w_i are 0).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    for b in prange(out.shape[0]):
        _, weight_square_sum = weighted_sum_rows(
            weight,
            indices,
            per_sample_weights,
            offsets[b],
            offsets[b + 1],
            padding_idx,
            out[b],
            lanes,
        )
        scale_row(out[b], math.sqrt(weight_square_sum))


@njit(parallel=True, cache=True)
def renorm_rows(weight, rows, max_norm, norm_type):
    """Scale, in place, each ``weight[r]`` (r in ``rows``) whose ``norm_type``-norm
    exceeds ``max_norm`` by ``max_norm / (norm + 1e-7)``, as torch's embedding_renorm_.

    ``rows`` must be unique: two threads scaling one row would race.
    Ownership: iteration i of the prange reads and writes ``weight[rows[i]]`` only.
    """
    for i in prange(rows.shape[0]):
        row = weight[rows[i]]
        norm = row_norm(row, norm_type)
        if norm > max_norm:
            row *= max_norm / (norm + 1e-7)


@njit(cache=True)
def row_norm(row, norm_type):
    """The ``norm_type``-norm (p > 0, or inf) of a 1-D array, accumulated in float64."""
    if norm_type == math.inf:
        largest = 0.0
        for value in row:
            largest = max(largest, abs(value))
        return largest
    total = 0.0
    for value in row:
        total += abs(float(value)) ** norm_type
    return total ** (1.0 / norm_type)
