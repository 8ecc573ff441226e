"""The tables' dtypes, and how the kernels see a 16-bit table.

A table is float32 or float64 (read and written as it is), or float16 or bfloat16
(``ml_dtypes.bfloat16``): a *half table*.  Numba's CPU target has no float16 and cannot
type bfloat16 at all, so the kernels read a half table through an integer view of its
bits whose dtype says which format the bits are in (a compile-time fact, as the dtype
of every array a kernel takes)::

    float16  table -> its int16 view   (IEEE binary16 bits)
    bfloat16 table -> its uint16 view  (the high half of a float32's bits)

The kernels widen each element to float32 as they read it and round float32 results
back to the table's format as they write (:mod:`nbbag.cpu.elements`).  The arithmetic
of a half table, its outputs, gradients and optimizer state are float32:
:func:`compute_dtype`.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from nbbag.base.constants import FLOAT_DTYPES

FLOAT16 = np.dtype(np.float16)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
HALF_DTYPES = (FLOAT16, BFLOAT16)
TABLE_DTYPES = FLOAT_DTYPES + HALF_DTYPES
TABLE_DTYPE_NAMES = "float32, float64, float16 or bfloat16"

# A half table's format, as the dtype of the view its kernels read.
CODE_DTYPES = {FLOAT16: np.dtype(np.int16), BFLOAT16: np.dtype(np.uint16)}
FLOAT32 = np.dtype(np.float32)
# The widest row of a half table an optimizer updates: the CPU kernels update a row in
# float32 in a buffer of this many elements on each thread's stack.
MAX_HALF_DIM = 4096


# These run on every call of the forward: a float table is told apart by its itemsize,
# an attribute, before any hashing of its dtype (a dict lookup by dtype cost a tiny
# batch's forward ~0.25 us of its ~4 us).
def is_half(dtype) -> bool:
    """Whether ``dtype`` (a NumPy dtype) is one of the 16-bit table dtypes."""
    return dtype.itemsize == 2 and dtype in CODE_DTYPES


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype of a table's arithmetic, outputs, gradients and optimizer state
    (``dtype`` a NumPy dtype): float32 for a half table, the table's own otherwise."""
    return FLOAT32 if is_half(dtype) else dtype


def kernel_table(weight):
    """``weight`` as the kernels take it: itself, or a half table's integer view (no
    copy; see the module's docstring)."""
    if weight.itemsize != 2:
        return weight
    codes = CODE_DTYPES.get(weight.dtype)
    return weight if codes is None else weight.view(codes)


def parse_table_dtype(dtype, name: str = "dtype") -> np.dtype:
    """``dtype`` (anything ``np.dtype`` takes, ``ml_dtypes.bfloat16``, or the string
    "bfloat16") as one of :data:`TABLE_DTYPES`; TypeError otherwise."""
    try:
        parsed = BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be {TABLE_DTYPE_NAMES}, got {dtype!r}") from None
    if parsed not in TABLE_DTYPES:
        raise TypeError(f"{name} must be {TABLE_DTYPE_NAMES}, got {dtype!r}")
    return parsed


# Elements drawn at a time into a half table (a float32 chunk of 4 MB).
_DRAW_CHUNK = 1 << 20


def standard_normal_into(rng: np.random.Generator, out: np.ndarray) -> None:
    """Fill ``out`` (C-contiguous) with N(0, 1) draws from ``rng``, in its dtype: a
    float32/float64 array drawn straight into; a half one drawn as float32 in chunks,
    each rounded to nearest (the values of a float32 table of the same ``rng``
    state, rounded), so the peak memory stays the table's."""
    if not is_half(out.dtype):
        rng.standard_normal(dtype=out.dtype.type, out=out)
        return
    flat = out.reshape(-1)
    for start in range(0, flat.shape[0], _DRAW_CHUNK):
        stop = min(start + _DRAW_CHUNK, flat.shape[0])
        flat[start:stop] = rng.standard_normal(stop - start, dtype=np.float32)
