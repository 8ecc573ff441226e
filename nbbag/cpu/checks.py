"""Validation kernels: the cheap parallel scans that keep the other kernels safe."""

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def index_range(indices):
    """Return (smallest, largest) value of a non-empty 1-D integer array.

    Ownership: a parallel min/max reduction; nothing is written.
    """
    smallest = np.int64(indices[0])
    largest = np.int64(indices[0])
    for i in prange(indices.shape[0]):
        value = np.int64(indices[i])
        smallest = min(smallest, value)
        largest = max(largest, value)
    return smallest, largest


@njit(cache=True)
def scan_offsets(offsets, num_indices, append_end):
    """One pass over non-empty 1-D ``offsets``: return them as int64 CSR offsets
    (``num_indices`` appended when ``append_end``), the first i with
    offsets[i + 1] < offsets[i] and the first i with offsets[i] > num_indices (each
    -1 when there is none).  A single compiled call instead of five NumPy ones
    (astype, diff, min, a comparison, append): 4096 bags, ~9 us -> ~2 us.

    Ownership: serial; writes only the array it returns.
    """
    count = offsets.shape[0]
    csr = np.empty(count + 1 if append_end else count, dtype=np.int64)
    decrease = -1
    past_end = -1
    previous = np.int64(offsets[0])
    for i in range(count):
        value = np.int64(offsets[i])
        csr[i] = value
        if decrease < 0 and value < previous:
            decrease = i - 1
        if past_end < 0 and value > num_indices:
            past_end = i
        previous = value
    if append_end:
        csr[count] = num_indices
    return csr, decrease, past_end
