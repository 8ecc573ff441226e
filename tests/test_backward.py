"""The backward: row-sparse gradients against the reference and finite differences on
every backend, and bit-identical results whatever the CPU's thread count."""

import numba
import numpy as np
import pytest
from hypothesis import strategies as st
from strategies import FIXED_CASES, MODES, Case, assert_close, cases, fixed_cases

import nbbag
from nbbag import reference
from nbbag.modes import Mode

BACKWARD_OPTIONS = ("padding_idx", "include_last_offset", "per_sample_weights")


def reference_backward(case: Case, weight, grad_output):
    """The reference gradient for ``case``'s forward, read at ``weight``."""
    options = {k: v for k, v in case.kwargs.items() if k in BACKWARD_OPTIONS}
    return reference.embedding_bag_backward(
        grad_output,
        weight,
        case.indices,
        case.offsets,
        mode=case.kwargs["mode"],
        scale_grad_by_freq=case.kwargs.get("scale_grad_by_freq", False),
        **options,
    )


def check_backward(case: Case, backend, tolerance=None) -> None:
    """Forward and backward on the backend (every input on it, grad_output too): the
    forward's output, and the rows, values (dense and through SciPy) and the weights'
    gradient equal the reference's, read at the table as the forward left it; to
    ``tolerance`` (a relative and absolute one) when given, else to the rounding of
    the terms summed."""
    weight = backend.array(case.weight.copy())
    out, ctx = case.call(nbbag.embedding_bag_fwd, weight, to=backend.array)
    out = backend.host(out)
    expected_out = case.call(reference.embedding_bag, case.weight.copy())
    assert_close(out, expected_out, case.weight.dtype, case.longest_bag)
    grad_output = np.random.default_rng(len(out)).standard_normal(out.shape)
    grad_output = grad_output.astype(out.dtype)
    weighted = "per_sample_weights" in case.kwargs
    result = nbbag.embedding_bag_bwd(
        backend.array(grad_output), ctx, per_sample_weights_grad=weighted
    )
    grad, weights_grad = result if weighted else (result, None)
    table = backend.host(weight)
    expected, expected_rows, expected_weights_grad = reference_backward(
        case, table, grad_output
    )

    assert grad.shape == table.shape
    assert grad.values.dtype == table.dtype
    np.testing.assert_array_equal(backend.host(grad.rows), expected_rows)
    assert backend.host(grad.values).shape == (expected_rows.size, table.shape[1])
    terms = max(case.longest_bag, case.indices.size)

    def close(actual, expected, terms):
        if tolerance is None:
            assert_close(actual, expected, table.dtype, terms)
        else:
            np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)

    close(grad.to_dense(), expected, terms)
    close(grad.to_scipy().toarray(), expected, terms)
    if weighted:
        weights_grad = backend.host(weights_grad)
        assert weights_grad.shape == case.indices.shape
        close(weights_grad.ravel(), expected_weights_grad, table.shape[1] * 4)


def test_matches_reference(backend):
    @st.composite
    def with_scale(draw):
        case = draw(cases(tiny=backend.tiny))
        case.kwargs["scale_grad_by_freq"] = draw(st.booleans())
        return case

    backend.examples(with_scale(), lambda case: check_backward(case, backend))


@pytest.mark.parametrize("name", FIXED_CASES)
def test_fixed_bags_with_every_option(name, rng, backend):
    """Every mode with and without padding, weighted (and the weights' gradient),
    scale_grad_by_freq, 2-D indices, include_last_offset: an empty bag, a bag of
    padding only, repeated rows; float32, to 1e-5."""
    case = fixed_cases(rng)[name]
    assert case.weight.dtype == np.float32
    check_backward(case, backend, tolerance=1e-5)


def loss(backend, weight, case, grad_output, weights=None):
    kwargs = dict(case.kwargs)
    if weights is not None:
        kwargs["per_sample_weights"] = weights
    table = backend.array(weight)
    out = nbbag.embedding_bag(table, case.indices, case.offsets, **kwargs)
    return float((grad_output * backend.host(out)).sum())


