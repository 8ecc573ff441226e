"""CPU kernel of the collection: a batch's features as one bag batch of a stack.

The tables of a collection that share a width D and a mode live in one stack: their rows
one after another, then one spare row that stands for every table's padding (the bag
kernels leave that one row out of every bag).  :func:`combine_features` turns the
features of a stack, each given as its own ids and B-form offsets, into bags of the
stack, feature-major: the stack's bag ``f * B + b`` is feature f's bag b, and its ids
are the features' ids one after another, each shifted to its table's rows.  (Feature-
major, each table's rows are read together: 20-30% faster than bag-major on 26 tables,
measured.)  The forward writes bag ``f * B + b`` to row (b, f) of a (B, F, D) output
(:func:`nbbag.cpu.forward.output_row`), which is the features' columns side by side.
The collection's own forward runs :func:`combine_offsets` alone and combines the ids
chunk by chunk as it reads them (:func:`combine_ids`, from
:func:`nbbag.cpu.forward._chunk_ids`): one pass over the ids fewer.

Arguments (the GPU's twin, :mod:`nbbag.cuda.collection`, takes the same): ``ids`` (N,)
int32/int64, every feature's ids one after another (feature f's at
``token_starts[f]:token_starts[f + 1]``); ``bag_starts`` (F, B) int64, feature f's
offsets in torch's B form, relative to its own ids; ``row_base``, ``num_rows`` and
``padding`` (F,) int64: where feature f's table starts in the stack, its rows, and its
padding row (or -1); ``pad_row``: the stack's spare row; ``out_ids`` (N,) and
``out_offsets`` (F * B + 1,) int64: the stack's bags, in the CSR form; ``status`` (1,)
int64, set to OK by the caller and lowered to BAD_OFFSETS or BAD_ID by bad input.
"""

import numpy as np
from numba import njit, prange

from nbbag.base.constants import BAD_ID, BAD_OFFSETS
from nbbag.base.features import stack_row, start_is_valid
from nbbag.base.sort import chunk_bounds
from nbbag.cpu import PARALLEL

# Pieces each feature's ids are cut into for the parallel copy: enough to share one
# large feature among the threads.
CHUNKS_PER_FEATURE = 16


@njit(cache=True, inline="always")
def _combine_offsets(token_starts, bag_starts, out_offsets):
    """Write the stack's CSR offsets (see :func:`combine_features`); return how many
    bag starts are not valid (``out_offsets`` then to be discarded).

    Ownership: iteration f of the prange writes ``out_offsets[f * B : (f + 1) * B]``;
    the calling thread, the last offset.
    """
    num_features, num_bags = bag_starts.shape
    bad_offsets = 0
    for f in prange(num_features):
        first = token_starts[f]
        count = token_starts[f + 1] - first
        previous = 0
        for b in range(num_bags):
            start = bag_starts[f, b]
            bad_offsets += not start_is_valid(b, start, previous, count)
            out_offsets[f * num_bags + b] = first + start
            previous = start
    # With no bags every token is in none: the CSR form of no bags is [0].
    out_offsets[num_features * num_bags] = token_starts[num_features] if num_bags else 0
    return bad_offsets


@njit(cache=True, inline="always")
def combine_ids(
    ids, token_starts, row_base, num_rows, padding, pad_row, out_ids, first, last
):  # fmt: skip
    """Write ``out_ids[first:last]``: each of ``ids[first:last]`` shifted to its
    feature's table's rows in the stack (a padding id to ``pad_row``), whatever
    features the range spans; return how many lie outside their table.

    Ownership: the caller owns ``out_ids[first:last]``; nothing else is written.
    """
    bad_ids = 0
    # the feature of token ``first``: the last one starting at or before it (an empty
    # feature starts where the next does)
    f = np.searchsorted(token_starts, first, side="right") - 1
    i = first
    while i < last:
        end = min(last, token_starts[f + 1])
        base, rows, pad = row_base[f], num_rows[f], padding[f]
        for j in range(i, end):
            row, inside = stack_row(ids[j], base, rows, pad, pad_row)
            bad_ids += not inside
            out_ids[j] = row
        i = end
        f += 1
    return bad_ids


