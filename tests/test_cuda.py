"""What only the GPU has, under the simulator where there is no GPU: foreign
``__cuda_array_interface__`` arrays used in place, the atomic (non-deterministic)
backward, bit-identical gradients across launch configurations, the radix sort over
several chunks and passes, and device inputs validated on the device.  Everything the
CPU has too runs on both backends in the other test files (the ``backend`` fixture).

Sizes are tiny (the simulator runs each GPU thread as a Python thread) and the launch
configuration is shrunk to odd sizes so that partial groups and partial blocks run.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from strategies import (
    BAD_FORWARD_INPUTS,
    FIXED_CASES,
    assert_matches,
    bad_forward_call,
    fixed_bags,
    fixed_cases,
)

import nbbag
from nbbag import reference

cuda_api = pytest.importorskip("nbbag.cuda.api", exc_type=ImportError)  # the extra
from numba import config, cuda  # noqa: E402

from nbbag.base.dtypes import compute_dtype  # noqa: E402
from nbbag.cuda import arrays, launch  # noqa: E402

pytestmark = pytest.mark.cuda  # all GPU-only: `pytest -m cuda` runs them on a device


@pytest.fixture(autouse=True)
def tiny_launches(monkeypatch):
    """Groups of 3 lanes (D = 5 leaves a partial group), 7 threads a block (2 bags a
    block, so an odd bag count leaves a partial block)."""
    monkeypatch.setattr(launch, "GROUP_SIZE", 3)
    monkeypatch.setattr(launch, "BLOCK_SIZE", 7)


def host(array):
    assert cuda.devicearray.is_cuda_ndarray(array), type(array)
    return array.copy_to_host()


def reference_backward(case, grad_output):
    options = {k: v for k, v in case.kwargs.items() if k != "mode"}
    return reference.embedding_bag_backward(
        grad_output, case.weight, case.indices, case.offsets, mode=case.kwargs["mode"],
        **options,
    )  # fmt: skip


@pytest.mark.parametrize("name", FIXED_CASES)
def test_atomic_backward_matches_the_reference(name, rng):
    """deterministic=False scatter-adds with atomics: the same rows, the same values up
    to the order of the additions."""
    case = fixed_cases(rng)[name]
    out, ctx = case.call(nbbag.embedding_bag_fwd, cuda.to_device(case.weight))
    grad_output = rng.standard_normal(out.shape).astype(case.weight.dtype)
    grad = nbbag.embedding_bag_bwd(grad_output, ctx, deterministic=False)
    expected, rows, _ = reference_backward(case, grad_output)
    np.testing.assert_array_equal(host(grad.rows), rows)
    assert host(grad.values).shape == (rows.size, case.weight.shape[1])
    assert_matches(grad.to_dense(), expected)


def test_backward_is_bit_identical_from_run_to_run(rng):
    weight = rng.standard_normal((6, 4)).astype(np.float32)
    indices = rng.integers(0, 6, 40)  # every row repeated: long sums in a fixed order
    offsets = np.arange(0, 40, 5)
    _, ctx = nbbag.embedding_bag_fwd(cuda.to_device(weight), indices, offsets, mode="sum")
    grad_output = cuda.to_device(rng.standard_normal((8, 4)).astype(np.float32))
    first = nbbag.embedding_bag_bwd(grad_output, ctx)
    launch.GROUP_SIZE, launch.BLOCK_SIZE = 2, 5  # another launch configuration
    second = nbbag.embedding_bag_bwd(grad_output, ctx)
    np.testing.assert_array_equal(host(first.rows), host(second.rows))
    assert host(first.values).tobytes() == host(second.values).tobytes()


def test_backward_sort_over_several_chunks_and_passes(rng):
    """300 rows (two radix passes) and 260 tokens (five sort chunks of ~64)."""
    weight = rng.standard_normal((300, 2)).astype(np.float32)
    indices = rng.integers(0, 300, 260)
    indices[::7] = 17  # a hot row spread over every chunk
    offsets = np.arange(0, 260, 13)
    kwargs = {"mode": "mean", "padding_idx": 5, "scale_grad_by_freq": True}
    _, ctx = nbbag.embedding_bag_fwd(cuda.to_device(weight), indices, offsets, **kwargs)
    grad_output = rng.standard_normal((20, 2)).astype(np.float32)
    grad = nbbag.embedding_bag_bwd(grad_output, ctx)
    expected, rows, _ = reference.embedding_bag_backward(
        grad_output, weight, indices, offsets, **kwargs
    )
    np.testing.assert_array_equal(host(grad.rows), rows)
    assert_matches(host(grad.values), expected[rows])


@pytest.mark.parametrize("count", [0, 3, 700, 5000])
def test_exclusive_scan_in_parts(count, rng, monkeypatch):
    """The scan of a 0/1 array: its chunks' sums scanned by one block in contiguous
    parts (7 threads here: empty parts for 1 chunk, ~11 chunks a part for 79)."""
    from nbbag.cuda import grouping

    monkeypatch.setattr(launch, "CHUNKS_PER_SM", 100)
    flags = rng.integers(0, 2, count).astype(np.int64)
    prefix, total = grouping.exclusive_scan(cuda.to_device(flags))
    np.testing.assert_array_equal(host(prefix), np.cumsum(flags) - flags)
    assert total == int(flags.sum())


class StubCudaArray:
    """A foreign GPU array (as CuPy or torch would hand over): nothing but
    ``__cuda_array_interface__``.  Under the simulator device memory is host memory,
    so it points at a NumPy buffer we can watch."""

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self.array.shape,
            "typestr": self.array.dtype.str,
            "data": (self.array.ctypes.data, False),
            "strides": None,
            "version": 3,
        }


@pytest.mark.skipif(
    not config.ENABLE_CUDASIM,
    reason="the stub points at host memory: only the simulator's device memory is host's",
)
def test_foreign_arrays_are_used_in_place(rng):
    weight, indices, offsets, _ = fixed_bags(rng)
    table = weight.copy()
    stub = StubCudaArray(table)
    out = nbbag.embedding_bag(stub, StubCudaArray(indices), offsets, mode="sum")
    assert_matches(host(out), reference.embedding_bag(weight, indices, offsets, mode="sum"))
    # No host copy of the table: the optimizer's update lands in the stub's memory.
    out, ctx = nbbag.embedding_bag_fwd(stub, indices, offsets, mode="sum")
    grad_output = np.ones(out.shape, dtype=np.float32)
    nbbag.optim.SGD(stub, lr=1.0).step_fused(grad_output, ctx)
    dense, _, _ = reference.embedding_bag_backward(
        grad_output, weight, indices, offsets, mode="sum"
    )
    assert not np.array_equal(table, weight)
    assert_matches(table, weight - dense)


# The cases with 1-D ids (2-D ids carry their bags in their shape: no offsets to check)
ONE_D_CASES = [
    name
    for name, case in fixed_cases(np.random.default_rng(0)).items()
    if case.offsets is not None
]


@pytest.mark.parametrize("name", ONE_D_CASES)
@pytest.mark.parametrize(
    ("index_dtype", "dtype"),
    [
        (np.int32, np.float32),
        (np.int64, np.float32),
        (np.int64, np.float64),
        (np.int32, np.dtype(ml_dtypes.bfloat16)),
    ],
    ids=["int32-float32", "int64-float32", "int64-float64", "int32-bfloat16"],
)
def test_device_inputs_forward_launched_behind_their_checks(
    name, index_dtype, dtype, rng, monkeypatch
):
    """Ids, offsets and weights on the device: the forward launched right behind its
    checks, on the caller's offsets (``validate``, which reads the checks back first
    and makes CSR offsets, must not run), equal to the reference on the table's
    values in every mode, with padding, weights, empty bags and include_last_offset."""
    case = fixed_cases(rng)[name]
    table = case.weight.astype(dtype)

    def checks_first(*args, **kwargs):
        raise AssertionError("the forward waited for its checks")

    monkeypatch.setattr(cuda_api.checks, "validate", checks_first)
    out = case.call(
        nbbag.embedding_bag,
        arrays.to_device(table),
        to=lambda value: (
            cuda.to_device(np.asarray(value).astype(index_dtype))
            if value.dtype.kind == "i"
            else cuda.to_device(value)
        ),
    )
    assert host(out).dtype == compute_dtype(table.dtype)
    expected = case.call(reference.embedding_bag, table.astype(compute_dtype(dtype)))
    assert_matches(host(out), expected)


@pytest.mark.parametrize("max_norm", [0.1, None], ids=["renorm", "checks-behind"])
@pytest.mark.parametrize(
    ("change", "error", "message"),
    list(BAD_FORWARD_INPUTS.values()),
    ids=list(BAD_FORWARD_INPUTS),
)
def test_bad_device_inputs_are_found_on_the_device(change, error, message, max_norm, rng):
    """Every input a device array: the CPU's exception and message (the CPU's call
    checks the message), and max_norm's renorm never ran.  Without max_norm, the
    forward runs before the checks are read, and its reads must stay in bounds (the
    simulator raises for any read outside an array)."""
    weight, kwargs = bad_forward_call(rng, {**change, "max_norm": max_norm})
    with pytest.raises(error, match=message):
        nbbag.embedding_bag(weight.copy(), **kwargs)  # the CPU's message, for reference
    device_kwargs = {
        key: cuda.to_device(np.asarray(value)) if key not in ("mode", "max_norm") else value
        for key, value in kwargs.items()
    }
    device_weight = cuda.to_device(weight)
    with pytest.raises(error, match=message):
        nbbag.embedding_bag(device_weight, **device_kwargs)
    np.testing.assert_array_equal(host(device_weight), weight)


@pytest.mark.parametrize("max_norm", [0.1, None], ids=["renorm", "checks-behind"])
@pytest.mark.parametrize("on_device", [("indices",), ("offsets",), ("indices", "offsets")])
def test_several_faults_raise_the_cpus_first(on_device, max_norm, rng):
    """Ids outside the table and bad offsets in one call: the device's checks run
    together, yet report the CPU's first fault (offsets before ids), and an id outside
    alone is still found whichever inputs are on the device."""
    change = {"indices": [0, 9], "offsets": [0, 2, 1], "max_norm": max_norm}
    weight, kwargs = bad_forward_call(rng, change)
    for key in on_device:
        kwargs[key] = cuda.to_device(np.asarray(kwargs[key]))
    with pytest.raises(ValueError, match=r"offsets\[1\] = 2 > offsets\[2\] = 1"):
        nbbag.embedding_bag(cuda.to_device(weight), **kwargs)
    kwargs["offsets"] = [0, 1]
    if "offsets" in on_device:
        kwargs["offsets"] = cuda.to_device(np.asarray(kwargs["offsets"]))
    with pytest.raises(IndexError, match=r"indices\[1\] = 9 is outside \[0, 9\)"):
        nbbag.embedding_bag(cuda.to_device(weight), **kwargs)


def test_the_kernels_namespace_is_the_backends():
    from nbbag.kernels import cuda as gpu_kernels

    assert gpu_kernels.bag_sum is cuda_api.forward.bag_sum
