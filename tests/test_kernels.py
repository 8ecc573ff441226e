"""nbbag.kernels, called the way users compose them: from Python and from @njit; and
the kernels both namespaces have (nbbag.kernels.cuda: the GPU's) on every backend."""

import numpy as np
import pytest
from numba import njit
from strategies import MODES

from nbbag import kernels, reference
from nbbag.base.records import TokenGroups


def call(backend, name, *args, grouped=None, linear=None):
    """The kernel ``name`` of the backend's namespace on ``args`` (NumPy arrays and
    scalars), its outputs written back into them.  On the GPU the arrays are copied
    over and back, and the kernel is launched one thread group per item of
    ``grouped`` = (items, D), or one thread per item of ``linear`` = items."""
    if backend.name == "cpu":
        return getattr(kernels, name)(*args)
    from nbbag.cuda import launch
    from nbbag.kernels import cuda as gpu_kernels

    config = launch.grouped(*grouped) if grouped is not None else launch.linear(linear)
    device = [backend.array(a) if isinstance(a, np.ndarray) else a for a in args]
    getattr(gpu_kernels, name)[config](*device)
    for array, copy in zip(args, device, strict=True):
        if isinstance(array, np.ndarray):
            array[...] = backend.host(copy)


@njit
def pooled_then_doubled(weight, indices, offsets, out):
    kernels.bag_sum(weight, indices, offsets, out)
    return out * 2


@njit
def mean_of_each_bag_by_hand(weight, indices, offsets, padding_idx, out):
    """A user's own loop over bags that calls the per-bag functions."""
    for b in range(out.shape[0]):
        count = kernels.sum_rows(
            weight, indices, offsets[b], offsets[b + 1], padding_idx, out[b]
        )
        kernels.scale_row(out[b], count)
    return out


@pytest.fixture
def bags(rng):
    weight = rng.standard_normal((20, 6)).astype(np.float32)
    indices = rng.integers(0, 20, size=30).astype(np.int32)
    offsets = np.array([0, 7, 7, 19, 30], dtype=np.int64)  # B + 1 form
    return weight, indices, offsets


def test_kernel_from_a_users_njit_function(bags):
    weight, indices, offsets = bags
    out = np.full((4, 6), np.nan, dtype=np.float32)
    doubled = pooled_then_doubled(weight, indices, offsets, out)
    expected = reference.embedding_bag(
        weight, indices, offsets, mode="sum", include_last_offset=True
    )
    np.testing.assert_allclose(doubled, 2 * expected, rtol=1e-5, atol=1e-6)


