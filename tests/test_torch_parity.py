"""The forward against torch.nn.functional.embedding_bag, for everything torch has."""

import itertools

import numpy as np
import pytest

import nbbag

torch = pytest.importorskip(
    "torch", reason="torch is not installed: pip install torch==2.13.0 for parity tests"
)
F = torch.nn.functional

# Options torch supports: sum/mean/max; per_sample_weights with sum only.
COMBINATIONS = [
    (mode, weighted, padding, layout, max_norm)
    for mode, weighted, padding, layout, max_norm in itertools.product(
        ["sum", "mean", "max"],
        [False, True],
        [None, 3, -2],
        ["offsets", "include_last_offset", "2d"],
        [None, 1.5],
    )
    if not (weighted and mode != "sum")
]


def make_inputs(rng, layout, index_dtype, float_dtype, num_rows=23, dim=7):
    weight = (3 * rng.standard_normal((num_rows, dim))).astype(float_dtype)
    if layout == "2d":
        indices = rng.integers(0, num_rows, size=(6, 5)).astype(index_dtype)
        return weight, indices, None
    lengths = [4, 0, 1, 9, 0, 3, 12]  # empty bags first, middle and last-but-one
    indices = rng.integers(0, num_rows, size=sum(lengths)).astype(index_dtype)
    bounds = np.cumsum([0] + lengths).astype(index_dtype)
    return weight, indices, bounds if layout == "include_last_offset" else bounds[:-1]


def make_case(rng, mode, weighted, padding_idx, layout, max_norm, index_dtype, float_dtype):
    """Inputs and options for one combination; some rows start under max_norm."""
    weight, indices, offsets = make_inputs(rng, layout, index_dtype, float_dtype)
    weight[indices.reshape(-1)[:3]] *= 0.1  # some rows under max_norm, most over
    per_sample_weights = (
        rng.uniform(-1, 2, size=indices.shape).astype(float_dtype) if weighted else None
    )
    options = {
        "mode": mode,
        "padding_idx": padding_idx,
        "include_last_offset": layout == "include_last_offset",
        "max_norm": max_norm,
    }
    return weight, indices, offsets, per_sample_weights, options


@pytest.mark.parametrize("float_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize(
    ("mode", "weighted", "padding_idx", "layout", "max_norm"), COMBINATIONS
)
def test_matches_torch(
    mode, weighted, padding_idx, layout, max_norm, index_dtype, float_dtype, rng
):
    weight, indices, offsets, per_sample_weights, options = make_case(
        rng, mode, weighted, padding_idx, layout, max_norm, index_dtype, float_dtype
    )
    torch_weight = torch.from_numpy(weight.copy())
    expected = F.embedding_bag(
        torch.from_numpy(indices),
        torch_weight,
        None if offsets is None else torch.from_numpy(offsets),
        per_sample_weights=None if not weighted else torch.from_numpy(per_sample_weights),
        **options,
    ).numpy()
    ours_weight = weight.copy()
    out = nbbag.embedding_bag(
        ours_weight, indices, offsets, per_sample_weights=per_sample_weights, **options
    )

    rtol = 1e-5 if float_dtype == np.float32 else 1e-12
    assert out.dtype == expected.dtype
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(ours_weight, torch_weight.numpy(), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("norm_type", [1.0, 3.0, float("inf")])
def test_max_norm_types_match_torch(norm_type, rng):
    weight, indices, offsets = make_inputs(rng, "offsets", np.int64, np.float64)
    torch_weight = torch.from_numpy(weight.copy())
    expected = F.embedding_bag(
        torch.from_numpy(indices),
        torch_weight,
        torch.from_numpy(offsets),
        mode="mean",
        max_norm=2.0,
        norm_type=norm_type,
    ).numpy()
    out = nbbag.embedding_bag(
        weight, indices, offsets, mode="mean", max_norm=2.0, norm_type=norm_type
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weight, torch_weight.numpy(), rtol=1e-12, atol=1e-12)


def test_hot_zipf_batch_matches_torch(rng):
    """A realistic batch: Zipf ids, so a few rows appear thousands of times."""
    weight = rng.standard_normal((5000, 16)).astype(np.float32)
    indices = ((rng.zipf(1.05, size=20000) - 1) % 5000).astype(np.int64)
    offsets = np.sort(rng.choice(20000, size=399, replace=False))
    offsets = np.concatenate([[0], offsets]).astype(np.int64)
    for mode in ["sum", "mean", "max"]:
        expected = F.embedding_bag(
            torch.from_numpy(indices),
            torch.from_numpy(weight),
            torch.from_numpy(offsets),
            mode=mode,
        ).numpy()
        out = nbbag.embedding_bag(weight, indices, offsets, mode=mode)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("float_dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("mode", "weighted", "padding_idx", "layout", "max_norm"), COMBINATIONS
)
def test_backward_matches_torch_autograd(
    mode, weighted, padding_idx, layout, max_norm, float_dtype, rng
):
    """The sparse gradient equals torch's dense weight gradient (and the gradient of
    per_sample_weights, sum mode); scale_grad_by_freq is checked against the reference
    instead (torch 2.13's CPU path divides some rows by the wrong count)."""
    weight, indices, offsets, per_sample_weights, options = make_case(
        rng, mode, weighted, padding_idx, layout, max_norm, np.int64, float_dtype
    )
    torch_weight = torch.from_numpy(weight.copy()).requires_grad_()
    torch_weights = None
    if weighted:
        torch_weights = torch.from_numpy(per_sample_weights.copy()).requires_grad_()
    torch_out = F.embedding_bag(
        torch.from_numpy(indices),
        torch_weight,
        None if offsets is None else torch.from_numpy(offsets),
        per_sample_weights=torch_weights,
        **options,
    )
    grad_output = rng.standard_normal(tuple(torch_out.shape)).astype(float_dtype)
    torch_out.backward(torch.from_numpy(grad_output))

    out, ctx = nbbag.embedding_bag_fwd(
        weight, indices, offsets, per_sample_weights=per_sample_weights, **options
    )
    result = nbbag.embedding_bag_bwd(grad_output, ctx, per_sample_weights_grad=weighted)
    grad = result[0] if weighted else result

    rtol = 1e-5 if float_dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        grad.to_dense(), torch_weight.grad.numpy(), rtol=rtol, atol=rtol
    )
    if weighted:
        np.testing.assert_allclose(
            result[1], torch_weights.grad.numpy(), rtol=rtol, atol=rtol
        )
