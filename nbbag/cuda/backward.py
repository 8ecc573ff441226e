"""CUDA backward kernels: the row-sparse gradient, deterministic by construction.

The CPU pipeline (:mod:`nbbag.cpu.backward`), step for step, on the device:

1. ``token_coefficients`` / ``weighted_token_coefficients`` / ``max_token_coefficients``
   (a thread per bag): each token's bag (-1 for padding and for tokens in no bag) and
   coefficient.
2. the kernels of a stable LSD radix sort of the tokens by row (count, hand out slots
   digit-major then chunk by chunk, scatter: the CPU ``_radix_pass`` with a thread per
   chunk) and of the run heads that give the unique rows; :mod:`nbbag.cuda.grouping`
   launches them.
3. ``contributing_rows`` (a thread per row): for max, which rows won a dimension and
   so get a gradient at all (in the other modes every row does).
4. ``accumulate_rows``: one thread group per unique row, lanes along D, each lane sums
   its dimension over the row's tokens in position order: bit-identical from run to
   run whatever the launch order.  ``accumulate_rows_atomic`` (``deterministic=False``)
   scatter-adds each token into its row instead.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from nbbag.base.bags import (
    bag_coefficients,
    bag_weights_grad,
    row_contributes,
    stack_grad_row,
)
from nbbag.base.sort import (
    GPU_RADIX_BITS,
    chunk_bounds,
    count_digits,
    exclusive_scan,
    is_row_start,
    scatter_digits,
)
from nbbag.cuda.forward import group_item
from nbbag.modes import Mode

RADIX_BUCKETS = 1 << GPU_RADIX_BITS


# Three kernels where the CPU has one with None for what is absent: a kernel launch
# cannot take None.  Each passes None on to the shared per-bag function.
@cuda.jit
def token_coefficients(indices, offsets, padding_idx, mode, bag_of, coefficients):
    """For sum, mean and sqrtn: bag_of[p] = the bag of token p (-1 for padding),
    coefficients[p] = 1 / the bag's denominator (0 where that is 0).  Tokens in no bag
    are left alone.

    Ownership: thread b writes positions offsets[b]:offsets[b+1] only (grid-stride).
    """
    for b in range(cuda.grid(1), offsets.shape[0] - 1, cuda.gridsize(1)):
        bag_coefficients(
            indices, None, None, offsets[b], offsets[b + 1], padding_idx, mode, b,
            bag_of, coefficients,
        )  # fmt: skip


@cuda.jit
def weighted_token_coefficients(
    indices, offsets, per_sample_weights, padding_idx, mode, bag_of, coefficients
):
    """:func:`token_coefficients` with weights: coefficients[p] = w_p / the denominator.

    Ownership: thread b writes positions offsets[b]:offsets[b+1] only (grid-stride).
    """
    for b in range(cuda.grid(1), offsets.shape[0] - 1, cuda.gridsize(1)):
        bag_coefficients(
            indices, per_sample_weights, None, offsets[b], offsets[b + 1], padding_idx,
            mode, b, bag_of, coefficients,
        )  # fmt: skip


@cuda.jit
def max_token_coefficients(indices, offsets, argmax, padding_idx, bag_of, coefficients):
    """For max: bag_of as in token_coefficients; coefficients[p] = 1 if token p won a
    dimension of its bag, else 0.

    Ownership: thread b writes positions offsets[b]:offsets[b+1] only (every winner
    of bag b lies in bag b; grid-stride).
    """
    for b in range(cuda.grid(1), offsets.shape[0] - 1, cuda.gridsize(1)):
        bag_coefficients(
            indices, None, argmax, offsets[b], offsets[b + 1], padding_idx, Mode.MAX, b,
            bag_of, coefficients,
        )  # fmt: skip


@cuda.jit
def stack_grad_rows(bag_of, bags_per_feature, features):
    """Each token's bag b >= 0 in ``bag_of`` as its row of a collection stack's
    bag-major gradient (:func:`~nbbag.base.bags.stack_grad_row`); -1 stays.

    Ownership: thread p writes bag_of[p] (grid-stride).
    """
    for p in range(cuda.grid(1), bag_of.shape[0], cuda.gridsize(1)):
        if bag_of[p] >= 0:
            bag_of[p] = stack_grad_row(bag_of[p], bags_per_feature, features)


@cuda.jit
def winners_by_bag(argmax, bags_per_feature, features, by_bag):
    """``by_bag[b]`` = ``argmax``'s row of bag b, for winners kept bag-major (a
    collection stack's, :func:`~nbbag.base.bags.stack_grad_row`): the order in which
    the coefficient kernels read them.

    Ownership: thread b writes by_bag[b] (grid-stride).
    """
    for b in range(cuda.grid(1), by_bag.shape[0], cuda.gridsize(1)):
        row = stack_grad_row(b, bags_per_feature, features)
        for d in range(by_bag.shape[1]):
            by_bag[b, d] = argmax[row, d]


@cuda.jit
def _sort_keys(indices, bag_of, num_rows, keys, positions):
    """keys[p] = the row of token p, or num_rows (sorts last) for a token in no bag;
    positions[p] = p.

    Ownership: thread p writes keys[p] and positions[p] (grid-stride).
    """
    for p in range(cuda.grid(1), indices.shape[0], cuda.gridsize(1)):
        keys[p] = indices[p] if bag_of[p] >= 0 else num_rows
        positions[p] = p


@cuda.jit
def _radix_count(keys, shift, chunk_slots):
    """chunk_slots[c, digit] = how many keys of chunk c have that digit at ``shift``.

    Ownership: thread c writes chunk_slots[c] (grid-stride).
    """
    num_chunks = chunk_slots.shape[0]
    for c in range(cuda.grid(1), num_chunks, cuda.gridsize(1)):
        first, last = chunk_bounds(c, num_chunks, keys.shape[0])
        count_digits(keys, shift, first, last, chunk_slots[c])


@cuda.jit(device=True, inline=True)
def _column_total(chunk_slots, first, last, t):
    """The sum of chunk_slots[first:last, t] (one digit's count over those chunks)."""
    total = 0
    for c in range(first, last):
        total += chunk_slots[c, t]
    return total


@cuda.jit(device=True, inline=True)
def _column_slots(chunk_slots, first, last, t, slot):
    """chunk_slots[first:last, t]'s counts, in place, as each chunk's first slot of
    digit t, handed out in chunk order from ``slot``.  Ownership: the caller's thread
    owns that part of column t."""
    for c in range(first, last):
        count = chunk_slots[c, t]
        chunk_slots[c, t] = slot
        slot += count


@cuda.jit
def _radix_slots(chunk_slots):
    """Turn the counts into each chunk's first slot per digit: digit-major, then chunk
    by chunk, so that equal digits keep their input order.  One block of
    ``buckets`` threads.

    Ownership: thread t writes column t of chunk_slots; thread 0 the shared scan.
    """
    totals = cuda.shared.array(RADIX_BUCKETS, dtype=np.int64)
    num_chunks, buckets = chunk_slots.shape
    t = cuda.threadIdx.x
    if t < buckets:
        totals[t] = _column_total(chunk_slots, 0, num_chunks, t)
    cuda.syncthreads()
    if t == 0:
        exclusive_scan(totals, 0, buckets, 0)
    cuda.syncthreads()
    if t < buckets:
        _column_slots(chunk_slots, 0, num_chunks, t, totals[t])


# With many chunks one block's scan over them (_radix_slots) is a long serial loop on one
# multiprocessor (8,448 chunks on an H200: ~2 ms a pass, measured).  The chunks are
# then cut into segments: each segment's digit totals (a block each), _radix_slots on
# those totals, then each segment's chunks from its first slots (a block each): the
# same slots, with loops of ~sqrt(chunks).
@cuda.jit
def _segment_totals(chunk_slots, segment_totals):
    """segment_totals[s, digit] = the count of that digit over the chunks of segment s.

    Launch: one block per segment, ``buckets`` threads.  Ownership: block s, thread t
    writes segment_totals[s, t].
    """
    num_chunks, buckets = chunk_slots.shape
    s, t = cuda.blockIdx.x, cuda.threadIdx.x
    if s < segment_totals.shape[0] and t < buckets:
        first, last = chunk_bounds(s, segment_totals.shape[0], num_chunks)
        segment_totals[s, t] = _column_total(chunk_slots, first, last, t)


@cuda.jit
def _segment_chunk_slots(chunk_slots, segment_slots):
    """Turn the counts of segment s's chunks into their first slots per digit, from the
    segment's first slots (``_radix_slots`` of the segment totals).

    Launch: one block per segment, ``buckets`` threads.  Ownership: block s, thread t
    writes column t of segment s's chunks.
    """
    num_chunks, buckets = chunk_slots.shape
    s, t = cuda.blockIdx.x, cuda.threadIdx.x
    if s < segment_slots.shape[0] and t < buckets:
        first, last = chunk_bounds(s, segment_slots.shape[0], num_chunks)
        _column_slots(chunk_slots, first, last, t, segment_slots[s, t])


def first_slots(chunk_slots, segment_totals) -> None:
    """``chunk_slots``' counts, in place, as each chunk's first slot per digit
    (``_radix_slots``); through ``segment_totals`` (segments, buckets) unless None."""
    buckets = chunk_slots.shape[1]
    if segment_totals is None:
        _radix_slots[1, buckets](chunk_slots)
        return
    segments = segment_totals.shape[0]
    _segment_totals[segments, buckets](chunk_slots, segment_totals)
    _radix_slots[1, buckets](segment_totals)
    _segment_chunk_slots[segments, buckets](chunk_slots, segment_totals)


@cuda.jit
def _radix_scatter(keys, positions, shift, chunk_slots, sorted_keys, sorted_positions):
    """Scatter chunk c's keys, in order, to the slots handed out for it.

    Ownership: thread c owns chunk_slots[c] and the slots it holds (grid-stride).
    """
    num_chunks = chunk_slots.shape[0]
    for c in range(cuda.grid(1), num_chunks, cuda.gridsize(1)):
        first, last = chunk_bounds(c, num_chunks, keys.shape[0])
        scatter_digits(
            keys, positions, shift, first, last, chunk_slots[c], sorted_keys,
            sorted_positions,
        )  # fmt: skip


@cuda.jit
def _chunk_sums(flags, num_chunks, sums):
    """sums[c] = the sum of flags over chunk c.  Ownership: thread c writes sums[c]."""
    for c in range(cuda.grid(1), num_chunks, cuda.gridsize(1)):
        first, last = chunk_bounds(c, num_chunks, flags.shape[0])
        total = 0
        for i in range(first, last):
            total += flags[i]
        sums[c] = total


@cuda.jit
def _scan_sums(sums):
    """Exclusive scan of sums[:-1] in place, the total into sums[-1].  One block of
    at most ``RADIX_BUCKETS`` threads, each scanning a contiguous part (one thread
    scanning all of a few thousand chunks' sums took ~0.7 ms on an H200).

    Ownership: thread t writes its part of sums[:-1]; thread 0 the shared scan of the
    parts' totals and sums[-1].
    """
    part_totals = cuda.shared.array(RADIX_BUCKETS, dtype=np.int64)
    count = sums.shape[0] - 1
    t, parts = cuda.threadIdx.x, cuda.blockDim.x
    first, last = chunk_bounds(t, parts, count)
    total = 0
    for c in range(first, last):
        total += sums[c]
    part_totals[t] = total
    cuda.syncthreads()
    if t == 0:
        sums[count] = exclusive_scan(part_totals, 0, parts, 0)
    cuda.syncthreads()
    exclusive_scan(sums, first, last, part_totals[t])


@cuda.jit
def _chunk_prefix(flags, num_chunks, sums, prefix):
    """prefix[i] = the sum of flags[:i].  Ownership: thread c writes chunk c of prefix."""
    for c in range(cuda.grid(1), num_chunks, cuda.gridsize(1)):
        first, last = chunk_bounds(c, num_chunks, flags.shape[0])
        running = sums[c]
        for i in range(first, last):
            prefix[i] = running
            running += flags[i]


@cuda.jit
def _run_heads(keys, num_rows, heads):
    """heads[i] = 1 where sorted keys[i] starts a run of a row (< num_rows), else 0.

    Ownership: thread i writes heads[i] (grid-stride).
    """
    for i in range(cuda.grid(1), keys.shape[0], cuda.gridsize(1)):
        head = keys[i] < num_rows and is_row_start(keys, i)
        heads[i] = 1 if head else 0


@cuda.jit
def _write_runs(keys, num_rows, heads, head_index, rows, row_ptr):
    """rows[k], row_ptr[k] = the row and first slot of run k; row_ptr[U] = the end of
    the last run.

    Ownership: the thread of a run's head writes its rows/row_ptr entry; the thread of
    the last in-bag key writes row_ptr[U] (grid-stride).
    """
    count = keys.shape[0]
    for i in range(cuda.grid(1), count, cuda.gridsize(1)):
        if heads[i]:
            rows[head_index[i]] = keys[i]
            row_ptr[head_index[i]] = i
        if keys[i] < num_rows and (i + 1 == count or keys[i + 1] >= num_rows):
            row_ptr[rows.shape[0]] = i + 1


@cuda.jit
def contributing_rows(coefficients, positions, row_ptr, contributes):
    """contributes[k] = 1 if any token of row k has a non-zero coefficient, else 0.

    Ownership: thread k writes contributes[k] (grid-stride).
    """
    for k in range(cuda.grid(1), row_ptr.shape[0] - 1, cuda.gridsize(1)):
        found = row_contributes(coefficients, positions, row_ptr[k], row_ptr[k + 1])
        contributes[k] = 1 if found else 0


@cuda.jit
def value_slots(contributes, prefix, value_index):
    """value_index[k] = row k's slot among the contributing rows, or -1.

    Ownership: thread k writes value_index[k] (grid-stride).
    """
    for k in range(cuda.grid(1), contributes.shape[0], cuda.gridsize(1)):
        value_index[k] = prefix[k] if contributes[k] else -1


@cuda.jit
def compact_rows(rows, value_index, kept):
    """kept[value_index[k]] = rows[k] for the contributing rows.

    Ownership: thread k writes kept[value_index[k]] (distinct slots; grid-stride).
    """
    for k in range(cuda.grid(1), rows.shape[0], cuda.gridsize(1)):
        if value_index[k] >= 0:
            kept[value_index[k]] = rows[k]


@cuda.jit(device=True)
def row_gradient_dim_dev(grad_output, groups, start, end, scale_grad_by_freq, d):
    """Dimension d of the gradient of the row whose tokens are
    groups.positions[start:end]: the sum of coefficients[p] * grad_output[bag_of[p], d]
    in position order or, for max (argmax with columns), of grad_output[b, d] where
    token p won dimension d of its bag b; divided by the token count with
    ``scale_grad_by_freq``.  Writes nothing."""
    positions, bag_of, argmax = groups.positions, groups.bag_of, groups.argmax
    total = 0.0
    if argmax.shape[1] == 0:
        coefficients = groups.coefficients
        for i in range(start, end):
            position = positions[i]
            coefficient = coefficients[position]
            if coefficient != 0:
                total += coefficient * grad_output[bag_of[position], d]
    else:
        for i in range(start, end):
            position = positions[i]
            b = bag_of[position]
            if argmax[b, d] == position:
                total += grad_output[b, d]
    if scale_grad_by_freq:
        total *= 1.0 / (end - start)
    return total


@cuda.jit(device=True)
def row_gradient_dev(grad_output, groups, start, end, scale_grad_by_freq, out_row):
    """The CPU ``row_gradient``'s twin for a thread group: out_row = the gradient of
    the row whose tokens are groups.positions[start:end] (``row_gradient_dim_dev`` for
    each dimension).

    Ownership: the caller's group owns out_row; lane l writes dimensions l, l + group...
    """
    for d in range(cuda.threadIdx.x, out_row.shape[0], cuda.blockDim.x):
        out_row[d] = row_gradient_dim_dev(
            grad_output, groups, start, end, scale_grad_by_freq, d
        )


@cuda.jit
def accumulate_rows(grad_output, groups, scale_grad_by_freq, values):
    """values[value_index[k]] = the gradient of row k (row_gradient_dim_dev), for the
    rows with value_index[k] >= 0.  Launch with ``launch.grouped(U, D)``.

    Ownership: group k writes values[value_index[k]]; lane l, dimensions l, l + group...
    """
    k = group_item()
    row_ptr, value_index = groups.row_ptr, groups.value_index
    if k < row_ptr.shape[0] - 1 and value_index[k] >= 0:
        row_gradient_dev(
            grad_output, groups, row_ptr[k], row_ptr[k + 1], scale_grad_by_freq,
            values[value_index[k]],
        )  # fmt: skip


@cuda.jit
def accumulate_rows_atomic(grad_output, groups, scale_grad_by_freq, values):
    """accumulate_rows by scatter-add: each token's contribution is atomically added
    into its row of ``values`` (zeroed by the caller), in no fixed order: the last
    bits differ from run to run.  Launch with ``launch.grouped(U, D)``.

    Ownership: none; group k adds row k's tokens into values[value_index[k]] with
    ``atomic.add``, one token per group member at a time.
    """
    k = group_item()
    row_ptr, value_index = groups.row_ptr, groups.value_index
    if k < row_ptr.shape[0] - 1 and value_index[k] >= 0:
        slot = value_index[k]
        start, end = row_ptr[k], row_ptr[k + 1]
        for i in range(start + cuda.threadIdx.x, end, cuda.blockDim.x):
            for d in range(values.shape[1]):
                part = row_gradient_dim_dev(grad_output, groups, i, i + 1, False, d)
                if scale_grad_by_freq:
                    part *= 1.0 / (end - start)
                cuda.atomic.add(values, (slot, d), part)


@cuda.jit
def per_sample_weights_grad(
    weight, indices, offsets, per_sample_weights, out, grad_output, padding_idx, mode,
    weights_grad,
):  # fmt: skip
    """The gradient with respect to each per-sample weight (see the CPU kernel).

    Ownership: thread b writes positions offsets[b]:offsets[b+1] only (grid-stride).
    """
    for b in range(cuda.grid(1), offsets.shape[0] - 1, cuda.gridsize(1)):
        bag_weights_grad(
            weight, indices, per_sample_weights, out, grad_output, offsets[b],
            offsets[b + 1], padding_idx, mode, b, weights_grad,
        )  # fmt: skip
