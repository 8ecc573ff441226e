"""Validation of device inputs, with the CPU path's exceptions and messages.

Host inputs (NumPy arrays, lists) are checked on the host by :mod:`nbbag._validate` and
then copied to the device (indices and offsets are small beside the table).  Device
inputs are checked on the device: small kernels find the first bad position of each
array (``atomic.min``, so the answer does not depend on the launch order) and only a
few scalars come back.  Nothing of the caller's (a table, ``out=``) is written before
every check has passed; a plain forward may run before its checks are read back
(:func:`launch_batch_checks`), into an output of its own that bad input discards.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from nbbag._validate import (
    bag_offsets,
    check_indices,
    check_offsets_found,
    check_offsets_shape,
    check_offsets_values,
    check_out_like,
    check_per_sample_weights,
    check_table_layout,
    check_trainable,
    check_weights_like,
    check_weights_mode,
    index_error,
)
from nbbag._validate import (
    first_outside as host_first_outside,
)
from nbbag.base.constants import INDEX_DTYPES
from nbbag.base.dtypes import compute_dtype
from nbbag.base.records import BagBatch, ForwardOptions
from nbbag.cuda import arrays, launch


@cuda.jit(device=True, inline=True)
def first_outside_dev(values, low, high, found, slot, start, stride):
    """found[slot] = min(found[slot], the first i with values[i] outside [low, high)),
    over i = start, start + stride, ...  Writes only through ``atomic.min``."""
    for i in range(start, values.shape[0], stride):
        value = values[i]
        if value < low or value >= high:
            cuda.atomic.min(found, slot, i)


@cuda.jit(device=True, inline=True)
def offsets_checks_dev(offsets, num_indices, found, slot, start, stride):
    """Over i = start, start + stride, ...: found[slot] = the first i with
    offsets[i + 1] < offsets[i], found[slot + 1] = the first i with offsets[i] >
    num_indices (each through ``atomic.min``, left as set when none); the thread with
    start 0 writes found[slot + 2] = offsets[0]."""
    if start == 0 and offsets.shape[0]:
        found[slot + 2] = offsets[0]
    for i in range(start, offsets.shape[0], stride):
        if i + 1 < offsets.shape[0] and offsets[i + 1] < offsets[i]:
            cuda.atomic.min(found, slot, i)
        if offsets[i] > num_indices:
            cuda.atomic.min(found, slot + 1, i)


@cuda.jit
def first_outside_kernel(values, low, high, found, slot):
    """found[slot] = min(found[slot], the first i with values[i] outside [low, high)).

    Ownership: threads only ``atomic.min`` into found[slot]; the minimum is order-free.
    """
    first_outside_dev(values, low, high, found, slot, cuda.grid(1), cuda.gridsize(1))


@cuda.jit
def offsets_checks_kernel(offsets, num_indices, found, slot):
    """found[slot] = first i with offsets[i + 1] < offsets[i]; found[slot + 1] = first
    i with offsets[i] > num_indices (each left as set when none); found[slot + 2] =
    offsets[0].

    Ownership: thread 0 writes found[slot + 2]; threads ``atomic.min`` into the others.
    """
    offsets_checks_dev(offsets, num_indices, found, slot, cuda.grid(1), cuda.gridsize(1))


@cuda.jit
def batch_checks_kernel(indices, offsets, num_rows, found):
    """A forward's checks of device ids and offsets in one launch, into the slots
    :func:`validate` reads (each :data:`NONE_FOUND` before): found[0] = the first id
    outside [0, num_rows); found[1:4] those of :func:`offsets_checks_dev`.

    Ownership: threads ``atomic.min`` into found[0:3]; thread 0 writes found[3].
    """
    start, stride = cuda.grid(1), cuda.gridsize(1)
    first_outside_dev(indices, 0, num_rows, found, 0, start, stride)
    offsets_checks_dev(offsets, indices.shape[0], found, 1, start, stride)


def launch_batch_checks(indices, offsets, num_rows: int):
    """Launch :func:`batch_checks_kernel` on 1-D device ``indices`` and ``offsets``
    (not empty); its four slots, on the device (read them with :func:`raise_found`)."""
    found = none_found(4)
    grid, block = launch.linear(max(indices.shape[0], offsets.shape[0]))
    batch_checks_kernel[grid, block](indices, offsets, num_rows, found)
    return found


@cuda.jit
def rows_checks_kernel(rows, num_rows, result):
    """result[0] = first i with rows[i] outside [0, num_rows); result[1] = first i
    with rows[i + 1] <= rows[i] (each left as set when none).

    Ownership: threads ``atomic.min`` into result.
    """
    for i in range(cuda.grid(1), rows.shape[0], cuda.gridsize(1)):
        if rows[i] < 0 or rows[i] >= num_rows:
            cuda.atomic.min(result, 0, i)
        if i + 1 < rows.shape[0] and rows[i + 1] <= rows[i]:
            cuda.atomic.min(result, 1, i)


def check_device_gradient(rows, values, shape: tuple) -> None:
    """A gradient's device arrays as an update relies on them: rows in [0, V), sorted
    and unique; values (U, D).  A device array has no read-only flag, so its elements
    may have been written since the gradient was made."""
    count = rows.shape[0]
    if tuple(values.shape) != (count, shape[1]):
        raise ValueError(
            f"grad.values has shape {tuple(values.shape)}, expected ({count}, {shape[1]})"
        )
    if not count:
        return
    result = arrays.to_device(np.array([count, count], dtype=np.int64))
    grid, block = launch.linear(count)
    rows_checks_kernel[grid, block](rows, shape[0], result)
    outside, not_increasing = (int(v) for v in result.copy_to_host())
    if outside < count:
        value = int(rows[outside : outside + 1].copy_to_host()[0])
        raise ValueError(
            f"grad.rows[{outside}] = {value} is outside [0, {shape[0]}): the gradient's "
            "rows were changed on the device after it was made"
        )
    if not_increasing < count:
        raise ValueError(
            f"grad.rows must be sorted and unique, but rows[{not_increasing}] >= "
            f"rows[{not_increasing + 1}]: the gradient's rows were changed on the device"
        )


@cuda.jit
def csr_offsets_kernel(offsets, num_indices, out):
    """out = offsets as int64, with num_indices appended when out is one longer.

    Ownership: thread i writes out[i] (grid-stride).
    """
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = offsets[i] if i < offsets.shape[0] else num_indices


# A check's result slots start here: "no bad position found".  Every byte 0x7F, so
# that a device memset sets it (larger than any position an array can hold).
_NONE_FOUND_BYTE = 0x7F
NONE_FOUND = int.from_bytes(bytes([_NONE_FOUND_BYTE] * 8), "little")


def none_found(count: int):
    """A new device int64 array of ``count`` slots, each :data:`NONE_FOUND`."""
    return arrays.filled_bytes(count, np.int64, _NONE_FOUND_BYTE)


def found(position: int) -> int:
    """A result slot's position, or -1 for :data:`NONE_FOUND`."""
    return -1 if position == NONE_FOUND else position


