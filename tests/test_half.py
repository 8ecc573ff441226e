"""float16 and bfloat16 tables: every path against nbbag's float32 path on the table's
values (``table.astype(np.float32)``), bit for bit.

The forward and the backward of a half table are float32 arithmetic on its values, so
they equal the float32 kernels' on the widened table exactly; an optimizer's step is
the float32 step on the widened table and state, rounded once to the table's dtype
(NumPy's ``astype``: to nearest, ties to even).  On both backends: the GPU's kernels
run the CPU's conversions and rounding rules, so a GPU step writes the CPU's bits, even
with stochastic rounding.  Few cases, chosen to cover each kernel path once per format
(every half specialisation compiles its own kernels).
"""

from __future__ import annotations

import ml_dtypes
import numba
import numpy as np
import pytest
from backends import on_backends
from numba import njit

import nbbag
from nbbag.base import halves
from nbbag.base.halves import float16_nearest

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALF = [F16, BF16]
NUM_ROWS = 40
PADDING = 3


def _name(value) -> str:
    return str(np.dtype(value)) if isinstance(value, np.dtype | type) else str(value)


def ids(values) -> str:
    """A test id: a value's name, or a tuple's names joined."""
    if not isinstance(values, tuple):
        return _name(values)
    return "-".join(_name(value) for value in values)


def batch(rng, num_tokens: int = 60):
    """Ids (the padding row among them) and offsets with an empty bag."""
    indices = rng.integers(0, NUM_ROWS, num_tokens)
    indices[::9] = PADDING
    offsets = np.array([0, 5, 5, 20, 33, 50])
    return indices, offsets


def table(rng, dim: int, dtype) -> np.ndarray:
    return rng.standard_normal((NUM_ROWS, dim)).astype(np.float32).astype(dtype)


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual.view(np.uint16), expected.view(np.uint16))


# -- the forward -------------------------------------------------------------------------
# float16 and bfloat16 at D = 16 (the sums in registers: rows widened in vectors) and
# bfloat16 at D = 5 (the scalar loops); every mode, weighted where the mode takes
# weights.  (The optimizers' tests below run the unweighted means at D = 16 again: each
# case here is a kernel compiled, so they share.)
FORWARD = [
    (F16, 16, "mean", False),
    (F16, 16, "sum", True),
    (F16, 16, "max", False),
    (BF16, 16, "mean", False),
    (BF16, 5, "sum", False),
    (BF16, 5, "sqrtn", True),
]  # bfloat16's max at D = 5: in the backward's test


def _forwards_agree(backend, weight, indices, offsets, **kwargs) -> None:
    """The forward of host table ``weight`` put on ``backend`` equals the backend's
    float32 forward on its values."""
    kwargs = {k: backend.array(v) if k == "per_sample_weights" else v
              for k, v in kwargs.items()}  # fmt: skip
    out = backend.host(
        nbbag.embedding_bag(backend.array(weight), indices, offsets, **kwargs)
    )
    wide = backend.array(weight.astype(np.float32))
    expected = backend.host(nbbag.embedding_bag(wide, indices, offsets, **kwargs))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


@on_backends("dtype, dim, mode, weighted", FORWARD, ids=ids)
def test_forward_is_the_float32_forward_on_the_values(backend, dtype, dim, mode, weighted):
    """Padding and an empty bag; the same bags as 2-D ids, into ``out=``, and with
    ``include_last_offset``."""
    rng = np.random.default_rng(dim)
    weight = table(rng, dim, dtype)
    indices, offsets = batch(rng)
    kwargs = {"mode": mode, "padding_idx": PADDING}
    if weighted:
        kwargs["per_sample_weights"] = rng.random(indices.shape[0]).astype(np.float32)
    _forwards_agree(backend, weight, indices, offsets, **kwargs)
    csr = np.append(offsets, indices.shape[0])
    _forwards_agree(backend, weight, indices, csr, include_last_offset=True, **kwargs)
    square = dict(kwargs)
    if weighted:
        square["per_sample_weights"] = kwargs["per_sample_weights"].reshape(6, 10)
    _forwards_agree(backend, weight, indices.reshape(6, 10), None, **square)
    on_backend = backend.array(weight)
    square["per_sample_weights"] = backend.array(square.get("per_sample_weights"))
    out = backend.array(np.empty((6, dim), np.float32))
    returned = nbbag.embedding_bag(
        on_backend, indices.reshape(6, 10), None, out=out, **square
    )
    assert returned is out
    if weighted:
        kwargs["per_sample_weights"] = backend.array(kwargs["per_sample_weights"])
    np.testing.assert_array_equal(
        backend.host(out),
        backend.host(
            nbbag.embedding_bag(on_backend, indices, np.arange(0, 60, 10), **kwargs)
        ),
    )


