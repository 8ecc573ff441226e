"""CPU forward kernels: reduce each bag of embedding rows to one output row.

Three layers:

* per-bag functions (``sum_rows``, ``weighted_sum_rows``, ``max_rows``) reduce the
  tokens ``start:end`` of one bag into one output row and return what the mode needs to
  finish (a count or weight sums); public through :mod:`nbbag.kernels`;
* one loop over the bags, ``_each_bag`` (contiguous chunks of bags, one chunk per
  ``prange`` iteration), that every bag kernel runs with its per-bag reduction:
  ``_reduce_sums`` for the sum family (sum, mean, sqrtn, weighted or not: they differ
  only in what a bag's sum is divided by) or ``_reduce_max``;
* the kernels: the public ``bag_sum``, ``bag_mean``, ... (inputs trusted), and the
  front's ``sum_bags_checked``, ``mean_bags_checked``, ... , which validate the
  offsets and every id as they read them.

Arguments, in this order everywhere: ``weight`` (V, D) float32/float64 C-contiguous, or
a float16/bfloat16 table as its int16/uint16 view (:mod:`nbbag.base.dtypes`: read
widened to float32); ``indices`` (N,) int32/int64; ``offsets`` (B + 1,) int,
non-decreasing from 0 to at most N (bag ``b`` is ``indices[offsets[b]:offsets[b + 1]]``);
``per_sample_weights`` (N,) of the compute dtype (the weight's; float32 for a half
table), or None; ``out`` (B, D) of the compute dtype (the front's kernels
also take a (B', F, D) ``out``: a collection's features side by side, see
:func:`output_row`); ``padding_idx`` a row in [0, V) left out of every bag, or
NO_PADDING (-1).
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from nbbag.base.constants import BAD_OFFSETS, NO_PADDING, OK
from nbbag.base.halves import widen
from nbbag.base.sort import chunk_bounds
from nbbag.cpu import PARALLEL
from nbbag.cpu._intrinsics import prefetch_row, prefetch_row_head
from nbbag.cpu.collection import combine_ids
from nbbag.cpu.elements import copy_row, store
from nbbag.cpu.rows import (
    add_row,
    prefetch_distance,
    store_scaled,
    store_sum,
    sum_buffer,
)
from nbbag.modes import Mode

# Chunks of bags the front's kernels cut a batch into: several per thread, so that the
# threads share the work evenly whatever it costs per bag, without asking for the
# thread count (~0.8 us from Python).
CHECKED_CHUNKS = 64


# -- per-bag functions ------------------------------------------------------------------
def _first_outside(indices, start, end, num_rows):
    """The first position of ``indices[start:end]`` whose id lies outside
    [0, num_rows), or -1 (always, for ``num_rows`` None: inputs trusted).  A min/max
    pass first, which LLVM vectorises: on good input it is all there is.  (Checking
    each id in the loop that adds the rows cost that loop 10-25% at D = 64.)
    Compiled as :func:`_chunk_ids`' implementation for an int or None."""
    if num_rows is None or start >= end:
        return -1
    smallest = indices[start]
    largest = indices[start]
    for position in range(start, end):
        smallest = min(smallest, indices[position])
        largest = max(largest, indices[position])
    if smallest >= 0 and largest < num_rows:
        return -1
    for position in range(start, end):
        if indices[position] < 0 or indices[position] >= num_rows:
            return position
    return -1


@njit(cache=True, inline="always")
def _add_rows(weight, indices, start, end, padding_idx, total, lanes):
    """Add the rows ``indices[start:end]`` (padding left out) to ``total`` (a zeroed
    :func:`~nbbag.cpu.rows.sum_buffer`); return how many tokens were summed."""
    count = 0
    distance = prefetch_distance(total.shape[0] * weight.itemsize)  # constant on the stack
    # Prefetch past the bag's end too: with prange's contiguous chunks the next bag
    # belongs to the same thread.  (A hint never faults, whatever the id.)
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
    ``total``; return (sum_i w_i, sum_i w_i**2)."""
    weight_sum = 0.0
    weight_square_sum = 0.0
    distance = prefetch_distance(total.shape[0] * weight.itemsize)  # constant on the stack
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
    :func:`nbbag.cpu.rows.lanes_for`) when ``LANE`` divides D: then the sum runs in a
    row on the stack, of D known at compile time, and is copied to ``out_row`` at the end.
    Ownership: the caller owns ``out_row``; nothing else is written.
    """
    total = sum_buffer(out_row, out_row, lanes)
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
    total = sum_buffer(out_row, out_row, lanes)
    weight_sum, weight_square_sum = _add_weighted_rows(
        weight, indices, per_sample_weights, start, end, padding_idx, total, lanes
    )
    store_sum(total, out_row, lanes)
    return weight_sum, weight_square_sum


