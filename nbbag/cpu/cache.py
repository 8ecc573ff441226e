"""The row cache's kernel (:mod:`nbbag.cached`): a batch's tokens looked up in the cache
in one pass."""

from numba import njit

FREE = -1  # a row that is in the file only
PENDING = -2  # a row this call reads that is not in the cache yet


@njit(cache=True)
def admit_tokens(flat, slot_of, used, call, local, missing):
    """For each token p of ``flat``: ``local[p]`` = its row's slot, ``used[slot]`` =
    ``call`` (a slot that is not pinned); a row not in the cache is marked PENDING in
    ``slot_of`` and listed once in ``missing`` (its tokens' ``local`` is PENDING).
    Returns how many rows are missing.

    Ownership: one thread (a serial pass: rows repeat across tokens); it writes
    ``local``, ``missing``, ``used`` at the batch's slots and ``slot_of`` at its rows.
    """
    count = 0
    pinned = used.dtype.type(9223372036854775807)
    for p in range(flat.shape[0]):
        row = flat[p]
        slot = slot_of[row]
        if slot >= 0:
            if used[slot] != pinned:
                used[slot] = call
        elif slot == FREE:
            slot_of[row] = PENDING
            missing[count] = row
            count += 1
        local[p] = slot if slot >= 0 else PENDING
    return count
