"""Bad input: the named exception, the argument and the value in the message, raised
before any kernel runs, with every input left as it was; on every backend (the table
on it, the other inputs on the host: device inputs are tests/test_cuda.py's)."""

import numpy as np
import pytest
from backends import on_backends
from hypothesis import strategies as st

import nbbag

NUM_ROWS, DIM = 10, 4


@pytest.fixture
def weight(rng):
    # Norms ~20: any renorm that ran would change rows, so "unchanged" is meaningful.
    return 10 * rng.standard_normal((NUM_ROWS, DIM))


@pytest.fixture
def good():
    return {
        "indices": np.array([1, 2, 4, 5, 4, 3, 2, 9]),
        "offsets": np.array([0, 4]),
    }


def call(weight, indices, offsets, **options):
    options.setdefault("max_norm", 1.0)  # so a kernel that ran would modify weight
    return nbbag.embedding_bag(weight, indices, offsets, **options)


# (name, exception, words the message must hold, how to break the good call)
BAD_INPUTS = [
    (
        "index past V",
        IndexError,
        ["indices[3]", "10", "[0, 10)"],
        lambda w, i, o: (w, np.array([1, 2, 4, 10]), o, {}),
    ),
    (
        "negative index",
        IndexError,
        ["indices[2]", "-1"],
        lambda w, i, o: (w, np.array([1, 2, -1, 5]), o, {}),
    ),
    (
        "index out of range in 2-D",
        IndexError,
        ["indices[(1, 0)]", "99"],
        lambda w, i, o: (w, np.array([[1, 2], [99, 3]]), None, {}),
    ),
    (
        "int32 index past V",
        IndexError,
        ["indices[0]", "2147483647"],
        lambda w, i, o: (w, np.array([2**31 - 1], dtype=np.int32), o[:1], {}),
    ),
    (
        "offsets not starting at 0",
        ValueError,
        ["offsets[0]", "1"],
        lambda w, i, o: (w, i, np.array([1, 4]), {}),
    ),
    (
        "offsets decreasing",
        ValueError,
        ["offsets", "non-decreasing", "5", "3"],
        lambda w, i, o: (w, i, np.array([0, 5, 3]), {}),
    ),
    (
        "offsets past N",
        ValueError,
        ["offsets[1]", "9", "length 8"],
        lambda w, i, o: (w, i, np.array([0, 9]), {}),
    ),
    (
        "last offset past N",
        ValueError,
        ["offsets[2]", "12"],
        lambda w, i, o: (w, i, np.array([0, 4, 12]), {"include_last_offset": True}),
    ),
    (
        "no offsets with include_last_offset",
        ValueError,
        ["offsets", "at least one"],
        lambda w, i, o: (w, i, np.array([], dtype=np.int64), {"include_last_offset": True}),
    ),
    (
        "offsets missing for 1-D indices",
        ValueError,
        ["offsets", "required"],
        lambda w, i, o: (w, i, None, {}),
    ),
    (
        "offsets given for 2-D indices",
        ValueError,
        ["offsets", "2-D", "(2, 4)"],
        lambda w, i, o: (w, i.reshape(2, 4), o, {}),
    ),
    (
        "offsets of float dtype",
        TypeError,
        ["offsets", "float64"],
        lambda w, i, o: (w, i, o.astype(np.float64), {}),
    ),
    (
        "offsets 2-D",
        ValueError,
        ["offsets", "1-D", "(1, 2)"],
        lambda w, i, o: (w, i, o.reshape(1, 2), {}),
    ),
    (
        "indices of float dtype",
        TypeError,
        ["indices", "float32"],
        lambda w, i, o: (w, i.astype(np.float32), o, {}),
    ),
    (
        "indices of uint8 dtype",
        TypeError,
        ["indices", "uint8"],
        lambda w, i, o: (w, i.astype(np.uint8), o, {}),
    ),
    (
        "indices 3-D",
        ValueError,
        ["indices", "(2, 2, 2)"],
        lambda w, i, o: (w, i.reshape(2, 2, 2), None, {}),
    ),
    (
        "ragged indices",
        ValueError,
        ["indices"],
        lambda w, i, o: (w, [[1, 2], [3]], None, {}),
    ),
    (
        "weight of int dtype",
        TypeError,
        ["weight", "int64"],
        lambda w, i, o: (w.astype(np.int64), i, o, {"max_norm": None}),
    ),
    (
        "weight of int16 dtype",  # float16 bits, but not a float16 table
        TypeError,
        ["weight", "int16"],
        lambda w, i, o: (w.astype(np.float16).view(np.int16), i, o, {"max_norm": None}),
    ),
    (
        "weight 1-D",
        ValueError,
        ["weight", "2-D", "(40,)"],
        lambda w, i, o: (w.reshape(-1), i, o, {}),
    ),
    (
        "weight not C-contiguous",
        ValueError,
        ["weight", "C-contiguous"],
        lambda w, i, o: (w[:, ::2], i, o, {}),
    ),
    (
        "weight not an array",
        TypeError,
        ["weight", "list"],
        lambda w, i, o: (w.tolist(), i, o, {}),
    ),
    (
        "read-only weight with max_norm",
        ValueError,
        ["weight", "writeable", "max_norm"],
        lambda w, i, o: (readonly(w), i, o, {}),
    ),
    (
        "per_sample_weights with max",
        ValueError,
        ["per_sample_weights", "max"],
        lambda w, i, o: (w, i, o, {"mode": "max", "per_sample_weights": np.ones(8)}),
    ),
    (
        "per_sample_weights of wrong shape",
        ValueError,
        ["per_sample_weights", "(8,)", "(7,)"],
        lambda w, i, o: (w, i, o, {"mode": "sum", "per_sample_weights": np.ones(7)}),
    ),
    (
        "per_sample_weights of int dtype",
        TypeError,
        ["per_sample_weights", "int64"],
        lambda w, i, o: (
            w,
            i,
            o,
            {"mode": "sum", "per_sample_weights": np.ones(8, dtype=np.int64)},
        ),
    ),
    (
        "unknown mode",
        ValueError,
        ["mode", "'median'"],
        lambda w, i, o: (w, i, o, {"mode": "median"}),
    ),
    (
        "padding_idx out of range",
        ValueError,
        ["padding_idx", "10", "[-10, 10)"],
        lambda w, i, o: (w, i, o, {"padding_idx": 10}),
    ),
    (
        "padding_idx too negative",
        ValueError,
        ["padding_idx", "-11"],
        lambda w, i, o: (w, i, o, {"padding_idx": -11}),
    ),
    (
        "padding_idx not an int",
        TypeError,
        ["padding_idx", "2.0"],
        lambda w, i, o: (w, i, o, {"padding_idx": 2.0}),
    ),
    (
        "max_norm not positive",
        ValueError,
        ["max_norm", "-1"],
        lambda w, i, o: (w, i, o, {"max_norm": -1.0}),
    ),
    (
        "max_norm NaN",
        ValueError,
        ["max_norm", "nan"],
        lambda w, i, o: (w, i, o, {"max_norm": float("nan")}),
    ),
    (
        "norm_type not positive",
        ValueError,
        ["norm_type", "0"],
        lambda w, i, o: (w, i, o, {"norm_type": 0.0}),
    ),
    (
        "norm_type not a number",
        TypeError,
        ["norm_type", "'fro'"],
        lambda w, i, o: (w, i, o, {"norm_type": "fro"}),
    ),
    (
        "include_last_offset not a bool",
        TypeError,
        ["include_last_offset", "'yes'"],
        lambda w, i, o: (w, i, o, {"include_last_offset": "yes"}),
    ),
    (
        "scale_grad_by_freq not a bool",
        TypeError,
        ["scale_grad_by_freq", "1"],
        lambda w, i, o: (w, i, o, {"scale_grad_by_freq": 1}),
    ),
]


