"""A context answers for the forward it came from, and a failed write changes nothing:
a caller that refills its index buffers, edits the output in place, runs out of memory
mid-call or makes the table read-only gets the right gradient or a clean error."""

import numpy as np
import pytest
from backends import backend_param

import nbbag

V, D = 50, 6


def batch(rng, num_bags=7, length=5):
    indices = rng.integers(0, V, num_bags * length).astype(np.int64)
    offsets = np.arange(0, num_bags * length, length, dtype=np.int64)
    weights = rng.uniform(0.5, 2.0, indices.size).astype(np.float32)
    return indices, offsets, weights


def dense_gradient(grad, backend) -> np.ndarray:
    dense = np.zeros(grad.shape, backend.host(grad.values).dtype)
    dense[backend.host(grad.rows)] = backend.host(grad.values)
    return dense


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_refilled_index_and_weight_buffers_do_not_change_the_backward(rng, backend, mode):
    """A loader that refills its buffers with the next batch (in range, or not) before
    the backward: the gradient is still the first batch's."""
    weight = backend.array(rng.standard_normal((V, D)).astype(np.float32))
    indices, offsets, weights = batch(rng)
    ids, w = backend.array(indices.copy()), backend.array(weights.copy())
    grad_output = rng.standard_normal((offsets.size, D)).astype(np.float32)
    _, ctx = nbbag.embedding_bag_fwd(weight, ids, offsets, mode=mode, per_sample_weights=w)
    expected, expected_w = nbbag.embedding_bag_bwd(
        grad_output, ctx, per_sample_weights_grad=True
    )
    expected = dense_gradient(expected, backend)
    for refill in (rng.integers(0, V, indices.size), np.full(indices.size, -727379968)):
        ids[:] = backend.array(refill.astype(np.int64))
        w[:] = backend.array(rng.uniform(-3, 3, indices.size).astype(np.float32))
        grad, grad_w = nbbag.embedding_bag_bwd(
            grad_output, ctx, per_sample_weights_grad=True
        )
        np.testing.assert_array_equal(dense_gradient(grad, backend), expected)
        np.testing.assert_array_equal(backend.host(grad_w), backend.host(expected_w))


def test_a_step_fused_after_the_buffer_was_refilled_updates_the_forwards_rows(rng, backend):
    weight = rng.standard_normal((V, D)).astype(np.float32)
    indices, offsets, _ = batch(rng)
    grad_output = rng.standard_normal((offsets.size, D)).astype(np.float32)
    expected = backend.array(weight.copy())
    _, ctx = nbbag.embedding_bag_fwd(expected, indices.copy(), offsets, mode="sum")
    nbbag.optim.SGD(expected, lr=0.1).step_fused(grad_output, ctx)

    table, buffer = backend.array(weight.copy()), backend.array(indices.copy())
    _, ctx = nbbag.embedding_bag_fwd(table, buffer, offsets, mode="sum")
    buffer[:] = backend.array(np.full(indices.size, 10**9, dtype=np.int64))
    nbbag.optim.SGD(table, lr=0.1).step_fused(grad_output, ctx)
    np.testing.assert_array_equal(backend.host(table), backend.host(expected))


@pytest.mark.parametrize("indices_2d", [False, True])
def test_a_refilled_cpu_buffer_of_either_shape(rng, indices_2d):
    """1-D ids with offsets, and 2-D ids (whose flat view is the caller's memory)."""
    weight = rng.standard_normal((V, D))
    ids = rng.integers(0, V, (4, 5))
    offsets = None
    if not indices_2d:
        ids, offsets = ids.reshape(-1), np.arange(0, 20, 5)
    grad_output = rng.standard_normal((4, D))
    _, ctx = nbbag.embedding_bag_fwd(weight, ids, offsets, mode="sum")
    expected = nbbag.embedding_bag_bwd(grad_output, ctx).to_dense()
    ids[...] = (ids + 1) % V
    np.testing.assert_array_equal(
        nbbag.embedding_bag_bwd(grad_output, ctx).to_dense(), expected
    )


@pytest.mark.parametrize("mode", ["mean", "sqrtn"])
def test_an_in_place_edit_of_the_output_does_not_change_the_weights_gradient(
    rng, backend, mode
):
    weight = backend.array(rng.standard_normal((V, D)).astype(np.float32))
    indices, offsets, weights = batch(rng)
    grad_output = rng.standard_normal((offsets.size, D)).astype(np.float32)
    out, ctx = nbbag.embedding_bag_fwd(
        weight, indices, offsets, mode=mode, per_sample_weights=weights
    )
    _, expected = nbbag.embedding_bag_bwd(grad_output, ctx, per_sample_weights_grad=True)
    expected = backend.host(expected).copy()
    relu = np.maximum(backend.host(out), 0)  # an in-place activation on the output
    out[:] = backend.array(relu)
    _, grad_w = nbbag.embedding_bag_bwd(grad_output, ctx, per_sample_weights_grad=True)
    np.testing.assert_array_equal(backend.host(grad_w), expected)


def test_max_norm_allocates_before_it_renorms(rng, monkeypatch):
    """A MemoryError for the output (here simulated) leaves the table as it was."""
    weight = rng.standard_normal((V, D)) * 10
    before = weight.copy()
    indices, offsets, _ = batch(rng)

    empty = np.empty

    def no_memory_for_tables(shape, *args, **kwargs):
        if np.ndim(shape) == 1 and len(shape) == 2:  # the (B, D) output
            raise MemoryError("simulated")
        return empty(shape, *args, **kwargs)

    monkeypatch.setattr(np, "empty", no_memory_for_tables)
    with pytest.raises(MemoryError):
        nbbag.embedding_bag(weight, indices, offsets, max_norm=1.0)
    monkeypatch.undo()
    np.testing.assert_array_equal(weight, before)


