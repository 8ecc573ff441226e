"""Device arrays: accepting foreign ones without a copy, allocating, filling."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from numba import config, cuda

from nbbag.base.dtypes import CODE_DTYPES
from nbbag.cuda import launch


def simulated() -> bool:
    """Whether Numba's CUDA simulator stands in for a GPU."""
    return bool(getattr(config, "ENABLE_CUDASIM", 0))


def is_device(value) -> bool:
    """A Numba device array (real or simulated) or a foreign CUDA array."""
    return bool(getattr(value, "__cuda_ndarray__", False)) or hasattr(
        value, "__cuda_array_interface__"
    )


def as_device(value):
    """``value`` as a Numba device array sharing its memory (no copy): CuPy arrays,
    torch CUDA tensors and anything else with ``__cuda_array_interface__``."""
    if getattr(value, "__cuda_ndarray__", False):
        return value
    if simulated():  # the simulator has no as_cuda_array: its memory is host's
        return _simulated_view(value.__cuda_array_interface__)
    return cuda.as_cuda_array(value)


def _simulated_view(interface: dict):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    dtype = np.dtype(interface["typestr"])
    shape = tuple(interface["shape"])
    pointer = interface["data"][0]
    strides = interface.get("strides")
    if strides is None:
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= max(n, 1)
    extent = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + dtype.itemsize
    size = extent if all(shape) else 0
    buffer: Any = (ctypes.c_char * max(size, 1)).from_address(pointer) if pointer else b"\0"
    array = np.ndarray(shape, dtype, buffer=buffer, strides=tuple(strides))
    return FakeCUDAArray(array)


def data_pointer(array) -> int:
    """The device address of a Numba device array's first element."""
    if simulated():
        return array.ctypes.data  # a simulated array wraps a host one
    return array.__cuda_array_interface__["data"][0]


def same_array(a, b) -> bool:
    """Whether two device arrays (wrappers of the same foreign array, say) are one."""
    if a is b:
        return True
    return (
        tuple(a.shape) == tuple(b.shape)
        and a.dtype == b.dtype
        and data_pointer(a) == data_pointer(b)
    )


def kernel_table(weight):
    """Device ``weight`` as the kernels take it: itself, or a half table's int16/uint16
    view (no copy; :mod:`nbbag.base.dtypes`)."""
    codes = CODE_DTYPES.get(weight.dtype)
    return weight if codes is None else weight.view(codes)


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=dtype)


def full(shape, value, dtype):
    array = cuda.device_array(shape, dtype=dtype)
    fill(array, value)
    return array


def copy(array):
    """A new device array holding what device ``array`` holds."""
    result = cuda.device_array(array.shape, dtype=array.dtype)
    if array.size:  # (an empty array's strides need not match the new one's)
        result.copy_to_device(array)
    return result


# numba-cuda copies between host and device through the buffer protocol, which has no
# bfloat16 (a real GPU's copy raises "cannot include dtype 'E' in a buffer"; the
# simulator's does not): a half array crosses as its integer view, the same bits.
def to_device(array: np.ndarray):
    """A new device array holding host ``array`` (any table dtype, bfloat16 too)."""
    array = np.ascontiguousarray(array)
    codes = CODE_DTYPES.get(array.dtype)
    if codes is None:
        return cuda.to_device(array)
    return cuda.to_device(array.view(codes)).view(array.dtype)


def to_host(array) -> np.ndarray:
    """A new host array holding device ``array`` (any table dtype, bfloat16 too)."""
    codes = CODE_DTYPES.get(array.dtype)
    if codes is None:
        return array.copy_to_host()
    return array.view(codes).copy_to_host().view(array.dtype)


def copy_to_device(target, source: np.ndarray) -> None:
    """Copy host ``source`` (converted to ``target``'s dtype) into device ``target``."""
    source = np.ascontiguousarray(source, dtype=target.dtype)
    codes = CODE_DTYPES.get(target.dtype)
    if codes is None:
        target.copy_to_device(source)
    else:
        target.view(codes).copy_to_device(source.view(codes))


@cuda.jit
def _fill_kernel(flat, value):
    """Ownership: thread i writes flat[i] (grid-stride)."""
    for i in range(cuda.grid(1), flat.shape[0], cuda.gridsize(1)):
        flat[i] = value


def fill(array, value) -> None:
    """Set every element of a C-contiguous device array to ``value``."""
    flat = array.reshape(array.size) if array.ndim != 1 else array
    if flat.shape[0]:
        grid, block = launch.linear(flat.shape[0])
        _fill_kernel[grid, block](flat, value)


def filled_bytes(count: int, dtype, byte: int):
    """A new 1-D device array of ``count`` elements of ``dtype``, every byte ``byte``:
    one driver memset (no kernel launch, no wait); a fill under the simulator."""
    array = cuda.device_array(count, dtype=dtype)
    if simulated():
        fill(array, np.frombuffer(bytes([byte]) * np.dtype(dtype).itemsize, dtype)[0])
    elif count:
        from numba.cuda.cudadrv import driver

        driver.device_memset(array, byte, array.nbytes)
    return array


@cuda.jit
def _cast_kernel(source, target):
    """Ownership: thread i writes target[i] (grid-stride)."""
    for i in range(cuda.grid(1), source.shape[0], cuda.gridsize(1)):
        target[i] = source[i]


def cast(array, dtype):
    """A C-contiguous device array in ``dtype``: itself if it already is, else a
    converted copy of the same shape (converted element by element, flattened)."""
    if array.dtype == dtype:
        return array
    out = cuda.device_array(array.shape, dtype=dtype)
    if array.size:
        grid, block = launch.linear(array.size)
        _cast_kernel[grid, block](array.reshape(array.size), out.reshape(out.size))
    return out


@cuda.jit
def _arange_kernel(out):
    """Ownership: thread i writes out[i] (grid-stride)."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = i


def arange(out) -> None:
    """out[i] = i for a 1-D device array."""
    if out.shape[0]:
        grid, block = launch.linear(out.shape[0])
        _arange_kernel[grid, block](out)


def copy_into(target, source) -> None:
    """Copy host or device ``source`` into the C-contiguous device ``target`` of the
    same size, converting the elements to ``target``'s dtype."""
    if not target.size:
        return
    if not is_device(source):
        copy_to_device(target, source)
        return
    source = as_device(source).reshape(target.size)
    if source.dtype == target.dtype:
        target.copy_to_device(source)
    else:
        grid, block = launch.linear(target.size)
        _cast_kernel[grid, block](source, target.reshape(target.size))


def concatenated(pieces, lengths, dtype, missing=1):
    """``pieces`` (host or device arrays, each read flat; None stands for ``lengths``
    of ``missing``) one after another, as one new 1-D device array of ``dtype``: one
    copy from the host when none is on the device."""
    if not any(is_device(piece) for piece in pieces):
        return to_device(
            np.concatenate(
                [
                    np.full(n, missing, dtype) if piece is None else np.ravel(piece)
                    for piece, n in zip(pieces, lengths, strict=True)
                ]
            ).astype(dtype, copy=False)
        )
    out = empty(sum(lengths), dtype)
    position = 0
    for piece, n in zip(pieces, lengths, strict=True):
        target = out[position : position + n]
        if piece is None:
            fill(target, missing)
        else:
            copy_into(target, piece)
        position += n
    return out
