"""CPU kernel of row-wise quantized tables (:class:`nbbag.QuantizedTable`): the forward,
every mode, dequantizing each row as it is read.

A table is ``data`` (V, P) uint8, one row of P bytes per embedding row: its codes
(``dim`` bytes at 8 bits; ``dim / 2`` at 4 bits, column k in the low nibble of byte k
and column k + dim / 2 in the high one), zero bytes up to a multiple of 4, then the
row's scale and bias as two float32.  The kernel takes ``data`` and ``params``, the
same bytes viewed as float32 (V, P / 4): a row's scale is ``params[r, -2]``, its bias
``params[r, -1]``, and its column d is ``code * scale + bias``.

The sum family uses sum_i w_i (s_i c_i + b_i) = sum_i (w_i s_i) c_i + sum_i w_i b_i:
one multiply-add per code, the biases added once per bag.
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from nbbag.base.sort import chunk_bounds
from nbbag.cpu import PARALLEL
from nbbag.cpu._intrinsics import add_nibble_lanes, prefetch_row
from nbbag.cpu.rows import prefetch_distance, store_sum, sum_buffer
from nbbag.modes import Mode

# Bags per chunk, at least (each prange iteration runs one chunk of bags).
BAGS_PER_CHUNK = 16


@njit(cache=True, inline="always")
def _add_codes(out_row, data, row, scaled, bits, lanes):
    """out_row += scaled * row's codes (float32 throughout: the 8-bit loop vectorizes;
    the 4-bit one is written in vectors where it can be)."""
    if bits == 8:
        for d in range(out_row.shape[0]):
            out_row[d] += scaled * np.float32(data[row, d])
        return
    _add_nibbles(out_row, data, row, scaled, lanes)


def _add_nibbles(out_row, data, row, scaled, lanes):
    """out_row += scaled * a 4-bit row's codes (the low nibbles are the first half of
    the columns, the high the second): :func:`~nbbag.cpu._intrinsics.add_nibble_lanes`
    where D is an even number of ``lanes``, else a loop over the bytes."""
    raise NotImplementedError("a Numba overload: call it from a jitted function")


@overload(_add_nibbles, inline="always")
def _add_nibbles_overload(out_row, data, row, scaled, lanes):
    if isinstance(lanes, types.UniTuple) and lanes.count % 2 == 0:
        return lambda out_row, data, row, scaled, lanes: add_nibble_lanes(
            out_row, data, row, scaled, lanes
        )

    def loop(out_row, data, row, scaled, lanes):
        half = out_row.shape[0] // 2
        for k in range(half):
            byte = data[row, k]
            out_row[k] += scaled * np.float32(byte & 15)
            out_row[half + k] += scaled * np.float32(byte >> 4)

    return loop


@njit(cache=True, inline="always")
def _max_codes(out_row, data, row, scale, bias, bits, first):
    """out_row = the elementwise max of out_row (unless ``first``) and the row."""
    if bits == 8:
        for d in range(out_row.shape[0]):
            value = np.float32(data[row, d]) * scale + bias
            out_row[d] = value if first else max(out_row[d], value)
    else:
        half = out_row.shape[0] // 2
        for k in range(half):
            byte = data[row, k]
            low = np.float32(byte & 15) * scale + bias
            high = np.float32(byte >> 4) * scale + bias
            out_row[k] = low if first else max(out_row[k], low)
            out_row[half + k] = high if first else max(out_row[half + k], high)


@njit(cache=True, inline="always")
def _prefetch_ahead(data, indices, position):
    """Hint the loads of the row of token ``position`` (if any; past the bag's end too:
    the next bag is the same thread's), a row of a few cache lines, every one of them:
    the lookups are latency-bound as the float ones are."""
    if position < indices.shape[0]:
        prefetch_row(data, indices[position], None)


@njit(cache=True, inline="always")
def _sum_bag(data, params, bits, indices, per_sample_weights, start, end, padding_idx,
             out_row, mode, lanes):  # fmt: skip
    """Bag ``start:end`` reduced by sum, mean or sqrtn into ``out_row`` (float32), the
    sum made in :func:`~nbbag.cpu.rows.sum_buffer` (registers, with ``lanes``)."""
    total = sum_buffer(out_row, params, lanes)
    bias_total = 0.0
    weight_sum = 0.0
    weight_square_sum = 0.0
    last = params.shape[1] - 1
    distance = prefetch_distance(data.shape[1])
    for p in range(start, end):
        _prefetch_ahead(data, indices, p + distance)
        row = indices[p]
        if row == padding_idx:
            continue
        w = np.float32(1) if per_sample_weights is None else per_sample_weights[p]
        _add_codes(total, data, row, w * params[row, last - 1], bits, lanes)
        bias_total += w * params[row, last]
        weight_sum += w
        weight_square_sum += w * w
    divisor = 1.0
    if mode == Mode.MEAN:
        divisor = weight_sum
    elif mode == Mode.SQRTN:
        divisor = math.sqrt(weight_square_sum)
    scale = np.float32(0.0 if divisor == 0 else 1.0 / divisor)  # empty: zeros
    bias_total = np.float32(bias_total)
    for d in range(out_row.shape[0]):
        out_row[d] = (total[d] + bias_total) * scale


@njit(cache=True, inline="always")
def _max_bag(data, params, bits, indices, start, end, padding_idx, out_row, lanes):
    """Bag ``start:end``'s elementwise max into ``out_row`` (zeros for no rows), made
    in :func:`~nbbag.cpu.rows.sum_buffer`."""
    total = sum_buffer(out_row, params, lanes)
    first = True
    last = params.shape[1] - 1
    distance = prefetch_distance(data.shape[1])
    for p in range(start, end):
        _prefetch_ahead(data, indices, p + distance)
        row = indices[p]
        if row == padding_idx:
            continue
        _max_codes(total, data, row, params[row, last - 1], params[row, last], bits, first)
        first = False
    store_sum(total, out_row, lanes)


@njit(parallel=PARALLEL, cache=True)
def quantized_bags(
    data, params, bits, indices, offsets, per_sample_weights, out, padding_idx, mode,
    lanes=None,
):  # fmt: skip
    """out[b] = bag b's rows (``indices[offsets[b]:offsets[b + 1]]``, CSR offsets,
    ids trusted), dequantized and reduced by ``mode`` (a :class:`nbbag.Mode`), as the
    float kernels do: padding left out, an empty bag zeros, ``per_sample_weights``
    (float32 or None; not with max) weighting sum, mean and sqrtn.  ``lanes``:
    :func:`~nbbag.cpu.rows.lanes_for` of D (the sums then live in registers) or None.

    Ownership: iteration c of the prange writes ``out[b]`` for the bags b of chunk c.
    """
    num_bags = out.shape[0]
    num_chunks = max(1, num_bags // BAGS_PER_CHUNK)
    for c in prange(num_chunks):
        first, last = chunk_bounds(c, num_chunks, num_bags)
        for b in range(first, last):
            start, end = offsets[b], offsets[b + 1]
            if mode == Mode.MAX:
                _max_bag(
                    data, params, bits, indices, start, end, padding_idx, out[b], lanes
                )
            else:
                _sum_bag(
                    data, params, bits, indices, per_sample_weights, start, end,
                    padding_idx, out[b], mode, lanes,
                )  # fmt: skip
