"""Validation of device inputs, with the CPU path's exceptions and messages.

Host inputs (NumPy arrays, lists) are checked on the host by :mod:`nbbag._validate` and
then copied to the device (indices and offsets are small beside the table).  Device
inputs are checked on the device: one small kernel per array finds the first bad
position (``atomic.min``, so the answer does not depend on the launch order) and only
a few scalars come back.  Nothing is written before every check has passed.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from nbbag._validate import (
    INDEX_DTYPES,
    BagBatch,
    check_index_range,
    check_indices,
    check_offsets,
    check_offsets_found,
    check_offsets_shape,
    check_options,
    check_padding_idx,
    check_per_sample_weights,
    check_table_layout,
    check_weights_like,
    check_weights_mode,
    index_error,
)
from nbbag.cuda import arrays, launch


@cuda.jit
def first_outside_kernel(values, low, high, first):
    """first[0] = min(first[0], the first i with values[i] outside [low, high)).

    Ownership: threads only ``atomic.min`` into first[0]; the minimum is order-free.
    """
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        value = values[i]
        if value < low or value >= high:
            cuda.atomic.min(first, 0, i)


@cuda.jit
def offsets_checks_kernel(offsets, num_indices, result):
    """result[0] = first i with offsets[i + 1] < offsets[i]; result[1] = first i with
    offsets[i] > num_indices (each left as set when none); result[2] = offsets[0].

    Ownership: thread 0 writes result[2]; threads ``atomic.min`` into result[0:2].
    """
    start = cuda.grid(1)
    if start == 0:
        result[2] = offsets[0]
    for i in range(start, offsets.shape[0], cuda.gridsize(1)):
        if i + 1 < offsets.shape[0] and offsets[i + 1] < offsets[i]:
            cuda.atomic.min(result, 0, i)
        if offsets[i] > num_indices:
            cuda.atomic.min(result, 1, i)


@cuda.jit
def csr_offsets_kernel(offsets, num_indices, out):
    """out = offsets as int64, with num_indices appended when out is one longer.

    Ownership: thread i writes out[i] (grid-stride).
    """
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = offsets[i] if i < offsets.shape[0] else num_indices


def first_outside(values, low: int, high: int) -> int:
    """The first position of 1-D device ``values`` outside [low, high), or -1."""
    count = values.shape[0]
    if count == 0:
        return -1
    first = arrays.to_device(np.array([count], dtype=np.int64))
    grid, block = launch.linear(count)
    first_outside_kernel[grid, block](values, low, high, first)
    position = int(first.copy_to_host()[0])
    return -1 if position == count else position


def check_weight(weight):
    """``weight`` as a Numba device array (no copy), after the CPU path's checks."""
    weight = arrays.as_device(weight)
    check_table_layout(weight, weight.is_c_contiguous(), "make a contiguous copy first")
    return weight


def _device_index_array(value, name: str):
    array = arrays.as_device(value)
    if array.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got dtype {array.dtype}")
    if not array.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    return array


def check_device_indices(indices, num_rows: int):
    """Device ``indices``: dtype, rank and range checked on the device."""
    indices = _device_index_array(indices, "indices")
    if indices.ndim not in (1, 2):
        raise ValueError(f"indices must be 1-D or 2-D, got shape {indices.shape}")
    flat = indices.reshape(indices.size)
    position = first_outside(flat, 0, num_rows)
    if position >= 0:
        value = int(flat[position : position + 1].copy_to_host()[0])
        raise index_error(indices.shape, position, value, num_rows)
    return indices


def check_device_offsets(offsets, indices, include_last_offset: bool):
    """Device ``offsets`` (1-D ``indices``) as int64 CSR offsets on the device."""
    offsets = _device_index_array(offsets, "offsets")
    num_indices = indices.size
    check_offsets_shape(offsets, include_last_offset)
    count = offsets.shape[0]
    if count == 0:
        return arrays.to_device(np.zeros(1, dtype=np.int64))
    result = arrays.to_device(np.array([count, count, 0], dtype=np.int64))
    grid, block = launch.linear(count)
    offsets_checks_kernel[grid, block](offsets, num_indices, result)
    decrease, past_end, first = (int(v) for v in result.copy_to_host())
    check_offsets_found(
        first,
        decrease if decrease < count else -1,
        past_end if past_end < count else -1,
        lambda i, j: offsets[i:j].copy_to_host(),
        num_indices,
    )
    out = arrays.empty(count + (0 if include_last_offset else 1), np.int64)
    grid, block = launch.linear(out.shape[0])
    csr_offsets_kernel[grid, block](offsets, num_indices, out)
    return out


def check_device_per_sample_weights(per_sample_weights, indices_shape, mode, dtype):
    weights = arrays.as_device(per_sample_weights)
    check_weights_mode(mode)
    check_weights_like(weights, indices_shape)
    if not weights.is_c_contiguous():
        raise ValueError("per_sample_weights must be C-contiguous")
    return arrays.cast(weights.reshape(weights.size), dtype)


def validate_forward(
    weight,
    indices,
    offsets,
    *,
    mode,
    per_sample_weights,
    padding_idx,
    include_last_offset,
    max_norm,
    norm_type,
    scale_grad_by_freq,
) -> BagBatch:
    """:func:`nbbag._validate.validate_forward` for a device ``weight``: the same
    checks and messages; every array of the result is on the device."""
    weight = check_weight(weight)
    num_rows = weight.shape[0]
    mode, include_last_offset, scale_grad_by_freq, max_norm, norm_type = check_options(
        mode, include_last_offset, scale_grad_by_freq, max_norm, norm_type
    )
    padding_idx = check_padding_idx(padding_idx, num_rows)
    if arrays.is_device(indices):
        indices = check_device_indices(indices, num_rows)
        device_indices = True
    else:
        indices = check_indices(indices)
        device_indices = False
    if offsets is not None and arrays.is_device(offsets):
        if indices.ndim == 2:
            raise ValueError(
                f"offsets must be None when indices is 2-D (shape {indices.shape}): "
                "each row is a bag"
            )
        bag_offsets = check_device_offsets(offsets, indices, include_last_offset)
    else:
        if offsets is not None:
            offsets = np.asarray(offsets)
        bag_offsets = arrays.to_device(check_offsets(offsets, indices, include_last_offset))
    if per_sample_weights is not None and arrays.is_device(per_sample_weights):
        weights = check_device_per_sample_weights(
            per_sample_weights, indices.shape, mode, weight.dtype
        )
    else:
        weights = check_per_sample_weights(per_sample_weights, indices, mode, weight.dtype)
        weights = None if weights is None else arrays.to_device(weights)
    if not device_indices:
        check_index_range(indices, num_rows)
        indices_shape = indices.shape
        indices = arrays.to_device(indices.reshape(-1))
    else:
        indices_shape = tuple(indices.shape)
        indices = indices.reshape(indices.size)
    return BagBatch(
        weight=weight,
        indices=indices,
        offsets=bag_offsets,
        per_sample_weights=weights,
        mode=mode,
        padding_idx=padding_idx,
        max_norm=max_norm,
        norm_type=norm_type,
        scale_grad_by_freq=scale_grad_by_freq,
        indices_shape=indices_shape,
    )
