"""Launch configurations, from the device's properties.

Tunables live here and nowhere else.  The tests shrink ``BLOCK_SIZE`` and
``GROUP_SIZE`` to tiny odd values so that partial blocks and partial groups run under
the simulator.
"""

from __future__ import annotations

import functools
import math

from numba import cuda

BLOCK_SIZE: int | None = None  # threads per block; None: 256 (8 warps)
GROUP_SIZE: int | None = None  # threads per bag/row along D; None: the warp size
ROW_BLOCK_SIZE = 128  # threads per block of the fused update, at most
CHUNKS_PER_SM = 128  # the radix sort's and the scans' chunks per multiprocessor, at most
DEFAULT_BLOCK_SIZE = 256
MAX_GRID = 65535 * 32  # grid-stride loops cover the rest


@functools.cache
def _device_properties() -> tuple[int, int]:
    """(warp size, multiprocessor count) of the current device (32, 1 in the
    simulator)."""
    device = cuda.get_current_device()
    warp = int(getattr(device, "WARP_SIZE", 32))
    sms = int(getattr(device, "MULTIPROCESSOR_COUNT", 1))
    return warp, sms


def block_size() -> int:
    return BLOCK_SIZE or DEFAULT_BLOCK_SIZE


def group_size(dim: int) -> int:
    """Threads per bag (forward) or per row (backward, update): one warp, so that
    the D loads of a row are coalesced; fewer for narrow rows."""
    if GROUP_SIZE is not None:
        return GROUP_SIZE
    warp, _ = _device_properties()
    size = 1
    while size < min(dim, warp):
        size *= 2
    return size


def grouped(
    count: int, dim: int, threads: int | None = None
) -> tuple[int, tuple[int, int]]:
    """(grid, (group, items per block)) for one thread group per item (bag or row):
    threadIdx.x walks D, threadIdx.y picks the item in the block (``threads`` a
    block: :func:`block_size` by default)."""
    group = group_size(dim)
    per_block = max(1, (threads or block_size()) // group)
    return max(1, -(-count // per_block)), (group, per_block)


def linear(count: int) -> tuple[int, int]:
    """(grid, block) for one thread per item, grid-stride beyond MAX_GRID blocks."""
    threads = block_size()
    _, sms = _device_properties()
    blocks = min(max(1, -(-count // threads)), max(MAX_GRID, sms))
    return blocks, threads


def chunks(count: int) -> int:
    """How many chunks the radix sort and the scans cut ``count`` items into: each
    chunk is counted and scattered serially by one thread, ~64 items a chunk, at most
    :data:`CHUNKS_PER_SM` chunks per multiprocessor, so that the scans over the chunks
    and the per-digit passes over them stay short."""
    _, sms = _device_properties()
    return max(1, min(-(-count // 64), sms * CHUNKS_PER_SM))


SPREAD_BLOCK_SIZE = 64  # threads per block of the one-thread-a-chunk kernels


def spread(count: int) -> tuple[int, int]:
    """(grid, block) for one thread per item when the items are few (a chunk each)
    and each thread's work is a long serial loop: small blocks, so that the threads
    spread over every multiprocessor instead of filling a few."""
    threads = min(block_size(), SPREAD_BLOCK_SIZE)
    return max(1, -(-count // threads)), threads


# From this many chunks on, the radix sort's slots are computed segment by segment.
SEGMENTED_SLOTS_FROM = 1024


def slot_segments(num_chunks: int) -> int:
    """How many segments the radix sort cuts its chunks into to turn their digit counts
    into slots: ~sqrt(chunks), so that every loop is ~sqrt(chunks) long; 1 (one
    block's scan over the chunks) below :data:`SEGMENTED_SLOTS_FROM` chunks."""
    if num_chunks < SEGMENTED_SLOTS_FROM:
        return 1
    return math.isqrt(num_chunks)


def grouped_resident(count: int, dim: int) -> tuple[int, tuple[int, int]]:
    """``grouped``, with the grid capped at what the device keeps resident (32 blocks
    per multiprocessor); the kernels' block-stride loops cover the rest.  Used where
    each group needs its own scratch row.  Blocks of :data:`ROW_BLOCK_SIZE` threads
    at most (on an H200 a step's update took 7.9 ms in blocks of 128 threads, 8.4 ms
    in blocks of 256: each block's groups meet at every row)."""
    grid, block = grouped(count, dim, min(block_size(), ROW_BLOCK_SIZE))
    _, sms = _device_properties()
    return min(grid, sms * 32), block