def readonly(array):
    array.flags.writeable = False
    return array


HOST_ONLY = ("read-only weight with max_norm",)  # a device array has no read-only flag


def bad_table(backend, weight):
    """A bad weight on the backend, with its fault: a strided view stays one (of a device
    copy of what it views); what is not a NumPy array (a list) stays as it is."""
    if backend.name == "cpu" or not isinstance(weight, np.ndarray):
        return weight
    if weight.flags.c_contiguous:
        return backend.array(weight)
    assert weight.base is not None and weight.base[:, ::2].shape == weight.shape
    return backend.array(weight.base)[:, ::2]


def host_copy(backend, array) -> np.ndarray:
    return (
        np.array(array, copy=True) if isinstance(array, np.ndarray) else backend.host(array)
    )


@on_backends(
    "name, error, words, breaker",
    BAD_INPUTS,
    cuda=[case for case in BAD_INPUTS if case[0] not in HOST_ONLY],
    ids=lambda case: case[0],
)
def test_bad_input_is_rejected_and_nothing_changes(
    name, error, words, breaker, weight, good, backend
):
    bad_weight, indices, offsets, options = breaker(
        weight, good["indices"], good["offsets"]
    )
    bad_weight = bad_table(backend, bad_weight)
    arrays = [a for a in (bad_weight, indices, offsets) if a is not None]
    arrays = [a for a in arrays if not isinstance(a, list)]
    before = [host_copy(backend, a) for a in arrays]
    with pytest.raises(error) as raised:
        call(bad_weight, indices, offsets, **options)
    for word in words:
        assert word in str(raised.value), f"{word!r} missing from: {raised.value}"
    for old, new in zip(before, arrays, strict=True):
        np.testing.assert_array_equal(old, host_copy(backend, new))


def test_the_good_call_does_renorm(weight, good, backend):
    """The control for the cases above: without the fault, the call modifies weight."""
    table = backend.array(weight.copy())
    call(table, good["indices"], good["offsets"])
    assert not np.array_equal(weight, backend.host(table))


INTEGERS = st.tuples(
    st.lists(st.integers(-(2**40), 2**40), max_size=20),
    st.lists(st.integers(-(2**40), 2**40), max_size=6),
    st.booleans(),
    st.sampled_from([np.int32, np.int64]),
)


def test_arbitrary_integers_never_crash(backend):
    """Whatever the integers, the result is an array or a clean exception."""
    backend.examples(INTEGERS, lambda example: check_integers(backend, *example))


def check_integers(backend, indices, offsets, include_last_offset, dtype):
    weight = backend.array(np.ones((7, 3)))
    try:
        indices = np.array(indices).astype(dtype)
        offsets = np.array(offsets).astype(dtype)
    except OverflowError:
        return
    try:
        out = nbbag.embedding_bag(
            weight,
            indices,
            offsets,
            mode="max",
            include_last_offset=include_last_offset,
            max_norm=0.5,
        )
    except (IndexError, ValueError, TypeError):
        np.testing.assert_array_equal(backend.host(weight), 1.0)
        return
    assert backend.host(out).shape == (max(len(offsets) - include_last_offset, 0), 3)
