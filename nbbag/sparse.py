"""The row-sparse gradient of an embedding table, and its conversion to SciPy.

A bag lookup's gradient touches only the rows that appeared in the batch, so nbbag keeps
it as the sorted unique rows and one dense (D,) row of values for each: O(U x D), whatever
the table's V.  SciPy is the interchange format, kept at this boundary: ``to_scipy``
builds a CSR (or COO) that shares the values, ``from_scipy`` reads any SciPy sparse
matrix or array back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from nbbag._validate import as_array, is_integer
from nbbag.base.constants import FLOAT_DTYPES

__all__ = ["RowSparseGrad"]

_INT32_MAX = np.iinfo(np.int32).max


def _index_dtype(largest: int) -> np.dtype:
    """The index dtype SciPy keeps as is for index arrays whose values and matrix
    dimensions are at most ``largest``.

    SciPy converts (copies) index arrays whose dtype differs from the one it picks
    itself: int32 when everything fits, int64 otherwise.
    """
    return np.dtype(np.int32 if largest <= _INT32_MAX else np.int64)


def _check_shape(shape) -> tuple[int, int]:
    try:
        entries = tuple(shape)
    except TypeError:
        raise TypeError(
            f"shape must be a (num_embeddings, dim) tuple, got {shape!r}"
        ) from None
    if len(entries) != 2:
        raise ValueError(f"shape must have 2 entries (num_embeddings, dim), got {shape!r}")
    if not all(is_integer(n) for n in entries):
        raise TypeError(f"shape must hold ints, got {shape!r}")
    if min(entries) < 0:
        raise ValueError(f"shape must not be negative, got {shape!r}")
    return int(entries[0]), int(entries[1])


def _check_rows(rows, num_rows: int) -> np.ndarray:
    """``rows`` as int64, after checking they are 1-D, in [0, V) and strictly
    increasing."""
    array = as_array(rows, "rows")
    if array.size == 0 and not isinstance(rows, np.ndarray):
        array = array.astype(np.int64)  # an empty Python sequence is untyped
    rows = array
    if not np.issubdtype(rows.dtype, np.integer):
        raise TypeError(f"rows must be an integer array, got dtype {rows.dtype}")
    if rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
    if rows.shape[0] == 0:
        return rows.astype(np.int64)
    # Range before the cast, so that a uint64 past int64's range cannot wrap around.
    outside = (rows < 0) | (rows >= num_rows)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"rows[{i}] = {rows[i]} is outside [0, {num_rows}): shape has {num_rows} rows"
        )
    rows = rows.astype(np.int64, copy=False)
    steps = np.diff(rows)
    if steps.size and steps.min() <= 0:
        i = int(np.argmax(steps <= 0))
        if steps[i] == 0:
            raise ValueError(
                f"rows must be unique (duplicates summed into one row of values), "
                f"got rows[{i}] = rows[{i + 1}] = {rows[i]}"
            )
        raise ValueError(
            f"rows must be sorted in increasing order, got rows[{i}] = {rows[i]} > "
            f"rows[{i + 1}] = {rows[i + 1]}"
        )
    return rows


def _check_values(values, num_rows: int, dim: int) -> np.ndarray:
    values = as_array(values, "values")
    if values.dtype not in FLOAT_DTYPES:
        raise TypeError(f"values must be float32 or float64, got dtype {values.dtype}")
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (len(rows), dim), got shape {values.shape}")
    if values.shape != (num_rows, dim):
        raise ValueError(
            f"values must have shape (len(rows), dim) = ({num_rows}, {dim}), "
            f"got {values.shape}"
        )
    if not values.flags.c_contiguous:
        raise ValueError(
            "values must be C-contiguous (to_scipy shares its buffer); "
            "pass np.ascontiguousarray(values)"
        )
    return values


def _same_memory(a, b) -> bool:
    """Whether ``a`` is a NumPy array over exactly ``b``'s elements, laid out alike."""
    return (
        isinstance(a, np.ndarray)
        and isinstance(b, np.ndarray)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


class RowSparseGrad:
    """The gradient of an embedding table (V, D) that is non-zero on a few rows only.

    Row ``rows[i]`` of the gradient is ``values[i]``; every other row is zero.  Memory
    and time are O(U x D) for U rows, independent of V.

    Parameters
    ----------
    rows : array_like of int, shape (U,)
        The rows the gradient touches, sorted, unique, each in [0, V).  Kept as a
        read-only int64 copy (O(U)): editing the array passed in changes nothing here.
    values : numpy.ndarray, shape (U, D), float32 or float64, C-contiguous
        One row of values per entry of ``rows``, duplicates already summed.  Shared,
        not copied: writing to its elements (here, through ``values`` or through
        ``to_scipy()``'s data) writes to the gradient's.
    shape : tuple of int
        (V, D), the shape of the embedding table.

    Attributes
    ----------
    rows : numpy.ndarray of int64, shape (U,), read-only
    values : numpy.ndarray, shape (U, D)
    shape : tuple of int
        (V, D).

    The attributes cannot be reassigned, and what they return is a view: reshaping it
    leaves the gradient as it was.  A gradient cannot be made to lie about its rows
    or its shape, so an optimizer's ``step`` trusts them: rows in range, sorted and
    unique, values (U, D).

    A gradient computed on a GPU holds Numba device arrays as ``rows`` and ``values``;
    ``to_scipy`` and ``to_dense`` copy them to the host.  A device array has no
    read-only flag: an optimizer's ``step`` on the GPU checks the rows on the device
    first (O(U)).

    Raises
    ------
    TypeError
        If ``rows`` is not of an integer dtype, ``values`` is not float32 or float64,
        or ``shape`` does not hold ints.
    ValueError
        If a row is outside [0, V), ``rows`` is not strictly increasing, or a shape
        does not match.

    Examples
    --------
    >>> import numpy as np
    >>> from nbbag.sparse import RowSparseGrad
    >>> grad = RowSparseGrad(np.array([1, 3]), np.array([[1.0, 2.0], [3.0, 4.0]]), (4, 2))
    >>> grad
    RowSparseGrad(shape=(4, 2), nnz_rows=2, dtype=float64)
    >>> grad.to_dense()
    array([[0., 0.],
           [1., 2.],
           [0., 0.],
           [3., 4.]])
    """

    __slots__ = ("_rows", "_values", "_shape")

    _rows: Any
    _values: Any
    _shape: tuple[int, int]

    def __init__(self, rows, values, shape: tuple[int, int]) -> None:
        num_rows, dim = _check_shape(shape)
        rows = _check_rows(rows, num_rows)
        values = _check_values(values, rows.shape[0], dim)
        own_rows = np.array(rows, dtype=np.int64)  # a copy the caller cannot reach
        self._set(own_rows, values, (num_rows, dim))

    @classmethod
    def _trusted(cls, rows, values, shape: tuple[int, int]) -> RowSparseGrad:
        """Build without checks, for callers that guarantee the invariants (int64 rows,
        sorted, unique, in [0, V), not shared with a caller; C-contiguous
        float32/float64 values (U, D))."""
        grad = cls.__new__(cls)
        grad._set(rows, values, (int(shape[0]), int(shape[1])))
        return grad

    def _set(self, rows, values, shape: tuple[int, int]) -> None:
        if isinstance(rows, np.ndarray):
            rows.flags.writeable = False
            values = values.view()  # its own shape: the caller's cannot change it
        self._rows, self._values, self._shape = rows, values, shape

    @property
    def rows(self):
        """The rows (U,), int64, sorted and unique (read-only on the host)."""
        return self._rows.view() if isinstance(self._rows, np.ndarray) else self._rows

    @property
    def values(self):
        """The values (U, D), one row of values per row."""
        values = self._values
        return values.view() if isinstance(values, np.ndarray) else values

    @values.setter
    def values(self, new) -> None:
        # ``grad.values += x`` adds in place, then assigns the same memory back: allowed.
        # Anything else would change what the rows are paired with: refused.
        if not _same_memory(new, self._values):
            raise AttributeError(
                "a RowSparseGrad's values cannot be replaced: write into them "
                "(grad.values[...] = ..., grad.values += ...) or make a new RowSparseGrad"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(V, D), the table's shape."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the values (the weight's)."""
        return self._values.dtype

    @property
    def nnz_rows(self) -> int:
        """U, the number of rows the gradient touches."""
        return self._rows.shape[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, nnz_rows={self.nnz_rows}, "
            f"dtype={self.dtype})"
        )

    def to_dense(self) -> np.ndarray:
        """The gradient as a dense (V, D) array of the values' dtype.

        Allocates V x D: meant for small tables and tests.

        Examples
        --------
        >>> import numpy as np
        >>> from nbbag.sparse import RowSparseGrad
        >>> RowSparseGrad(np.array([0]), np.array([[5.0]]), (2, 1)).to_dense()
        array([[5.],
               [0.]])
        """
        rows, values = self._host_arrays()
        dense = np.zeros(self.shape, dtype=values.dtype)
        dense[rows] = values
        return dense

    def _host_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) as NumPy arrays: copied to the host when on a GPU."""
        if isinstance(self._values, np.ndarray):
            return self._rows, self._values
        return self._rows.copy_to_host(), self._values.copy_to_host()

    def to_scipy(
        self, format: str = "csr"
    ) -> scipy.sparse.csr_array | scipy.sparse.coo_array:
        """The gradient as a SciPy sparse array of shape (V, D).

        Every entry of ``values`` is stored, zeros included, so the structure is
        predictable: U x D stored entries, the columns of each row ``0 .. D-1`` in order
        (canonical form: sorted, no duplicates).  The sparse array's ``data`` is
        ``values.reshape(-1)``, not a copy: writing to one writes to the other (but a
        gradient on a GPU is copied to the host).

        A CSR's index pointer has V + 1 entries, so building it costs O(V) time and
        memory, whatever U; the COO costs O(U x D) only.  Index arrays are int32 when
        V and D (and, for the CSR, U x D) fit in it, int64 otherwise.

        Parameters
        ----------
        format : {"csr", "coo"}
            ``"csr"`` gives a ``scipy.sparse.csr_array``, ``"coo"`` a
            ``scipy.sparse.coo_array``.

        Returns
        -------
        scipy.sparse.csr_array or scipy.sparse.coo_array

        Raises
        ------
        ValueError
            If ``format`` is neither ``"csr"`` nor ``"coo"``.

        Examples
        --------
        >>> import numpy as np
        >>> from nbbag.sparse import RowSparseGrad
        >>> grad = RowSparseGrad(np.array([2]), np.array([[1.0, 0.0]]), (3, 2))
        >>> csr = grad.to_scipy()
        >>> csr.nnz, csr.indptr.tolist()
        (2, [0, 0, 0, 2])
        >>> np.shares_memory(csr.data, grad.values)
        True
        """
        if format not in ("csr", "coo"):
            raise ValueError(f"format must be 'csr' or 'coo', got {format!r}")
        if not isinstance(self._values, np.ndarray):  # on a GPU: SciPy is host-only
            host = RowSparseGrad._trusted(*self._host_arrays(), self.shape)
            return host.to_scipy(format)
        if format == "csr":
            return self._to_csr()
        if format == "coo":
            return self._to_coo()
        raise ValueError(f"format must be 'csr' or 'coo', got {format!r}")

    def _to_csr(self) -> scipy.sparse.csr_array:
        num_rows, dim = self.shape
        count = self.nnz_rows
        index_dtype = _index_dtype(max(num_rows, dim, count * dim))
        data = self._values.reshape(-1)
        indices = np.tile(np.arange(dim, dtype=index_dtype), count)
        indptr = np.zeros(num_rows + 1, dtype=index_dtype)
        indptr[self._rows + 1] = dim
        np.cumsum(indptr, dtype=index_dtype, out=indptr)
        matrix = scipy.sparse.csr_array(
            (data, indices, indptr), shape=(num_rows, dim), copy=False
        )
        # SciPy copies a data array that is a view of a much larger buffer (values cut
        # from a bigger allocation); point it back at ours so that the two stay shared.
        matrix.data = data
        matrix.has_canonical_format = True
        return matrix

    def _to_coo(self) -> scipy.sparse.coo_array:
        num_rows, dim = self.shape
        count = self.nnz_rows
        index_dtype = _index_dtype(max(num_rows, dim))
        row = np.repeat(self._rows.astype(index_dtype, copy=False), dim)
        col = np.tile(np.arange(dim, dtype=index_dtype), count)
        matrix = scipy.sparse.coo_array(
            (self._values.reshape(-1), (row, col)), shape=(num_rows, dim), copy=False
        )
        matrix.has_canonical_format = True  # row-major order, no duplicates
        return matrix

    @classmethod
    def from_scipy(cls, m) -> RowSparseGrad:
        """Read a SciPy sparse matrix or array of shape (V, D) as a row-sparse gradient.

        Any format (csr, csc, coo, lil, dok, bsr, dia, ...), ``*_matrix`` or
        ``*_array``.  Duplicate entries are summed.  The rows are those with at least
        one stored entry (an explicitly stored zero counts), sorted.  float32 and
        float64 are kept; other real dtypes (ints, bool, longdouble) become float64.
        ``m`` is not modified; the result shares no memory with it.

        Parameters
        ----------
        m : scipy sparse matrix or array, shape (V, D)

        Returns
        -------
        RowSparseGrad

        Raises
        ------
        TypeError
            If ``m`` is not a SciPy sparse matrix or array, or holds complex or
            non-numeric values.
        ValueError
            If ``m`` is not 2-D.

        Examples
        --------
        >>> import numpy as np
        >>> import scipy.sparse
        >>> from nbbag.sparse import RowSparseGrad
        >>> entries = [1.0, 2.0, 4.0], ([3, 0, 3], [1, 1, 1])  # row 3 twice
        >>> grad = RowSparseGrad.from_scipy(scipy.sparse.coo_array(entries, shape=(5, 2)))
        >>> grad.rows
        array([0, 3])
        >>> grad.values
        array([[0., 2.],
               [0., 5.]])
        """
        if not scipy.sparse.issparse(m):
            raise TypeError(
                f"m must be a SciPy sparse matrix or array, got {type(m).__name__}"
            )
        if len(m.shape) != 2:
            raise ValueError(f"m must be 2-D (num_embeddings, dim), got shape {m.shape}")
        if m.dtype in FLOAT_DTYPES:
            dtype = m.dtype
        elif m.dtype == np.bool_ or np.issubdtype(m.dtype, np.integer):
            dtype = np.dtype(np.float64)
        elif np.issubdtype(m.dtype, np.floating):
            dtype = np.dtype(np.float64)
        else:
            raise TypeError(f"m must hold real numbers, got dtype {m.dtype}")
        num_rows, dim = (int(n) for n in m.shape)

        # Only read from the COO: for a COO input it is m itself.
        coo = m.tocoo()
        row = np.asarray(coo.row)
        col = np.asarray(coo.col).astype(np.int64, copy=False)
        data = np.asarray(coo.data)
        # SciPy checks indices when a matrix is built, not when its arrays are edited
        # later; the optimizers' kernels trust these rows, so check them here.
        for axis, index, bound in (("row", row, num_rows), ("column", col, dim)):
            outside = (index < 0) | (index >= bound)
            if outside.any():
                i = int(np.argmax(outside))
                raise ValueError(
                    f"m has {axis} index {index[i]} outside [0, {bound}) (shape {m.shape})"
                )
        if row.size == 0:
            values = np.zeros((0, dim), dtype=dtype)
            return cls._trusted(np.zeros(0, dtype=np.int64), values, (num_rows, dim))

        if np.all(row[1:] >= row[:-1]):  # row-sorted (CSR order, canonical COO): O(nnz)
            first = np.empty(row.shape[0], dtype=bool)
            first[0] = True
            np.not_equal(row[1:], row[:-1], out=first[1:])
            rows = row[first]
            position = np.cumsum(first) - 1
        else:
            rows, position = np.unique(row, return_inverse=True)
        rows = rows.astype(np.int64)

        # Flat position of each entry in values; sum duplicates the way SciPy does
        # (stable sort, then add runs), so that a lone entry is copied bit for bit.
        key = position.astype(np.int64, copy=False).reshape(-1) * dim + col
        if np.all(key[1:] > key[:-1]):
            summed = data.astype(dtype, copy=False)
        else:
            order = np.argsort(key, kind="stable")
            key = key[order]
            run_start = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
            summed = np.add.reduceat(data[order].astype(dtype, copy=False), run_start)
            key = key[run_start]
        values = np.zeros((rows.shape[0], dim), dtype=dtype)
        values.reshape(-1)[key] = summed
        return cls._trusted(rows, values, (num_rows, dim))
