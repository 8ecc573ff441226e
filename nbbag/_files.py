"""Tables and optimizer state in files: NumPy ``.npy`` files mapped into memory.

A table (or a state array) larger than RAM then trains at a cost that grows with the
batch, not the table: the kernels read and write the mapped rows in place, the OS pages
in the rows a batch touches and writes back those it changed.  A new file is written
chunk by chunk of rows (never whole in memory) under a temporary name and renamed when
complete, so that a file at ``path`` is always a whole one.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable

import numpy as np

from nbbag.base.dtypes import standard_normal_into

CHUNK_BYTES = 64 << 20  # filled at a time when a file is created


def mapped_array(
    path, shape: tuple, dtype: np.dtype, fill: Callable[[np.ndarray], None] | None,
    what: str,
) -> np.memmap:  # fmt: skip
    """The array in the ``.npy`` file ``path``, mapped read-write: the file's own if it
    exists (its shape and dtype must be ``shape`` and ``dtype``), else a new file whose
    rows ``fill(chunk)`` writes, chunk by chunk (``fill`` None: zeros, left to the file
    system: a sparse file, nothing written).  ``what`` names it in messages."""
    path = os.fspath(path)
    if os.path.exists(path):
        array = _random_access(np.lib.format.open_memmap(path, mode="r+"))
        if array.shape != tuple(shape) or array.dtype != dtype:
            raise ValueError(
                f"{what} file {path!r} holds {array.dtype} {array.shape}, expected "
                f"{np.dtype(dtype)} {tuple(shape)}"
            )
        return array
    partial = f"{path}.partial"
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * array.itemsize)
    rows = max(1, CHUNK_BYTES // row_bytes)
    try:
        if fill is not None:  # None: zeros, what a new file holds already (no writes)
            for first in range(0, shape[0], rows):
                fill(array[first : first + rows])
        array.flush()
    except BaseException:
        del array
        os.remove(partial)
        raise
    del array
    os.replace(partial, path)
    return _random_access(np.lib.format.open_memmap(path, mode="r+"))


def _random_access(array: np.memmap) -> np.memmap:
    """``array`` with the kernel told its pages are read at random: a fault reads the
    page it needs, not a window of its neighbours (read ahead, then mapped into the
    process: ~16 pages of memory and disk a row, for rows that are seldom neighbours)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return array


def normal_table(path, shape: tuple, dtype: np.dtype, seed, padding_idx: int):
    """A table in a file (:func:`mapped_array`): a new one N(0, 1) from ``seed``, the
    same values as an in-memory table of that seed, with a zero ``padding_idx`` row
    (-1: none); an existing one as it is."""
    rng = np.random.default_rng(seed)

    def fill(chunk: np.ndarray) -> None:
        standard_normal_into(rng, chunk)

    created = not os.path.exists(os.fspath(path))
    table = mapped_array(path, shape, dtype, fill, "table")
    if created and padding_idx >= 0:
        table[padding_idx] = 0
        table.flush()
    return table


def normal_table_rows(
    num_rows: int, dim: int, dtype: np.dtype, seed, first: int, step: int, out: np.ndarray
) -> None:  # fmt: skip
    """Rows ``first``, ``first + step``, ... of the N(0, 1) (``num_rows``, ``dim``) table
    of ``seed`` (the same values as an in-memory table of that seed) into ``out``, the
    table drawn a chunk at a time: never whole in memory."""
    rng = np.random.default_rng(seed)
    row_bytes = max(1, dim * np.dtype(dtype).itemsize)
    chunk = np.empty((max(1, CHUNK_BYTES // row_bytes // step) * step, dim), dtype=dtype)
    for start in range(0, num_rows, chunk.shape[0]):
        drawn = chunk[: min(chunk.shape[0], num_rows - start)]
        standard_normal_into(rng, drawn)
        kept = drawn[first::step]  # start is a multiple of step
        out[start // step : start // step + kept.shape[0]] = kept


def state_arrays(directory, arrays: dict) -> dict:
    """An optimizer's state arrays in new files ``<directory>/<name>.npy`` (the
    directory made if need be), from
    ``{name: (shape, dtype, value)}`` (every element ``value``): all of them or none
    (a file that exists is refused before any is written, and those written before a
    failure are removed)."""
    paths = {name: os.path.join(os.fspath(directory), f"{name}.npy") for name in arrays}
    for path in paths.values():
        if os.path.exists(path):
            raise FileExistsError(
                f"optimizer state file {path!r} exists: a new optimizer starts from "
                "fresh state (remove the file; load a checkpoint with load_state_dict)"
            )
    os.makedirs(os.fspath(directory), exist_ok=True)
    made: dict = {}
    try:
        for name, (shape, dtype, value) in arrays.items():
            fill = None if value == 0 else lambda chunk, v=value: chunk.fill(v)
            made[name] = mapped_array(paths[name], shape, dtype, fill, "state")
    except BaseException:
        for name in made:  # zeros stay a sparse file: nothing to lose but the name
            os.remove(paths[name])
        raise
    return made