@njit(parallel=PARALLEL, cache=True)
def combine_offsets(token_starts, bag_starts, out_offsets, status):
    """The offsets' half of :func:`combine_features`: ``out_offsets`` written,
    ``status[0]`` lowered to BAD_OFFSETS where a feature's offsets are not valid.  The
    CPU's collection forward combines the ids as it reads them
    (:mod:`nbbag.cpu.forward`, from :class:`nbbag.cpu.api.PendingIds`).

    Ownership: iteration f of the prange writes ``out_offsets[f * B : (f + 1) * B]``;
    the calling thread, ``status`` and the last offset.
    """
    if _combine_offsets(token_starts, bag_starts, out_offsets):
        status[0] = BAD_OFFSETS


@njit(parallel=PARALLEL, cache=True)
def combine_features(
    ids, token_starts, bag_starts, row_base, num_rows, padding, pad_row, out_ids,
    out_offsets, status,
):  # fmt: skip
    """Write the features' bags as the stack's bags (see the module's docstring): each
    id shifted to its table's rows in the stack, a padding id to ``pad_row``.

    ``status[0]`` becomes BAD_OFFSETS where a feature's offsets are not valid
    (``out_ids`` then untouched), or BAD_ID where an id is outside its table
    (``out_ids`` then to be discarded); it is left as it is otherwise.

    Ownership: iteration f of the first prange writes ``out_offsets[f * B : (f + 1) *
    B]``; iteration c of the second, the ids of piece c (of feature c //
    CHUNKS_PER_FEATURE) in ``out_ids``; the calling thread, ``status`` and the last
    offset.
    """
    if _combine_offsets(token_starts, bag_starts, out_offsets):
        status[0] = BAD_OFFSETS
        return
    if _combine_all_ids(ids, token_starts, row_base, num_rows, padding, pad_row, out_ids):
        status[0] = BAD_ID


@njit(parallel=PARALLEL, cache=True)
def combine_stack_ids(
    ids, token_starts, row_base, num_rows, padding, pad_row, out_ids, status
):  # fmt: skip
    """The ids' half of :func:`combine_features`: ``out_ids`` written, ``status[0]``
    lowered to BAD_ID where an id is outside its table.  For the CPU's collection when
    its ids are wanted before the forward (an optimizer's catch-up, a batch of no bags).

    Ownership: iteration c of the prange writes the ids of piece c (of feature c //
    CHUNKS_PER_FEATURE) in ``out_ids``; the calling thread, ``status``.
    """
    if _combine_all_ids(ids, token_starts, row_base, num_rows, padding, pad_row, out_ids):
        status[0] = BAD_ID


@njit(cache=True, inline="always")
def _combine_all_ids(ids, token_starts, row_base, num_rows, padding, pad_row, out_ids):
    """Every feature's ids combined (:func:`combine_ids`), each feature in
    CHUNKS_PER_FEATURE pieces; return how many lie outside their table.

    Ownership: iteration c of the prange writes the ids of piece c (of feature c //
    CHUNKS_PER_FEATURE) in ``out_ids``.
    """
    num_features = token_starts.shape[0] - 1
    bad_ids = 0
    for c in prange(num_features * CHUNKS_PER_FEATURE):
        f = c // CHUNKS_PER_FEATURE
        first, last = chunk_bounds(
            c % CHUNKS_PER_FEATURE,
            CHUNKS_PER_FEATURE,
            token_starts[f + 1] - token_starts[f],
        )
        bad_ids += combine_ids(
            ids, token_starts, row_base, num_rows, padding, pad_row, out_ids,
            token_starts[f] + first, token_starts[f] + last,
        )  # fmt: skip
    return bad_ids
