"""CPU backward kernels: the row-sparse gradient of the bag reduction.

The gradient of ``out[b] = sum_p c_p * weight[indices[p]]`` (p in bag b) with respect to
row r is ``sum_{p : indices[p] = r} c_p * grad_output[bag(p)]``: each token adds a scaled
copy of its bag's output gradient to its row.  ``max`` routes dimension d of a bag's
gradient to the token that won it.  The pipeline, deterministic by construction:

1. ``token_coefficients`` / ``max_token_coefficients`` (parallel over bags): each token's
   bag (-1 for padding and for tokens in no bag) and coefficient c_p.
2. ``group_positions_by_row`` (O(N), parallel passes): a stable radix sort by row,
   so the tokens of a row sit together, in increasing position.
3. ``contributing_rows`` (parallel over rows): which rows got a non-zero coefficient
   (needed only where a token can have coefficient 0: max, and weights).
4. ``accumulate_rows`` (parallel over rows) with ``row_gradient``: one thread owns a
   row and sums its tokens in position order, so the result is bit-identical whatever
   the thread count.  Nothing is added into memory another thread may own.

Arguments keep the forward's order and meaning (see :mod:`nbbag.cpu.forward`); ``mode``
is an int, ``nbbag.Mode``'s value.  No validation: ``embedding_bag_bwd`` is the safe
entry point.
"""

import math

import numpy as np
from numba import njit, prange

from nbbag.cpu.forward import add_row, store_sum, sum_buffer

SUM, MEAN, MAX, SQRTN = 0, 1, 2, 3  # nbbag.Mode's values
MAX_RADIX_BITS = 12  # at most 4096 buckets: two passes sort the rows of a 16M-row table


@njit(cache=True)
def bag_denominator(indices, per_sample_weights, start, end, padding_idx, mode):
    """What bag ``start:end``'s sum is divided by: 1 (sum), sum_i w_i (mean),
    sqrt(sum_i w_i**2) (sqrtn), with w_i = 1 without weights; padding left out.
    Shared with the GPU (a leaf)."""
    if mode == SUM:
        return 1.0
    weighted = per_sample_weights.shape[0] > 0
    total = 0.0
    for position in range(start, end):
        if indices[position] == padding_idx:
            continue
        w = per_sample_weights[position] if weighted else 1.0
        total += w if mode == MEAN else w * w
    return total if mode == MEAN else math.sqrt(total)


@njit(cache=True, inline="always")
def bag_token_coefficients(
    indices, per_sample_weights, start, end, padding_idx, b, scale, bag_of, coefficients
):
    """Bag b's tokens ``start:end``: ``bag_of[p]`` = b (-1 for padding) and
    ``coefficients[p]`` = w_p * ``scale`` (0 for padding), w_p = 1 without weights.
    Shared with the GPU (a leaf: no call).

    Ownership: the caller owns positions start:end of bag_of and coefficients.
    """
    weighted = per_sample_weights.shape[0] > 0
    for position in range(start, end):
        if indices[position] == padding_idx:
            bag_of[position] = -1
            coefficients[position] = 0.0
        else:
            bag_of[position] = b
            w = per_sample_weights[position] if weighted else 1.0
            coefficients[position] = w * scale


@njit(cache=True, inline="always")
def bag_max_coefficients(indices, argmax, start, end, padding_idx, b, bag_of, coefficients):
    """Bag b's tokens ``start:end`` for max: ``bag_of[p]`` = b (-1 for padding) and
    ``coefficients[p]`` = 1 if token p won a dimension of the bag (``argmax[b]``), else
    0.  Shared with the GPU (a leaf: no call).

    Ownership: the caller owns positions start:end (every winner of bag b lies there).
    """
    for position in range(start, end):
        bag_of[position] = -1 if indices[position] == padding_idx else b
        coefficients[position] = 0.0
    for d in range(argmax.shape[1]):
        if argmax[b, d] >= 0:
            coefficients[argmax[b, d]] = 1.0