@pytest.mark.parametrize(
    "make",
    [
        lambda w: nbbag.optim.SGD(w, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda w: nbbag.optim.Adam(w, lr=0.01),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_a_step_on_a_table_made_read_only_fails_cleanly_and_counts_no_step(rng, make):
    weight = rng.standard_normal((V, D))
    optimizer = make(weight)
    indices, offsets, _ = batch(rng)
    grad_output = rng.standard_normal((offsets.size, D))
    _, ctx = nbbag.embedding_bag_fwd(weight, indices, offsets, mode="sum")
    grad = nbbag.embedding_bag_bwd(grad_output, ctx)
    optimizer.step(grad)
    state = {k: np.copy(v) for k, v in optimizer.state_dict().items()}
    before = weight.copy()
    weight.flags.writeable = False
    calls = [lambda: optimizer.step(grad), lambda: optimizer.step_fused(grad_output, ctx)]
    if isinstance(optimizer, nbbag.optim.SGD):  # the one whose catch-up writes
        calls += [lambda: optimizer.catch_up(indices), optimizer.flush]
    for call in calls:
        with pytest.raises(ValueError, match="weight must be writeable"):
            call()
    weight.flags.writeable = True
    np.testing.assert_array_equal(weight, before)
    for key, value in optimizer.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_out_is_written_and_returned(rng, backend):
    weight = backend.array(rng.standard_normal((V, D)).astype(np.float32))
    indices, offsets, weights = batch(rng)
    expected = backend.host(
        nbbag.embedding_bag(
            weight, indices, offsets, mode="sqrtn", per_sample_weights=weights
        )
    )
    out = backend.array(rng.standard_normal((offsets.size, D)).astype(np.float32))
    result = nbbag.embedding_bag(
        weight, indices, offsets, mode="sqrtn", per_sample_weights=weights, out=out
    )
    assert result is out
    np.testing.assert_array_equal(backend.host(out), expected)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda w, b: np.zeros((b, D), np.float64),
            TypeError,
            "out must have the weight's dtype",
        ),
        (lambda w, b: np.zeros((b + 1, D), np.float32), ValueError, "out must have shape"),
        (lambda w, b: np.zeros((D, b), np.float32).T, ValueError, "C-contiguous"),
        (lambda w, b: w[:b], ValueError, "must not overlap weight"),
        ([[0.0]], TypeError, "out must be a NumPy array"),
    ],
    ids=["dtype", "shape", "layout", "overlap", "list"],
)
def test_bad_out_is_refused_before_anything_is_written(rng, make, error, match):
    weight = rng.standard_normal((V, D)).astype(np.float32) * 10
    before = weight.copy()
    indices, offsets, _ = batch(rng)
    out = make(weight, offsets.size) if callable(make) else make
    with pytest.raises(error, match=match):
        nbbag.embedding_bag(weight, indices, offsets, max_norm=1.0, out=out)
    np.testing.assert_array_equal(weight, before)


def test_mode_prints_its_name():
    assert str(nbbag.Mode.MEAN) == "mean"
    assert f"{nbbag.Mode.SQRTN}" == "sqrtn"
    assert nbbag.Mode.parse(str(nbbag.Mode.MAX)) is nbbag.Mode.MAX


def test_optimizers_print_their_hyperparameters(rng):
    opt = nbbag.optim.SGD(rng.standard_normal((V, D)), lr=0.1, momentum=0.9)
    assert repr(opt) == (
        f"SGD(lr=0.1, momentum=0.9, weight_decay=0.0, step_count=0, weight={V}x{D} float64)"
    )


def test_torchs_argument_order_gets_a_hint(rng):
    weight = rng.standard_normal((V, D)).astype(np.float32)
    indices, offsets, _ = batch(rng)
    with pytest.raises(TypeError, match="the table comes first in nbbag"):
        nbbag.embedding_bag(indices, weight, offsets)
    with pytest.raises(TypeError, match="the table comes first in nbbag"):
        nbbag.embedding_bag_fwd(indices, weight, offsets)
    with pytest.raises(
        TypeError,
        match=r"weight must be float32, float64, float16 or bfloat16, got dtype int64$",
    ):
        nbbag.embedding_bag(indices, indices, offsets)  # no float second: no hint


@pytest.mark.parametrize("backend", [backend_param("cuda")], indirect=True)
def test_a_device_gradient_edited_after_it_was_made_is_refused(rng, backend):
    """A device array has no read-only flag: the GPU's step checks the rows first."""
    weight = backend.array(rng.standard_normal((V, D)).astype(np.float32))
    before = backend.host(weight).copy()
    values = rng.standard_normal((3, D)).astype(np.float32)
    optimizer = nbbag.optim.SGD(weight, lr=0.1)
    for edit, match in (([1, 10**9, 7], "outside"), ([1, 7, 7], "sorted and unique")):
        grad = nbbag.RowSparseGrad._trusted(
            backend.array(np.array([1, 4, 7])), backend.array(values), (V, D)
        )
        grad.rows[:] = backend.array(np.array(edit))
        with pytest.raises(ValueError, match=match):
            optimizer.step(grad)
    np.testing.assert_array_equal(backend.host(weight), before)
    assert optimizer.step_count == 0
