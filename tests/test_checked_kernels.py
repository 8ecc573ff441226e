"""nbbag.kernels.checked: the bag kernels with their arguments checked first, so that a
mistake while composing raises instead of writing where the kernel should not."""

import numpy as np
import pytest

from nbbag import kernels, reference
from nbbag.kernels import checked

V, D = 30, 4


@pytest.fixture
def bags(rng):
    weight = rng.standard_normal((V, D)).astype(np.float32)
    indices = rng.integers(0, V, 12)
    offsets = np.array([0, 3, 3, 8, 12])  # CSR: 4 bags, one empty
    weights = rng.uniform(0.5, 2, 12).astype(np.float32)
    return weight, indices, offsets, weights


@pytest.mark.parametrize(
    "mode, weighted",
    [(mode, False) for mode in ("sum", "mean", "sqrtn", "max")]
    + [(mode, True) for mode in ("sum", "mean", "sqrtn")],  # max takes no weights
)
def test_checked_kernels_equal_the_reference(bags, mode, weighted):
    weight, indices, offsets, weights = bags
    out = np.full((4, D), np.nan, np.float32)
    if weighted:
        getattr(checked, f"bag_weighted_{mode}")(weight, indices, offsets, weights, out)
    else:
        getattr(checked, f"bag_{mode}")(weight, indices, offsets, out)
    expected = reference.embedding_bag(
        weight, indices, offsets[:-1], mode=mode,
        per_sample_weights=weights if weighted else None,
    )  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: {**a, "offsets": a["offsets"][:-1]}, ValueError, "CSR form"),
        (
            lambda a: {**a, "out": np.zeros((3, D), np.float32)},
            ValueError,
            "out must have shape",
        ),
        (
            lambda a: {**a, "indices": np.append(a["indices"][:-1], V)},
            IndexError,
            "outside",
        ),
        (
            lambda a: {**a, "offsets": np.array([0, 5, 3, 8, 12])},
            ValueError,
            "non-decreasing",
        ),
        (lambda a: {**a, "padding_idx": V}, ValueError, "padding_idx"),
        (lambda a: {**a, "out": np.zeros((4, D))}, TypeError, "dtype"),
    ],
    ids=["b-form-offsets", "short-out", "id-past-table", "decreasing", "padding", "dtype"],
)
def test_a_mistake_raises_and_writes_nothing(bags, change, error, match):
    weight, indices, offsets, _ = bags
    args = change(
        {"weight": weight, "indices": indices, "offsets": offsets,
         "out": np.full((4, D), 7.0, np.float32), "padding_idx": -1}
    )  # fmt: skip
    before = args["out"].copy()
    with pytest.raises(error, match=match):
        checked.bag_sum(**args)
    np.testing.assert_array_equal(args["out"], before)


def test_weighted_kernels_check_the_weights(bags):
    weight, indices, offsets, weights = bags
    out = np.zeros((4, D), np.float32)
    with pytest.raises(TypeError, match="per_sample_weights must have the weight's dtype"):
        checked.bag_weighted_sum(weight, indices, offsets, weights.astype(np.float64), out)
    with pytest.raises(ValueError, match="per_sample_weights"):
        checked.bag_weighted_mean(weight, indices, offsets, weights[:-1], out)


def test_bag_max_argmax_and_renorm_rows(bags):
    weight, indices, offsets, _ = bags
    out, argmax = np.zeros((4, D), np.float32), np.zeros((4, D), np.int64)
    checked.bag_max_argmax(weight, indices, offsets, out, argmax)
    expected_out, expected_argmax = np.zeros_like(out), np.zeros_like(argmax)
    kernels.bag_max_argmax(weight, indices, offsets, expected_out, expected_argmax)
    np.testing.assert_array_equal(argmax, expected_argmax)
    with pytest.raises(ValueError, match="argmax must be C-contiguous"):
        checked.bag_max_argmax(weight, indices, offsets, out, argmax[:3])
    with pytest.raises(ValueError, match="rows must be unique"):
        checked.renorm_rows(weight, [1, 1], 1.0, 2.0)
    with pytest.raises(IndexError):
        checked.renorm_rows(weight, [V], 1.0, 2.0)
    checked.renorm_rows(weight, [2, 5], 0.5, 2.0)
    assert np.linalg.norm(weight[[2, 5]], axis=1).max() <= 0.5 + 1e-6