@njit(cache=True)
def max_rows(weight, indices, start, end, padding_idx, out_row, argmax_row=None):
    """Write the elementwise max of rows ``indices[start:end]`` (padding left out) into
    ``out_row`` (zeros if none); return how many tokens took part.

    ``argmax_row``: None, or a (D,) int64 array that gets the position (in ``indices``)
    of the winner of each dimension, the first on ties, or -1 for an empty bag: the
    backward routes each dimension's gradient to that one token.  (An empty array also
    means "do not record", as before.)
    Ownership: the caller owns ``out_row`` and ``argmax_row``; nothing else is written.
    """
    record = argmax_row is not None and argmax_row.shape[0] > 0
    count = 0
    distance = prefetch_distance(out_row.shape[0] * weight.itemsize)
    prefetch_end = indices.shape[0]
    for position in range(start, end):
        # Whole rows (the sums ask for half): on this project's EPYC the max forward
        # ran 1.32-1.40x faster so (interleaved A/B, V = 1M, D = 64).
        if position + distance < prefetch_end:
            prefetch_row(weight, indices[position + distance], None)
        row = indices[position]
        if row == padding_idx:
            continue
        if count == 0:
            copy_row(out_row, weight, row)
            if record:
                argmax_row[:] = position
        else:
            for d in range(out_row.shape[0]):
                # strict '>' keeps the first occurrence on ties
                value = widen(weight[row, d])
                if value > out_row[d]:
                    out_row[d] = value
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
    store_scaled(out_row, out_row, denominator)


# -- where bag b's output row is ----------------------------------------------------------
def output_row(out, b):
    """Bag b's row of ``out``: ``out[b]`` for a (B, D) output; for a (B, F, D) output (a
    collection's features side by side, bag b = f * B + b' feature-major),
    ``out[b', f]``.  Chosen at compile time by ``out``'s rank."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(output_row)
def _output_row_overload(out, b):
    if out.ndim == 3:

        def by_feature(out, b):
            return out[b % out.shape[0], b // out.shape[0]]

        return by_feature
    return lambda out, b: out[b]


def output_rows(out):
    """How many bags ``out`` holds a row for (see :func:`output_row`)."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(output_rows)
def _output_rows_overload(out):
    if out.ndim == 3:
        return lambda out: out.shape[0] * out.shape[1]
    return lambda out: out.shape[0]


# -- per-bag reductions, one signature for _each_bag -------------------------------------
# Inlined into the parallel kernels' bag loop: called per bag, the views of ``out`` they
# make each cost an atomic reference count on the one array every thread shares (2.2x
# slower on bags of one id: 4.33 against 1.99 ms for 53k bags at D = 64; measured).
# The front's serial twins call them instead (one thread: uncontended; see
# nbbag.cpu.variants, which swaps them in).
@njit(cache=True, inline="always")
def _reduce_sums(
    weight, indices, per_sample_weights, start, end, padding_idx, out, argmax, b, mode,
    lanes,
):  # fmt: skip
    """Bag b of the sum family into its row of ``out`` (:func:`output_row`): the sum of
    its rows (weighted when
    ``per_sample_weights`` is given), divided by 1 (sum), the count or sum of weights
    (mean) or its square root, of counts or of squared weights (sqrtn).  ``argmax`` is
    not used."""
    out_row = output_row(out, b)
    total = sum_buffer(out_row, out_row, lanes)
    if per_sample_weights is None:
        count = _add_rows(weight, indices, start, end, padding_idx, total, lanes)
        weight_sum, weight_square_sum = float(count), float(count)
    else:
        weight_sum, weight_square_sum = _add_weighted_rows(
            weight, indices, per_sample_weights, start, end, padding_idx, total, lanes
        )
    if mode == Mode.MEAN:
        store_scaled(total, out_row, weight_sum)
    elif mode == Mode.SQRTN:
        store_scaled(total, out_row, math.sqrt(weight_square_sum))
    else:
        store_sum(total, out_row, lanes)


