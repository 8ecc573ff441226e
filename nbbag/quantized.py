"""Row-wise quantized tables for inference: :func:`quantize_rows` and
:class:`QuantizedTable`.

Each row is stored as 8- or 4-bit codes with its own scale and bias (min/max affine
quantization, torch's and FBGEMM's row-wise scheme): column d of row r is
``codes[r, d] * scale[r] + bias[r]``.  A lookup reads a quarter (8 bits) or an eighth
(4 bits) of a float32 row's bytes, plus 8, and ``nbbag.embedding_bag(q, ...)``
dequantizes inside the kernel: no float table is ever made.

Layout (``q.data``, (V, P) uint8, chosen so that a row's codes and its scale and bias
are read together): the codes (D bytes at 8 bits; D / 2 at 4 bits, byte k holding
column k in its low nibble and column k + D / 2 in its high one, so that a row's two
halves unpack into two contiguous runs of columns), zero bytes up to a multiple of 4,
then scale and bias as float32.  torch's prepacked layouts differ (no padding; 4-bit
columns 2k and 2k + 1 in byte k, scale and bias in float16):
:meth:`QuantizedTable.from_torch_prepacked` and :meth:`QuantizedTable.to_torch_prepacked`
convert, exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbbag import _validate as checks
from nbbag._device import backend_named, is_device_array
from nbbag.base.dtypes import is_half

__all__ = ["QuantizedTable", "quantize_rows"]

_BITS = (4, 8)
_CHUNK_ROWS = 1 << 16  # rows quantized at a time: bounded temporaries for large tables


def _check_bits(bits) -> int:
    if not checks.is_integer(bits) or int(bits) not in _BITS:
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    return int(bits)


def _code_bytes(dim: int, bits: int) -> int:
    return dim if bits == 8 else dim // 2


def _unpack4(packed: np.ndarray, interleaved: bool) -> np.ndarray:
    """(rows, D) codes from 4-bit bytes (rows, D / 2): nbbag's halves, or torch's
    interleaved columns (``interleaved``)."""
    half = packed.shape[1]
    codes = np.empty((packed.shape[0], 2 * half), np.uint8)
    low, high = (codes[:, 0::2], codes[:, 1::2]) if interleaved else np.hsplit(codes, 2)
    np.bitwise_and(packed, 15, out=low)
    np.right_shift(packed, 4, out=high)
    return codes


def _pack4(codes: np.ndarray, interleaved: bool) -> np.ndarray:
    """The inverse of :func:`_unpack4`."""
    low, high = (codes[:, 0::2], codes[:, 1::2]) if interleaved else np.hsplit(codes, 2)
    return low | (high << 4)


def _row_bytes(dim: int, bits: int) -> int:
    """Bytes of a row of ``data``: the codes padded to a multiple of 4, then 8."""
    return -(-_code_bytes(dim, bits) // 4) * 4 + 8


class QuantizedTable:
    """A (V, D) table quantized row by row to 8 or 4 bits: for
    ``nbbag.embedding_bag(q, ...)`` (every mode, weights, padding), whose output is
    float32.  Inference only: the backward, the optimizers and the layer refuse it.

    Made by :func:`quantize_rows` or :meth:`from_torch_prepacked` (or from ``data``
    in the layout below, checked: every scale and bias finite).  Its attributes are
    read-only: the forward trusts them to describe ``data``.

    Attributes
    ----------
    data : ndarray (V, P) uint8, or a device array
        The rows (see the module's docstring for the layout); on the GPU after
        :meth:`to_device` (the forward then runs there and returns a device array).
    bits : {8, 4}
    num_embeddings, embedding_dim : int
    """

    inference_only = True  # what the float-table entry points check for

    def __init__(self, data: Any, bits: int, embedding_dim: int):
        bits = _check_bits(bits)
        if not checks.is_integer(embedding_dim) or embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
        if bits == 4 and embedding_dim % 2:
            raise ValueError(
                f"bits=4 packs two codes a byte: D must be even, got D = {embedding_dim}"
            )
        expected = _row_bytes(embedding_dim, bits)
        on_device = is_device_array(data)
        if (
            not (isinstance(data, np.ndarray) or on_device)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != expected
            or not (data.is_c_contiguous() if on_device else data.flags.c_contiguous)
        ):
            raise ValueError(
                f"data must be a C-contiguous (V, {expected}) uint8 array for D = "
                f"{embedding_dim} at {bits} bits"
            )
        self._data = data
        self._bits = bits
        self._dim = int(embedding_dim)
        self._params = data.view(np.float32)  # (V, P / 4): scale, bias at the end
        if not on_device:  # a device table is made from a checked host one
            _check_params(self)

    @property
    def data(self) -> Any:
        return self._data

    @property
    def params(self) -> Any:
        """``data`` viewed as float32 (V, P / 4): each row's scale and bias last."""
        return self._params

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def num_embeddings(self) -> int:
        return int(self._data.shape[0])

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def on_device(self) -> bool:
        return is_device_array(self.data)

    def to_device(self) -> QuantizedTable:
        """The table with its rows copied to the GPU (needs the ``cuda`` extra)."""
        return QuantizedTable(
            backend_named("cuda").from_host(self._host_data()),
            self.bits,
            self.embedding_dim,
        )

    def _host_data(self) -> np.ndarray:
        return self.data.copy_to_host() if self.on_device else self.data

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_embeddings, self.embedding_dim)

    @property
    def scale(self) -> np.ndarray:
        """(V,) float32, each row's scale (a host copy for a device table)."""
        return self._host_data().view(np.float32)[:, -2]

    @property
    def bias(self) -> np.ndarray:
        """(V,) float32, each row's bias: its smallest value (likewise)."""
        return self._host_data().view(np.float32)[:, -1]

    def codes(self, rows=None) -> np.ndarray:
        """(V, D) uint8: every row's codes, unpacked (a new array); only ``rows``
        (an index array) if given."""
        packed = self._host_data()[:, : _code_bytes(self.embedding_dim, self.bits)]
        if rows is not None:
            packed = packed[rows]
        if self.bits == 8:
            return packed.copy()
        return _unpack4(packed, interleaved=False)

    def dequantize(self, rows=None) -> np.ndarray:
        """(V, D) float32: ``codes * scale + bias`` row by row; only ``rows`` (an
        index array, in its order) if given."""
        scale, bias = self.scale, self.bias
        if rows is not None:
            scale, bias = scale[rows], bias[rows]
        return self.codes(rows) * scale[:, None] + bias[:, None]

    @classmethod
    def from_torch_prepacked(cls, array: Any, bits: int = 8) -> QuantizedTable:
        """The table of torch's ``embedding_bag_byte_prepack`` (``bits=8``: rows of D
        code bytes, then float32 scale and bias) or ``embedding_bag_4bit_prepack``
        (``bits=4``: D / 2 bytes of nibbles, then float16 scale and bias) output: a
        (V, width) uint8 NumPy array or CPU tensor (copied)."""
        bits = _check_bits(bits)
        if hasattr(array, "numpy") and not isinstance(array, np.ndarray):
            array = array.detach().cpu().numpy()  # a torch tensor
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim != 2:
            raise ValueError(
                f"a prepacked table must be a 2-D uint8 array, got dtype {array.dtype} "
                f"and shape {array.shape}"
            )
        param_bytes = 8 if bits == 8 else 4
        code_bytes = array.shape[1] - param_bytes
        if code_bytes < 1:
            raise ValueError(
                f"a {bits}-bit prepacked row has codes and {param_bytes} bytes of "
                f"scale and bias: width {array.shape[1]} is too narrow"
            )
        dim = code_bytes if bits == 8 else 2 * code_bytes
        params_type = np.float32 if bits == 8 else np.float16
        params = np.ascontiguousarray(array[:, code_bytes:]).view(params_type)
        data = np.zeros((array.shape[0], _row_bytes(dim, bits)), np.uint8)
        for first in range(0, array.shape[0], _CHUNK_ROWS):
            rows = slice(first, first + _CHUNK_ROWS)
            codes = array[rows, :code_bytes]
            if bits == 4:
                codes = _pack4(_unpack4(codes, interleaved=True), interleaved=False)
            data[rows, :code_bytes] = codes
        data.view(np.float32)[:, -2:] = params
        return cls(data, bits, dim)

    def to_torch_prepacked(self) -> np.ndarray:
        """The table in torch's prepacked layout (see :meth:`from_torch_prepacked`):
        a (V, width) uint8 array for ``torch.from_numpy`` and torch's quantized ops."""
        code_bytes = _code_bytes(self.embedding_dim, self.bits)
        params_type = np.float32 if self.bits == 8 else np.float16
        data = self._host_data()
        params = data.view(np.float32)[:, -2:].astype(params_type)
        out = np.empty((data.shape[0], code_bytes + params.itemsize * 2), np.uint8)
        out[:, code_bytes:] = params.view(np.uint8)
        for first in range(0, data.shape[0], _CHUNK_ROWS):
            rows = slice(first, first + _CHUNK_ROWS)
            codes = data[rows, :code_bytes]
            if self.bits == 4:
                codes = _pack4(_unpack4(codes, interleaved=False), interleaved=True)
            out[rows, :code_bytes] = codes
        return out

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __repr__(self) -> str:
        where = ", on the GPU" if self.on_device else ""
        return (
            f"QuantizedTable({self.num_embeddings}x{self.embedding_dim}, "
            f"bits={self.bits}, {self.nbytes} bytes{where})"
        )


