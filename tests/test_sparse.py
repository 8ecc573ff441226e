"""RowSparseGrad: construction checks, dense and SciPy round trips, memory sharing."""

import doctest

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import nbbag
import nbbag.sparse
from nbbag.sparse import RowSparseGrad, _index_dtype

DTYPES = [np.float32, np.float64]
FORMATS = ["csr", "csc", "coo", "lil", "dok", "bsr", "dia"]


def random_grad(rng, num_rows, dim, count, dtype=np.float64) -> RowSparseGrad:
    rows = np.sort(rng.choice(num_rows, size=count, replace=False)).astype(np.int64)
    values = rng.standard_normal((count, dim)).astype(dtype)
    return RowSparseGrad(rows, values, (num_rows, dim))


def assert_bitwise_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert (
        np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()
    )


def scipy_of(dense: np.ndarray, fmt: str, flavour: str):
    return getattr(sp, f"{fmt}_{flavour}")(dense)


def test_docstring_examples_run():
    result = doctest.testmod(nbbag.sparse, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_attributes(rng, dtype):
    rows = np.array([2, 5, 6], dtype=np.int64)
    values = rng.standard_normal((3, 4)).astype(dtype)
    grad = RowSparseGrad(rows, values, (9, 4))
    # rows: a read-only copy of the gradient's own; values: shared, not copied
    np.testing.assert_array_equal(grad.rows, rows)
    assert not np.shares_memory(grad.rows, rows) and not grad.rows.flags.writeable
    np.testing.assert_array_equal(grad.values, values)
    assert np.shares_memory(grad.values, values)
    assert grad.shape == (9, 4)
    assert type(grad.shape[0]) is int
    assert grad.dtype == dtype
    assert grad.nnz_rows == 3
    assert repr(grad) == f"RowSparseGrad(shape=(9, 4), nnz_rows=3, dtype={np.dtype(dtype)})"


@pytest.mark.parametrize("row_dtype", [np.int32, np.uint16, np.uint64])
def test_other_integer_rows_become_int64(rng, row_dtype):
    rows = np.array([0, 3], dtype=row_dtype)
    grad = RowSparseGrad(rows, rng.standard_normal((2, 2)), (4, 2))
    assert grad.rows.dtype == np.int64
    np.testing.assert_array_equal(grad.rows, [0, 3])


def test_numpy_integer_shape_becomes_python_ints(rng):
    grad = RowSparseGrad([1], rng.standard_normal((1, 3)), (np.int64(5), np.int32(3)))
    assert grad.shape == (5, 3)
    assert all(type(n) is int for n in grad.shape)


def test_trusted_skips_the_checks(rng):
    rows = np.array([4, 1])  # unsorted: the constructor would refuse it
    values = rng.standard_normal((2, 3))
    grad = RowSparseGrad._trusted(rows, values, (5, 3))
    assert np.shares_memory(grad.rows, rows) and np.shares_memory(grad.values, values)
    np.testing.assert_array_equal(grad.rows, [4, 1])
    assert grad.shape == (5, 3) and not rows.flags.writeable  # nbbag's own: locked


# (name, exception, words the message must hold, rows, values, shape)
BAD_INPUTS = [
    (
        "rows unsorted",
        ValueError,
        ["rows[1] = 5", "rows[2] = 2", "sorted"],
        [1, 5, 2],
        3,
        (9, 2),
    ),
    (
        "rows duplicated",
        ValueError,
        ["rows[1] = rows[2] = 5", "unique"],
        [1, 5, 5],
        3,
        (9, 2),
    ),
    ("row negative", ValueError, ["rows[0] = -1", "[0, 9)"], [-1, 2], 2, (9, 2)),
    ("row past V", ValueError, ["rows[2] = 9", "[0, 9)"], [1, 2, 9], 3, (9, 2)),
    (
        "uint64 row past V",
        ValueError,
        ["rows[0]", "[0, 9)"],
        np.array([2**64 - 1], np.uint64),
        1,
        (9, 2),
    ),
    ("rows float", TypeError, ["rows", "float64"], np.array([1.0, 2.0]), 2, (9, 2)),
    ("rows bool", TypeError, ["rows", "bool"], np.array([True, False]), 2, (9, 2)),
    ("rows 2-D", ValueError, ["rows", "1-D", "(1, 2)"], [[1, 2]], 2, (9, 2)),
    (
        "values int",
        TypeError,
        ["values", "int64"],
        [1, 2],
        np.ones((2, 2), np.int64),
        (9, 2),
    ),
    (
        "values float16",
        TypeError,
        ["values", "float16"],
        [1, 2],
        np.ones((2, 2), np.float16),
        (9, 2),
    ),
    ("values 1-D", ValueError, ["values", "2-D", "(4,)"], [1, 2], np.ones(4), (9, 2)),
    (
        "values wrong dim",
        ValueError,
        ["values", "(2, 2)", "(2, 3)"],
        [1, 2],
        np.ones((2, 3)),
        (9, 2),
    ),
    ("values wrong length", ValueError, ["values", "(2, 2)", "(3, 2)"], [1, 2], 3, (9, 2)),
    (
        "values strided",
        ValueError,
        ["values", "C-contiguous"],
        [1, 2],
        np.ones((2, 4))[:, ::2],
        (9, 2),
    ),
    ("shape 3 entries", ValueError, ["shape", "(9, 2, 1)"], [1, 2], 2, (9, 2, 1)),
    ("shape not a tuple", TypeError, ["shape", "9"], [1, 2], 2, 9),
    ("shape float", TypeError, ["shape", "9.0"], [1, 2], 2, (9.0, 2)),
    ("shape negative", ValueError, ["shape", "-2"], [1, 2], 2, (9, -2)),
]


@pytest.mark.parametrize(
    "exception, words, rows, values, shape",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_constructor_input(rng, exception, words, rows, values, shape):
    if isinstance(values, int):  # a count: fresh random rows of the right width
        values = rng.standard_normal((values, 2))
    with pytest.raises(exception) as info:
        RowSparseGrad(rows, values, shape)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# -- dense and SciPy round trips ---------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dense(rng, dtype):
    grad = random_grad(rng, 12, 5, 4, dtype)
    expected = np.zeros((12, 5), dtype=dtype)
    for row, value in zip(grad.rows, grad.values, strict=True):
        expected[row] = value
    assert_bitwise_equal(grad.to_dense(), expected)


@pytest.mark.parametrize("fmt", ["csr", "coo"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scipy_round_trips_are_exact(rng, fmt, dtype):
    grad = random_grad(rng, 30, 7, 11, dtype)
    matrix = grad.to_scipy(fmt)
    assert matrix.dtype == dtype
    assert_bitwise_equal(matrix.toarray(), grad.to_dense())
    back = RowSparseGrad.from_scipy(matrix)
    assert_bitwise_equal(back.rows, grad.rows)
    assert_bitwise_equal(back.values, grad.values)
    assert_bitwise_equal(back.to_dense(), grad.to_dense())
    assert back.shape == grad.shape


def test_csr_structure(rng):
    grad = random_grad(rng, 10, 3, 4)
    grad.values[1] = 0.0  # explicit zeros stay stored: the structure is predictable
    csr = grad.to_scipy()
    assert isinstance(csr, sp.csr_array)
    assert csr.format == "csr"
    assert csr.shape == (10, 3)
    assert csr.nnz == 4 * 3
    assert csr.indptr.shape == (11,)
    np.testing.assert_array_equal(np.diff(csr.indptr)[grad.rows], 3)
    assert np.diff(csr.indptr).sum() == 12
    np.testing.assert_array_equal(csr.indices, np.tile(np.arange(3), 4))
    assert csr.has_canonical_format
    assert csr.indices.dtype == csr.indptr.dtype == np.int32


def test_coo_structure(rng):
    grad = random_grad(rng, 10, 3, 4)
    coo = grad.to_scipy("coo")
    assert isinstance(coo, sp.coo_array)
    assert coo.shape == (10, 3)
    assert coo.nnz == 12
    np.testing.assert_array_equal(coo.row, np.repeat(grad.rows, 3))
    np.testing.assert_array_equal(coo.col, np.tile(np.arange(3), 4))


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_scipy_data_shares_the_values(rng, fmt):
    grad = random_grad(rng, 20, 4, 5, np.float32)
    matrix = grad.to_scipy(fmt)
    assert np.shares_memory(matrix.data, grad.values)
    matrix.data[5] = 42.0
    assert grad.values[1, 1] == 42.0


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_sharing_survives_values_cut_from_a_larger_buffer(rng, fmt):
    # SciPy compacts (copies) a data array that is a small view of a big buffer.
    buffer = rng.standard_normal((100, 4))
    grad = RowSparseGrad(np.array([3, 8]), buffer[:2], (10, 4))
    matrix = grad.to_scipy(fmt)
    assert np.shares_memory(matrix.data, grad.values)
    assert_bitwise_equal(matrix.toarray(), grad.to_dense())


def test_index_dtype_switches_to_int64_past_int32():
    assert _index_dtype(2**31 - 1) == np.int32
    assert _index_dtype(2**31) == np.int64


def test_large_num_rows_without_dense(rng):
    num_rows = 10**7  # the CSR's index pointer is O(V); nothing else may be
    grad = RowSparseGrad(
        np.array([0, 1234567, num_rows - 1]), rng.standard_normal((3, 4)), (num_rows, 4)
    )
    csr = grad.to_scipy()
    assert csr.shape == (num_rows, 4)
    assert csr.nnz == 12
    assert csr.indptr[-1] == 12
    assert_bitwise_equal(csr[grad.rows].toarray(), grad.values)
    assert np.shares_memory(csr.data, grad.values)
    for matrix in (csr, grad.to_scipy("coo")):
        back = RowSparseGrad.from_scipy(matrix)
        assert_bitwise_equal(back.rows, grad.rows)
        assert_bitwise_equal(back.values, grad.values)
        assert back.shape == (num_rows, 4)


def test_coo_past_int32_rows_uses_int64_and_shares(rng):
    num_rows = 2**31 + 10  # too many for a CSR in a test; the COO does not grow with V
    grad = RowSparseGrad(
        np.array([1, 2**31 + 3]), rng.standard_normal((2, 3)), (num_rows, 3)
    )
    coo = grad.to_scipy("coo")
    assert coo.row.dtype == np.int64
    assert np.shares_memory(coo.data, grad.values)
    back = RowSparseGrad.from_scipy(coo)
    assert_bitwise_equal(back.rows, grad.rows)
    assert_bitwise_equal(back.values, grad.values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_rows(dtype):
    grad = RowSparseGrad(np.zeros(0, np.int64), np.zeros((0, 3), dtype), (6, 3))
    assert grad.nnz_rows == 0
    assert_bitwise_equal(grad.to_dense(), np.zeros((6, 3), dtype))
    csr = grad.to_scipy()
    assert csr.nnz == 0 and csr.dtype == dtype
    np.testing.assert_array_equal(csr.indptr, np.zeros(7))
    assert grad.to_scipy("coo").nnz == 0
    for matrix in (csr, grad.to_scipy("coo"), sp.csr_array((6, 3), dtype=dtype)):
        back = RowSparseGrad.from_scipy(matrix)
        assert back.rows.dtype == np.int64 and back.rows.shape == (0,)
        assert back.values.shape == (0, 3) and back.dtype == dtype
        assert back.shape == (6, 3)


def test_empty_python_rows_are_allowed():
    grad = RowSparseGrad([], np.zeros((0, 2)), (4, 2))
    assert grad.rows.dtype == np.int64 and grad.nnz_rows == 0


def test_zero_width(rng):
    grad = RowSparseGrad(np.array([1, 2]), np.zeros((2, 0)), (4, 0))
    assert grad.to_dense().shape == (4, 0)
    assert grad.to_scipy().nnz == 0
    assert RowSparseGrad.from_scipy(grad.to_scipy()).nnz_rows == 0  # nothing stored


@st.composite
def grads(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_rows = draw(st.integers(1, 60))
    dim = draw(st.sampled_from([1, 2, 3, 5, 8, 17]))
    count = draw(st.integers(0, num_rows))
    dtype = draw(st.sampled_from(DTYPES))
    return random_grad(rng, num_rows, dim, count, dtype)


@given(grad=grads(), fmt=st.sampled_from(["csr", "coo"]))
def test_round_trip_property(grad, fmt):
    dense = grad.to_dense()
    matrix = grad.to_scipy(fmt)
    assert matrix.nnz == grad.nnz_rows * grad.shape[1]
    assert np.shares_memory(matrix.data, grad.values) or grad.values.size == 0
    assert_bitwise_equal(matrix.toarray(), dense)
    back = RowSparseGrad.from_scipy(matrix)
    assert_bitwise_equal(back.rows, grad.rows)
    assert_bitwise_equal(back.values, grad.values)
    assert back.shape == grad.shape


# -- from_scipy --------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["matrix", "array"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_from_scipy_any_format(rng, fmt, flavour, dtype):
    dense = np.zeros((15, 4), dtype=dtype)
    touched = np.sort(rng.choice(15, size=6, replace=False))
    dense[touched] = rng.standard_normal((6, 4)).astype(dtype)
    matrix = scipy_of(dense, fmt, flavour)
    before = matrix.copy()
    grad = RowSparseGrad.from_scipy(matrix)
    # Rows are those with a stored entry (bsr/dia may store zeros around the data).
    stored = np.unique(sp.coo_matrix(matrix).row).astype(np.int64)
    assert_bitwise_equal(grad.rows, stored)
    assert set(touched) <= set(grad.rows)
    assert grad.dtype == dtype
    assert_bitwise_equal(grad.values, dense[stored])
    assert_bitwise_equal(grad.to_dense(), dense)
    assert (matrix != before).nnz == 0  # the input is left as it was
    assert not np.shares_memory(grad.values, matrix.tocoo().data)


@pytest.mark.parametrize("flavour", ["matrix", "array"])
def test_from_scipy_sums_duplicate_coo_entries(flavour):
    # Entries in no order, (3, 1) three times and (0, 0) twice.
    row = np.array([3, 0, 3, 5, 0, 3])
    col = np.array([1, 0, 1, 2, 0, 1])
    data = np.array([1.5, -2.0, 0.25, 7.0, 0.5, 4.0])
    matrix = getattr(sp, f"coo_{flavour}")((data, (row, col)), shape=(6, 3))
    copies = (matrix.row.copy(), matrix.col.copy(), matrix.data.copy())
    grad = RowSparseGrad.from_scipy(matrix)
    np.testing.assert_array_equal(grad.rows, [0, 3, 5])
    expected = np.zeros((6, 3))
    np.add.at(expected, (row, col), data)
    assert_bitwise_equal(grad.to_dense(), expected)
    for kept, original in zip((matrix.row, matrix.col, matrix.data), copies, strict=True):
        assert_bitwise_equal(kept, original)


def test_from_scipy_sums_duplicates_in_a_csr_without_touching_it():
    data = np.array([1.0, 2.0, 3.0, 0.5])
    indices = np.array([2, 0, 2, 1], dtype=np.int32)  # row 0 holds column 2 twice
    indptr = np.array([0, 3, 3, 4], dtype=np.int32)
    matrix = sp.csr_array((data.copy(), indices.copy(), indptr.copy()), shape=(3, 3))
    grad = RowSparseGrad.from_scipy(matrix)
    np.testing.assert_array_equal(grad.rows, [0, 2])
    np.testing.assert_array_equal(grad.values, [[2.0, 0.0, 4.0], [0.0, 0.5, 0.0]])
    assert_bitwise_equal(matrix.data, data)
    assert_bitwise_equal(matrix.indices, indices)
    assert_bitwise_equal(matrix.indptr, indptr)


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_row_with_only_explicit_zeros_is_listed(rng, fmt):
    row = np.array([1, 1, 4])
    col = np.array([0, 2, 1])
    data = np.array([0.0, 0.0, rng.standard_normal()])
    matrix = sp.coo_array((data, (row, col)), shape=(6, 3)).asformat(fmt)
    assert matrix.nnz == 3
    grad = RowSparseGrad.from_scipy(matrix)
    np.testing.assert_array_equal(grad.rows, [1, 4])
    np.testing.assert_array_equal(grad.values[0], 0.0)
    assert grad.values[1, 1] == data[2]


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_lone_negative_zero_is_kept_bit_for_bit(fmt):
    # Summing into zeros (0.0 + -0.0 = 0.0) would lose the sign; the round trip must not.
    matrix = sp.coo_array(([-0.0, -0.0], ([2, 0], [1, 0])), shape=(3, 2)).asformat(fmt)
    grad = RowSparseGrad.from_scipy(matrix)
    assert np.signbit(grad.values[0, 0]) and np.signbit(grad.values[1, 1])
    assert not np.signbit(grad.values[0, 1])


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.longdouble, np.float64),
        (np.int32, np.float64),
        (np.int64, np.float64),
        (np.uint8, np.float64),
        (np.bool_, np.float64),
    ],
)
def test_from_scipy_dtypes(rng, dtype, expected):
    dense = np.zeros((5, 3))
    dense[[1, 3]] = rng.integers(1, 9, size=(2, 3))
    matrix = sp.csr_array(dense.astype(dtype))
    grad = RowSparseGrad.from_scipy(matrix)
    assert grad.dtype == expected
    np.testing.assert_array_equal(grad.to_dense(), dense.astype(dtype).astype(expected))


def test_from_scipy_rejects_complex():
    matrix = sp.csr_array(np.array([[1 + 2j, 0], [0, 0]]))
    with pytest.raises(TypeError, match=r"m must hold real numbers.*complex128"):
        RowSparseGrad.from_scipy(matrix)


@pytest.mark.parametrize(
    "value, name",
    [(np.ones((3, 2)), "ndarray"), ([[1.0, 0.0]], "list"), (None, "NoneType")],
)
def test_from_scipy_rejects_non_sparse(value, name):
    with pytest.raises(TypeError, match=rf"\bm must be a SciPy sparse.*got {name}"):
        RowSparseGrad.from_scipy(value)


def test_from_scipy_rejects_1d():
    """A 1-D sparse array (SciPy >= 1.13; older SciPy makes a 1-D input a (1, 3)
    matrix, which is 2-D and taken)."""
    try:
        vector = sp.coo_array(np.array([0.0, 1.0, 2.0]))
    except (TypeError, ValueError):
        pytest.skip("this SciPy has no 1-D sparse arrays")
    if vector.ndim == 2:
        assert RowSparseGrad.from_scipy(vector).shape == (1, 3)
        return
    with pytest.raises(ValueError, match=r"m must be 2-D.*\(3,\)"):
        RowSparseGrad.from_scipy(vector)


@pytest.mark.parametrize("fmt", ["csc", "CSR", "dense", None])
def test_to_scipy_rejects_other_formats(rng, fmt):
    grad = random_grad(rng, 5, 2, 2)
    with pytest.raises(ValueError, match=rf"format must be 'csr' or 'coo', got {fmt!r}"):
        grad.to_scipy(fmt)


@pytest.mark.parametrize(("axis", "bad"), [("row", 12), ("row", -1), ("column", 2)])
def test_from_scipy_rejects_indices_edited_past_the_shape(axis, bad):
    """SciPy checks indices at construction only; an edited COO must not slip through
    (the optimizers' kernels trust the rows)."""
    m = sp.coo_array(([1.0, 2.0], ([1, 3], [0, 1])), shape=(10, 2))
    (m.row if axis == "row" else m.col)[0] = bad
    with pytest.raises(ValueError, match=rf"{axis} index {bad} outside"):
        RowSparseGrad.from_scipy(m)


# A gradient cannot be made to lie about its rows or shape: an optimizer trusts them.


def _grad(rng, rows=(1, 4, 7), num_rows=10, dim=3):
    rows = np.array(rows, dtype=np.int64)
    return RowSparseGrad(rows, rng.standard_normal((rows.size, dim)), (num_rows, dim)), rows


def test_values_take_an_in_place_add(rng):
    """``grad.values += x`` writes into the values (and assigns the same memory back)."""
    grad, _ = _grad(rng)
    before = grad.values.copy()
    grad.values += 1.0
    np.testing.assert_array_equal(grad.values, before + 1.0)


def test_attributes_cannot_be_reassigned(rng):
    grad, _ = _grad(rng)
    for name, value in (("rows", np.array([10**9])), ("values", np.ones((1, 1))),
                        ("shape", (10**9, 3))):  # fmt: skip
        with pytest.raises(AttributeError):
            setattr(grad, name, value)
        with pytest.raises(AttributeError):
            object.__setattr__(grad, name, value)


def test_rows_are_read_only_and_the_callers_array_is_not_kept(rng):
    grad, rows = _grad(rng)
    rows[0] = 10**9  # the caller's array, after construction
    np.testing.assert_array_equal(grad.rows, [1, 4, 7])
    with pytest.raises(ValueError, match="read-only"):
        grad.rows[0] = 10**9
    view = grad.rows
    with pytest.raises(ValueError):
        view.flags.writeable = True


def test_reshaping_what_the_attributes_return_leaves_the_gradient(rng):
    grad, _ = _grad(rng)
    grad.values.shape = (9,)
    grad.rows.shape = (3, 1)
    assert grad.values.shape == (3, 3) and grad.rows.shape == (3,)


def test_the_callers_values_array_is_shared_but_cannot_change_shape(rng):
    values = rng.standard_normal((3, 3))
    grad = RowSparseGrad(np.array([1, 4, 7]), values, (10, 3))
    values[0, 0] = 42.0  # documented: the values are shared
    assert grad.values[0, 0] == 42.0
    values.shape = (9,)  # the caller's own array object
    assert grad.values.shape == (3, 3)


def test_a_step_after_every_kind_of_edit_updates_only_the_rows(rng):
    weight = rng.standard_normal((10, 3))
    expected = weight.copy()
    grad, rows = _grad(rng)
    expected[[1, 4, 7]] -= 0.1 * grad.values
    rows[:] = [9, 9, 9]
    grad.values.shape = (9,)
    nbbag.optim.SGD(weight, lr=0.1).step(grad)
    np.testing.assert_allclose(weight, expected)
