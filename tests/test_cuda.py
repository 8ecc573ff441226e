"""The GPU backend against the CPU path, through the public API, under the simulator.

Sizes are tiny (the simulator runs each GPU thread as a Python thread) and the launch
configuration is shrunk to odd sizes so that partial groups and partial blocks run.
"""

from __future__ import annotations

import numpy as np
import pytest

import nbbag

cuda_api = pytest.importorskip("nbbag.cuda.api")
from numba import cuda  # noqa: E402

from nbbag.cuda import launch  # noqa: E402

MODES = ("sum", "mean", "max", "sqrtn")
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def tiny_launches(monkeypatch):
    """Groups of 3 lanes (D = 5 leaves a partial group), 7 threads a block (2 bags a
    block, so an odd bag count leaves a partial block)."""
    monkeypatch.setattr(launch, "GROUP_SIZE", 3)
    monkeypatch.setattr(launch, "BLOCK_SIZE", 7)


def host(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)


def make_case(rng, *, dtype=np.float32, index_dtype=np.int64, num_rows=9, dim=5):
    """Five bags, one empty and one holding only padding row 2, a repeated row."""
    weight = rng.standard_normal((num_rows, dim)).astype(dtype)
    indices = np.array([1, 2, 4, 4, 2, 2, 7, 0, 8, 4, 3], dtype=index_dtype)
    offsets = np.array([0, 3, 3, 6, 7], dtype=index_dtype)  # bag 1 empty, bag 2 = {2}?
    weights = rng.uniform(0.5, 2.0, indices.shape[0]).astype(dtype)
    return weight, indices, offsets, weights