def _check_params(table: QuantizedTable) -> None:
    """Scales and biases finite: anything else did not come from a real table."""
    params = table.params[:, -2:]
    if not np.isfinite(params).all():
        row = int(np.flatnonzero(~np.isfinite(params).all(axis=1))[0])
        raise ValueError(f"row {row} has a scale or bias that is not finite")


def quantize_rows(weight, bits: int = 8) -> QuantizedTable:
    """Quantize each row of ``weight`` to ``bits`` (8 or 4) with its own scale and
    bias: ``scale = (max - min) / (2**bits - 1)``, ``bias = min``, codes rounded to the
    nearest, as torch's ``embedding_bag_byte_prepack`` / ``embedding_bag_4bit_prepack``
    (at 4 bits scale and bias are rounded to float16 first, as torch stores them).

    Parameters
    ----------
    weight : array_like (V, D), floating
        The table (any float dtype, bfloat16 too; read in chunks of rows).
    bits : {8, 4}, default 8
        4 needs an even D (two codes a byte).

    Returns
    -------
    QuantizedTable

    Examples
    --------
    >>> import numpy as np, nbbag
    >>> weight = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    >>> q = nbbag.quantize_rows(weight, bits=8)
    >>> out = nbbag.embedding_bag(q, [1, 2, 3, 4], [0, 2], mode="sum")
    >>> out.dtype, bool(abs(out - weight[[1, 3]] - weight[[2, 4]]).max() < 0.05)
    (dtype('float32'), True)
    """
    bits = _check_bits(bits)
    if not hasattr(weight, "dtype"):
        weight = np.asarray(weight)
    if not (np.issubdtype(weight.dtype, np.floating) or is_half(weight.dtype)):
        raise TypeError(f"weight must be a floating-point array, got dtype {weight.dtype}")
    if weight.ndim != 2 or weight.shape[1] == 0:
        raise ValueError(f"weight must be 2-D (V, D) with D >= 1, got shape {weight.shape}")
    num_rows, dim = weight.shape
    if bits == 4 and dim % 2:
        raise ValueError(f"bits=4 packs two codes a byte: D must be even, got D = {dim}")
    data = np.zeros((num_rows, _row_bytes(dim, bits)), np.uint8)
    for first in range(0, num_rows, _CHUNK_ROWS):
        rows = slice(first, first + _CHUNK_ROWS)
        _quantize_chunk(np.asarray(weight[rows], np.float32), bits, data[rows])
    return QuantizedTable(data, bits, dim)


def _quantize_chunk(chunk: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Rows ``chunk`` (float32) quantized into their rows ``out`` of ``data``."""
    levels = (1 << bits) - 1
    low = chunk.min(axis=1)
    if bits == 8:  # torch: scale = range / 255, codes from range + 1e-8
        spread = chunk.max(axis=1) - low
        scale = spread / levels
        inverse = levels / (spread + np.float32(1e-8))
    else:  # torch: the bias and scale are float16, a zero or tiny scale becomes 1
        low = low.astype(np.float16).astype(np.float32)
        scale = ((chunk.max(axis=1) - low) / levels).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore"):
            inverse = np.float32(1) / scale
        unusable = (scale == 0) | ~np.isfinite(inverse)
        scale[unusable] = 1
        inverse[unusable] = 1
    codes = np.clip(np.rint((chunk - low[:, None]) * inverse[:, None]), 0, levels)
    codes = codes.astype(np.uint8)
    if bits == 4:
        codes = _pack4(codes, interleaved=False)
    out[:, : codes.shape[1]] = codes
    params = out.view(np.float32)
    params[:, -2] = scale
    params[:, -1] = low