def launch_first_outside(values, low: int, high: int, found_slots, slot: int) -> None:
    """Launch the search for the first position of 1-D device ``values`` outside
    [low, high) into device ``found_slots[slot]`` (left as it is when there is none)."""
    if values.shape[0]:
        grid, block = launch.linear(values.shape[0])
        first_outside_kernel[grid, block](values, low, high, found_slots, slot)


def first_outside(values, low: int, high: int) -> int:
    """The first position of 1-D device ``values`` outside [low, high), or -1."""
    if values.shape[0] == 0:
        return -1
    slots = none_found(1)  # (a memset, not a copy: no wait)
    launch_first_outside(values, low, high, slots, 0)
    return found(int(slots.copy_to_host()[0]))


def check_weight(weight):
    """``weight`` as a Numba device array (no copy), after the CPU path's checks."""
    check_trainable(weight)
    weight = arrays.as_device(weight)
    check_table_layout(weight, weight.is_c_contiguous(), "make a contiguous copy first")
    return weight


def device_index_array(value, name: str):
    array = arrays.as_device(value)
    if array.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got dtype {array.dtype}")
    if not array.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    return array


def device_indices(indices):
    """Device ``indices``: dtype and rank checked (the values are not read)."""
    indices = device_index_array(indices, "indices")
    if indices.ndim not in (1, 2):
        raise ValueError(f"indices must be 1-D or 2-D, got shape {indices.shape}")
    return indices


