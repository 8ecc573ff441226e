"""The stable radix sort that groups a batch's tokens by row: the pieces both targets
share (each chunk of tokens counted and scattered serially by one thread).

``radix_plan`` is host code too: the CPU and GPU pipelines plan their passes with it.
"""

from nbbag.base.shared import shared

# CPU: at most 4096 buckets a pass, so two passes sort the rows of a 16M-row table
# (a third pass at V = 10M cost 30% more than V = 1M's two).  GPU: at most 256 buckets
# (one block's shared scan), three passes for 16M rows.
CPU_RADIX_BITS = 12
GPU_RADIX_BITS = 8


@shared
def chunk_bounds(c, num_chunks, count):
    """The items ``first:last`` of chunk c when ``count`` items are cut into
    ``num_chunks`` contiguous chunks."""
    return c * count // num_chunks, (c + 1) * count // num_chunks


@shared
def count_digits(keys, shift, first, last, slots):
    """``slots[digit]`` = how many of ``keys[first:last]`` have that digit at ``shift``
    (``slots.shape[0]`` buckets, a power of 2).

    Ownership: the caller owns ``slots``.
    """
    mask = slots.shape[0] - 1
    for digit in range(slots.shape[0]):
        slots[digit] = 0
    for i in range(first, last):
        slots[(keys[i] >> shift) & mask] += 1


@shared
def scatter_digits(
    keys, positions, shift, first, last, slots, sorted_keys, sorted_positions
):
    """Move ``keys[first:last]`` (and their positions), in order, to the slots
    ``slots`` hands out per digit, advancing them.

    Ownership: the caller owns ``slots`` and the slots it holds.
    """
    mask = slots.shape[0] - 1
    for i in range(first, last):
        digit = (keys[i] >> shift) & mask
        slot = slots[digit]
        slots[digit] = slot + 1
        sorted_keys[slot] = keys[i]
        sorted_positions[slot] = positions[i]


@shared
def exclusive_scan(values, first, last, running):
    """``values[first:last]`` in place as their exclusive prefix sums, counted from
    ``running``; returns ``running`` plus their total.

    Ownership: the caller owns ``values[first:last]``.
    """
    for i in range(first, last):
        value = values[i]
        values[i] = running
        running += value
    return running


@shared
def is_row_start(keys, i):
    """Whether sorted ``keys[i]`` starts a run of equal keys."""
    return i == 0 or keys[i] != keys[i - 1]


@shared
def radix_plan(num_rows, max_radix_bits):
    """(key_bits, digit_bits) to sort keys in [0, num_rows] (num_rows keys the tokens
    in no bag): as few passes of at most ``max_radix_bits`` as will do, the bits shared
    evenly between them."""
    key_bits = 1
    while (1 << key_bits) <= num_rows:
        key_bits += 1
    passes = -(-key_bits // max_radix_bits)
    return key_bits, -(-key_bits // passes)
