"""CUDA backward kernels: the row-sparse gradient, deterministic by construction.

The CPU pipeline (:mod:`nbbag.cpu.backward`), step for step, on the device:

1. ``token_coefficients`` / ``weighted_token_coefficients`` / ``max_token_coefficients``
   (a thread per bag): each token's bag (-1 for padding and for tokens in no bag) and
   coefficient.
2. ``group_positions_by_row``: a stable LSD radix sort of the tokens by row (count,
   hand out slots digit-major then chunk by chunk, scatter: the CPU ``_radix_pass``
   with a thread per chunk), then the run heads give the unique rows.  No array of
   size V; the only value that comes back to the host is U, which sizes the gradient.
3. ``contributing_rows`` (a thread per row): where a coefficient can be 0 (max,
   weights), which rows get a gradient at all.
4. ``accumulate_rows``: one thread group per unique row, lanes along D, each lane sums
   its dimension over the row's tokens in position order: bit-identical from run to
   run whatever the launch order.  ``accumulate_rows_atomic`` (``deterministic=False``)
   scatter-adds each token into its row instead.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from nbbag.base.bags import bag_coefficients, bag_weights_grad, row_contributes
from nbbag.base.records import TokenGroups
from nbbag.base.sort import (
    GPU_RADIX_BITS,
    chunk_bounds,
    count_digits,
    is_row_start,
    radix_plan,
    scatter_digits,
)
from nbbag.cuda import arrays, launch
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
        total = 0
        for c in range(num_chunks):
            total += chunk_slots[c, t]
        totals[t] = total
    cuda.syncthreads()
    if t == 0:
        running = 0
        for digit in range(buckets):
            count = totals[digit]
            totals[digit] = running
            running += count
    cuda.syncthreads()
    if t < buckets:
        slot = totals[t]
        for c in range(num_chunks):
            count = chunk_slots[c, t]
            chunk_slots[c, t] = slot
            slot += count


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
    """Exclusive scan of sums[:-1] in place, the total into sums[-1].  One thread."""
    if cuda.grid(1) == 0:
        running = 0
        for c in range(sums.shape[0] - 1):
            count = sums[c]
            sums[c] = running
            running += count
        sums[sums.shape[0] - 1] = running


@cuda.jit
def _chunk_prefix(flags, num_chunks, sums, prefix):
    """prefix[i] = the sum of flags[:i].  Ownership: thread c writes chunk c of prefix."""
    for c in range(cuda.grid(1), num_chunks, cuda.gridsize(1)):
        first, last = chunk_bounds(c, num_chunks, flags.shape[0])
        running = sums[c]
        for i in range(first, last):
            prefix[i] = running
            running += flags[i]


def exclusive_scan(flags):
    """(prefix, total) of a 1-D int64 device array; ``total`` is the one value that
    comes back to the host."""
    count = flags.shape[0]
    prefix = arrays.empty(count, np.int64)
    if count == 0:
        return prefix, 0
    num_chunks = launch.chunks(count)
    sums = arrays.empty(num_chunks + 1, np.int64)
    grid, block = launch.linear(num_chunks)
    _chunk_sums[grid, block](flags, num_chunks, sums)
    _scan_sums[1, 1](sums)
    _chunk_prefix[grid, block](flags, num_chunks, sums, prefix)
    return prefix, int(sums[num_chunks : num_chunks + 1].copy_to_host()[0])


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


def group_positions_by_row(
    indices, bag_of, num_rows: int, num_chunks=0, sort_type=np.int64
):
    """Group the tokens in a bag (bag_of[p] >= 0) by row, on the device.

    Returns ``(rows, row_ptr, positions)`` as device arrays, as the CPU function:
    ``rows`` (U,) sorted unique, ``positions[row_ptr[k]:row_ptr[k + 1]]`` the tokens
    of ``rows[k]``, increasing.  Stable, so the same for any launch configuration and
    any ``num_chunks`` (0, the default: :func:`nbbag.cuda.launch.chunks`'s choice).
    ``sort_type`` is the integer type keys and positions are sorted in.
    """
    total = indices.shape[0]
    keys = arrays.empty(total, sort_type)
    positions = arrays.empty(total, sort_type)
    if total:
        grid, block = launch.linear(total)
        _sort_keys[grid, block](indices, bag_of, num_rows, keys, positions)
        key_bits, digit_bits = radix_plan(num_rows, GPU_RADIX_BITS)
        chunks = num_chunks if num_chunks > 0 else launch.chunks(total)
        chunk_slots = arrays.empty((chunks, 1 << digit_bits), np.int64)
        sorted_keys = arrays.empty(total, sort_type)
        sorted_positions = arrays.empty(total, sort_type)
        grid, block = launch.linear(chunks)
        for shift in range(0, key_bits, digit_bits):
            _radix_count[grid, block](keys, shift, chunk_slots)
            _radix_slots[1, 1 << digit_bits](chunk_slots)
            _radix_scatter[grid, block](
                keys, positions, shift, chunk_slots, sorted_keys, sorted_positions
            )
            keys, sorted_keys = sorted_keys, keys
            positions, sorted_positions = sorted_positions, positions
    heads = arrays.empty(total, np.int64)
    if total:
        grid, block = launch.linear(total)
        _run_heads[grid, block](keys, num_rows, heads)
    head_index, num_unique = exclusive_scan(heads)
    rows = arrays.empty(num_unique, np.int64)
    row_ptr = arrays.full(num_unique + 1, 0, np.int64)
    if num_unique:
        _write_runs[grid, block](keys, num_rows, heads, head_index, rows, row_ptr)
    return rows, row_ptr, positions


def unique_rows(indices, num_rows: int):
    """The sorted unique values of 1-D device ``indices`` (all in [0, num_rows))."""
    bag_of = arrays.full(indices.shape[0], 0, np.int64)
    return group_positions_by_row(indices, bag_of, num_rows)[0]


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


def _coefficients(
    indices, offsets, per_sample_weights, argmax, padding_idx, mode, bag_of, coefficients
) -> None:
    """Every token's bag and coefficient: the coefficient kernel of the batch's kind."""
    num_bags = offsets.shape[0] - 1
    if not num_bags:
        return
    grid, block = launch.linear(num_bags)
    if argmax is not None:
        max_token_coefficients[grid, block](
            indices, offsets, argmax, padding_idx, bag_of, coefficients
        )
    elif per_sample_weights is not None:
        weighted_token_coefficients[grid, block](
            indices, offsets, per_sample_weights, padding_idx, int(mode), bag_of,
            coefficients,
        )  # fmt: skip
    else:
        token_coefficients[grid, block](
            indices, offsets, padding_idx, int(mode), bag_of, coefficients
        )


def group_tokens(
    weight, indices, offsets, per_sample_weights, argmax, padding_idx, mode,
    num_chunks=0, sort_type=np.int64,
) -> TokenGroups:  # fmt: skip
    """The batch's tokens grouped by row, on the device, as the CPU function
    (``argmax``: the forward's winners for max, else None).  A TokenGroups whose
    ``argmax`` is an empty (0, 0) array but for max: a kernel launch cannot take None."""
    num_tokens = indices.shape[0]
    bag_of = arrays.full(num_tokens, -1, np.int64)  # tokens in no bag stay -1 / 0
    coefficients = arrays.full(num_tokens, 0, weight.dtype)
    _coefficients(
        indices, offsets, per_sample_weights, argmax, padding_idx, mode, bag_of,
        coefficients,
    )  # fmt: skip
    rows, row_ptr, positions = group_positions_by_row(
        indices, bag_of, weight.shape[0], num_chunks, sort_type
    )
    num_unique = rows.shape[0]
    value_index = arrays.empty(num_unique, np.int64)
    if argmax is not None or per_sample_weights is not None:
        # A max loser, a weight of 0 or weights summing to 0 contribute nothing.
        contributes = arrays.empty(num_unique, np.int64)
        num_contributing = 0
        if num_unique:
            grid, block = launch.linear(num_unique)
            contributing_rows[grid, block](coefficients, positions, row_ptr, contributes)
            prefix, num_contributing = exclusive_scan(contributes)
            value_slots[grid, block](contributes, prefix, value_index)
    else:
        num_contributing = num_unique
        arrays.arange(value_index)
    if argmax is None:
        argmax = arrays.empty((0, 0), np.int64)
    return TokenGroups(
        bag_of, coefficients, argmax, rows, row_ptr, positions, value_index,
        num_contributing,
    )  # fmt: skip


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