def check_device_indices(indices, num_rows: int):
    """Device ``indices``: dtype, rank and range checked on the device."""
    indices = device_indices(indices)
    flat = indices.reshape(indices.size)
    raise_outside(indices, flat, first_outside(flat, 0, num_rows), num_rows)
    return indices


def raise_outside(indices, flat, position: int, num_rows: int) -> None:
    """IndexError for the id at ``position`` of device ``flat`` (-1: none)."""
    if position >= 0:
        value = int(flat[position : position + 1].copy_to_host()[0])
        raise index_error(indices.shape, position, value, num_rows)


def launch_offsets_checks(offsets, indices, include_last_offset: bool, slots):
    """Device ``offsets`` (1-D ``indices``; shape checked here) as new int64 CSR
    offsets, and the launch of their checks into device ``slots[1:4]`` (each
    :data:`NONE_FOUND`): read them with :func:`raise_offsets_found` before using the
    CSR offsets."""
    offsets = device_index_array(offsets, "offsets")
    check_offsets_shape(offsets, include_last_offset)
    count = offsets.shape[0]
    if count == 0:  # no bags
        return offsets, arrays.full(1, 0, np.int64)
    out = arrays.empty(count + (0 if include_last_offset else 1), np.int64)
    grid, block = launch.linear(count)
    offsets_checks_kernel[grid, block](offsets, indices.size, slots, 1)
    grid, block = launch.linear(out.shape[0])
    csr_offsets_kernel[grid, block](offsets, indices.size, out)
    return offsets, out


def raise_offsets_found(offsets, slots, num_indices: int) -> None:
    """Raise for what :func:`launch_offsets_checks` found (``slots`` on the host)."""
    if offsets.shape[0]:
        decrease, past_end, first = (int(v) for v in slots)
        check_offsets_found(
            first, found(decrease), found(past_end),
            lambda i, j: offsets[i:j].copy_to_host(), num_indices,
        )  # fmt: skip


def check_device_per_sample_weights(per_sample_weights, indices_shape, mode, dtype):
    weights = arrays.as_device(per_sample_weights)
    check_weights_mode(mode)
    check_weights_like(weights, indices_shape)
    if not weights.is_c_contiguous():
        raise ValueError("per_sample_weights must be C-contiguous")
    return arrays.cast(weights.reshape(weights.size), dtype)  # flat, as the kernels read


def check_device_out(out, shape: tuple, weight):
    """``out=`` of the GPU forward: a device array apart from ``weight``."""
    if not arrays.is_device(out):
        raise TypeError(f"out must be a device array, got {type(out).__name__}")
    out = arrays.as_device(out)
    check_out_like(out, shape, weight.dtype, out.is_c_contiguous())
    start, end = arrays.data_pointer(out), arrays.data_pointer(out) + out.nbytes
    table = arrays.data_pointer(weight)
    if out.size and start < table + weight.nbytes and table < end:
        raise ValueError("out must not overlap weight (the forward reads it)")
    return out


def host_csr(offsets, indices, include_last_offset: bool) -> np.ndarray:
    """Host ``offsets`` (or those of 2-D ``indices``), checked, as int64 CSR offsets."""
    raw, append_end, _ = bag_offsets(offsets, indices, include_last_offset)
    check_offsets_values(raw, indices.size)
    csr = raw.astype(np.int64)
    return np.append(csr, indices.size) if append_end else csr


def check_host_ids(indices: np.ndarray, num_rows: int) -> None:
    """IndexError for the first host id outside [0, num_rows)."""
    flat = indices.reshape(-1)
    position = host_first_outside(flat, num_rows) if flat.shape[0] else -1
    if position >= 0:
        raise index_error(indices.shape, position, flat[position], num_rows)