@njit(parallel=True, cache=True)
def token_coefficients(
    indices, offsets, per_sample_weights, padding_idx, mode, bag_of, coefficients
):
    """For sum, mean and sqrtn: ``bag_of[p]`` = the bag of token p (-1 for padding) and
    ``coefficients[p]`` = w_p / denominator (0 where the denominator is 0, as the
    forward's zeros).  ``per_sample_weights`` empty means unweighted.  Tokens in no bag
    are left as the caller set them.

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only.
    """
    for b in prange(offsets.shape[0] - 1):
        start, end = offsets[b], offsets[b + 1]
        denominator = bag_denominator(
            indices, per_sample_weights, start, end, padding_idx, mode
        )
        bag_token_coefficients(
            indices,
            per_sample_weights,
            start,
            end,
            padding_idx,
            b,
            0.0 if denominator == 0 else 1.0 / denominator,
            bag_of,
            coefficients,
        )


@njit(parallel=True, cache=True)
def max_token_coefficients(indices, offsets, argmax, padding_idx, bag_of, coefficients):
    """For max: ``bag_of`` as in ``token_coefficients``; ``coefficients[p]`` = 1 if token
    p won at least one dimension of its bag (``argmax`` from the forward), else 0.

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only
    (every winner of bag b lies in bag b).
    """
    for b in prange(offsets.shape[0] - 1):
        bag_max_coefficients(
            indices,
            argmax,
            offsets[b],
            offsets[b + 1],
            padding_idx,
            b,
            bag_of,
            coefficients,
        )


@njit(parallel=True, cache=True)
def _sort_keys(indices, bag_of, num_rows, keys, positions):
    """keys[p] = the row of token p, or ``num_rows`` (sorts last) for a token in no
    bag; positions[p] = p.

    Ownership: iteration p of the prange writes keys[p] and positions[p].
    """
    for position in prange(indices.shape[0]):
        keys[position] = indices[position] if bag_of[position] >= 0 else num_rows
        positions[position] = position


@njit(cache=True, inline="always")
def chunk_bounds(c, num_chunks, count):
    """The items ``first:last`` of chunk c when ``count`` items are cut into
    ``num_chunks`` contiguous chunks.  Shared with the GPU (a leaf)."""
    return c * count // num_chunks, (c + 1) * count // num_chunks


@njit(cache=True, inline="always")
def count_digits(keys, shift, first, last, slots):
    """``slots[digit]`` = how many of ``keys[first:last]`` have that digit at ``shift``
    (``slots.shape[0]`` buckets, a power of 2).  Shared with the GPU (a leaf).

    Ownership: the caller owns ``slots``.
    """
    mask = slots.shape[0] - 1
    for digit in range(slots.shape[0]):
        slots[digit] = 0
    for i in range(first, last):
        slots[(keys[i] >> shift) & mask] += 1


@njit(cache=True, inline="always")
def scatter_digits(
    keys, positions, shift, first, last, slots, sorted_keys, sorted_positions
):
    """Move ``keys[first:last]`` (and their positions), in order, to the slots
    ``slots`` hands out per digit, advancing them.  Shared with the GPU (a leaf).

    Ownership: the caller owns ``slots`` and the slots it holds.
    """
    mask = slots.shape[0] - 1
    for i in range(first, last):
        digit = (keys[i] >> shift) & mask
        slot = slots[digit]
        slots[digit] = slot + 1
        sorted_keys[slot] = keys[i]
        sorted_positions[slot] = positions[i]