@on_backends("dtype, dim, mode", [(BF16, 5, "sum")], ids=ids)
def test_max_norm_renorms_in_float32_and_rounds_to_nearest(backend, dtype, dim, mode, rng):
    host = table(rng, dim, dtype)
    host[::2] *= 4  # some rows past max_norm, some not
    before = host.copy()
    weight, wide = backend.array(host), backend.array(host.astype(np.float32))
    indices, offsets = batch(rng)
    out = nbbag.embedding_bag(weight, indices, offsets, mode=mode, max_norm=2.0)
    nbbag.embedding_bag(wide, indices, offsets, mode=mode, max_norm=2.0)
    renormed = backend.host(weight)
    assert not np.array_equal(renormed.view(np.uint16), before.view(np.uint16))
    # renormed rows, rounded to nearest
    assert_same_bits(renormed, backend.host(wide).astype(dtype))
    expected = nbbag.embedding_bag(
        backend.array(renormed.astype(np.float32)), indices, offsets, mode=mode
    )
    np.testing.assert_array_equal(backend.host(out), backend.host(expected))


# -- the backward ------------------------------------------------------------------------
@on_backends(
    "dtype, dim, mode, weighted", [(F16, 16, "sum", True), (BF16, 5, "max", False)], ids=ids
)
def test_backward_is_the_float32_backward_on_the_values(
    backend, dtype, dim, mode, weighted, rng
):  # fmt: skip
    weight = table(rng, dim, dtype)
    indices, offsets = batch(rng)
    kwargs = {"mode": mode, "padding_idx": PADDING}
    if weighted:
        kwargs["per_sample_weights"] = backend.array(
            rng.random(indices.shape[0]).astype(np.float32)
        )
    grad_output = rng.standard_normal((offsets.shape[0], dim)).astype(np.float32)
    results, outputs = [], []
    for table_ in (weight, weight.astype(np.float32)):
        out, ctx = nbbag.embedding_bag_fwd(
            backend.array(table_), indices, offsets, **kwargs
        )
        outputs.append(backend.host(out))
        result = nbbag.embedding_bag_bwd(
            backend.array(grad_output), ctx, per_sample_weights_grad=weighted
        )
        grad, *weights_grad = result if isinstance(result, tuple) else (result,)
        rows, values = backend.host(grad.rows), backend.host(grad.values)
        results.append((rows, values, [backend.host(w) for w in weights_grad]))
    np.testing.assert_array_equal(*outputs)
    (rows, values, half_weights), (full_rows, full_values, full_weights) = results
    assert values.dtype == np.float32
    np.testing.assert_array_equal(rows, full_rows)
    np.testing.assert_array_equal(values, full_values)
    for got, expected in zip(half_weights, full_weights, strict=True):
        np.testing.assert_array_equal(got, expected)


# -- optimizers --------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd": (nbbag.optim.SGD, {"lr": 0.1}),
    "sgd-momentum": (nbbag.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    "rowwise-adagrad": (nbbag.optim.RowWiseAdagrad, {"lr": 0.1}),
    "adam": (nbbag.optim.Adam, {"lr": 0.01}),
}
# Each rule's kind of state once (none; one per-element array, and the catch-up; two;
# one per row), each format and both ways of stepping (the rules' arithmetic is shared
# with the float tables' and tested there; SGD with momentum compiles for ~20 s a
# table type, so once).  The layer and the collection below reuse these
# specialisations.
STEPS = [
    ("sgd", BF16, True),
    ("sgd-momentum", BF16, False),
    ("rowwise-adagrad", BF16, False),
    ("adam", F16, False),
]


def _step(optimizer, weight, grad_output, indices, offsets, fused: bool) -> None:
    out, ctx = nbbag.embedding_bag_fwd(weight, indices, offsets, mode="mean")
    if fused:
        optimizer.step_fused(grad_output, ctx)
    else:
        optimizer.step(nbbag.embedding_bag_bwd(grad_output, ctx))


