"""The forward and backward against torch.nn.functional.embedding_bag, for everything
torch has, on every backend (the GPU: a subset in which every pair of options
occurs)."""

import itertools

import numpy as np
import pytest
from backends import covering, on_backends
from strategies import MODES

import nbbag

torch = pytest.importorskip(
    "torch", reason="torch is not installed: pip install torch==2.13.0 for parity tests"
)
F = torch.nn.functional

TORCH_MODES = [mode for mode in MODES if mode != "sqrtn"]  # torch has no sqrtn
FLOAT_DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]

# Options torch supports: sum/mean/max; per_sample_weights with sum only.
COMBINATIONS = [
    (mode, weighted, padding, layout, max_norm)
    for mode, weighted, padding, layout, max_norm in itertools.product(
        TORCH_MODES,
        [False, True],
        [None, 3, -2],
        ["offsets", "include_last_offset", "2d"],
        [None, 1.5],
    )
    if not (weighted and mode != "sum")
]
FORWARD_CASES = [
    (*combination, index_dtype, float_dtype)
    for combination, index_dtype, float_dtype in itertools.product(
        COMBINATIONS, INDEX_DTYPES, FLOAT_DTYPES
    )
]
BACKWARD_CASES = [
    (*combination, float_dtype)
    for combination, float_dtype in itertools.product(COMBINATIONS, FLOAT_DTYPES)
]
FORWARD_ARGS = "mode, weighted, padding_idx, layout, max_norm, index_dtype, float_dtype"
BACKWARD_ARGS = "mode, weighted, padding_idx, layout, max_norm, float_dtype"


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


@on_backends(FORWARD_ARGS, FORWARD_CASES, cuda=covering(FORWARD_CASES, 2))
def test_matches_torch(
    mode, weighted, padding_idx, layout, max_norm, index_dtype, float_dtype, rng, backend
):
    """Every input on the backend; the output and the table (max_norm renorms it in
    place) equal torch's."""
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
    ours_weight = backend.array(weight.copy())
    out = nbbag.embedding_bag(
        ours_weight,
        backend.array(indices),
        backend.array(offsets),
        per_sample_weights=backend.array(per_sample_weights),
        **options,
    )
    out = backend.host(out)

    rtol = 1e-5 if float_dtype == np.float32 else 1e-12
    assert out.dtype == expected.dtype
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(
        backend.host(ours_weight), torch_weight.numpy(), rtol=rtol, atol=rtol
    )


@pytest.mark.parametrize("norm_type", [1.0, 3.0, float("inf")])
def test_max_norm_types_match_torch(norm_type, rng, backend):
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
    table = backend.array(weight)
    out = nbbag.embedding_bag(
        table, indices, offsets, mode="mean", max_norm=2.0, norm_type=norm_type
    )
    np.testing.assert_allclose(backend.host(out), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        backend.host(table), torch_weight.numpy(), rtol=1e-12, atol=1e-12
    )


def test_hot_zipf_batch_matches_torch(rng, backend):
    """A realistic batch: Zipf ids, so a few rows appear thousands of times (20,000
    ids in 400 bags; the GPU: 2,000 in 40)."""
    count, num_bags = backend.pick(cpu=(20000, 400), cuda=(2000, 40))
    weight = rng.standard_normal((5000, 16)).astype(np.float32)
    indices = ((rng.zipf(1.05, size=count) - 1) % 5000).astype(np.int64)
    offsets = np.sort(rng.choice(count, size=num_bags - 1, replace=False))
    offsets = np.concatenate([[0], offsets]).astype(np.int64)
    table = backend.array(weight)
    for mode in TORCH_MODES:
        expected = F.embedding_bag(
            torch.from_numpy(indices),
            torch.from_numpy(weight),
            torch.from_numpy(offsets),
            mode=mode,
        ).numpy()
        out = nbbag.embedding_bag(table, indices, offsets, mode=mode)
        np.testing.assert_allclose(backend.host(out), expected, rtol=1e-4, atol=1e-4)


@on_backends(BACKWARD_ARGS, BACKWARD_CASES, cuda=covering(BACKWARD_CASES, 2))
def test_backward_matches_torch_autograd(
    mode, weighted, padding_idx, layout, max_norm, float_dtype, rng, backend
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
        backend.array(weight),
        indices,
        offsets,
        per_sample_weights=per_sample_weights,
        **options,
    )
    result = nbbag.embedding_bag_bwd(
        backend.array(grad_output), ctx, per_sample_weights_grad=weighted
    )
    grad = result[0] if weighted else result

    rtol = 1e-5 if float_dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        grad.to_dense(), torch_weight.grad.numpy(), rtol=rtol, atol=rtol
    )
    if weighted:
        np.testing.assert_allclose(
            backend.host(result[1]), torch_weights.grad.numpy(), rtol=rtol, atol=rtol
        )


def test_ids_past_the_last_offset_are_in_no_bag_where_torch_differs():
    """What the README says of include_last_offset: nbbag leaves the trailing ids out
    in every mode; torch 2.13 does so only in its float32 sum without padding."""
    weight = np.arange(12, dtype=np.float64).reshape(6, 2)
    ids, offsets = np.arange(6), np.array([0, 2, 4])

    def theirs(dtype, mode, padding_idx=None):
        return torch.nn.functional.embedding_bag(
            torch.from_numpy(ids), torch.from_numpy(weight.astype(dtype)),
            torch.from_numpy(offsets), mode=mode, include_last_offset=True,
            padding_idx=padding_idx,
        ).numpy()  # fmt: skip

    for mode in ("sum", "mean", "max"):
        ours = nbbag.embedding_bag(
            weight, ids, offsets, mode=mode, include_last_offset=True
        )
        last_bag = {"sum": weight[2:4].sum(0), "mean": weight[2:4].mean(0)}
        np.testing.assert_array_equal(ours[1], last_bag.get(mode, weight[2:4].max(0)))
    np.testing.assert_array_equal(theirs(np.float32, "sum")[1], weight[2:4].sum(0))
    np.testing.assert_array_equal(theirs(np.float64, "sum")[1], weight[2:6].sum(0))
    np.testing.assert_array_equal(theirs(np.float32, "max")[1], weight[2:6].max(0))
    np.testing.assert_array_equal(theirs(np.float32, "sum", 5)[1], weight[2:5].sum(0))