def test_per_bag_functions_from_a_users_njit_loop(bags):
    weight, indices, offsets = bags
    out = np.full((4, 6), np.nan, dtype=np.float32)
    mean_of_each_bag_by_hand(weight, indices, offsets, indices[0], out)
    expected = reference.embedding_bag(
        weight,
        indices,
        offsets,
        mode="mean",
        include_last_offset=True,
        padding_idx=int(indices[0]),
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


BAG_KERNELS = [
    *((f"bag_{mode}", mode, False) for mode in MODES),
    *((f"bag_weighted_{mode}", mode, True) for mode in MODES if mode != "max"),
]


@pytest.mark.parametrize(("kernel", "mode", "weighted"), BAG_KERNELS)
def test_every_bag_kernel_from_python_writes_every_element(
    kernel, mode, weighted, bags, rng, backend
):
    weight, indices, offsets = bags
    out = np.full((4, 6), np.nan, dtype=np.float32)  # poisoned: every element is written
    options = {"mode": mode, "include_last_offset": True, "padding_idx": int(indices[3])}
    args = (weight, indices, offsets)
    if weighted:
        psw = rng.uniform(0.5, 1.5, size=30).astype(np.float32)
        args += (psw,)
        options["per_sample_weights"] = psw
    call(backend, kernel, *args, out, options["padding_idx"], grouped=out.shape)
    expected = reference.embedding_bag(weight, indices, offsets, **options)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# each kernel with one dtype, the dtypes alternating (each pair compiles two kernels)
@pytest.mark.parametrize(
    ("kernel", "weighted", "dtype"),
    [
        (kernels.bag_sum, False, np.float32),
        (kernels.bag_mean, False, np.float64),
        (kernels.bag_sqrtn, False, np.float32),
        (kernels.bag_weighted_sum, True, np.float64),
        (kernels.bag_weighted_mean, True, np.float32),
        (kernels.bag_weighted_sqrtn, True, np.float64),
    ],
)
def test_sum_kernels_specialised_for_width_equal_the_generic_ones(
    kernel, weighted, dtype, rng
):
    """With ``lanes`` (D known at compile time, the sum in a stack row) the result is
    bit for bit the generic kernel's: same tokens, same order, same dtype."""
    width = 3 * kernels.LANE
    weight = rng.standard_normal((50, width)).astype(dtype)
    indices = rng.integers(0, 50, size=400)
    offsets = np.array([0, 0, 1, 7, 7, 300, 400])  # empty, single, hot bags
    indices[7:300] = 11  # one hot row repeated
    padding_idx = int(indices[2])
    lanes = kernels.lanes_for(width)
    assert lanes is not None and kernels.lanes_for(width + 1) is None
    args = (weight, indices, offsets)
    if weighted:
        args += (rng.uniform(-1.5, 1.5, size=400).astype(dtype),)
    generic = np.full((6, width), np.nan, dtype=dtype)
    specialised = np.full((6, width), np.nan, dtype=dtype)
    kernel(*args, generic, padding_idx)
    kernel(*args, specialised, padding_idx, lanes)
    np.testing.assert_array_equal(specialised, generic)


@pytest.mark.parametrize("scale_grad_by_freq", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_gradients_specialised_for_width_equal_the_generic_ones(
    dtype, scale_grad_by_freq, rng
):
    """``accumulate_rows`` with ``lanes`` (each row's sum in registers, in vectors) is
    bit for bit the generic kernel: same tokens, same order, same dtype."""
    width = 2 * kernels.LANE
    indices = rng.integers(0, 30, size=500)
    indices[100:400] = 7  # one hot row repeated
    bag_of = np.sort(rng.integers(0, 40, size=500))
    bag_of[:3] = -1  # tokens in no bag are grouped last and left out
    coefficients = rng.uniform(-2, 2, size=500).astype(dtype)
    coefficients[::11] = 0  # a zero coefficient adds nothing
    grad_output = rng.standard_normal((40, width)).astype(dtype)
    rows, row_ptr, positions = kernels.group_positions_by_row(indices, bag_of, 30, 2)
    value_index = np.arange(rows.shape[0])
    groups = TokenGroups(
        bag_of, coefficients, None, rows, row_ptr, positions, value_index, rows.shape[0]
    )
    generic = np.full((rows.shape[0], width), np.nan, dtype=dtype)
    specialised = np.full((rows.shape[0], width), np.nan, dtype=dtype)
    kernels.accumulate_rows(grad_output, groups, scale_grad_by_freq, generic)
    kernels.accumulate_rows(
        grad_output, groups, scale_grad_by_freq, specialised, kernels.lanes_for(width)
    )
    np.testing.assert_array_equal(specialised, generic)


def test_renorm_rows(rng, backend):
    weight = 5 * rng.standard_normal((8, 3))
    expected = weight.copy()
    reference.renorm(expected, [1, 6], max_norm=1.0, norm_type=2.0)
    call(backend, "renorm_rows", weight, np.array([1, 6]), 1.0, 2.0, linear=2)
    np.testing.assert_allclose(weight, expected, rtol=1e-12)


def test_index_range():
    """The CPU's (the GPU checks ids with its own kernels)."""
    assert kernels.index_range(np.array([4, -3, 9, 0])) == (-3, 9)


def test_bag_max_argmax_records_the_first_winner(rng, backend):
    weight = np.array([[1.0, 5.0], [2.0, 0.0], [2.0, 7.0]])
    indices = np.array([0, 1, 2, 1])
    out = np.empty((2, 2))
    argmax = np.full((2, 2), 99, dtype=np.int64)
    offsets = np.array([0, 3, 3])
    call(
        backend, "bag_max_argmax", weight, indices, offsets, out, argmax, -1, grouped=(2, 2)
    )
    np.testing.assert_array_equal(out, [[2.0, 7.0], [0.0, 0.0]])
    np.testing.assert_array_equal(argmax, [[1, 2], [-1, -1]])  # row 1 ties row 2: first


@pytest.mark.parametrize("sort_type", [np.int32, np.int64])
@pytest.mark.parametrize("num_chunks", [1, 2, 3, 8, 30])
def test_group_positions_by_row_is_a_stable_grouping(
    num_chunks, sort_type, rng, backend, monkeypatch
):
    """The same grouping as a stable argsort, for any chunking (30,000 tokens: up to 7
    chunks of 4096, each finding its own row starts; the GPU: 400 tokens of 300 rows,
    two radix passes, the chunks' slots computed segment by segment from 8 chunks on:
    2 segments of 4, 5 of 6) and either sort type."""
    num_rows, count = backend.pick(cpu=(5000, 30_000), cuda=(300, 400))
    if backend.name == "cuda":
        from nbbag.cuda import launch

        monkeypatch.setattr(launch, "SEGMENTED_SLOTS_FROM", 8)
    indices = rng.integers(0, num_rows, size=count)
    indices[rng.random(indices.size) < 0.3] = 17  # a hot row
    bag_of = np.where(rng.random(indices.size) < 0.2, -1, 0)
    if backend.name == "cpu":
        group = kernels.group_positions_by_row
    else:
        from nbbag.kernels import cuda as gpu_kernels

        group = gpu_kernels.group_positions_by_row
    rows, row_ptr, positions = (
        backend.host(array)
        for array in group(
            backend.array(indices), backend.array(bag_of), num_rows, num_chunks, sort_type
        )
    )
    assert rows.dtype == row_ptr.dtype == np.int64 and positions.dtype == sort_type
    kept = np.flatnonzero(bag_of >= 0)
    expected_order = kept[np.argsort(indices[kept], kind="stable")]
    np.testing.assert_array_equal(positions[: row_ptr[-1]], expected_order)
    # ... and nothing after them: positions holds the tokens in a bag only
    np.testing.assert_array_equal(positions, expected_order)
    unique, counts = np.unique(indices[kept], return_counts=True)
    np.testing.assert_array_equal(rows, unique)
    np.testing.assert_array_equal(np.diff(row_ptr), counts)
