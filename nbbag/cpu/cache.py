"""The row cache's kernel (:mod:`nbbag.cached`): a batch's tokens looked up in the cache
in one pass."""

from numba import njit, prange

from nbbag.cpu import PARALLEL

FREE = -1  # a row that is in the file only
PENDING = -2  # a row this call reads that is not in the cache yet
PINNED = 9223372036854775807  # a slot's last use that never ages: the padding row's


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
    pinned = used.dtype.type(PINNED)
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


@njit(parallel=PARALLEL, cache=True)
def copy_rows(source, source_rows, target, target_rows):
    """``target[target_rows[k]] = source[source_rows[k]]`` for every k: rows between a
    file's mapped array and the cache (either way), several page faults in flight.

    Ownership: iteration k of the prange writes ``target[target_rows[k]]``;
    ``target_rows`` are distinct.
    """
    for k in prange(source_rows.shape[0]):
        target[target_rows[k]] = source[source_rows[k]]


@njit(cache=True)
def clock_victims(used, call, hand, out):
    """Fill ``out`` with slots to evict, sweeping from ``hand`` (a clock): a slot is
    taken if no call read it since the hand last passed, else it gets a second chance
    (its mark is cleared: ``used`` -1 - used).  Slots this ``call`` reads and pinned
    ones are never taken; a slot taken is marked as read by ``call``.  Returns where
    the hand stops.

    Ownership: one thread; it writes ``out`` and ``used``.
    """
    pinned = used.dtype.type(PINNED)
    size = used.shape[0]
    count = 0
    while count < out.shape[0]:
        mark = used[hand]
        if mark != pinned and mark != call:
            if mark < 0:  # unread since the last sweep (or never filled): evict
                out[count] = hand
                count += 1
                used[hand] = call  # the call's now: not taken twice
            else:  # read since: a second chance, remembered as a negative mark
                used[hand] = -1 - mark
        hand += 1
        if hand == size:
            hand = 0
    return hand
