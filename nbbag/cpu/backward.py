"""CPU backward kernels: the row-sparse gradient of the bag reduction.

The gradient of ``out[b] = sum_p c_p * weight[indices[p]]`` (p in bag b) with respect to
row r is ``sum_{p : indices[p] = r} c_p * grad_output[bag(p)]``: each token adds a scaled
copy of its bag's output gradient to its row.  ``max`` routes dimension d of a bag's
gradient to the token that won it.  The pipeline, deterministic by construction, in one
call (:func:`group_tokens`) and then one kernel per use:

1. each token's bag (-1 for padding and for tokens in no bag), coefficient c_p and sort
   key (parallel over bags);
2. a stable LSD radix sort by row (parallel over chunks of tokens; O(N) per pass, no
   array of size V), so the tokens of a row sit together in increasing position, and
   the rows and where each starts;
3. where a token can have coefficient 0 (max, weights), which rows get a gradient;
4. :func:`accumulate_rows` (or the fused optimizer step) with :func:`row_gradient`: one
   thread owns a row and sums its tokens in position order, so the result is
   bit-identical whatever the thread count.  Nothing is added into memory another
   thread may own.

Arguments keep the forward's order and meaning (see :mod:`nbbag.cpu.forward`); ``mode``
is a :class:`nbbag.Mode`; ``per_sample_weights`` and ``argmax`` are None where absent.
No validation: ``embedding_bag_bwd`` is the safe entry point.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from nbbag.base.bags import (
    bag_coefficients,
    bag_weights_grad,
    row_contributes,
    stack_grad_row,
)
from nbbag.base.records import TokenGroups
from nbbag.base.sort import (
    CPU_RADIX_BITS,
    chunk_bounds,
    count_digits,
    exclusive_scan,
    is_row_start,
    radix_plan,
    scatter_digits,
)
from nbbag.cpu import PARALLEL
from nbbag.cpu.elements import compute_empty
from nbbag.cpu.rows import add_row, store_sum, sum_buffer
from nbbag.modes import Mode

# Below this many tokens a chunk of the sort is not worth a thread of its own.
MIN_CHUNK_TOKENS = 4096


# -- 1. each token's bag and coefficient -------------------------------------------------
@njit(cache=True, inline="always")
def _each_bag_coefficients(
    indices, offsets, per_sample_weights, argmax, padding_idx, mode, bag_of, coefficients
):
    """Bag and coefficient of every token in a bag (see :func:`token_coefficients`).

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only.
    """
    for b in prange(offsets.shape[0] - 1):
        bag_coefficients(
            indices, per_sample_weights, argmax, offsets[b], offsets[b + 1], padding_idx,
            mode, b, bag_of, coefficients,
        )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def token_coefficients(indices, offsets, padding_idx, mode, bag_of, coefficients):
    """For sum, mean and sqrtn: ``bag_of[p]`` = the bag of token p (-1 for padding) and
    ``coefficients[p]`` = 1 / the bag's denominator (0 where that is 0, as the
    forward's zeros).  Tokens in no bag are left as the caller set them.

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only.
    """
    _each_bag_coefficients(
        indices, offsets, None, None, padding_idx, mode, bag_of, coefficients
    )


@njit(parallel=PARALLEL, cache=True)
def weighted_token_coefficients(
    indices, offsets, per_sample_weights, padding_idx, mode, bag_of, coefficients
):
    """:func:`token_coefficients` with weights: ``coefficients[p]`` = w_p / the bag's
    denominator.

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only.
    """
    _each_bag_coefficients(
        indices, offsets, per_sample_weights, None, padding_idx, mode, bag_of,
        coefficients,
    )  # fmt: skip


@njit(parallel=PARALLEL, cache=True)
def max_token_coefficients(indices, offsets, argmax, padding_idx, bag_of, coefficients):
    """For max: ``bag_of`` as in :func:`token_coefficients`; ``coefficients[p]`` = 1 if
    token p won at least one dimension of its bag (``argmax`` from the forward), else 0.

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only
    (every winner of bag b lies in bag b).
    """
    _each_bag_coefficients(
        indices, offsets, None, argmax, padding_idx, Mode.MAX, bag_of, coefficients
    )


@njit(cache=True, inline="always")
def _coefficients_and_keys(
    indices, offsets, per_sample_weights, argmax, padding_idx, mode, num_rows, features,
    bag_of, coefficients, keys, positions,
):  # fmt: skip
    """Every token's bag (its row of grad_output: see :func:`group_tokens`) and
    coefficient, and its sort key: its row, or ``num_rows`` (sorts last) for a token in
    no bag; ``positions[p] = p``.  (Part of a parallel kernel, as are the sort's steps
    below: each ``prange`` is one parallel region of the kernel it is inlined into, and
    a plain loop in a serial twin.)

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1]; the
    tokens past the last bag are written after it, serially.
    """
    num_bags = offsets.shape[0] - 1
    bags_per_feature = num_bags // features
    for b in prange(num_bags):
        start, end = offsets[b], offsets[b + 1]
        grad_row = stack_grad_row(b, bags_per_feature, features)
        bag_coefficients(
            indices, per_sample_weights, argmax, start, end, padding_idx, mode, grad_row,
            bag_of, coefficients,
        )  # fmt: skip
        for position in range(start, end):
            keys[position] = indices[position] if bag_of[position] >= 0 else num_rows
            positions[position] = position
    for position in range(offsets[offsets.shape[0] - 1], indices.shape[0]):
        bag_of[position] = -1
        coefficients[position] = 0
        keys[position] = num_rows
        positions[position] = position


# -- 2. the radix sort -------------------------------------------------------------------
@njit(cache=True, inline="always")
def _sort_keys(indices, bag_of, num_rows, keys, positions):
    """keys[p] = the row of token p, or ``num_rows`` (sorts last) for a token in no
    bag; positions[p] = p.

    Ownership: iteration p of the prange writes keys[p] and positions[p].
    """
    for position in prange(indices.shape[0]):
        keys[position] = indices[position] if bag_of[position] >= 0 else num_rows
        positions[position] = position


@njit(cache=True, inline="always")
def _radix_pass(keys, positions, shift, chunk_slots, sorted_keys, sorted_positions):
    """One stable counting-sort pass on the digit of ``keys`` at ``shift``.

    The tokens are cut into ``chunk_slots.shape[0]`` contiguous chunks; each counts its
    digits, then the slots are handed out digit by digit, chunk by chunk, so every chunk
    scatters into slots no other chunk has and equal digits keep their input order: the
    output is the same for any number of chunks.
    Ownership: iteration c of each prange owns chunk c's tokens and ``chunk_slots[c]``.
    """
    count = keys.shape[0]
    num_chunks, buckets = chunk_slots.shape
    for c in prange(num_chunks):
        first, last = chunk_bounds(c, num_chunks, count)
        count_digits(keys, shift, first, last, chunk_slots[c])
    next_slot = 0
    for digit in range(buckets):
        for c in range(num_chunks):
            tokens = chunk_slots[c, digit]
            chunk_slots[c, digit] = next_slot
            next_slot += tokens
    for c in prange(num_chunks):
        first, last = chunk_bounds(c, num_chunks, count)
        scatter_digits(
            keys, positions, shift, first, last, chunk_slots[c], sorted_keys,
            sorted_positions,
        )  # fmt: skip


@njit(cache=True, inline="always")
def _count_row_starts(keys, count, chunk_rows):
    """``chunk_rows[c]`` = how many rows start in chunk c of the sorted ``keys[:count]``
    (``chunk_rows.shape[0]`` chunks).

    Ownership: iteration c of the prange writes ``chunk_rows[c]``.
    """
    num_chunks = chunk_rows.shape[0]
    for c in prange(num_chunks):
        first, last = chunk_bounds(c, num_chunks, count)
        starts = 0
        for i in range(first, last):
            starts += is_row_start(keys, i)
        chunk_rows[c] = starts


@njit(cache=True, inline="always")
def _write_row_starts(keys, count, first_row, rows, row_ptr):
    """Write each row of the sorted ``keys[:count]`` and its first token: chunk c's
    from ``rows[first_row[c]]`` on (``first_row``: the prefix sum of
    :func:`_count_row_starts`, with a leading 0).

    Ownership: iteration c of the prange writes ``rows`` and ``row_ptr`` at
    ``first_row[c]:first_row[c + 1]``.
    """
    num_chunks = first_row.shape[0] - 1
    for c in prange(num_chunks):
        first, last = chunk_bounds(c, num_chunks, count)
        k = first_row[c]
        for i in range(first, last):
            if is_row_start(keys, i):
                rows[k] = keys[i]
                row_ptr[k] = i
                k += 1


@njit(cache=True, inline="always")
def _row_groups(keys, positions, count, num_chunks):
    """``(rows, row_ptr, positions[:count])`` of the tokens whose sorted keys are
    ``keys[:count]``: the rows, and where each starts (``num_chunks`` as in
    :func:`group_positions_by_row`)."""
    num_chunks = max(1, min(num_chunks, count // MIN_CHUNK_TOKENS))  # small: one chunk
    # The rows and where each starts, in parallel: each chunk counts the row starts in
    # its part of the sorted keys, then writes them from its offset.  (Plain loops, not
    # np.cumsum: each NumPy function a kernel uses is compiled with it, ~0.3 s each on
    # a cold cache.)
    first_row = np.empty(num_chunks + 1, dtype=np.int64)
    first_row[0] = 0
    _count_row_starts(keys, count, first_row[1:])
    for c in range(num_chunks):
        first_row[c + 1] += first_row[c]
    num_unique = first_row[num_chunks]
    rows = np.empty(num_unique, dtype=np.int64)
    row_ptr = np.empty(num_unique + 1, dtype=np.int64)
    _write_row_starts(keys, count, first_row, rows, row_ptr)
    row_ptr[num_unique] = count
    return rows, row_ptr, positions[:count]


@njit(cache=True, inline="always")
def _radix_sort(keys, positions, num_rows, num_chunks):
    """Sort the tokens by key (stable): ``(sorted keys, their positions, how many are
    in a bag)``, the tokens in no bag (key ``num_rows``) last.  ``keys`` and
    ``positions`` (of the sort type) are overwritten."""
    total = keys.shape[0]
    num_chunks = max(1, min(num_chunks, total // MIN_CHUNK_TOKENS))  # small: one chunk
    key_bits, digit_bits = radix_plan(num_rows, CPU_RADIX_BITS)
    chunk_slots = np.empty((num_chunks, 1 << digit_bits), dtype=np.int64)
    sorted_keys = np.empty(total, dtype=keys.dtype)
    sorted_positions = np.empty(total, dtype=positions.dtype)
    for shift in range(0, key_bits, digit_bits):
        _radix_pass(keys, positions, shift, chunk_slots, sorted_keys, sorted_positions)
        keys, sorted_keys = sorted_keys, keys
        positions, sorted_positions = sorted_positions, positions
    count = total
    while count > 0 and keys[count - 1] == num_rows:
        count -= 1
    return keys, positions, count


# -- 2'. a collection stack's sort, feature by feature -----------------------------------
# A stack's tokens come feature by feature, and where each feature reads a table of its
# own, in the order of the tables' rows, the keys of feature f all lie below those of
# feature f + 1: sorting each feature's tokens on its own, with the bits of its own
# keys' range, gives the whole sort.  On 26 Criteo-sized tables (2 threads), the sort
# alone: 1.3-1.7 ms against 2.5-4.6 for the stack's 21-bit keys at 2,048 bags of 10 ids
# (each feature's 20,480 tokens stay in L2; 14 of the 26 tables need one pass, not
# two); all of ``group_tokens``, 1.27x at 10 ids a bag and 1.17x at one (one process,
# alternating).


@njit(cache=True, inline="always")
def _sort_segment(
    keys, positions, first, last, low, high, in_bag, num_rows, slots, sorted_keys,
    sorted_positions, sorted_first,
):  # fmt: skip
    """Sort the ``in_bag`` tokens of ``first:last`` that are in a bag (their keys in
    [low, high]) into ``sorted_*`` from ``sorted_first`` on (stable), through items
    ``first:last`` of ``keys`` and ``positions``, which it overwrites.  ``slots`` has
    ``1 << CPU_RADIX_BITS`` items.

    Ownership: the caller owns items ``first:last`` of keys and positions, ``slots``,
    and ``sorted_*[sorted_first:sorted_first + in_bag]``.
    """
    # The keys relative to ``low`` (fewer bits), the tokens in no bag dropped: the
    # passes then neither test nor shift a key.
    if in_bag == last - first:
        for i in range(first, last):
            keys[i] -= low
    else:
        kept = first
        for i in range(first, last):
            if keys[i] != num_rows:
                keys[kept] = keys[i] - low
                positions[kept] = positions[i]
                kept += 1
    key_bits, digit_bits = radix_plan(high - low, CPU_RADIX_BITS)
    buckets = slots[: 1 << digit_bits]
    # Each pass from one of the two places to the other (both this segment's own).
    here_keys = keys[first : first + in_bag]
    here_positions = positions[first : first + in_bag]
    there_keys = sorted_keys[sorted_first : sorted_first + in_bag]
    there_positions = sorted_positions[sorted_first : sorted_first + in_bag]
    for shift in range(0, key_bits, digit_bits):
        count_digits(here_keys, shift, 0, in_bag, buckets)
        exclusive_scan(buckets, 0, buckets.shape[0], 0)
        scatter_digits(
            here_keys, here_positions, shift, 0, in_bag, buckets, there_keys,
            there_positions,
        )  # fmt: skip
        here_keys, there_keys = there_keys, here_keys
        here_positions, there_positions = there_positions, here_positions
    # The last pass wrote ``here``: the segment's own items after an even number of
    # passes, else sorted_* already (then each item is copied onto itself).
    sorted_keys = sorted_keys[sorted_first : sorted_first + in_bag]
    sorted_positions = sorted_positions[sorted_first : sorted_first + in_bag]
    for i in range(in_bag):
        sorted_keys[i] = here_keys[i] + low
        sorted_positions[i] = here_positions[i]


@njit(cache=True, inline="always")
def _segment_ranges(keys, segment_starts, num_rows, lows, highs, in_bag):
    """Segment s (tokens ``segment_starts[s]:segment_starts[s + 1]``): its lowest and
    highest key of a token in a bag (``num_rows`` and -1 where it has none) and how
    many tokens it has in a bag.

    Ownership: iteration s of the prange writes item s of ``lows``, ``highs``, ``in_bag``.
    """
    for s in prange(segment_starts.shape[0] - 1):
        low, high, count = num_rows, -1, 0
        for i in range(segment_starts[s], segment_starts[s + 1]):
            key = keys[i]
            if key != num_rows:
                low = min(low, key)
                high = max(high, key)
                count += 1
        lows[s], highs[s], in_bag[s] = low, high, count


@njit(cache=True, inline="always")
def _sort_segments(keys, positions, segment_starts, num_rows, lows, highs, in_bag):
    """Each segment sorted on its own (:func:`_sort_segment`), one after another in the
    result: ``(sorted keys, their positions, how many)``, the tokens in a bag only.

    Ownership: iteration s of the prange owns segment s's items of keys and positions
    and its part of the result.
    """
    num_segments = segment_starts.shape[0] - 1
    sorted_first = np.empty(num_segments + 1, dtype=np.int64)
    sorted_first[0] = 0
    for s in range(num_segments):
        sorted_first[s + 1] = sorted_first[s] + in_bag[s]
    count = sorted_first[num_segments]
    sorted_keys = np.empty(count, dtype=keys.dtype)
    sorted_positions = np.empty(count, dtype=positions.dtype)
    for s in prange(num_segments):
        if in_bag[s] > 0:
            slots = np.empty(1 << CPU_RADIX_BITS, dtype=np.int64)
            _sort_segment(
                keys, positions, segment_starts[s], segment_starts[s + 1], lows[s],
                highs[s], in_bag[s], num_rows, slots, sorted_keys, sorted_positions,
                sorted_first[s],
            )  # fmt: skip
    return sorted_keys, sorted_positions, count


@njit(parallel=PARALLEL, cache=True)
def sort_by_row(keys, positions, segment_starts, num_rows, num_chunks):
    """Sort the tokens by key (stable) and find the rows: ``(rows, row_ptr,
    positions)`` as :func:`group_positions_by_row` returns them.  ``keys`` and
    ``positions`` (of the sort type) are overwritten.

    ``segment_starts`` (S + 1,): where the tokens of each feature of a collection's
    stack start (``[0, N]`` for a plain batch).  Where every segment's keys lie below
    the next one's (each feature has a table of its own) and none holds more than twice
    a thread's share of the tokens, each segment is sorted on its own, one thread a
    segment; otherwise the whole batch at once, each pass in parallel.
    """
    num_segments = segment_starts.shape[0] - 1
    lows = np.empty(num_segments, dtype=np.int64)
    highs = np.empty(num_segments, dtype=np.int64)
    in_bag = np.empty(num_segments, dtype=np.int64)
    separate = num_segments > 1
    if separate:
        _segment_ranges(keys, segment_starts, num_rows, lows, highs, in_bag)
        largest, total, above = 0, 0, -1
        for s in range(num_segments):
            largest = max(largest, in_bag[s])
            total += in_bag[s]
            if in_bag[s] > 0:
                separate = separate and lows[s] > above
                above = highs[s]
        separate = separate and largest * max(num_chunks, 1) <= 2 * total
    if separate:
        keys, positions, count = _sort_segments(
            keys, positions, segment_starts, num_rows, lows, highs, in_bag
        )
    else:
        keys, positions, count = _radix_sort(keys, positions, num_rows, num_chunks)
    # One place for the row starts: each inlined copy is compiled anew.
    return _row_groups(keys, positions, count, num_chunks)


@njit(parallel=PARALLEL, cache=True)
def group_positions_by_row(indices, bag_of, num_rows, num_chunks=1, sort_type=np.int64):
    """Group the tokens in a bag (``bag_of[p] >= 0``) by row.

    Returns ``(rows, row_ptr, positions)``: ``rows`` (U,) int64 sorted unique rows;
    ``positions[row_ptr[k]:row_ptr[k + 1]]`` the tokens of ``rows[k]``, increasing.
    A stable LSD radix sort, two passes up to V = 16M, each parallel over chunks of
    tokens.  ``num_chunks`` (pass ``numba.get_num_threads()``: reading it inside a
    kernel would keep Numba from caching it) only sets the parallelism: the result is
    the same for any value.  ``sort_type``: the integer type the keys and
    ``positions`` are sorted in; ``np.int32`` (where ``num_rows`` and the number of
    tokens are below 2**31 - 1) moves half the bytes of int64 through each pass.
    """
    total = indices.shape[0]
    keys = np.empty(total, dtype=sort_type)
    positions = np.empty(total, dtype=sort_type)
    _sort_keys(indices, bag_of, num_rows, keys, positions)
    keys, positions, count = _radix_sort(keys, positions, num_rows, num_chunks)
    return _row_groups(keys, positions, count, num_chunks)


# -- 3. which rows get a gradient --------------------------------------------------------
@njit(cache=True, inline="always")
def _contributing_rows(coefficients, positions, row_ptr, contributes):
    """``contributes[k]`` = whether any token of row k has a non-zero coefficient.

    Ownership: iteration k of the prange writes ``contributes[k]`` only.
    """
    for k in prange(row_ptr.shape[0] - 1):
        contributes[k] = row_contributes(
            coefficients, positions, row_ptr[k], row_ptr[k + 1]
        )


@njit(parallel=PARALLEL, cache=True)
def contributing_rows(coefficients, positions, row_ptr, contributes):
    """``contributes[k]`` = whether any token of row k has a non-zero coefficient.

    Ownership: iteration k of the prange writes ``contributes[k]`` only.
    """
    _contributing_rows(coefficients, positions, row_ptr, contributes)


@njit(cache=True, inline="always")
def _feature_starts(offsets, features, num_tokens):
    """Where each feature's tokens start among a stack's feature-major bags, and
    ``num_tokens`` (the tokens past the last bag, in none, go with the last feature)."""
    bags_per_feature = (offsets.shape[0] - 1) // features
    starts = np.empty(features + 1, dtype=np.int64)
    for f in range(features):
        starts[f] = offsets[f * bags_per_feature]
    starts[0] = 0  # the tokens before the first bag, in none, with the first
    starts[features] = num_tokens
    return starts


@njit(parallel=PARALLEL, cache=True)
def group_tokens(
    weight, indices, offsets, per_sample_weights, argmax, padding_idx, mode,
    num_chunks=1, sort_type=np.int64, features=1,
):  # fmt: skip
    """Steps 1-3 in one call: a :class:`~nbbag.base.records.TokenGroups` of the batch
    (``argmax``: the forward's winners for max, else None; ``num_chunks`` and
    ``sort_type`` as in :func:`group_positions_by_row`).  The coefficients are in the
    weight's dtype (float32 for a half table): a float32 table's gradient is summed in
    float32 arithmetic.  Only the weight's shape and dtype are read.

    ``features`` (F, dividing the B bags): 1, or the bags are a collection's stack,
    feature-major (feature f's bag b' is bag f * B / F + b'), whose output, gradient and
    winners are bag-major: then ``bag_of`` holds each token's row of those, b' * F + f,
    and ``argmax`` is read at that row."""
    num_rows = weight.shape[0]
    num_tokens = indices.shape[0]
    bag_of = np.empty(num_tokens, dtype=np.int64)
    coefficients = compute_empty(num_tokens, weight)
    keys = np.empty(num_tokens, dtype=sort_type)
    positions = np.empty(num_tokens, dtype=sort_type)
    _coefficients_and_keys(
        indices, offsets, per_sample_weights, argmax, padding_idx, mode, num_rows,
        features, bag_of, coefficients, keys, positions,
    )  # fmt: skip
    rows, row_ptr, positions = sort_by_row(
        keys, positions, _feature_starts(offsets, features, num_tokens), num_rows,
        num_chunks,
    )  # fmt: skip
    num_unique = rows.shape[0]
    value_index = np.empty(num_unique, dtype=np.int64)
    num_contributing = 0
    if argmax is None:
        # Every row with a token in a bag is in the gradient, as in torch's sparse
        # gradient: a weight of 0 gives a row of zeros (which moves Adam's moments).
        for k in range(num_unique):
            value_index[k] = k
        num_contributing = num_unique
    else:
        # max: a row that won no dimension has no gradient
        contributes = np.empty(num_unique, dtype=np.bool_)
        _contributing_rows(coefficients, positions, row_ptr, contributes)
        for k in range(num_unique):
            value_index[k] = num_contributing if contributes[k] else -1
            num_contributing += contributes[k]
    return TokenGroups(
        bag_of, coefficients, argmax, rows, row_ptr, positions, value_index,
        num_contributing,
    )  # fmt: skip


# -- 4. each row's gradient --------------------------------------------------------------
@njit(cache=True, inline="always")
def _sum_row_gradient(groups, grad_output, start, end, out_row, lanes):
    """The sum of ``coefficients[p] * grad_output[bag_of[p]]`` over the row's tokens,
    in position order, into ``out_row``."""
    total = sum_buffer(out_row, grad_output, lanes)
    for i in range(start, end):
        position = groups.positions[i]
        coefficient = groups.coefficients[position]
        if coefficient == 0:
            continue
        add_row(total, grad_output, groups.bag_of[position], coefficient, lanes)
    store_sum(total, out_row, lanes)


@njit(cache=True, inline="always")
def _max_row_gradient(groups, grad_output, start, end, out_row, lanes):
    """For max: the sum of ``grad_output[b, d]`` over each dimension d that a token of
    the row won in its bag b, into ``out_row``."""
    out_row[:] = 0
    for i in range(start, end):
        position = groups.positions[i]
        b = groups.bag_of[position]
        for d in range(out_row.shape[0]):
            if groups.argmax[b, d] == position:
                out_row[d] += grad_output[b, d]


def _row_gradient_of(groups, grad_output, start, end, out_row, lanes):
    """:func:`_max_row_gradient` where ``groups.argmax`` is an array, else
    :func:`_sum_row_gradient` (chosen at compile time)."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


# Not inline="always": an inlined overload hides its arguments' types from the inline
# functions it calls, whose ``is None`` tests then fold the wrong way.
@overload(_row_gradient_of)
def _row_gradient_of_overload(groups, grad_output, start, end, out_row, lanes):
    if isinstance(groups.types[groups.fields.index("argmax")], types.NoneType):
        return lambda groups, grad_output, start, end, out_row, lanes: _sum_row_gradient(
            groups, grad_output, start, end, out_row, lanes
        )
    return lambda groups, grad_output, start, end, out_row, lanes: _max_row_gradient(
        groups, grad_output, start, end, out_row, lanes
    )


@njit(cache=True, inline="always")  # in a parfor the arrays do not alias: vectorises
def row_gradient(grad_output, groups, start, end, scale_grad_by_freq, out_row, lanes=None):
    """Write into ``out_row`` the gradient of the row whose tokens are
    ``groups.positions[start:end]``: the sum of ``coefficients[p] *
    grad_output[bag_of[p]]`` in position order or, for max (``groups.argmax`` an
    array), of ``grad_output[b, d]`` for each dimension d that token p won in its bag b;
    divided by the token count with ``scale_grad_by_freq``.  ``lanes`` as in
    :func:`nbbag.cpu.forward.sum_rows`: with a tuple the sum is made in registers, in
    vectors (bit-identical).

    Ownership: the caller owns ``out_row``; nothing else is written.
    """
    _row_gradient_of(groups, grad_output, start, end, out_row, lanes)
    if scale_grad_by_freq:
        out_row *= 1.0 / (end - start)


@njit(parallel=PARALLEL, cache=True)
def accumulate_rows(grad_output, groups, scale_grad_by_freq, values, lanes=None):
    """``values[groups.value_index[k]]`` = the gradient of row k (see
    :func:`row_gradient`); rows with ``value_index[k] < 0`` are skipped.

    Ownership: iteration k of the prange writes ``values[value_index[k]]`` only.
    """
    row_ptr, value_index = groups.row_ptr, groups.value_index
    for k in prange(row_ptr.shape[0] - 1):
        if value_index[k] >= 0:
            row_gradient(
                grad_output, groups, row_ptr[k], row_ptr[k + 1], scale_grad_by_freq,
                values[value_index[k]], lanes,
            )  # fmt: skip


@njit(cache=True)
def compact_rows(groups):
    """The rows that get a gradient (``value_index >= 0``), in order."""
    if groups.num_contributing == groups.rows.shape[0]:
        return groups.rows
    return groups.rows[groups.value_index >= 0]


# -- the gradient with respect to per_sample_weights -------------------------------------
@njit(parallel=PARALLEL, cache=True)
def per_sample_weights_grad(
    weight, indices, offsets, per_sample_weights, out, grad_output, padding_idx, mode,
    weights_grad,
):  # fmt: skip
    """The gradient of sum(grad_output * out) with respect to each per-sample weight
    (see :func:`nbbag.base.bags.bag_weights_grad`); ``out`` is the forward's output
    (read for mean and sqrtn only).  Tokens in no bag are left as the caller set them.

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only.
    """
    for b in prange(offsets.shape[0] - 1):
        bag_weights_grad(
            weight, indices, per_sample_weights, out, grad_output, offsets[b],
            offsets[b + 1], padding_idx, mode, b, weights_grad,
        )  # fmt: skip
