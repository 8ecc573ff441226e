"""The CPU forward against the reference, over random bags of every shape."""

import numpy as np
import pytest
from hypothesis import given
from strategies import Case, assert_close, cases

import nbbag
from nbbag import reference

INDICES = [1, 2, 4, 5, 4, 3, 2, 9]


def check_against_reference(case: Case) -> None:
    weight = case.weight.copy()
    expected_weight = case.weight.copy()
    out = case.call(nbbag.embedding_bag, weight)
    expected = case.call(reference.embedding_bag, expected_weight)
    assert out.dtype == case.weight.dtype
    assert out.shape == expected.shape
    assert_close(out, expected, case.weight.dtype, case.longest_bag)
    assert_close(weight, expected_weight, case.weight.dtype, 1)  # max_norm's renorm


@given(cases())
def test_matches_reference(case):
    check_against_reference(case)


@given(cases(modes=("max",)))
def test_max_matches_reference(case):
    check_against_reference(case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_example(dtype, rng):
    weight = rng.standard_normal((10, 5)).astype(dtype)
    out = nbbag.embedding_bag(weight, INDICES, [0, 4], mode="mean")
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out[0], weight[[1, 2, 4, 5]].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[1], weight[[4, 3, 2, 9]].mean(axis=0), rtol=1e-6)


def test_mode_enum_and_name_agree(rng):
    weight = rng.standard_normal((10, 5))
    by_name = nbbag.embedding_bag(weight, INDICES, [0, 4], mode="SqrtN")
    by_enum = nbbag.embedding_bag(weight, INDICES, [0, 4], mode=nbbag.Mode.SQRTN)
    np.testing.assert_array_equal(by_name, by_enum)


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "sqrtn"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_hot_row_repeated_many_times(mode, index_dtype, rng):
    weight = rng.standard_normal((50, 7)).astype(np.float32)
    indices = np.full(5000, 13, dtype=index_dtype)
    indices[::7] = rng.integers(0, 50, size=indices[::7].size)
    offsets = np.array([0, 10, 4990], dtype=index_dtype)
    case = Case(weight, indices, offsets, {"mode": mode}, longest_bag=4980)
    check_against_reference(case)


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "sqrtn"])
def test_empty_and_all_padding_bags_are_zero(mode, rng):
    weight = rng.standard_normal((6, 3))
    out = nbbag.embedding_bag(weight, [2, 2, 5], [0, 0, 2], mode=mode, padding_idx=2)
    np.testing.assert_array_equal(out[:2], np.zeros((2, 3)))
    assert np.all(out[2] != 0)


@pytest.mark.parametrize("mode", ["mean", "sqrtn"])
def test_weights_summing_to_zero_give_zeros(mode, rng):
    weight = rng.standard_normal((6, 3))
    weights = [0.0, 0.0, 1.5, -1.5] if mode == "sqrtn" else [1.0, -1.0, 2.0, -2.0]
    out = nbbag.embedding_bag(
        weight, [1, 2, 3, 4], [0, 2], mode=mode, per_sample_weights=weights
    )
    np.testing.assert_array_equal(out[0] if mode == "sqrtn" else out, 0.0)


def test_no_bags(rng):
    weight = rng.standard_normal((6, 3))
    assert nbbag.embedding_bag(weight, [1, 2], [], mode="sum").shape == (0, 3)
    assert nbbag.embedding_bag(weight, [1, 2], [0], include_last_offset=True).shape == (
        0,
        3,
    )
    two_d = np.empty((0, 4), dtype=np.int64)
    assert nbbag.embedding_bag(weight, two_d, mode="max").shape == (0, 3)


def test_readonly_weight_is_fine_without_max_norm(rng):
    weight = rng.standard_normal((6, 3))
    weight.flags.writeable = False
    out = nbbag.embedding_bag(weight, [1, 2], [0], mode="sum")
    np.testing.assert_allclose(out[0], weight[1] + weight[2])


def test_non_contiguous_indices_and_python_lists(rng):
    weight = rng.standard_normal((10, 4))
    strided = np.arange(20, dtype=np.int64)[::2] % 10
    expected = reference.embedding_bag(weight, strided, [0, 3], mode="sum")
    np.testing.assert_allclose(
        nbbag.embedding_bag(weight, strided, [0, 3], mode="sum"), expected
    )
    np.testing.assert_allclose(
        nbbag.embedding_bag(weight, strided.tolist(), [0, 3], mode="sum"), expected
    )
