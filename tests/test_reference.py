"""The reference itself, on cases small enough to check by hand."""

import numpy as np
import pytest

from nbbag import reference

INDICES = [1, 2, 4, 5, 4, 3, 2, 9]


@pytest.fixture
def weight(rng):
    return rng.standard_normal((10, 5))


def test_seed_example_mean(weight):
    out = reference.embedding_bag(weight, INDICES, [0, 4], mode="mean")
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out[0], weight[[1, 2, 4, 5]].mean(axis=0))
    np.testing.assert_allclose(out[1], weight[[4, 3, 2, 9]].mean(axis=0))


def test_modes_by_hand(weight):
    rows = weight[[1, 2, 4, 5]]
    for mode, expected in [
        ("sum", rows.sum(axis=0)),
        ("max", rows.max(axis=0)),
        ("sqrtn", rows.sum(axis=0) / 2.0),
    ]:
        out = reference.embedding_bag(weight, INDICES, [0, 4], mode=mode)
        np.testing.assert_allclose(out[0], expected)


def test_weighted_mean_and_sqrtn(weight):
    w = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    total = (w[:4, None] * weight[[1, 2, 4, 5]]).sum(axis=0)
    mean = reference.embedding_bag(
        weight, INDICES, [0, 4], mode="mean", per_sample_weights=w
    )
    sqrtn = reference.embedding_bag(
        weight, INDICES, [0, 4], mode="sqrtn", per_sample_weights=w
    )
    np.testing.assert_allclose(mean[0], total / 10.0)
    np.testing.assert_allclose(sqrtn[0], total / np.sqrt(30.0))


def test_padding_is_left_out_of_the_count(weight):
    out = reference.embedding_bag(weight, INDICES, [0, 4], mode="mean", padding_idx=4)
    np.testing.assert_allclose(out[0], weight[[1, 2, 5]].mean(axis=0))
    np.testing.assert_allclose(out[1], weight[[3, 2, 9]].mean(axis=0))


def test_empty_bags_and_zero_weight_sum_give_zeros(weight):
    out = reference.embedding_bag(
        weight, [3, 3], [0, 0, 2], mode="mean", per_sample_weights=[1.0, -1.0]
    )
    np.testing.assert_array_equal(out, np.zeros((3, 5)))


def test_include_last_offset_leaves_trailing_indices_out(weight):
    out = reference.embedding_bag(
        weight, INDICES, [0, 4, 6], mode="sum", include_last_offset=True
    )
    np.testing.assert_allclose(out[1], weight[[4, 3]].sum(axis=0))


def test_max_norm_renorms_looked_up_rows_in_place(weight):
    weight *= 10
    before = weight.copy()
    reference.embedding_bag(weight, [1, 1, 2], [0], mode="sum", max_norm=1.0)
    np.testing.assert_allclose(np.linalg.norm(weight[[1, 2]], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(weight[3:], before[3:])