@pytest.mark.parametrize(
    ("mode", "weighted"),
    [(mode, False) for mode in MODES] + [(mode, True) for mode in MODES if mode != "max"],
)
def test_finite_differences(mode, weighted, rng, backend):
    """float64 central differences of sum(grad_output * out), for weight and weights
    (on the GPU a smaller table and batch: a forward per difference)."""
    num_rows, dim = backend.pick(cpu=(12, 5), cuda=(8, 3))
    num_tokens = backend.pick(cpu=20, cuda=12)
    weight = rng.standard_normal((num_rows, dim))
    indices = rng.integers(0, num_rows, size=num_tokens)
    offsets = np.array([0, 3, 3, 9, 14]) if num_tokens == 20 else np.array([0, 3, 3, 9])
    kwargs = {"mode": mode, "padding_idx": int(indices[5])}
    if weighted:
        kwargs["per_sample_weights"] = rng.uniform(0.2, 2.0, size=num_tokens)
    case = Case(weight, indices, offsets, kwargs)
    out, ctx = case.call(nbbag.embedding_bag_fwd, backend.array(weight))
    grad_output = rng.standard_normal(out.shape)
    result = nbbag.embedding_bag_bwd(
        backend.array(grad_output), ctx, per_sample_weights_grad=weighted
    )
    grad = (result[0] if weighted else result).to_dense()

    step = 1e-6
    numeric = np.zeros_like(weight)
    for r in range(num_rows):
        for d in range(dim):
            plus, minus = weight.copy(), weight.copy()
            plus[r, d] += step
            minus[r, d] -= step
            numeric[r, d] = (
                loss(backend, plus, case, grad_output)
                - loss(backend, minus, case, grad_output)
            ) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    if weighted:
        weights = kwargs["per_sample_weights"]
        numeric_weights = np.zeros_like(weights)
        for p in range(weights.size):
            plus, minus = weights.copy(), weights.copy()
            plus[p] += step
            minus[p] -= step
            numeric_weights[p] = (
                loss(backend, weight, case, grad_output, plus)
                - loss(backend, weight, case, grad_output, minus)
            ) / (2 * step)
        np.testing.assert_allclose(
            backend.host(result[1]), numeric_weights, rtol=1e-6, atol=1e-8
        )


@pytest.mark.parametrize("mode", MODES)
def test_bit_identical_with_one_and_two_threads(mode, rng):
    """A batch where one row appears 10^5 times: the values do not depend on threads
    (the CPU's; the GPU's launch configurations: tests/test_cuda.py)."""
    num_rows, dim = 1000, 16
    weight = rng.standard_normal((num_rows, dim)).astype(np.float32)
    indices = rng.integers(0, num_rows, size=150_000)
    indices[rng.random(indices.size) < 0.7] = 7  # row 7: ~10^5 times
    assert (indices == 7).sum() >= 100_000
    offsets = np.arange(0, indices.size, 50)
    out, ctx = nbbag.embedding_bag_fwd(weight, indices, offsets, mode=mode)
    grad_output = rng.standard_normal(out.shape).astype(np.float32)
    default_threads = numba.get_num_threads()
    values = {}
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            grad = nbbag.embedding_bag_bwd(grad_output, ctx)
            values[threads] = (grad.rows.copy(), grad.values.copy())
    finally:
        numba.set_num_threads(default_threads)
    np.testing.assert_array_equal(values[1][0], values[2][0])
    assert values[1][1].tobytes() == values[2][1].tobytes()


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_rows_are_every_row_in_a_bag_as_in_torch(rng, backend, mode):
    """As torch's sparse gradient: a row whose weights are 0 (or in a bag whose weights
    sum to 0) is in the gradient with zeros; padding and rows in no bag are not."""
    weight = backend.array(rng.standard_normal((10, 3)))
    # row 0: padding only; row 1: weight 0; rows 2, 3: in a bag whose weights sum to 0;
    # row 4: contributes; row 5 only after the last offset; rows 6-9 never appear.
    indices = np.array([0, 1, 4, 2, 3, 5])
    weights = np.array([1.0, 0.0, 1.0, 1.0, -1.0, 1.0])
    _, ctx = nbbag.embedding_bag_fwd(
        weight, indices, [0, 3, 5], mode=mode, per_sample_weights=weights, padding_idx=0,
        include_last_offset=True,
    )  # fmt: skip
    grad = nbbag.embedding_bag_bwd(backend.array(np.ones((2, 3))), ctx)
    np.testing.assert_array_equal(backend.host(grad.rows), [1, 2, 3, 4])
    values = backend.host(grad.values)
    np.testing.assert_array_equal(values[0], 0.0)  # row 1: weight 0
    if mode == "mean":  # rows 2, 3: their bag's weights sum to 0, the output is 0
        np.testing.assert_array_equal(values[1:3], 0.0)
    assert np.all(values[3] != 0)