@on_backends("name, dtype, fused", STEPS, ids=ids)
def test_a_step_is_the_float32_step_rounded_to_nearest(backend, name, dtype, fused, rng):
    """Three steps (rows left out of some, caught up by SGD before the forward reads
    them), then a flush: after each write the table is the float32 optimizer's table
    rounded, its state the float32 state."""
    kind, hyper = OPTIMIZERS[name]
    weight = backend.array(table(rng, 16, dtype))
    wide = backend.array(backend.host(weight).astype(np.float32))
    half_opt, full_opt = kind(weight, **hyper), kind(wide, **hyper)

    def same_so_far() -> None:
        stored = backend.host(weight)
        assert_same_bits(stored, backend.host(wide).astype(dtype))
        # the float32 run goes on from the stored values
        if backend.tiny:
            wide.copy_to_device(stored.astype(np.float32))
        else:
            wide[...] = stored
        for key in half_opt.state_names:
            np.testing.assert_array_equal(
                backend.host(getattr(half_opt, key)), backend.host(getattr(full_opt, key))
            )

    for step in range(3):
        indices, offsets = batch(rng, 50 + 10 * step)
        if name.startswith("sgd"):  # a catch-up writes the table: rounded too
            half_opt.catch_up(indices)
            full_opt.catch_up(indices)
            same_so_far()
        grad_output = rng.standard_normal((offsets.shape[0], 16)).astype(np.float32)
        _step(half_opt, weight, backend.array(grad_output), indices, offsets, fused)
        _step(full_opt, wide, backend.array(grad_output), indices, offsets, fused)
        same_so_far()
    assert all(getattr(half_opt, key).dtype != dtype for key in half_opt.state_names)
    half_opt.flush()
    full_opt.flush()
    same_so_far()


def _stochastic_run(dtype, seed: int, backend=None) -> np.ndarray:
    on = backend.array if backend is not None else (lambda x: x)
    weight = on(np.full((64, 16), 1.0, dtype=dtype))
    optimizer = nbbag.optim.SGD(weight, lr=1.0, stochastic_rounding=True, seed=seed)
    rows = np.arange(64)
    # 1 - 1/3 of a step of the format's grid below 1: between two values of the grid
    step = float(ml_dtypes.finfo(dtype).eps) / 2
    values = np.full((64, 16), step / 3, dtype=np.float32)
    optimizer.step(nbbag.RowSparseGrad(rows, values, (64, 16)))
    return weight if backend is None else backend.host(weight)


@pytest.mark.parametrize("dtype", [F16], ids=str)
def test_stochastic_rounding_is_reproducible_and_thread_count_free(dtype):
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _stochastic_run(dtype, seed=7)
    finally:
        numba.set_num_threads(threads)
    assert_same_bits(_stochastic_run(dtype, seed=7), one)
    assert not np.array_equal(_stochastic_run(dtype, seed=8), one)
    below = np.float32(1.0) - np.float32(ml_dtypes.finfo(dtype).eps) / 2
    assert set(np.unique(one.astype(np.float32))) <= {np.float32(1.0), below}
    # 1 - step / 3 rounds down a third of the time: 1024 draws, 5 sigmas
    assert abs(np.mean(one.astype(np.float32) < 1) - 1 / 3) < 5 * np.sqrt(2 / 9 / 1024)


@on_backends("dtype", [], cuda=HALF, ids=ids)
def test_the_gpu_rounds_stochastically_to_the_cpus_bits(backend, dtype):
    """The same seed, the same step: the GPU's table is the CPU's, bit for bit (the
    rounding rules and their random bits are the CPU's functions)."""
    assert_same_bits(_stochastic_run(dtype, 11, backend), _stochastic_run(dtype, 11))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_stochastic_rounding_is_unbiased_between_any_two_neighbours(dtype):
    """Values drawn across float16's and bfloat16's range (subnormals, both signs):
    each rounds to one of its two neighbours, and the mean over many draws of the
    rounding error is ~0."""
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(4000) * 10.0 ** rng.integers(-6, 4, 4000)).astype(
        np.float32
    )
    rounded = _round_stochastically(values, dtype, draws=64)
    lower, upper = _neighbours(values, dtype)
    assert np.all((rounded == lower[:, None]) | (rounded == upper[:, None]))
    gap = np.where(upper > lower, upper - lower, 1)
    bias = (rounded.mean(axis=1) - values) / gap  # in units of the local grid step
    assert abs(bias.mean()) < 0.01 and np.abs(bias).max() < 0.3


@njit
def _stochastic_codes(values, codes, key, float16):
    """codes[i, j]: values[i] rounded stochastically with the bits of (key, 1, i, j)
    to float16 (``float16``) or bfloat16."""
    for i in range(codes.shape[0]):
        for j in range(codes.shape[1]):
            bits = halves.random_bits(key, 1, i, j)
            if float16:
                codes[i, j] = halves.float16_stochastic(values[i], bits)
            else:
                codes[i, j] = halves.bfloat16_stochastic(values[i], bits)


