"""EmbeddingBag: the layer owns its table, keeps its context, gives sparse gradients."""

import numpy as np
import pytest

import nbbag
from nbbag import reference


def test_forward_and_backward_match_the_functions(rng):
    bag = nbbag.EmbeddingBag(20, 6, mode="sqrtn", padding_idx=3, seed=1)
    indices = rng.integers(0, 20, size=(5, 4))
    weights = rng.uniform(0.5, 1.5, size=(5, 4)).astype(np.float32)
    out = bag(indices, per_sample_weights=weights)
    expected = reference.embedding_bag(
        bag.weight, indices, mode="sqrtn", per_sample_weights=weights, padding_idx=3
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    grad_output = rng.standard_normal(out.shape).astype(np.float32)
    grad, weights_grad = bag.backward(grad_output, per_sample_weights_grad=True)
    dense, rows, expected_weights_grad = reference.embedding_bag_backward(
        grad_output,
        bag.weight,
        indices,
        mode="sqrtn",
        per_sample_weights=weights,
        padding_idx=3,
    )
    np.testing.assert_array_equal(grad.rows, rows)
    np.testing.assert_allclose(grad.to_dense(), dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        weights_grad.ravel(), expected_weights_grad, rtol=1e-4, atol=1e-5
    )


def test_seeded_init_is_standard_normal_aligned_and_zero_at_padding():
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


def test_given_weight_is_used_in_place(rng):
    weight = rng.standard_normal((10, 3))
    weight *= 2 / np.linalg.norm(weight, axis=1, keepdims=True)  # every norm over 0.5
    bag = nbbag.EmbeddingBag(10, 3, mode="sum", weight=weight, max_norm=0.5)
    bag([1, 2], [0])
    assert bag.weight is weight
    np.testing.assert_allclose(np.linalg.norm(weight[[1, 2]], axis=1), 0.5, rtol=1e-6)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="forward"):
        nbbag.EmbeddingBag(5, 2).backward(np.ones((1, 2), dtype=np.float32))


def test_backward_after_the_weight_was_replaced_by_another_shape(rng):
    bag = nbbag.EmbeddingBag(10, 4, seed=0)
    out = bag([1, 2, 3], [0, 2])
    bag.weight = np.zeros((12, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"weight.*\(10, 4\).*\(12, 4\)"):
        bag.backward(np.ones_like(out))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"weight": np.zeros((5, 3))}, ValueError, "(10, 4)"),
        ({"dtype": np.int32}, TypeError, "dtype"),
        ({"mode": "median"}, ValueError, "mode"),
    ],
)
def test_bad_construction(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        nbbag.EmbeddingBag(10, 4, **kwargs)


def test_bad_sizes():
    with pytest.raises(ValueError, match="num_embeddings.*-1"):
        nbbag.EmbeddingBag(-1, 4)


def test_attached_sgd_with_momentum_trains_like_dense_torch(rng):
    """attach(): each forward catches its rows up, step() is backward + update fused;
    the forward outputs and the final table equal dense torch.optim.SGD's."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    bag = nbbag.EmbeddingBag(60, 5, mode="mean", dtype=np.float64, seed=3)
    opt = nbbag.optim.SGD(bag.weight, lr=0.2, momentum=0.9, weight_decay=0.01)
    bag.attach(opt)
    torch_weight = torch.nn.Parameter(torch.from_numpy(bag.weight.copy()))
    torch_opt = torch.optim.SGD([torch_weight], lr=0.2, momentum=0.9, weight_decay=0.01)
    for _ in range(25):
        indices = (rng.zipf(1.3, size=24) - 1) % 60
        offsets = np.arange(0, 24, 6)
        out = bag(indices, offsets)
        torch_out = torch.nn.functional.embedding_bag(
            torch.from_numpy(indices), torch_weight, torch.from_numpy(offsets), mode="mean"
        )
        np.testing.assert_allclose(out, torch_out.detach().numpy(), rtol=1e-9, atol=1e-12)
        grad_output = rng.standard_normal(out.shape)
        bag.step(grad_output)
        torch_opt.zero_grad()
        torch_out.backward(torch.from_numpy(grad_output))
        torch_opt.step()
    opt.flush()
    np.testing.assert_allclose(
        bag.weight, torch_weight.detach().numpy(), rtol=1e-9, atol=1e-12
    )


def test_attach_and_step_misuse(rng):
    bag = nbbag.EmbeddingBag(10, 2, seed=0)
    with pytest.raises(ValueError, match="optimizer"):
        bag.attach(nbbag.optim.SGD(np.ones((10, 2), dtype=np.float32), lr=0.1))
    with pytest.raises(RuntimeError, match="attach"):
        bag.step(np.ones((1, 2), dtype=np.float32))
    bag.attach(nbbag.optim.Adam(bag.weight))
    with pytest.raises(RuntimeError, match="forward"):
        bag.step(np.ones((1, 2), dtype=np.float32))


def test_bad_options_are_refused_at_construction():
    with pytest.raises(ValueError, match="padding_idx.*12"):
        nbbag.EmbeddingBag(10, 4, padding_idx=12)
    with pytest.raises(ValueError, match="max_norm"):
        nbbag.EmbeddingBag(10, 4, max_norm=-1.0)


def test_bad_input_with_an_optimizer_attached_changes_nothing(rng):
    """The inputs are checked before the attached optimizer catches any row up."""
    bag = nbbag.EmbeddingBag(20, 3, mode="sum", dtype=np.float64, seed=0)
    opt = nbbag.optim.SGD(bag.weight, lr=0.1, momentum=0.9, weight_decay=0.1)
    bag.attach(opt)
    bag([1, 2, 3], [0])
    bag.step(rng.standard_normal((1, 3)))
    bag([4, 5], [0])
    bag.step(rng.standard_normal((1, 3)))  # rows 1-3 are now a step behind
    before = bag.weight.copy(), opt.momentum_buffer.copy(), opt.last_step.copy()
    with pytest.raises(ValueError, match="offsets"):
        bag([1, 2, 3], [0, 5])  # offsets past the end
    for old, new in zip(
        before, (bag.weight, opt.momentum_buffer, opt.last_step), strict=True
    ):
        np.testing.assert_array_equal(old, new)