def test_max_lists_only_the_winners(backend):
    weight = backend.array(np.array([[1.0, 5.0], [2.0, 0.0], [0.0, 0.0], [3.0, 1.0]]))
    _, ctx = nbbag.embedding_bag_fwd(weight, [0, 1, 2, 3, 3], [0], mode="max")
    grad = nbbag.embedding_bag_bwd(backend.array(np.array([[10.0, 20.0]])), ctx)
    np.testing.assert_array_equal(backend.host(grad.rows), [0, 3])  # row 3: 1st copy
    np.testing.assert_array_equal(backend.host(grad.values), [[0.0, 20.0], [10.0, 0.0]])


def test_empty_batch_and_all_padding(rng, backend):
    weight = backend.array(rng.standard_normal((5, 2)))
    _, ctx = nbbag.embedding_bag_fwd(weight, [3, 3], [0, 0], mode="sum", padding_idx=3)
    grad = nbbag.embedding_bag_bwd(backend.array(np.ones((2, 2))), ctx)
    assert grad.rows.shape == (0,) and grad.values.shape == (0, 2)
    assert backend.host(grad.values).shape == (0, 2)
    np.testing.assert_array_equal(grad.to_dense(), np.zeros((5, 2)))


def test_ctx_can_be_reused_and_trailing_tokens_get_nothing(rng, backend):
    weight = backend.array(rng.standard_normal((6, 2)))
    _, ctx = nbbag.embedding_bag_fwd(
        weight, [1, 2, 5], [0, 2], include_last_offset=True, mode="sum"
    )
    first = nbbag.embedding_bag_bwd(backend.array(np.ones((1, 2))), ctx)
    second = nbbag.embedding_bag_bwd(backend.array(np.ones((1, 2))), ctx)
    np.testing.assert_array_equal(backend.host(first.rows), [1, 2])  # 5: past the end
    np.testing.assert_array_equal(backend.host(first.values), backend.host(second.values))


# Bad input: the argument named, nothing computed.


@pytest.fixture
def forward(rng, backend):
    weight = backend.array(rng.standard_normal((10, 4)))
    out, ctx = nbbag.embedding_bag_fwd(weight, [1, 2, 3], [0, 1], mode="mean")
    return weight, out, ctx


def test_grad_output_of_wrong_shape(forward, backend):
    _, out, ctx = forward
    with pytest.raises(ValueError, match=r"grad_output.*\(2, 4\).*\(2, 3\)"):
        nbbag.embedding_bag_bwd(backend.array(np.ones((2, 3))), ctx)


def test_grad_output_of_another_floating_dtype_is_cast(forward, backend):
    """One rule for the floating inputs (grad_output, per_sample_weights): cast to
    the weight's dtype; any other dtype is a TypeError."""
    _, out, ctx = forward
    half = np.full(out.shape, 0.5, dtype=np.float32)
    expected = nbbag.embedding_bag_bwd(backend.array(half.astype(np.float64)), ctx)
    for grad_output in (backend.array(half), half):  # on the backend, on the host
        grad = nbbag.embedding_bag_bwd(grad_output, ctx)
        assert grad.values.dtype == np.float64
        np.testing.assert_array_equal(
            backend.host(grad.values), backend.host(expected.values)
        )
    integers = np.ones(out.shape, dtype=np.int64)
    with pytest.raises(TypeError, match="grad_output must be a floating-point.*int64"):
        nbbag.embedding_bag_bwd(backend.array(integers), ctx)


