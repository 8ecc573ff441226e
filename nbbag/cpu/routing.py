"""Routing kernels of a row-sharded table (:mod:`nbbag.distributed`): a batch's tokens
split by the shard that owns their row, and the shards' partial maxima merged.

Row ``i`` of a table sharded over ``S`` shards lives on shard ``i % S`` as its local row
``i // S`` (round-robin: a vocabulary sorted by frequency spreads its hot rows evenly).
A routed batch keeps every shard's tokens in one array, shard by shard, each shard's
in the batch's order of bags and positions, so that a shard reduces its bags in the
order the whole table would.
"""

import numpy as np
from numba import njit, prange

from nbbag.cpu import PARALLEL


@njit(parallel=PARALLEL, cache=True)
def count_routed(indices, offsets, weights, padding_idx, num_shards, counts, totals):
    """counts[s, b] = the tokens of bag b on shard s (padding included: the shard skips
    it as the table would); totals[b] = (sum of w, sum of w^2) over bag b's tokens
    that are not padding (w = 1 without ``weights``), in float64: what mean and sqrtn
    divide by.

    Ownership: iteration b of the prange writes ``counts[:, b]`` and ``totals[b]``.
    """
    for b in prange(offsets.shape[0] - 1):
        counts[:, b] = 0
        total = 0.0
        squares = 0.0
        for p in range(offsets[b], offsets[b + 1]):
            row = indices[p]
            counts[row % num_shards, b] += 1
            if row == padding_idx:
                continue
            w = 1.0 if weights is None else np.float64(weights[p])
            total += w
            squares += w * w
        totals[b, 0] = total
        totals[b, 1] = squares


@njit(parallel=PARALLEL, cache=True)
def route_tokens(indices, offsets, weights, num_shards, cursors, local_ids, local_weights,
                 positions):  # fmt: skip
    """Write each token where its shard's part of the routed batch wants it: its local
    row into ``local_ids``, its weight into ``local_weights`` (when ``weights`` is
    given) and its position in the batch into ``positions``.  ``cursors[s, b]`` holds,
    on entry, where bag b's first token on shard s goes (the routed offsets); it is
    advanced past every token written.

    Ownership: iteration b of the prange writes ``cursors[:, b]`` and the slots
    ``cursors`` gives bag b, which no other bag is given.
    """
    for b in prange(offsets.shape[0] - 1):
        for p in range(offsets[b], offsets[b + 1]):
            row = indices[p]
            shard = row % num_shards
            slot = cursors[shard, b]
            local_ids[slot] = row // num_shards
            if weights is not None:
                local_weights[slot] = weights[p]
            positions[slot] = p
            cursors[shard, b] = slot + 1


@njit(parallel=PARALLEL, cache=True)
def merge_maxima(values, argmax, positions, starts, out, winner):
    """The table's max from its shards': for each (bag b, dimension d) the largest of
    ``values[s, b, d]`` over the shards that had a token in bag b (``argmax[s, b, d]``
    >= 0, the winner's position in shard s's tokens), ties to the earliest position in
    the batch (``positions[starts[s] + argmax[s, b, d]]``), as one table's max does.
    ``out[b, d]`` gets it (0 for a bag with no token), ``winner[b, d]`` its shard (-1).

    Ownership: iteration b of the prange writes ``out[b]`` and ``winner[b]``.
    """
    num_shards, num_bags, dim = values.shape
    for b in prange(num_bags):
        for d in range(dim):
            best = -1
            best_value = values[0, b, d]
            best_position = 0
            for s in range(num_shards):
                local = argmax[s, b, d]
                if local < 0:
                    continue
                value = values[s, b, d]
                position = positions[starts[s] + local]
                if (
                    best < 0
                    or value > best_value
                    or (value == best_value and position < best_position)
                ):
                    best, best_value, best_position = s, value, position
            out[b, d] = best_value if best >= 0 else 0
            winner[b, d] = best
