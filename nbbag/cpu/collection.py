"""CPU kernel of the collection: a batch's features as one bag batch of a stack.

The tables of a collection that share a width D and a mode live in one stack: their rows
one after another, then one spare row that stands for every table's padding (the bag
kernels leave that one row out of every bag).  :func:`combine_features` turns the
features of a stack, each given as its own ids and B-form offsets, into bags of the
stack, in bag-major order: pair ``p = b * F + f`` is feature f's bag b.  The stack's
(B * F, D) output is then, as a (B, F * D) array, the features' columns side by side,
and its backward and optimizer step are the single table's.

Arguments: ``ids`` (N,) int32/int64, every feature's ids one after another (feature
f's at ``token_starts[f]:token_starts[f + 1]``); ``bag_starts`` (F, B) int64, feature
f's offsets in torch's B form, relative to its own ids; ``row_base``, ``num_rows`` and
``padding`` (F,) int64: where feature f's table starts in the stack, its rows, and its
padding row (or -1); ``pad_row``: the stack's spare row; ``out_ids`` (N,) and
``out_offsets`` (B * F + 1,) int64: the stack's bags; ``weights`` and ``out_weights``
(N,) of the table's dtype, or None.
"""

from numba import njit, prange

from nbbag.base.constants import BAD_ID, BAD_OFFSETS, OK
from nbbag.cpu import PARALLEL


@njit(cache=True, inline="always")
def _bag_bounds(token_starts, bag_starts, f, b):
    """(start, end) of feature f's bag b, relative to its ids, and whether they are
    valid: from 0, non-decreasing, within the feature's ids."""
    count = token_starts[f + 1] - token_starts[f]
    start = bag_starts[f, b]
    end = bag_starts[f, b + 1] if b + 1 < bag_starts.shape[1] else count
    valid = 0 <= start <= end <= count and (b > 0 or start == 0)
    return start, end, valid


@njit(parallel=PARALLEL, cache=True)
def combine_features(
    ids, token_starts, bag_starts, row_base, num_rows, padding, pad_row, weights,
    out_ids, out_offsets, out_weights,
):  # fmt: skip
    """Write the features' bags as the stack's bags (see the module's docstring): each
    id shifted to its table's rows in the stack, a padding id to ``pad_row``; with
    ``weights`` (N,) (in ``ids``' order), each token's weight into ``out_weights``
    (N,) beside its id (both None without weights).

    Returns OK, BAD_OFFSETS (a feature's offsets are not valid; ``out_ids`` untouched)
    or BAD_ID (an id outside its table; ``out_ids`` is then to be discarded).

    Ownership: iteration b of each prange writes the entries of pairs b * F ... b * F +
    F - 1 only (their lengths, then their ids); the prefix sum between is serial.
    """
    num_features, num_bags = bag_starts.shape
    out_offsets[0] = 0
    bad_offsets = 0
    for b in prange(num_bags):
        for f in range(num_features):
            start, end, valid = _bag_bounds(token_starts, bag_starts, f, b)
            out_offsets[b * num_features + f + 1] = end - start if valid else 0
            bad_offsets += not valid
    if bad_offsets:
        return BAD_OFFSETS
    for p in range(num_bags * num_features):
        out_offsets[p + 1] += out_offsets[p]
    bad_ids = 0
    for b in prange(num_bags):
        for f in range(num_features):
            start = token_starts[f] + bag_starts[f, b]
            first = out_offsets[b * num_features + f]
            last = out_offsets[b * num_features + f + 1]
            base, rows, pad = row_base[f], num_rows[f], padding[f]
            for i in range(last - first):
                row = ids[start + i]
                bad_ids += row < 0 or row >= rows
                out_ids[first + i] = pad_row if row == pad else base + row
                if weights is not None:
                    out_weights[first + i] = weights[start + i]
    return OK if bad_ids == 0 else BAD_ID