def assert_matches(gpu, cpu, dtype=np.float32):
    np.testing.assert_allclose(host(gpu), cpu, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_forward_matches_cpu(mode, index_dtype, rng):
    weight, indices, offsets, _ = make_case(rng, index_dtype=index_dtype)
    for options in ({}, {"padding_idx": 2}, {"padding_idx": -1}):
        expected = nbbag.embedding_bag(weight, indices, offsets, mode=mode, **options)
        out = nbbag.embedding_bag(
            cuda.to_device(weight), cuda.to_device(indices), offsets, mode=mode, **options
        )
        assert cuda.devicearray.is_cuda_ndarray(out)
        assert out.dtype == weight.dtype
        assert_matches(out, expected)


def grad_cases(rng):
    """(weight, indices, offsets, kwargs) for the backward: every mode, with and
    without weights, padding and scale_grad_by_freq, 1-D and 2-D indices."""
    weight, indices, offsets, weights = make_case(rng)
    for mode in MODES:
        yield weight, indices, offsets, {"mode": mode}
        yield weight, indices, offsets, {"mode": mode, "padding_idx": 2}
        if mode != "max":
            yield weight, indices, offsets, {"mode": mode, "per_sample_weights": weights}
    yield weight, indices, offsets, {"mode": "mean", "scale_grad_by_freq": True}
    yield weight, indices[:10].reshape(2, 5), None, {"mode": "sum"}
    yield weight, indices, offsets[:3], {"mode": "sum", "include_last_offset": True}


def assert_same_grad(gpu, cpu, dtype=np.float32):
    assert gpu.shape == cpu.shape
    np.testing.assert_array_equal(host(gpu.rows), cpu.rows)
    assert_matches(gpu.values, cpu.values, dtype)


def test_backward_matches_cpu(rng):
    for weight, indices, offsets, kwargs in grad_cases(rng):
        out, ctx = nbbag.embedding_bag_fwd(weight, indices, offsets, **kwargs)
        grad_output = rng.standard_normal(out.shape).astype(weight.dtype)
        expected = nbbag.embedding_bag_bwd(grad_output, ctx)
        device_out, device_ctx = nbbag.embedding_bag_fwd(
            cuda.to_device(weight), indices, offsets, **kwargs
        )
        assert_matches(device_out, out)
        grad = nbbag.embedding_bag_bwd(cuda.to_device(grad_output), device_ctx)
        assert cuda.devicearray.is_cuda_ndarray(grad.values)
        assert_same_grad(grad, expected)
        np.testing.assert_allclose(grad.to_dense(), expected.to_dense(), atol=1e-5)
        assert (grad.to_scipy() != expected.to_scipy()).nnz <= grad.values.size
        atomic = nbbag.embedding_bag_bwd(grad_output, device_ctx, deterministic=False)
        assert_same_grad(atomic, expected)
        if "per_sample_weights" in kwargs:
            _, expected_weights = nbbag.embedding_bag_bwd(
                grad_output, ctx, per_sample_weights_grad=True
            )
            _, weights_grad = nbbag.embedding_bag_bwd(
                grad_output, device_ctx, per_sample_weights_grad=True
            )
            assert_matches(weights_grad, expected_weights)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_options_match_cpu(dtype, rng):
    weight, indices, offsets, weights = make_case(rng, dtype=dtype, index_dtype=np.int32)
    calls = [
        (indices, offsets, {"mode": mode, "per_sample_weights": weights})
        for mode in ("sum", "mean", "sqrtn")
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
        cpu_weight = weight.copy()
        expected = nbbag.embedding_bag(cpu_weight, call_indices, call_offsets, **kwargs)
        device_weight = cuda.to_device(weight)
        device_kwargs = dict(kwargs)
        if "per_sample_weights" in kwargs:
            device_kwargs["per_sample_weights"] = cuda.to_device(
                kwargs["per_sample_weights"]
            )
        device_offsets = None if call_offsets is None else cuda.to_device(call_offsets)
        out = nbbag.embedding_bag(
            device_weight, cuda.to_device(call_indices), device_offsets, **device_kwargs
        )
        assert_matches(out, expected, dtype)
        assert_matches(device_weight, cpu_weight, dtype)  # max_norm renormed in place


OPTIMIZERS = [
    (nbbag.optim.SGD, {"lr": 0.1}),
    (nbbag.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    (nbbag.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.1}),
    (nbbag.optim.RowWiseAdagrad, {"lr": 0.1}),
    (nbbag.optim.Adam, {"lr": 0.01}),
]


@pytest.mark.parametrize("make, hyper", OPTIMIZERS)
def test_optimizer_steps_match_cpu(make, hyper, rng):
    """Two steps (plain, then fused) on different rows, then catch-up and flush: the
    weight and every state array equal the CPU optimizer's."""
    weight, indices, offsets, weights = make_case(rng)
    cpu_weight = weight.copy()
    device_weight = cuda.to_device(weight)
    cpu_opt, gpu_opt = make(cpu_weight, **hyper), make(device_weight, **hyper)
    batches = [
        (indices, offsets, {"mode": "mean", "padding_idx": 2}),
        (indices[3:], np.array([0, 2, 5]), {"mode": "max"}),
        (indices, offsets, {"mode": "sqrtn", "per_sample_weights": weights}),
    ]
    for step, (batch_indices, batch_offsets, kwargs) in enumerate(batches):
        out, ctx = nbbag.embedding_bag_fwd(
            cpu_weight, batch_indices, batch_offsets, **kwargs
        )
        grad_output = rng.standard_normal(out.shape).astype(np.float32)
        _, device_ctx = nbbag.embedding_bag_fwd(
            device_weight, batch_indices, batch_offsets, **kwargs
        )
        if step == 1:
            cpu_opt.step_fused(grad_output, ctx)
            gpu_opt.step_fused(cuda.to_device(grad_output), device_ctx)
        else:
            cpu_opt.step(nbbag.embedding_bag_bwd(grad_output, ctx))
            gpu_opt.step(nbbag.embedding_bag_bwd(grad_output, device_ctx))
        assert_matches(device_weight, cpu_weight)
    cpu_opt.catch_up([0, 5, 5])
    gpu_opt.catch_up(cuda.to_device(np.array([0, 5, 5])))
    assert_matches(device_weight, cpu_weight)
    cpu_opt.flush()
    gpu_opt.flush()
    assert_matches(device_weight, cpu_weight)
    cpu_state, gpu_state = cpu_opt.state_dict(), gpu_opt.state_dict()
    for name in cpu_opt.state_names:
        assert isinstance(gpu_state[name], np.ndarray)
        np.testing.assert_allclose(gpu_state[name], cpu_state[name], rtol=1e-5, atol=1e-5)
    gpu_opt.load_state_dict(cpu_state)
    assert gpu_opt.state_dict()["step_count"] == cpu_state["step_count"]


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


def test_foreign_arrays_are_used_in_place(rng):
    weight, indices, offsets, _ = make_case(rng)
    table = weight.copy()
    stub = StubCudaArray(table)
    out = nbbag.embedding_bag(stub, StubCudaArray(indices), offsets, mode="sum")
    assert_matches(out, nbbag.embedding_bag(weight, indices, offsets, mode="sum"))
    # No host copy of the table: the optimizer's update lands in the stub's memory.
    out, ctx = nbbag.embedding_bag_fwd(stub, indices, offsets, mode="sum")
    optimizer = nbbag.optim.SGD(stub, lr=1.0)
    optimizer.step_fused(np.ones(out.shape, dtype=np.float32), ctx)
    expected = weight.copy()
    cpu_out, cpu_ctx = nbbag.embedding_bag_fwd(expected, indices, offsets, mode="sum")
    nbbag.optim.SGD(expected, lr=1.0).step_fused(np.ones_like(cpu_out), cpu_ctx)
    assert not np.array_equal(table, weight)
    assert_matches(table, expected)


BAD_INPUTS = [
    (
        {"indices": [0, 9], "offsets": [0, 1]},
        IndexError,
        r"indices\[1\] = 9 is outside \[0, 9\)",
    ),
    ({"indices": [0, -1], "offsets": [0, 1]}, IndexError, r"indices\[1\] = -1 is outside"),
    ({"offsets": [1, 2]}, ValueError, r"offsets\[0\] must be 0, got 1"),
    ({"offsets": [0, 2, 1]}, ValueError, r"offsets\[1\] = 2 > offsets\[2\] = 1"),
    ({"offsets": [0, 12]}, ValueError, r"offsets\[1\] = 12 is past the end"),
    (
        {"indices": np.array([0.0, 1.0]), "offsets": [0]},
        TypeError,
        "indices must be int32 or int64",
    ),
    ({"mode": "max", "per_sample_weights": np.ones(11, np.float32)}, ValueError, "max"),
]


@pytest.mark.parametrize("device_inputs", [False, True])
@pytest.mark.parametrize("change, error, message", BAD_INPUTS)
def test_bad_input_same_errors_as_cpu_nothing_written(
    change, error, message, device_inputs, rng
):
    weight, indices, offsets, _ = make_case(rng)
    kwargs = {"indices": indices, "offsets": offsets, "mode": "sum", "max_norm": 0.1}
    kwargs.update(change)
    with pytest.raises(error, match=message):
        nbbag.embedding_bag(weight.copy(), **kwargs)  # the CPU's message, for reference
    if device_inputs:
        kwargs = {
            k: cuda.to_device(np.asarray(v)) if k != "mode" and v is not None else v
            for k, v in kwargs.items()
        }
        kwargs["max_norm"] = 0.1
    device_weight = cuda.to_device(weight)
    with pytest.raises(error, match=message):
        nbbag.embedding_bag(device_weight, **kwargs)
    np.testing.assert_array_equal(host(device_weight), weight)  # max_norm never ran


def test_bad_grad_output_and_kernels_namespace(rng):
    weight, indices, offsets, _ = make_case(rng)
    _, ctx = nbbag.embedding_bag_fwd(cuda.to_device(weight), indices, offsets)
    with pytest.raises(ValueError, match="forward output's shape"):
        nbbag.embedding_bag_bwd(cuda.to_device(np.ones((3, 5), np.float32)), ctx)
    with pytest.raises(ValueError, match="weight's dtype"):
        nbbag.embedding_bag_bwd(np.ones((5, 5)), ctx)
    from nbbag.kernels import cuda as gpu_kernels

    assert gpu_kernels.bag_sum is cuda_api.forward.bag_sum


def test_backward_sort_over_several_chunks_and_passes(rng):
    """300 rows (two radix passes) and 260 tokens (five sort chunks of ~64)."""
    weight = rng.standard_normal((300, 2)).astype(np.float32)
    indices = rng.integers(0, 300, 260)
    indices[::7] = 17  # a hot row spread over every chunk
    offsets = np.arange(0, 260, 13)
    kwargs = {"mode": "mean", "padding_idx": 5, "scale_grad_by_freq": True}
    _, ctx = nbbag.embedding_bag_fwd(weight, indices, offsets, **kwargs)
    _, device_ctx = nbbag.embedding_bag_fwd(
        cuda.to_device(weight), indices, offsets, **kwargs
    )
    grad_output = rng.standard_normal((20, 2)).astype(np.float32)
    assert_same_grad(
        nbbag.embedding_bag_bwd(grad_output, device_ctx),
        nbbag.embedding_bag_bwd(grad_output, ctx),
    )
