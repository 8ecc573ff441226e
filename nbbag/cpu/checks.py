"""Validation kernels: the cheap parallel scans that keep the other kernels safe."""

import numpy as np
from numba import njit, prange

from nbbag.cpu import PARALLEL


@njit(parallel=PARALLEL, cache=True)
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
