"""The forward against the reference, over random bags of every shape, on every backend
(the GPU's cases tiny: see tests/backends.py)."""

import numpy as np
import pytest
from strategies import (
    BAD_FORWARD_INPUTS,
    FIXED_PADDING,
    MODES,
    Case,
    assert_close,
    assert_matches,
    bad_forward_call,
    cases,
    fixed_bags,
)

import nbbag
from nbbag import reference

INDICES = [1, 2, 4, 5, 4, 3, 2, 9]


def check_against_reference(case: Case, backend) -> None:
    """The output (the backend's kind of array, the weight's dtype and the reference's
    shape) and the table after max_norm's renorm equal the reference's.  On the GPU
    every input is a device array."""
    weight = backend.array(case.weight.copy())
    expected_weight = case.weight.copy()
    out = backend.host(case.call(nbbag.embedding_bag, weight, to=backend.array))
    expected = case.call(reference.embedding_bag, expected_weight)
    assert out.dtype == case.weight.dtype
    assert out.shape == expected.shape
    assert_close(out, expected, case.weight.dtype, case.longest_bag)
    assert_close(backend.host(weight), expected_weight, case.weight.dtype, 1)


def test_matches_reference(backend):
    backend.examples(
        cases(tiny=backend.tiny), lambda case: check_against_reference(case, backend)
    )


def test_max_matches_reference(backend):
    backend.examples(
        cases(modes=("max",), tiny=backend.tiny),
        lambda case: check_against_reference(case, backend),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_example(dtype, rng, backend):
    weight = rng.standard_normal((10, 5)).astype(dtype)
    out = nbbag.embedding_bag(backend.array(weight), INDICES, [0, 4], mode="mean")
    out = backend.host(out)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out[0], weight[[1, 2, 4, 5]].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[1], weight[[4, 3, 2, 9]].mean(axis=0), rtol=1e-6)


def test_mode_enum_and_name_agree(rng, backend):
    weight = backend.array(rng.standard_normal((10, 5)))
    by_name = nbbag.embedding_bag(weight, INDICES, [0, 4], mode="SqrtN")
    by_enum = nbbag.embedding_bag(weight, INDICES, [0, 4], mode=nbbag.Mode.SQRTN)
    np.testing.assert_array_equal(backend.host(by_name), backend.host(by_enum))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_hot_row_repeated_many_times(mode, index_dtype, rng, backend):
    """5000 ids (300 on the GPU), almost all one row, in a bag of 4980 (280)."""
    count = backend.pick(cpu=5000, cuda=300)
    weight = rng.standard_normal((50, 7)).astype(np.float32)
    indices = np.full(count, 13, dtype=index_dtype)
    indices[::7] = rng.integers(0, 50, size=indices[::7].size)
    offsets = np.array([0, 10, count - 10], dtype=index_dtype)
    case = Case(weight, indices, offsets, {"mode": mode}, longest_bag=count - 20)
    check_against_reference(case, backend)


@pytest.mark.parametrize("mode", MODES)
def test_empty_and_all_padding_bags_are_zero(mode, rng, backend):
    weight = backend.array(rng.standard_normal((6, 3)))
    out = nbbag.embedding_bag(weight, [2, 2, 5], [0, 0, 2], mode=mode, padding_idx=2)
    out = backend.host(out)
    np.testing.assert_array_equal(out[:2], np.zeros((2, 3)))
    assert np.all(out[2] != 0)


@pytest.mark.parametrize("mode", ["mean", "sqrtn"])  # the modes that divide by weights
def test_weights_summing_to_zero_give_zeros(mode, rng, backend):
    weight = backend.array(rng.standard_normal((6, 3)))
    weights = [0.0, 0.0, 1.5, -1.5] if mode == "sqrtn" else [1.0, -1.0, 2.0, -2.0]
    out = nbbag.embedding_bag(
        weight, [1, 2, 3, 4], [0, 2], mode=mode, per_sample_weights=weights
    )
    out = backend.host(out)
    np.testing.assert_array_equal(out[0] if mode == "sqrtn" else out, 0.0)