def _round_stochastically(values: np.ndarray, dtype, draws: int) -> np.ndarray:
    """(N, draws) float32: ``values`` rounded by the kernels' stochastic rounding."""
    codes = np.empty((values.shape[0], draws), np.int16 if dtype == F16 else np.uint16)
    _stochastic_codes(values, codes, 1, dtype == F16)
    return codes.view(dtype).astype(np.float32)


def _neighbours(values: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``dtype`` just below and above each value (equal where exact)."""
    nearest = values.astype(dtype).astype(np.float32)
    step = nearest.astype(dtype)
    up = np.nextafter(step, np.array(np.inf, dtype)).astype(np.float32)
    down = np.nextafter(step, np.array(-np.inf, dtype)).astype(np.float32)
    lower = np.where(nearest > values, down, nearest)
    upper = np.where(nearest < values, up, nearest)
    return lower, upper


@njit
def _nearest_codes(values, codes, float16):
    for i in range(values.shape[0]):
        if float16:
            codes[i] = float16_nearest(values[i])
        else:
            codes[i] = halves.bfloat16_nearest(values[i])


def test_rounding_to_nearest_matches_numpy_and_ml_dtypes():
    """Random float32 bits, bfloat16's halfway points, infinities and zeros round as
    ``astype`` rounds, bit for bit; NaN stays NaN."""
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    ties = (bits & ~np.uint32(0xFFFF)) | np.uint32(0x8000)
    values = np.concatenate([bits, ties]).view(np.float32)
    values = np.concatenate([values, np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0])])
    for dtype, code_type in ((F16, np.int16), (BF16, np.uint16)):
        with np.errstate(over="ignore", invalid="ignore"):
            expected = values.astype(dtype)
        got = np.empty(values.shape[0], code_type)
        _nearest_codes(values, got, dtype == F16)
        number = ~np.isnan(values)
        np.testing.assert_array_equal(got[number], expected.view(code_type)[number])
        assert np.isnan(got.view(dtype)[~number].astype(np.float32)).all()


# -- the layer and the collection --------------------------------------------------------
def _set(backend, target, values: np.ndarray) -> None:
    """``target[...] = values`` for a table of either backend (a device one's values
    copied over)."""
    if backend.tiny:
        target.copy_to_device(np.ascontiguousarray(values, dtype=target.dtype))
    else:
        target[...] = values


@on_backends("dtype", [BF16], ids=ids)
def test_layer_trains_a_half_table_as_float32_rounded(backend, dtype, rng):
    half_host = nbbag.EmbeddingBag(NUM_ROWS, 16, mode="mean", dtype=dtype, seed=0).weight
    full_host = nbbag.EmbeddingBag(NUM_ROWS, 16, mode="mean", seed=0).weight
    assert half_host.dtype == dtype
    assert_same_bits(half_host, full_host.astype(dtype))  # the same draws, rounded
    half = nbbag.EmbeddingBag(NUM_ROWS, 16, mode="mean", weight=backend.array(half_host))
    full = nbbag.EmbeddingBag(
        NUM_ROWS, 16, mode="mean", weight=backend.array(half_host.astype(np.float32))
    )
    hyper = OPTIMIZERS["sgd"][1]
    for layer in (half, full):
        layer.attach(nbbag.optim.SGD(layer.weight, **hyper))
    for _ in range(3):
        indices, offsets = batch(rng)
        grad_output = rng.standard_normal((offsets.shape[0], 16)).astype(np.float32)
        np.testing.assert_array_equal(
            backend.host(half(indices, offsets)), backend.host(full(indices, offsets))
        )
        half.step(backend.array(grad_output))
        full.step(backend.array(grad_output))
        stored = backend.host(half.weight)
        assert_same_bits(stored, backend.host(full.weight).astype(dtype))
        _set(backend, full.weight, stored.astype(np.float32))
    assert "dtype=bfloat16" in repr(half)


@on_backends("dtype", [BF16], ids=ids)
def test_collection_of_half_and_float32_tables(backend, dtype, rng):
    """A bfloat16 table (its own stack) beside float32 ones (the collection's dtype):
    float32 out, and each table trained as the float32 collection's, rounded.  No
    feature has weights: in the float32 collection "a" shares a stack with "b" and "c",
    and a stack with weights runs the weighted kernels, whose sums the GPU's (float64
    accumulators) may round differently from the unweighted ones' in the last bit."""
    configs = [
        nbbag.TableConfig("a", 30, 16, mode="mean", dtype=dtype),
        nbbag.TableConfig("b", 20, 16, mode="mean", features=["b", "c"]),
    ]
    device = backend.name
    half = nbbag.EmbeddingBagCollection(configs, seed=1, device=device)
    full = nbbag.EmbeddingBagCollection(
        [nbbag.TableConfig("a", 30, 16, mode="mean"), configs[1]], seed=1, device=device
    )
    assert half.weights["a"].dtype == dtype and half.weights["b"].dtype == np.float32
    for name, weight in half.weights.items():
        _set(backend, full.weights[name], backend.host(weight).astype(np.float32))
    for coll in (half, full):
        coll.attach(nbbag.optim.SGD(coll, lr=0.1))
    features = {
        "a": (rng.integers(0, 30, 12), np.array([0, 4, 9])),
        "b": (rng.integers(0, 20, 7), np.array([0, 1, 5])),
        "c": (rng.integers(0, 20, 6), np.array([0, 3, 3])),
    }
    grad_output = rng.standard_normal((3, 48)).astype(np.float32)
    out = backend.host(half(features))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, backend.host(full(features)))
    for coll in (half, full):
        coll.step(backend.array(grad_output))
    stored = backend.host(half.weights["a"])
    assert_same_bits(stored, backend.host(full.weights["a"]).astype(dtype))
    np.testing.assert_array_equal(
        backend.host(half.weights["b"]), backend.host(full.weights["b"])
    )
    _set(backend, full.weights["a"], stored.astype(np.float32))
    np.testing.assert_array_equal(
        backend.host(half(features)), backend.host(full(features))
    )
    # A checkpoint of the half table round-trips its bits (to and from the GPU too).
    state = half.state_dict()
    assert_same_bits(state["a"], stored)
    half.load_state_dict({**state, "a": rng.standard_normal((30, 16)).astype(dtype)})
    half.load_state_dict(state)
    assert_same_bits(backend.host(half.weights["a"]), stored)
    with pytest.raises(ValueError, match="must give one output dtype"):
        nbbag.EmbeddingBagCollection(configs, dtype=np.float64)
    with pytest.raises(TypeError, match="table 'x': dtype must be float32, float64"):
        nbbag.TableConfig("x", 3, 4, dtype=np.int8)


