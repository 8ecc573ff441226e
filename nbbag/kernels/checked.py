"""The bag kernels of :mod:`nbbag.kernels`, with every argument checked first.

The kernels trust their inputs (Numba does no bounds checks): offsets in the B form
where they take the CSR form, an out of the wrong shape or an id past the table read
or write memory they do not own.  These wrappers, called from Python with the same
arguments, check each argument as :func:`nbbag.embedding_bag` does (the message names
the argument and the value), then run the kernel; use them while composing, then
switch to the kernels themselves::

    from nbbag.kernels import checked
    checked.bag_sum(weight, indices, offsets, out)   # offsets: (B + 1,) CSR form

They are not callable from ``@njit`` code (the kernels are).
"""

from __future__ import annotations

import numpy as np

from nbbag import _validate as checks
from nbbag.cpu import forward


def _check_bags(weight, indices, offsets, out, padding_idx):
    """The arguments every bag kernel takes, checked: (weight, indices, offsets,
    padding_idx) as the kernel takes them."""
    weight = checks.check_weight(weight)
    indices = checks.check_indices(indices)
    if indices.ndim != 1 or not indices.flags.c_contiguous:
        raise ValueError(f"indices must be 1-D and C-contiguous, got shape {indices.shape}")
    offsets = checks._as_index_array(offsets, "offsets")
    checks.check_offsets_shape(offsets, include_last_offset=True)
    checks.check_offsets_values(offsets, indices.shape[0])
    if offsets[-1] != indices.shape[0]:
        raise ValueError(
            f"offsets must be the CSR form (B + 1 entries, the last one N = "
            f"{indices.shape[0]}), got offsets[-1] = {offsets[-1]}: pass "
            f"np.append(offsets, len(indices)) for torch's B form"
        )
    checks.check_bag_contents(indices, offsets, weight.shape[0])
    checks.check_out(out, (offsets.shape[0] - 1, weight.shape[1]), weight)
    if padding_idx != -1:
        padding_idx = checks.check_padding_idx(padding_idx, weight.shape[0])
    return weight, indices, np.ascontiguousarray(offsets), padding_idx


def _unweighted(kernel):
    def run(weight, indices, offsets, out, padding_idx=-1, lanes=None):
        weight, indices, offsets, padding_idx = _check_bags(
            weight, indices, offsets, out, padding_idx
        )
        kernel(weight, indices, offsets, out, padding_idx, lanes)

    run.__name__ = run.__qualname__ = kernel.__name__
    run.__doc__ = f"``nbbag.kernels.{kernel.__name__}``, its arguments checked first."
    return run


def _weighted(kernel):
    def run(weight, indices, offsets, per_sample_weights, out, padding_idx=-1, lanes=None):
        weight, indices, offsets, padding_idx = _check_bags(
            weight, indices, offsets, out, padding_idx
        )
        weights = checks.as_array(per_sample_weights, "per_sample_weights")
        if weights.dtype != weight.dtype:
            raise TypeError(
                f"per_sample_weights must have the weight's dtype {weight.dtype}, "
                f"got {weights.dtype}"
            )
        checks.check_weights_like(weights, indices.shape)
        weights = np.ascontiguousarray(weights)
        kernel(weight, indices, offsets, weights, out, padding_idx, lanes)

    run.__name__ = run.__qualname__ = kernel.__name__
    run.__doc__ = f"``nbbag.kernels.{kernel.__name__}``, its arguments checked first."
    return run


bag_sum = _unweighted(forward.bag_sum)
bag_mean = _unweighted(forward.bag_mean)
bag_sqrtn = _unweighted(forward.bag_sqrtn)
bag_weighted_sum = _weighted(forward.bag_weighted_sum)
bag_weighted_mean = _weighted(forward.bag_weighted_mean)
bag_weighted_sqrtn = _weighted(forward.bag_weighted_sqrtn)


def bag_max(weight, indices, offsets, out, padding_idx=-1):
    """``nbbag.kernels.bag_max``, its arguments checked first."""
    weight, indices, offsets, padding_idx = _check_bags(
        weight, indices, offsets, out, padding_idx
    )
    forward.bag_max(weight, indices, offsets, out, padding_idx)


def bag_max_argmax(weight, indices, offsets, out, argmax, padding_idx=-1):
    """``nbbag.kernels.bag_max_argmax``, its arguments checked first (``argmax``: a
    writeable C-contiguous int64 array of out's shape)."""
    weight, indices, offsets, padding_idx = _check_bags(
        weight, indices, offsets, out, padding_idx
    )
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64:
        raise TypeError(f"argmax must be an int64 NumPy array, got {argmax!r:.60}")
    if argmax.shape != out.shape or not argmax.flags.c_contiguous:
        raise ValueError(
            f"argmax must be C-contiguous of out's shape {out.shape}, got {argmax.shape}"
        )
    checks.check_writeable(argmax.flags.writeable, "the kernel writes it", "argmax")
    forward.bag_max_argmax(weight, indices, offsets, out, argmax, padding_idx)


def renorm_rows(weight, rows, max_norm, norm_type):
    """``nbbag.kernels.renorm_rows``, its arguments checked first (``rows`` unique, in
    [0, V); the weight writeable)."""
    weight = checks.check_weight(weight)
    checks.check_writeable(weight.flags.writeable, "rows are renormed in place")
    rows = checks._as_index_array(rows, "rows")
    if rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
    position = checks.first_outside(rows, weight.shape[0])
    if position >= 0:
        raise checks.index_error(rows.shape, position, rows[position], weight.shape[0])
    if np.unique(rows).shape[0] != rows.shape[0]:
        raise ValueError("rows must be unique (two threads would renorm one row)")
    if max_norm is None:
        raise TypeError("max_norm must be a number, got None")
    max_norm, norm_type = checks.check_norm_options(max_norm, norm_type)
    forward.renorm_rows(weight, np.ascontiguousarray(rows), max_norm, norm_type)


__all__ = sorted(name for name in dir() if name.startswith("bag_")) + ["renorm_rows"]