def test_no_bags(rng, backend):
    weight = backend.array(rng.standard_normal((6, 3)))

    def shape(*args, **kwargs):
        return backend.host(nbbag.embedding_bag(weight, *args, **kwargs)).shape

    assert shape([1, 2], [], mode="sum") == (0, 3)
    assert shape([1, 2], [0], include_last_offset=True) == (0, 3)
    assert shape(np.empty((0, 4), dtype=np.int64), mode="max") == (0, 3)


def test_readonly_weight_is_fine_without_max_norm(rng):
    """NumPy only: a device array has no read-only flag."""
    weight = rng.standard_normal((6, 3))
    weight.flags.writeable = False
    out = nbbag.embedding_bag(weight, [1, 2], [0], mode="sum")
    np.testing.assert_allclose(out[0], weight[1] + weight[2])


def test_non_contiguous_indices_and_python_lists(rng, backend):
    """Host inputs of any layout, whatever the table's backend."""
    weight = rng.standard_normal((10, 4))
    strided = np.arange(20, dtype=np.int64)[::2] % 10
    expected = reference.embedding_bag(weight, strided, [0, 3], mode="sum")
    table = backend.array(weight)
    out = nbbag.embedding_bag(table, strided, [0, 3], mode="sum")
    np.testing.assert_allclose(backend.host(out), expected)
    out = nbbag.embedding_bag(table, strided.tolist(), [0, 3], mode="sum")
    np.testing.assert_allclose(backend.host(out), expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_fixed_bags_in_every_mode_with_and_without_padding(mode, index_dtype, rng, backend):
    """An empty bag, a bag of padding only, repeated rows, D = 5 (a partial thread group
    on the GPU); indices on the backend, offsets on the host."""
    weight, indices, offsets, _ = fixed_bags(rng, index_dtype=index_dtype)
    for options in ({}, {"padding_idx": FIXED_PADDING}, {"padding_idx": -1}):
        kwargs = {"mode": mode, **options}
        expected = reference.embedding_bag(weight, indices, offsets, **kwargs)
        out = nbbag.embedding_bag(
            backend.array(weight), backend.array(indices), offsets, **kwargs
        )
        out = backend.host(out)
        assert out.dtype == weight.dtype
        assert_matches(out, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_option_with_every_input_on_the_backend(dtype, rng, backend):
    """Weights in every mode that takes them, include_last_offset, 2-D indices (with
    weights too), no bags, and max_norm (2-norm and inf-norm), every array on the
    backend: the output and the table (renormed in place) equal the reference's."""
    weight, indices, offsets, weights = fixed_bags(rng, dtype=dtype, index_dtype=np.int32)
    calls = [
        (indices, offsets, {"mode": mode, "per_sample_weights": weights})
        for mode in MODES
        if mode != "max"
    ] + [
        (indices, offsets[:4], {"mode": "mean", "include_last_offset": True}),
        (indices[:9].reshape(3, 3), None, {"mode": "max"}),
        (
            indices[:9].reshape(3, 3),
            None,
            {"mode": "sum", "per_sample_weights": weights[:9].reshape(3, 3)},
        ),
        (indices[:0], offsets[:0], {"mode": "sum"}),  # no bags at all
        (indices, offsets, {"mode": "sum", "max_norm": 1.0}),
        (indices, offsets, {"mode": "max", "max_norm": 0.5, "norm_type": np.inf}),
    ]
    for call_indices, call_offsets, kwargs in calls:
        case = Case(weight, call_indices, call_offsets, kwargs)
        expected_weight = weight.copy()
        expected = case.call(reference.embedding_bag, expected_weight)
        table = backend.array(weight.copy())
        out = backend.host(case.call(nbbag.embedding_bag, table, to=backend.array))
        assert_matches(out, expected, dtype)
        assert_matches(backend.host(table), expected_weight, dtype)  # max_norm's renorm


@pytest.mark.parametrize(
    ("change", "error", "message"),
    list(BAD_FORWARD_INPUTS.values()),
    ids=list(BAD_FORWARD_INPUTS),
)
def test_bad_input_raises_the_same_error_and_writes_nothing(
    change, error, message, rng, backend
):
    """Host inputs, checked before max_norm's renorm could write to the table (device
    inputs: tests/test_cuda.py)."""
    weight, kwargs = bad_forward_call(rng, change)
    table = backend.array(weight.copy())
    with pytest.raises(error, match=message):
        nbbag.embedding_bag(table, **kwargs)
    np.testing.assert_array_equal(backend.host(table), weight)
