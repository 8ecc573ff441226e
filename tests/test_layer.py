"""EmbeddingBag: the layer owns its table, keeps its context, gives sparse gradients;
on every backend (a device weight puts the layer on the GPU)."""

import numpy as np
import pytest

import nbbag
from nbbag import reference


def layer(backend, num_rows, dim, mode="mean", *, seed, dtype=np.float32, **options):
    """A layer initialised from ``seed``; on the GPU, with a device copy of that table
    as its weight."""
    bag = nbbag.EmbeddingBag(num_rows, dim, mode, seed=seed, dtype=dtype, **options)
    if backend.name == "cpu":
        return bag
    weight = backend.array(bag.weight)
    return nbbag.EmbeddingBag(num_rows, dim, mode, weight=weight, **options)


def test_forward_and_backward_match_the_functions(rng, backend):
    bag = layer(backend, 20, 6, "sqrtn", padding_idx=3, seed=1)
    table = backend.host(bag.weight)
    np.testing.assert_array_equal(table[3], 0)  # the padding row, zeroed at init
    indices = rng.integers(0, 20, size=(5, 4))
    weights = rng.uniform(0.5, 1.5, size=(5, 4)).astype(np.float32)
    out = backend.host(bag(indices, per_sample_weights=weights))
    expected = reference.embedding_bag(
        table, indices, mode="sqrtn", per_sample_weights=weights, padding_idx=3
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    grad_output = rng.standard_normal(out.shape).astype(np.float32)
    grad, weights_grad = bag.backward(
        backend.array(grad_output), per_sample_weights_grad=True
    )
    dense, rows, expected_weights_grad = reference.embedding_bag_backward(
        grad_output,
        table,
        indices,
        mode="sqrtn",
        per_sample_weights=weights,
        padding_idx=3,
    )
    np.testing.assert_array_equal(backend.host(grad.rows), rows)
    np.testing.assert_allclose(grad.to_dense(), dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        backend.host(weights_grad).ravel(), expected_weights_grad, rtol=1e-4, atol=1e-5
    )


def test_seeded_init_is_standard_normal_aligned_and_zero_at_padding():
    """The layer's own (host) table."""
    first = nbbag.EmbeddingBag(4000, 16, seed=7, padding_idx=-1)
    second = nbbag.EmbeddingBag(4000, 16, seed=7, padding_idx=-1)
    np.testing.assert_array_equal(first.weight, second.weight)
    assert first.weight.dtype == np.float32 and first.weight.flags.c_contiguous
    assert first.weight.ctypes.data % 64 == 0
    np.testing.assert_array_equal(first.weight[-1], 0)
    assert abs(first.weight[:-1].mean()) < 0.01 and abs(first.weight[:-1].std() - 1) < 0.01
    other = nbbag.EmbeddingBag(4000, 16, seed=8, dtype=np.float64)
    assert other.weight.dtype == np.float64
    assert not np.allclose(other.weight[:10], first.weight[:10])


def test_given_weight_is_used_in_place(rng, backend):
    weight = rng.standard_normal((10, 3))
    weight *= 2 / np.linalg.norm(weight, axis=1, keepdims=True)  # every norm over 0.5
    table = backend.array(weight)
    bag = nbbag.EmbeddingBag(10, 3, mode="sum", weight=table, max_norm=0.5)
    bag([1, 2], [0])
    assert bag.weight is table
    norms = np.linalg.norm(backend.host(table)[[1, 2]], axis=1)
    np.testing.assert_allclose(norms, 0.5, rtol=1e-6)


def test_backward_before_forward(backend):
    bag = layer(backend, 5, 2, seed=None)
    with pytest.raises(RuntimeError, match="forward"):
        bag.backward(backend.array(np.ones((1, 2), dtype=np.float32)))


def test_backward_after_the_weight_was_replaced_by_another_shape(rng, backend):
    bag = layer(backend, 10, 4, seed=0)
    out = backend.host(bag([1, 2, 3], [0, 2]))
    bag.weight = backend.array(np.zeros((12, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"weight.*\(10, 4\).*\(12, 4\)"):
        bag.backward(backend.array(np.ones_like(out)))


BAD_CONSTRUCTIONS = {  # the keyword arguments, given a backend; the error; its words
    "weight-shape": (
        lambda b: {"weight": b.array(np.zeros((5, 3)))},
        ValueError,
        "(10, 4)",
    ),
    "weight-dtype": (
        lambda b: {"weight": b.array(np.zeros((10, 4), np.int32))},
        TypeError,
        "dtype int32",
    ),
    "dtype": (lambda b: {"dtype": np.int32}, TypeError, "dtype"),
    "mode": (lambda b: {"mode": "median"}, ValueError, "mode"),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTIONS))
def test_bad_construction(case, backend):
    kwargs, error, words = BAD_CONSTRUCTIONS[case]
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        nbbag.EmbeddingBag(10, 4, **kwargs(backend))


def test_bad_sizes():
    with pytest.raises(ValueError, match="num_embeddings.*-1"):
        nbbag.EmbeddingBag(-1, 4)


def test_attached_sgd_with_momentum_trains_like_dense_torch(rng, backend):
    """attach(): each forward catches its rows up, step() is backward + update fused;
    the forward outputs and the final table equal dense torch.optim.SGD's (25 steps;
    8 on the GPU)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    bag = layer(backend, 60, 5, "mean", dtype=np.float64, seed=3)
    opt = nbbag.optim.SGD(bag.weight, lr=0.2, momentum=0.9, weight_decay=0.01)
    bag.attach(opt)
    start = backend.host(bag.weight).copy()
    torch_weight = torch.nn.Parameter(torch.from_numpy(start))
    torch_opt = torch.optim.SGD([torch_weight], lr=0.2, momentum=0.9, weight_decay=0.01)
    for _ in range(backend.pick(cpu=25, cuda=8)):
        indices = (rng.zipf(1.3, size=24) - 1) % 60
        offsets = np.arange(0, 24, 6)
        out = backend.host(bag(indices, offsets))
        torch_out = torch.nn.functional.embedding_bag(
            torch.from_numpy(indices), torch_weight, torch.from_numpy(offsets), mode="mean"
        )
        np.testing.assert_allclose(out, torch_out.detach().numpy(), rtol=1e-9, atol=1e-12)
        grad_output = rng.standard_normal(out.shape)
        bag.step(backend.array(grad_output))
        torch_opt.zero_grad()
        torch_out.backward(torch.from_numpy(grad_output))
        torch_opt.step()
    opt.flush()
    np.testing.assert_allclose(
        backend.host(bag.weight), torch_weight.detach().numpy(), rtol=1e-9, atol=1e-12
    )


def test_attach_and_step_misuse(rng, backend):
    bag = layer(backend, 10, 2, seed=0)
    other_table = backend.array(np.ones((10, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="optimizer"):
        bag.attach(nbbag.optim.SGD(other_table, lr=0.1))
    grad_output = backend.array(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="attach"):
        bag.step(grad_output)
    bag.attach(nbbag.optim.Adam(bag.weight))
    with pytest.raises(RuntimeError, match="forward"):
        bag.step(grad_output)


def test_bad_options_are_refused_at_construction():
    with pytest.raises(ValueError, match="padding_idx.*12"):
        nbbag.EmbeddingBag(10, 4, padding_idx=12)
    with pytest.raises(ValueError, match="max_norm"):
        nbbag.EmbeddingBag(10, 4, max_norm=-1.0)


def test_bad_input_with_an_optimizer_attached_changes_nothing(rng, backend):
    """The inputs are checked before the attached optimizer catches any row up."""
    bag = layer(backend, 20, 3, "sum", dtype=np.float64, seed=0)
    opt = nbbag.optim.SGD(bag.weight, lr=0.1, momentum=0.9, weight_decay=0.1)
    bag.attach(opt)
    bag([1, 2, 3], [0])
    bag.step(backend.array(rng.standard_normal((1, 3))))
    bag([4, 5], [0])
    bag.step(backend.array(rng.standard_normal((1, 3))))  # rows 1-3 are a step behind
    arrays = (bag.weight, opt.momentum_buffer, opt.last_step)
    before = [backend.host(array).copy() for array in arrays]
    with pytest.raises(ValueError, match="offsets"):
        bag([1, 2, 3], [0, 5])  # offsets past the end
    for old, new in zip(before, arrays, strict=True):
        np.testing.assert_array_equal(old, backend.host(new))


def test_the_constructor_peaks_at_the_table_itself():
    """No float64 temporary: NumPy's allocations peak at <= 1.1x the table (the
    previous constructor drew float64 and converted: 3x)."""
    import tracemalloc

    rows, dim = 200_000, 64
    tracemalloc.start()
    try:
        bag = nbbag.EmbeddingBag(rows, dim, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.1 * bag.weight.nbytes, (peak, bag.weight.nbytes)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_embeddings": True}, TypeError, "num_embeddings must be an int, got True"),
        ({"num_embeddings": 10.0}, TypeError, "num_embeddings must be an int, got 10.0"),
        ({"embedding_dim": -1}, ValueError, "embedding_dim must not be negative"),
        ({"seed": -1}, ValueError, "seed must not be negative, got -1"),
        ({"seed": "x"}, TypeError, "seed must be an int or None"),
        (
            {"dtype": "nonsense"},
            TypeError,
            "dtype must be float32, float64, float16 or bfloat16, got 'nonsense'",
        ),
        (
            {"dtype": np.int32},
            TypeError,
            "dtype must be float32, float64, float16 or bfloat16",
        ),
        ({"padding_idx": True}, TypeError, "padding_idx must be an int or None"),
    ],
)
def test_constructor_arguments_are_checked_by_name(kwargs, error, match):
    arguments = {"num_embeddings": 10, "embedding_dim": 4, **kwargs}
    with pytest.raises(error, match=match):
        nbbag.EmbeddingBag(**arguments)


def test_a_dtype_that_differs_from_the_given_weight_is_refused(rng):
    weight = rng.standard_normal((10, 4))
    with pytest.raises(ValueError, match="dtype=float32 but weight is float64"):
        nbbag.EmbeddingBag(10, 4, dtype=np.float32, weight=weight)
    assert nbbag.EmbeddingBag(10, 4, weight=weight).weight.dtype == np.float64


def test_torchs_attributes_and_repr():
    bag = nbbag.EmbeddingBag(10, 4, mode="sum", padding_idx=-10, max_norm=1.0)
    assert (bag.num_embeddings, bag.embedding_dim, bag.padding_idx) == (10, 4, 0)
    assert (bag.max_norm, bag.norm_type, bag.include_last_offset) == (1.0, 2.0, False)
    assert bag.scale_grad_by_freq is False and bag.mode == nbbag.Mode.SUM
    assert repr(bag) == "EmbeddingBag(10, 4, max_norm=1.0, mode='sum', padding_idx=0)"
    other = nbbag.EmbeddingBag(3, 2, dtype=np.float64, include_last_offset=True)
    assert repr(other) == (
        "EmbeddingBag(3, 2, mode='mean', include_last_offset=True, dtype=float64)"
    )
    assert nbbag.EmbeddingBag(3, 2).padding_idx is None


def test_from_pretrained_trains_a_copy_and_state_dict_round_trips(rng):
    embeddings = rng.standard_normal((12, 5)).astype(np.float32)
    bag = nbbag.EmbeddingBag.from_pretrained(embeddings, "sum", padding_idx=3)
    assert bag.weight is not embeddings and bag.weight.ctypes.data % 64 == 0
    np.testing.assert_array_equal(bag.weight, embeddings)
    assert bag.weight[3].any()  # a given table's padding row is left as it was
    shared = nbbag.EmbeddingBag.from_pretrained(embeddings, copy=False)
    assert shared.weight is embeddings

    state = bag.state_dict()
    assert set(state) == {"weight"} and state["weight"] is not bag.weight
    fresh = nbbag.EmbeddingBag(12, 5, "sum", seed=1)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.weight, embeddings)
    with pytest.raises(ValueError, match=r"state\['weight'\] has shape \(12, 4\)"):
        fresh.load_state_dict({"weight": np.zeros((12, 4), np.float32)})
    with pytest.raises(ValueError, match="'weight' entry"):
        fresh.load_state_dict({})