@njit(cache=True)
def radix_plan(num_rows, max_radix_bits):
    """(key_bits, digit_bits) to sort keys in [0, num_rows] (num_rows keys the tokens
    in no bag): as few passes of at most ``max_radix_bits`` as will do, the bits shared
    evenly between them.  Shared with the GPU's host code."""
    key_bits = 1
    while (1 << key_bits) <= num_rows:
        key_bits += 1
    passes = -(-key_bits // max_radix_bits)
    return key_bits, -(-key_bits // passes)


@njit(parallel=True, cache=True)
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
def is_row_start(keys, i):
    """Whether sorted ``keys[i]`` starts a run of equal keys.  Shared with the GPU (a
    leaf)."""
    return i == 0 or keys[i] != keys[i - 1]


@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
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


@njit(cache=True)
def group_positions_by_row(indices, bag_of, num_rows, num_chunks, sort_type=np.int64):
    """Group the tokens in a bag (``bag_of[p] >= 0``) by row.

    Returns ``(rows, row_ptr, positions)``: ``rows`` (U,) int64 sorted unique rows;
    ``positions[row_ptr[k]:row_ptr[k + 1]]`` the tokens of ``rows[k]``, increasing.
    A stable LSD radix sort, two passes up to V = 16M, each parallel over chunks of
    tokens: O(N) per pass and no array of size V, so the cost does not grow with the
    table.  ``num_chunks`` (use the thread count) only sets the parallelism: the
    result is the same for any value.  ``sort_type``: the integer type the keys and
    ``positions`` are sorted in; ``np.int32`` (where ``num_rows`` and the number of
    tokens are below 2**31 - 1) moves half the bytes of int64 through each pass.
    """
    total = indices.shape[0]
    keys = np.empty(total, dtype=sort_type)
    positions = np.empty(total, dtype=sort_type)
    _sort_keys(indices, bag_of, num_rows, keys, positions)
    num_chunks = max(1, min(num_chunks, total // 4096))  # small inputs: one chunk
    # As few passes as MAX_RADIX_BITS allows (a third pass at V = 10M cost 30% more
    # than V = 1M's two).
    key_bits, digit_bits = radix_plan(num_rows, MAX_RADIX_BITS)
    chunk_slots = np.empty((num_chunks, 1 << digit_bits), dtype=np.int64)
    sorted_keys = np.empty_like(keys)
    sorted_positions = np.empty_like(positions)
    for shift in range(0, key_bits, digit_bits):
        _radix_pass(keys, positions, shift, chunk_slots, sorted_keys, sorted_positions)
        keys, sorted_keys = sorted_keys, keys
        positions, sorted_positions = sorted_positions, positions

    count = np.searchsorted(keys, num_rows)  # tokens in a bag; the absent ones follow
    # The rows and where each starts, in parallel: each chunk counts the row starts in
    # its part of the sorted keys, then writes them from its offset (serially: ~0.4 ms
    # of the 1.7 at 200k tokens).
    chunk_rows = np.empty(num_chunks + 1, dtype=np.int64)
    chunk_rows[0] = 0
    _count_row_starts(keys, count, chunk_rows[1:])
    first_row = np.cumsum(chunk_rows)
    num_unique = first_row[num_chunks]
    rows = np.empty(num_unique, dtype=np.int64)
    row_ptr = np.empty(num_unique + 1, dtype=np.int64)
    _write_row_starts(keys, count, first_row, rows, row_ptr)
    row_ptr[num_unique] = count
    return rows, row_ptr, positions[:count]


@njit(cache=True, inline="always")
def row_contributes(coefficients, positions, start, end):
    """Whether any of the tokens ``positions[start:end]`` has a non-zero coefficient.
    Shared with the GPU (a leaf).  Writes nothing."""
    for i in range(start, end):
        if coefficients[positions[i]] != 0:
            return True
    return False


@njit(parallel=True, cache=True)
def contributing_rows(coefficients, positions, row_ptr, contributes):
    """``contributes[k]`` = whether any token of row k has a non-zero coefficient.

    Ownership: iteration k of the prange writes ``contributes[k]`` only.
    """
    for k in prange(row_ptr.shape[0] - 1):
        contributes[k] = row_contributes(
            coefficients, positions, row_ptr[k], row_ptr[k + 1]
        )


@njit(cache=True, inline="always")  # in a parfor the arrays do not alias: vectorises
def row_gradient(
    grad_output,
    bag_of,
    coefficients,
    argmax,
    positions,
    start,
    end,
    scale_grad_by_freq,
    out_row,
    lanes=None,
):
    """Write into ``out_row`` the gradient of the row whose tokens are
    ``positions[start:end]``: the sum of ``coefficients[p] * grad_output[bag_of[p]]``
    in position order or, for max (``argmax`` with columns), of ``grad_output[b, d]``
    for each dimension d that token p won in its bag b; divided by the token count with
    ``scale_grad_by_freq``.  ``lanes`` as in :func:`nbbag.cpu.forward.sum_rows`: with
    a tuple the sum is made in registers, in vectors (bit-identical).

    Ownership: the caller owns ``out_row``; nothing else is written.
    """
    if argmax.shape[1] == 0:
        total = sum_buffer(out_row, grad_output, lanes)
        for i in range(start, end):
            position = positions[i]
            coefficient = coefficients[position]
            if coefficient == 0:
                continue
            add_row(total, grad_output, bag_of[position], coefficient, lanes)
        store_sum(total, out_row, lanes)
    else:
        out_row[:] = 0
        for i in range(start, end):
            position = positions[i]
            b = bag_of[position]
            for d in range(out_row.shape[0]):
                if argmax[b, d] == position:
                    out_row[d] += grad_output[b, d]
    if scale_grad_by_freq:
        out_row *= 1.0 / (end - start)


@njit(parallel=True, cache=True)
def accumulate_rows(
    grad_output,
    bag_of,
    coefficients,
    argmax,
    positions,
    row_ptr,
    value_index,
    scale_grad_by_freq,
    values,
    lanes=None,
):
    """``values[value_index[k]]`` = the gradient of row k (see ``row_gradient``;
    ``argmax`` of shape (0, 0) except for max); rows with ``value_index[k] < 0`` are
    skipped.  ``lanes``: see ``row_gradient``.

    Ownership: iteration k of the prange writes ``values[value_index[k]]`` only.
    """
    for k in prange(row_ptr.shape[0] - 1):
        if value_index[k] >= 0:
            row_gradient(
                grad_output,
                bag_of,
                coefficients,
                argmax,
                positions,
                row_ptr[k],
                row_ptr[k + 1],
                scale_grad_by_freq,
                values[value_index[k]],
                lanes,
            )


@njit(cache=True, inline="always")
def bag_weights_grad(
    weight,
    indices,
    per_sample_weights,
    out,
    grad_output,
    start,
    end,
    padding_idx,
    mode,
    b,
    denominator,
    weights_grad,
):
    """``weights_grad`` at bag b's tokens ``start:end`` (see ``per_sample_weights_grad``;
    ``denominator`` from ``bag_denominator``).  Shared with the GPU (a leaf).

    Ownership: the caller owns positions start:end of weights_grad.
    """
    dim = grad_output.shape[1]
    gradient_dot_out = 0.0
    if mode != SUM:
        for d in range(dim):
            gradient_dot_out += float(grad_output[b, d]) * out[b, d]
    for position in range(start, end):
        row = indices[position]
        if row == padding_idx or denominator == 0:
            weights_grad[position] = 0.0
            continue
        gradient_dot_row = 0.0
        for d in range(dim):
            gradient_dot_row += float(grad_output[b, d]) * weight[row, d]
        if mode == SUM:
            weights_grad[position] = gradient_dot_row
        elif mode == MEAN:
            weights_grad[position] = (gradient_dot_row - gradient_dot_out) / denominator
        else:
            w = per_sample_weights[position]
            weights_grad[position] = (
                gradient_dot_row - gradient_dot_out * w / denominator
            ) / denominator


@njit(parallel=True, cache=True)
def per_sample_weights_grad(
    weight,
    indices,
    offsets,
    per_sample_weights,
    out,
    grad_output,
    padding_idx,
    mode,
    weights_grad,
):
    """The gradient of sum(grad_output * out) with respect to each per-sample weight:
    sum: g.x_p; mean: (g.x_p - g.out_b) / sum w; sqrtn: (g.x_p - g.out_b w_p / S) / S
    with S = sqrt(sum w**2); 0 for padding and where the denominator is 0.  ``out`` is
    the forward's output (read for mean and sqrtn only).  Tokens in no bag are left as
    the caller set them.

    Ownership: iteration b of the prange writes positions offsets[b]:offsets[b+1] only.
    """
    for b in prange(offsets.shape[0] - 1):
        start, end = offsets[b], offsets[b + 1]
        bag_weights_grad(
            weight,
            indices,
            per_sample_weights,
            out,
            grad_output,
            start,
            end,
            padding_idx,
            mode,
            b,
            bag_denominator(indices, per_sample_weights, start, end, padding_idx, mode),
            weights_grad,
        )