def inputs_for_unchecked_launch(
    weight, indices, offsets, per_sample_weights, options: ForwardOptions
):  # fmt: skip
    """The host half of a forward launched before its device checks are read back
    (:func:`nbbag.cuda.api.embedding_bag`): ``(flat ids, offsets as given,
    per_sample_weights flat in the compute dtype or None)``, device arrays all, after
    every check the host can make; None where that does not fit (host ids or offsets,
    2-D ids, no bags, D = 0, max_norm's renorm, which writes) or where a host check
    fails (:func:`validate` then raises, after the offsets' device checks whose errors
    come first)."""
    if not (arrays.is_device(indices) and arrays.is_device(offsets)):
        return None
    if options.max_norm is not None or not weight.shape[1]:
        return None
    if per_sample_weights is not None and not arrays.is_device(per_sample_weights):
        return None
    indices = device_indices(indices)
    if indices.ndim != 1:
        return None
    offsets = device_index_array(offsets, "offsets")
    check_offsets_shape(offsets, options.include_last_offset)
    if offsets.shape[0] == (1 if options.include_last_offset else 0):  # no bags
        return None
    dtype = compute_dtype(weight.dtype)
    if per_sample_weights is None:
        return indices, offsets, None
    try:
        weights = check_device_per_sample_weights(
            per_sample_weights, indices.shape, options.mode, dtype
        )
    except (TypeError, ValueError):
        return None
    return indices, offsets, weights


def raise_found(indices, offsets, found_slots, num_rows: int) -> None:
    """Raise for the first fault (the host path's order: offsets, then ids) in the
    host copy of the slots :func:`batch_checks_kernel` wrote."""
    raise_offsets_found(offsets, found_slots[1:4], indices.shape[0])
    raise_outside(indices, indices, found(int(found_slots[0])), num_rows)


def validate(
    weight, indices, offsets, per_sample_weights, options: ForwardOptions,
    private: bool = False,
):  # fmt: skip
    """Every check of a forward on a device ``weight``, with the CPU path's messages;
    every array of the resulting :class:`BagBatch` is on the device.  Host inputs are
    checked on the host, then copied over; device inputs are checked on the device
    and, if ``private``, copied (the batch then holds none of the caller's buffers)."""
    num_rows = weight.shape[0]
    on_device = arrays.is_device(indices)
    indices = device_indices(indices) if on_device else check_indices(indices)
    device_offsets = offsets is not None and arrays.is_device(offsets)
    if device_offsets and indices.ndim == 2:
        raise ValueError(
            f"offsets must be None when indices is 2-D (shape {indices.shape}): "
            "each row is a bag"
        )
    # The device checks (ids in range; offsets' order, end and first) are launched
    # together and read back in one copy: each wait for the device costs a forward
    # tens of microseconds.  Their errors come in the host path's order: offsets,
    # per_sample_weights, ids.
    found_slots = np.full(4, NONE_FOUND, np.int64)
    if on_device or device_offsets:
        slots = none_found(4)
        if on_device:
            flat = indices.reshape(indices.size)
            launch_first_outside(flat, 0, num_rows, slots, 0)
        if device_offsets:
            offsets, csr = launch_offsets_checks(
                offsets, indices, options.include_last_offset, slots
            )
        found_slots = slots.copy_to_host()
    if device_offsets:
        raise_offsets_found(offsets, found_slots[1:4], indices.size)
    else:
        csr = arrays.to_device(host_csr(offsets, indices, options.include_last_offset))
    if per_sample_weights is not None and arrays.is_device(per_sample_weights):
        weights = check_device_per_sample_weights(
            per_sample_weights, indices.shape, options.mode, compute_dtype(weight.dtype)
        )
        if private and arrays.same_array(weights, arrays.as_device(per_sample_weights)):
            weights = arrays.copy(weights)
    else:
        weights = check_per_sample_weights(
            per_sample_weights, indices, options.mode, compute_dtype(weight.dtype)
        )
        weights = None if weights is None else arrays.to_device(weights)
    indices_shape = tuple(indices.shape)
    if on_device:
        raise_outside(indices, flat, found(int(found_slots[0])), num_rows)
        if private:
            flat = arrays.copy(flat)
    else:
        check_host_ids(indices, num_rows)
        flat = arrays.to_device(np.ascontiguousarray(indices.reshape(-1)))
    return BagBatch(weight, flat, csr, weights, options, indices_shape)