@njit(cache=True, inline="always")
def _reduce_max(
    weight, indices, per_sample_weights, start, end, padding_idx, out, argmax, b, mode,
    lanes,
):  # fmt: skip
    """Bag b's elementwise max into its row of ``out``, its winners into the same row
    of ``argmax`` (of ``out``'s shape) when that is given.  ``per_sample_weights``,
    ``mode`` and ``lanes`` are not used."""
    if argmax is None:
        max_rows(weight, indices, start, end, padding_idx, output_row(out, b), None)
    else:
        max_rows(
            weight, indices, start, end, padding_idx, output_row(out, b),
            output_row(argmax, b),
        )  # fmt: skip


@njit(cache=True, inline="always")
def _each_bag(
    reduce_bag, weight, indices, per_sample_weights, offsets, out, argmax, padding_idx,
    mode, lanes, num_rows, num_chunks,
):  # fmt: skip
    """Run ``reduce_bag`` on every bag, the bags cut into ``num_chunks`` contiguous
    chunks, one chunk per prange iteration.  With ``num_rows`` (not None) a chunk's ids
    are checked first (:func:`_first_outside`) and a chunk holding an id outside
    [0, num_rows) is skipped.  Returns OK, or the first position of such an id
    (``out`` is then to be discarded).

    ``num_rows`` may also be a collection stack's tuple (:func:`_chunk_ids`): a chunk's
    ids are then first combined from its features' into ``indices``, and a chunk with
    an id outside its feature's table gives its first position.

    Ownership: iteration c of the prange writes bag b's row of ``out`` (and of
    ``argmax``) for the bags b of chunk c only, and for a stack the chunk's tokens of
    ``indices``.  Its reductions see ``indices`` up to the chunk's last token: a
    prefetch never reads ids another thread owns.
    """
    num_bags = output_rows(out)
    num_tokens = indices.shape[0]
    first_bad = num_tokens
    for c in prange(num_chunks):
        first, last = chunk_bounds(c, num_chunks, num_bags)
        bad = _chunk_ids(indices, offsets[first], offsets[last], num_rows)
        if bad < 0:
            chunk_indices = indices[: offsets[last]]
            for b in range(first, last):
                reduce_bag(
                    weight, chunk_indices, per_sample_weights, offsets[b],
                    offsets[b + 1], padding_idx, out, argmax, b, mode, lanes,
                )  # fmt: skip
        first_bad = min(first_bad, num_tokens if bad < 0 else bad)
    return OK if first_bad == num_tokens else first_bad


