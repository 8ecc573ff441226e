"""The GPU's grouping of a batch's tokens by row: the host code that launches the
kernels of :mod:`nbbag.cuda.backward` (the CPU's :func:`nbbag.cpu.backward.group_tokens`
and :func:`~nbbag.cpu.backward.group_positions_by_row`, the same names and arguments,
on device arrays).  A stable LSD radix sort: counts per chunk of tokens, slots handed
out digit-major then chunk by chunk, scatter; then the run heads give the unique rows.
No array of size V; the values that come back to the host are U (which sizes the
gradient) and, with weights or max, the number of rows that get a gradient.
"""

from __future__ import annotations

import numpy as np

from nbbag.base.dtypes import compute_dtype
from nbbag.base.records import TokenGroups
from nbbag.base.sort import GPU_RADIX_BITS, radix_plan
from nbbag.cuda import arrays, launch, variants
from nbbag.cuda.backward import (
    RADIX_BUCKETS,
    _chunk_prefix,
    _chunk_sums,
    _radix_count,
    _radix_scatter,
    _run_heads,
    _scan_sums,
    _sort_keys,
    _write_runs,
    contributing_rows,
    first_slots,
    stack_grad_rows,
    value_slots,
    winners_by_bag,
)


def exclusive_scan(flags):
    """(prefix, total) of a 1-D int64 device array; ``total`` is the one value that
    comes back to the host."""
    count = flags.shape[0]
    prefix = arrays.empty(count, np.int64)
    if count == 0:
        return prefix, 0
    num_chunks = launch.chunks(count)
    sums = arrays.empty(num_chunks + 1, np.int64)
    grid, block = launch.spread(num_chunks)
    _chunk_sums[grid, block](flags, num_chunks, sums)
    _scan_sums[1, min(launch.block_size(), RADIX_BUCKETS)](sums)
    _chunk_prefix[grid, block](flags, num_chunks, sums, prefix)
    return prefix, int(sums[num_chunks : num_chunks + 1].copy_to_host()[0])


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
        segments = launch.slot_segments(chunks)
        segment_totals = (
            arrays.empty((segments, 1 << digit_bits), np.int64) if segments > 1 else None
        )
        sorted_keys = arrays.empty(total, sort_type)
        sorted_positions = arrays.empty(total, sort_type)
        grid, block = launch.spread(chunks)
        for shift in range(0, key_bits, digit_bits):
            _radix_count[grid, block](keys, shift, chunk_slots)
            first_slots(chunk_slots, segment_totals)
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
    if not num_unique:
        return rows, row_ptr, positions[:0]
    _write_runs[grid, block](keys, num_rows, heads, head_index, rows, row_ptr)
    # the tokens in a bag; those in none sort last (a second scalar back to the host)
    count = int(row_ptr[num_unique : num_unique + 1].copy_to_host()[0])
    return rows, row_ptr, positions[:count]


def unique_rows(indices, num_rows: int):
    """The sorted unique values of 1-D device ``indices`` (all in [0, num_rows))."""
    bag_of = arrays.full(indices.shape[0], 0, np.int64)
    return group_positions_by_row(indices, bag_of, num_rows)[0]


def group_tokens(
    weight, indices, offsets, per_sample_weights, argmax, padding_idx, mode,
    num_chunks=0, sort_type=np.int64, features=1,
) -> TokenGroups:  # fmt: skip
    """The batch's tokens grouped by row, on the device, as the CPU function
    (``argmax``: the forward's winners for max, else None; ``features``: 1, or a
    collection stack's F, whose gradient and winners are bag-major, as there).  A
    TokenGroups whose ``argmax`` is an empty (0, 0) array but for max: a kernel launch
    cannot take None."""
    num_tokens = indices.shape[0]
    bag_of = arrays.full(num_tokens, -1, np.int64)  # tokens in no bag stay -1 / 0
    coefficients = arrays.full(num_tokens, 0, compute_dtype(weight.dtype))
    num_bags = offsets.shape[0] - 1
    if num_bags:
        grid, block = launch.linear(num_bags)
        bags_per_feature = num_bags // features
        winners = argmax
        if argmax is not None and features > 1:  # the coefficients read them by bag
            winners = arrays.empty(argmax.shape, np.int64)
            winners_by_bag[grid, block](argmax, bags_per_feature, features, winners)
        variants.coefficients_launch(
            grid, block, indices, offsets, per_sample_weights, winners, padding_idx,
            mode, bag_of, coefficients,
        )  # fmt: skip
        if features > 1 and num_tokens:
            grid, block = launch.linear(num_tokens)
            stack_grad_rows[grid, block](bag_of, bags_per_feature, features)
    rows, row_ptr, positions = group_positions_by_row(
        indices, bag_of, weight.shape[0], num_chunks, sort_type
    )
    num_unique = rows.shape[0]
    value_index = arrays.empty(num_unique, np.int64)
    if argmax is not None:
        # max: a row that won no dimension has no gradient.  Otherwise every row with
        # a token in a bag is in it, as in torch (a weight of 0: a row of zeros).
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