# -- bad input ---------------------------------------------------------------------------
def test_bad_input_is_refused_and_changes_nothing(rng):
    weight = table(rng, 16, F16)
    before = weight.copy()
    indices, offsets = batch(rng)
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        nbbag.embedding_bag(weight, indices.astype(np.float16), offsets)
    with pytest.raises(TypeError, match="out must be float32 for a float16 weight"):
        nbbag.embedding_bag(weight, indices, offsets, out=np.empty((6, 16), np.float16))
    with pytest.raises(TypeError, match="per_sample_weights must be a floating-point"):
        nbbag.embedding_bag(
            weight, indices, offsets, mode="sum",
            per_sample_weights=np.ones(indices.shape[0], BF16),
        )  # fmt: skip
    with pytest.raises(IndexError, match="is outside"):
        nbbag.embedding_bag(weight, indices + NUM_ROWS, offsets, max_norm=1.0)
    assert_same_bits(weight, before)
    with pytest.raises(ValueError, match="stochastic_rounding=True rounds a float16"):
        nbbag.optim.SGD(weight.astype(np.float32), lr=0.1, stochastic_rounding=True)
    with pytest.raises(ValueError, match="seed is the seed of stochastic_rounding"):
        nbbag.optim.Adam(weight, seed=3)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        nbbag.optim.Adagrad(weight, lr=0.1, stochastic_rounding=True, seed=-1)
    with pytest.raises(TypeError, match="stochastic_rounding must be True or False"):
        nbbag.optim.Adagrad(weight, lr=0.1, stochastic_rounding="yes")
    with pytest.raises(ValueError, match="rows of at most 4096 elements, got D = 4097"):
        nbbag.optim.SGD(np.zeros((2, 4097), F16), lr=0.1)
    with pytest.raises(TypeError, match="dtype must be float32, float64, float16 or bf"):
        nbbag.EmbeddingBag(10, 4, dtype=np.int16)
    with pytest.raises(TypeError, match="weight must be float32, float64, float16 or"):
        nbbag.embedding_bag(weight.view(np.int16), indices, offsets)


def test_a_bfloat16_table_cannot_live_in_a_npy_file(tmp_path):
    with pytest.raises(TypeError, match="cannot hold a bfloat16 table"):
        nbbag.EmbeddingBag(10, 4, dtype=BF16, path=tmp_path / "t.npy")
    assert not list(tmp_path.iterdir())