def _chunk_ids(indices, start, end, num_rows):
    """Make a chunk's ids ``indices[start:end]`` ready to read, and return the first
    position of one outside its table, or -1: with ``num_rows`` None (ids trusted), -1;
    an int V, :func:`_first_outside`; a collection stack's tuple (its features' ids one
    after another, ``token_starts``, ``row_base``, ``num_rows``, ``padding``,
    ``pad_row``), the ids combined into ``indices`` first
    (:func:`nbbag.cpu.collection.combine_ids`), ``start`` where one is outside."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(_chunk_ids)
def _chunk_ids_overload(indices, start, end, num_rows):
    if isinstance(num_rows, types.BaseTuple):

        def combined(indices, start, end, num_rows):
            ids, token_starts, row_base, table_rows, padding, pad_row = num_rows
            bad = combine_ids(
                ids, token_starts, row_base, table_rows, padding, pad_row, indices,
                start, end,
            )  # fmt: skip
            return start if bad else -1

        return combined
    # The function itself, not a call of a dispatcher: a full run of the suite once
    # failed to compile such a call for int64 ids (cold cache, several processes).
    return _first_outside


# -- the public bag kernels (inputs trusted) ---------------------------------------------
@njit(parallel=PARALLEL, cache=True)
def bag_sum(weight, indices, offsets, out, padding_idx=NO_PADDING, lanes=None):
    """out[b] = sum of the rows of bag b.

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    _each_bag(
        _reduce_sums, weight, indices, None, offsets, out, None, padding_idx, Mode.SUM,
        lanes, None, out.shape[0],
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def bag_mean(weight, indices, offsets, out, padding_idx=NO_PADDING, lanes=None):
    """out[b] = mean of the rows of bag b (padding not counted).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    _each_bag(
        _reduce_sums, weight, indices, None, offsets, out, None, padding_idx, Mode.MEAN,
        lanes, None, out.shape[0],
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def bag_sqrtn(weight, indices, offsets, out, padding_idx=NO_PADDING, lanes=None):
    """out[b] = sum of the rows of bag b / sqrt(number of rows).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    _each_bag(
        _reduce_sums, weight, indices, None, offsets, out, None, padding_idx, Mode.SQRTN,
        lanes, None, out.shape[0],
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def bag_weighted_sum(
    weight, indices, offsets, per_sample_weights, out, padding_idx=NO_PADDING, lanes=None
):
    """out[b] = sum_i w_i x_i over bag b.

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    _each_bag(
        _reduce_sums, weight, indices, per_sample_weights, offsets, out, None,
        padding_idx, Mode.SUM, lanes, None, out.shape[0],
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def bag_weighted_mean(
    weight, indices, offsets, per_sample_weights, out, padding_idx=NO_PADDING, lanes=None
):
    """out[b] = sum_i w_i x_i / sum_i w_i over bag b (zeros where sum_i w_i is 0).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    _each_bag(
        _reduce_sums, weight, indices, per_sample_weights, offsets, out, None,
        padding_idx, Mode.MEAN, lanes, None, out.shape[0],
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def bag_weighted_sqrtn(
    weight, indices, offsets, per_sample_weights, out, padding_idx=NO_PADDING, lanes=None
):
    """out[b] = sum_i w_i x_i / sqrt(sum_i w_i**2) over bag b (zeros where all w_i are 0).

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    _each_bag(
        _reduce_sums, weight, indices, per_sample_weights, offsets, out, None,
        padding_idx, Mode.SQRTN, lanes, None, out.shape[0],
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def bag_max(weight, indices, offsets, out, padding_idx=NO_PADDING):
    """out[b] = elementwise max of the rows of bag b.

    Ownership: iteration b of the prange writes ``out[b]`` and nothing else.
    """
    _each_bag(
        _reduce_max, weight, indices, None, offsets, out, None, padding_idx, Mode.MAX,
        None, None, out.shape[0],
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def bag_max_argmax(weight, indices, offsets, out, argmax, padding_idx=NO_PADDING):
    """out[b] = elementwise max of the rows of bag b; argmax[b, d] = the position in
    ``indices`` of the winner of dimension d (first on ties), -1 for an empty bag.

    Ownership: iteration b of the prange writes ``out[b]`` and ``argmax[b]`` only.
    """
    _each_bag(
        _reduce_max, weight, indices, None, offsets, out, argmax, padding_idx, Mode.MAX,
        None, None, out.shape[0],
    )  # fmt: skip


# -- the front's kernels: checks as they read --------------------------------------------
@njit(cache=True, inline="always")
def offsets_to_csr(offsets, num_tokens, append_end, csr):
    """Write ``offsets`` (B or B + 1 entries) into ``csr`` as int64 CSR offsets
    (``num_tokens`` appended when ``append_end``); return whether they are valid:
    starting at 0, non-decreasing, none past ``num_tokens``.  A serial O(B) pass.

    Ownership: serial; writes ``csr`` only.
    """
    count = offsets.shape[0]
    previous = 0
    valid = count == 0 or offsets[0] == 0
    for i in range(count):
        value = np.int64(offsets[i])
        valid = valid and previous <= value <= num_tokens
        csr[i] = value
        previous = value
    if append_end:
        csr[count] = num_tokens
    return valid


@njit(cache=True, inline="always")
def _checked_bags(
    reduce_bag, mode, weight, indices, offsets, append_end, csr, per_sample_weights, out,
    argmax, padding_idx, lanes, stack,
):  # fmt: skip
    """The shape of the front's kernels: ``offsets`` as the caller gave them, written
    to ``csr`` by :func:`offsets_to_csr`, then :func:`_each_bag` checking every id, in
    up to CHECKED_CHUNKS chunks of bags (a few per thread: each chunk's ids are checked
    in one vectorised pass) or, for a ``stack`` (a collection stack's tuple,
    ``nbbag.cpu.api.PendingIds.stack``; None otherwise), combining them into
    ``indices`` from its features' ids (:func:`_chunk_ids`).
    Returns OK, BAD_OFFSETS (nothing was read) or the first position of an id outside
    [0, V) (no row outside the table was read; ``out`` is then to be discarded)."""
    if not offsets_to_csr(offsets, indices.shape[0], append_end, csr):
        return BAD_OFFSETS
    return _each_bag(
        reduce_bag, weight, indices, per_sample_weights, csr, out, argmax, padding_idx,
        mode, lanes, _rows_to_check(weight, stack), min(output_rows(out), CHECKED_CHUNKS),
    )  # fmt: skip


def _rows_to_check(weight, stack):
    """What :func:`_chunk_ids` checks the ids against: V, or the ``stack``."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(_rows_to_check)
def _rows_to_check_overload(weight, stack):
    if isinstance(stack, types.NoneType):
        return lambda weight, stack: weight.shape[0]
    return lambda weight, stack: stack


# One kernel per mode: the mode a constant, so that LLVM folds what a bag's sum is
# divided by (a mode passed at run time made the sum 20% slower at D = 64).
@njit(parallel=PARALLEL, cache=True)
def sum_bags_checked(
    weight, indices, offsets, append_end, csr, per_sample_weights, out, argmax,
    padding_idx, lanes, stack=None,
):  # fmt: skip
    """The sum (weighted when ``per_sample_weights`` is given) on unvalidated offsets
    and ids (see :func:`_checked_bags`).  ``argmax`` is not used.

    Ownership: iteration b of the prange writes ``out[b]`` only.
    """
    return _checked_bags(
        _reduce_sums, Mode.SUM, weight, indices, offsets, append_end, csr,
        per_sample_weights, out, argmax, padding_idx, lanes, stack,
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def mean_bags_checked(
    weight, indices, offsets, append_end, csr, per_sample_weights, out, argmax,
    padding_idx, lanes, stack=None,
):  # fmt: skip
    """:func:`sum_bags_checked` for the mean.

    Ownership: iteration b of the prange writes ``out[b]`` only.
    """
    return _checked_bags(
        _reduce_sums, Mode.MEAN, weight, indices, offsets, append_end, csr,
        per_sample_weights, out, argmax, padding_idx, lanes, stack,
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def sqrtn_bags_checked(
    weight, indices, offsets, append_end, csr, per_sample_weights, out, argmax,
    padding_idx, lanes, stack=None,
):  # fmt: skip
    """:func:`sum_bags_checked` for sqrtn.

    Ownership: iteration b of the prange writes ``out[b]`` only.
    """
    return _checked_bags(
        _reduce_sums, Mode.SQRTN, weight, indices, offsets, append_end, csr,
        per_sample_weights, out, argmax, padding_idx, lanes, stack,
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def max_bags_checked(
    weight, indices, offsets, append_end, csr, per_sample_weights, out, argmax,
    padding_idx, lanes, stack=None,
):  # fmt: skip
    """:func:`sum_bags_checked` for max: ``argmax`` None, or an int64 array of
    ``out``'s shape to record the winners.  ``per_sample_weights`` (None) and ``lanes``
    are not used.

    Ownership: iteration b of the prange writes bag b's rows of ``out`` and ``argmax``
    only.
    """
    return _checked_bags(
        _reduce_max, Mode.MAX, weight, indices, offsets, append_end, csr,
        per_sample_weights, out, argmax, padding_idx, lanes, stack,
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def renorm_rows(weight, rows, max_norm, norm_type):
    """Scale, in place, each ``weight[r]`` (r in ``rows``) whose ``norm_type``-norm
    exceeds ``max_norm`` by ``max_norm / (norm + 1e-7)``, as torch's embedding_renorm_.

    A half table's row is scaled in float32 and rounded to nearest (as the float32
    table's rows, then rounded).  ``rows`` must be unique: two threads scaling one row
    would race.
    Ownership: iteration i of the prange reads and writes ``weight[rows[i]]`` only.
    """
    for i in prange(rows.shape[0]):
        row = weight[rows[i]]
        norm = row_norm(row, norm_type)
        if norm > max_norm:
            _scale_in_place(weight, rows[i], max_norm / (norm + 1e-7))


def _scale_in_place(weight, row, factor):
    """``weight[row] *= factor`` (a half table's row in float32, rounded to nearest)."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(_scale_in_place)
def _scale_in_place_overload(weight, row, factor):
    if weight.dtype in (types.int16, types.uint16):

        def scale_widened(weight, row, factor):
            for d in range(weight.shape[1]):
                scaled = np.float32(widen(weight[row, d]) * factor)
                store(weight, row, d, scaled, None, 0)

        return scale_widened

    def scale_as_is(weight, row, factor):
        values = weight[row]
        values *= factor

    return scale_as_is


@njit(cache=True)
def row_norm(row, norm_type):
    """The ``norm_type``-norm (p > 0, or inf) of a 1-D array (a half table's row: of
    its values), accumulated in float64."""
    if norm_type == math.inf:
        largest = 0.0
        for value in row:
            largest = max(largest, abs(widen(value)))
        return largest
    total = 0.0
    for value in row:
        total += abs(float(widen(value))) ** norm_type
    return total ** (1.0 / norm_type)