def test_backward_flags_must_be_bools(forward):
    _, out, ctx = forward
    for name in ("per_sample_weights_grad", "deterministic"):
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
            nbbag.embedding_bag_bwd(np.ones(out.shape), ctx, **{name: "no"})


def test_grad_output_not_an_array(forward, backend):
    _, out, ctx = forward
    with pytest.raises(TypeError, match="grad_output.*list"):
        nbbag.embedding_bag_bwd(backend.host(out).tolist(), ctx)


def test_ctx_of_wrong_type(forward):
    _, out, _ = forward
    with pytest.raises(TypeError, match="ctx.*dict"):
        nbbag.embedding_bag_bwd(out, {})


def test_ctx_after_the_weight_shape_changed(rng):
    """NumPy only: a device array's shape cannot be changed in place (the layer's
    replaced weight: tests/test_layer.py)."""
    weight = rng.standard_normal((10, 4))
    out, ctx = nbbag.embedding_bag_fwd(weight, [1, 2, 3], [0, 1], mode="mean")
    weight.shape = (20, 2)  # the same buffer, another table
    with pytest.raises(ValueError, match=r"weight.*\(10, 4\).*\(20, 2\)"):
        nbbag.embedding_bag_bwd(out, ctx)


def test_per_sample_weights_grad_without_weights(forward):
    _, out, ctx = forward
    with pytest.raises(ValueError, match="per_sample_weights_grad"):
        nbbag.embedding_bag_bwd(out, ctx, per_sample_weights_grad=True)


@pytest.mark.parametrize("mode", ["max", "weighted"])
def test_the_highest_row_without_a_contribution(mode, rng, backend):
    """The last of the sorted rows gets nothing: left out for max (it won no
    dimension), kept with zeros for a weight of 0 (as torch); the values line up."""
    weight = np.abs(rng.standard_normal((10, 3)))
    weight[9] = -1.0  # loses every dimension of max
    options = {"mode": "max"}
    if mode == "weighted":
        options = {"mode": "sum", "per_sample_weights": np.array([1.0, 2.0, 0.0])}
    _, ctx = nbbag.embedding_bag_fwd(backend.array(weight), [2, 5, 9], [0], **options)
    grad = nbbag.embedding_bag_bwd(backend.array(np.ones((1, 3))), ctx)
    expected, rows, _ = reference.embedding_bag_backward(
        np.ones((1, 3)), weight, [2, 5, 9], [0], **options
    )
    assert (9 in backend.host(grad.rows)) == (mode == "weighted")
    np.testing.assert_array_equal(backend.host(grad.rows), rows)
    np.testing.assert_allclose(grad.to_dense(), expected)


@pytest.mark.parametrize("mode", [Mode.SUM, Mode.MEAN, Mode.MAX])
def test_group_tokens_of_a_stack_read_bag_major_rows(backend, mode, rng):
    """``group_tokens(..., features=F)`` on a collection stack's F * B' feature-major
    bags: each token's ``bag_of`` is its bag's row of the bag-major gradient (feature
    f's bag b' is row b' * F + f), max's winners are read there, and everything else is
    what ``features=1`` gives on the same bags."""
    num_features, bags_per_feature, num_rows = 3, 4, 12
    num_bags = num_features * bags_per_feature
    lengths = rng.integers(0, 4, size=num_bags)  # empty bags too
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = rng.integers(0, num_rows, size=int(offsets[-1]) + 2)  # 2 in no bag
    weight = np.empty((num_rows, 0), np.float32)  # only its row count and dtype are read
    bags = np.arange(num_bags)
    row_of = (bags % bags_per_feature) * num_features + bags // bags_per_feature
    by_bag, bag_major = None, None
    if mode == Mode.MAX:  # a random winner of each dimension of each bag, -1 if empty
        dim = 5
        by_bag = np.full((num_bags, dim), -1, np.int64)
        for b in range(num_bags):
            if lengths[b]:
                by_bag[b] = rng.integers(offsets[b], offsets[b + 1], size=dim)
        bag_major = np.empty_like(by_bag)
        bag_major[row_of] = by_bag
    if backend.name == "cpu":
        from nbbag.kernels import group_tokens

        mode_arg = int(mode)
    else:
        from nbbag.kernels.cuda import group_tokens

        mode_arg = mode

    def grouped(argmax, features):
        groups = group_tokens(
            backend.array(weight), backend.array(indices), backend.array(offsets), None,
            backend.array(argmax), -1, mode_arg, 1, np.int64, features,
        )  # fmt: skip
        return {
            name: backend.host(getattr(groups, name))
            for name in ("bag_of", "coefficients", "rows", "row_ptr", "positions")
        }

    plain, stacked = grouped(by_bag, 1), grouped(bag_major, num_features)
    in_bag = plain["bag_of"] >= 0
    expected_bag_of = plain["bag_of"].copy()
    expected_bag_of[in_bag] = row_of[plain["bag_of"][in_bag]]
    np.testing.assert_array_equal(stacked["bag_of"], expected_bag_of)
    for name in ("coefficients", "rows", "row_ptr", "positions"):
        np.testing.assert_array_equal(stacked[name], plain[name], err_msg=name)


def _stack_keys(rng, ranges, tokens, num_rows):
    """Feature-major sort keys: ``tokens[f]`` keys of feature f in ``ranges[f]`` (a
    hot key a third of the time), about one in eight ``num_rows`` (in no bag)."""
    keys = []
    for (low, high), count in zip(ranges, tokens, strict=True):
        part = rng.integers(low, high, size=count)
        part[rng.random(count) < 0.3] = low + (high - low) // 2
        part[rng.random(count) < 0.125] = num_rows
        keys.append(part)
    return keys


# The serial twin in int32 only: collections sort in int64 only past 2**31 rows or
# tokens, and each specialisation is a compile of several seconds.
@pytest.mark.parametrize(
    ("serial", "sort_type"),
    [(False, np.int32), (False, np.int64), (True, np.int32)],
    ids=["parallel-int32", "parallel-int64", "serial-int32"],
)
@pytest.mark.parametrize(
    "layout",
    [
        "own tables",  # each feature's keys below the next's: sorted feature by feature
        "shared table",  # two features' keys overlap: one sort of the whole batch
        "one feature holds most",  # of 8 threads, one would sort most: the same
    ],
)
def test_sort_by_row_is_a_stable_sort_of_a_stacks_keys(layout, sort_type, serial, rng):
    """``sort_by_row`` over a collection stack's feature segments gives a stable sort
    of the tokens in a bag by key, whichever way it sorts: an empty feature, one with
    no token in a bag, keys needing one, two and three radix passes."""
    from nbbag.cpu import variants

    num_rows = 20_000_000
    ranges = [(0, 3), (3, 9000), (9000, 9001), (9001, 9100), (9100, 9200), (9200, num_rows)]
    tokens = [500, 3000, 0, 200, 700, 2500]
    num_chunks = 2
    if layout == "shared table":
        ranges[4] = (0, 9000)
    elif layout == "one feature holds most":
        tokens[5], num_chunks = 40_000, 8
    parts = _stack_keys(rng, ranges, tokens, num_rows)
    parts[3][:] = num_rows  # a feature with no token in a bag
    keys = np.concatenate(parts).astype(sort_type)
    starts = np.concatenate([[0], np.cumsum(tokens)]).astype(np.int64)
    rows, row_ptr, positions = variants.SORT_BY_ROW[serial](
        keys.copy(), np.arange(keys.size, dtype=sort_type), starts, num_rows, num_chunks
    )
    kept = np.flatnonzero(keys != num_rows)
    expected = kept[np.argsort(keys[kept], kind="stable")]
    np.testing.assert_array_equal(positions, expected)
    unique, counts = np.unique(keys[kept], return_counts=True)
    np.testing.assert_array_equal(rows, unique)
    np.testing.assert_array_equal(np.diff(row_ptr), counts)
