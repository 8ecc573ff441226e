"""EmbeddingBagCollection: its forward, backward and fused steps equal per-feature nbbag
calls, over random configurations (shared tables, every mode, weights, padding, empty
bags, both index and float dtypes); bad input names the feature and changes nothing.
On both backends (the ``backend`` fixture): a collection on "cuda" is checked against
the CPU's per-feature calls on copies of its tables, its batch half device arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from backends import Backend, on_backends
from hypothesis import strategies as st

import nbbag

MODES = ("sum", "mean", "max", "sqrtn")
OPTIMIZERS = {
    "sgd": lambda w: nbbag.optim.SGD(w, lr=0.1),
    "sgd-momentum": lambda w: nbbag.optim.SGD(w, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adagrad": lambda w: nbbag.optim.Adagrad(w, lr=0.1),
    "rowwise-adagrad": lambda w: nbbag.optim.RowWiseAdagrad(w, lr=0.1),
    "adam": lambda w: nbbag.optim.Adam(w, lr=0.01),
}


@dataclass
class Setup:
    """A collection's configuration and one batch for it."""

    tables: list[nbbag.TableConfig]
    dtype: type
    batch: dict
    num_bags: int

    def collection(self, backend: Backend) -> nbbag.EmbeddingBagCollection:
        return nbbag.EmbeddingBagCollection(
            self.tables, dtype=self.dtype, seed=1, device=backend.name
        )

    def batch_on(self, backend: Backend) -> dict:
        """The batch, every other feature's arrays on the backend (the rest stay
        NumPy arrays: a GPU collection takes either)."""
        return {
            name: tuple(backend.array(x) for x in entry) if k % 2 == 0 else entry
            for k, (name, entry) in enumerate(self.batch.items())
        }


@st.composite
def setups(draw, max_tables=4, dtypes=(np.float32, np.float64)):
    dtype = draw(st.sampled_from(dtypes))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    num_bags = draw(st.integers(0, 5))
    tables, batch = [], {}
    for t in range(draw(st.integers(1, max_tables))):
        rows = draw(st.integers(1, 30))
        mode = draw(st.sampled_from(MODES))
        padding = draw(st.one_of(st.none(), st.integers(-rows, rows - 1)))
        features = [f"t{t}f{k}" for k in range(draw(st.integers(1, 2)))]
        # One D: each distinct D (and dtype, mode, weighting) compiles its own forward
        # kernels for the collection's (B, F, D) output, the suite's largest compile
        # cost; D without lanes is the single table's kernel, tested there, and the
        # other tests here use D = 2, 3 and 4.
        dim = 16
        tables.append(
            nbbag.TableConfig(
                f"t{t}", rows, dim, mode, features=features, padding_idx=padding
            )
        )
        for feature in features:
            lengths = draw(
                st.lists(st.integers(0, 4), min_size=num_bags, max_size=num_bags)
            )
            ids = draw(
                st.lists(
                    st.integers(0, rows - 1), min_size=sum(lengths), max_size=sum(lengths)
                )
            )
            if draw(st.booleans()) and ids:  # a hot row, repeated
                ids = [ids[0]] * len(ids)
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(index_dtype)
            entry = (np.array(ids, dtype=index_dtype), offsets[:num_bags])
            if mode != "max" and draw(st.booleans()):
                seed = draw(st.integers(0, 2**16))
                # A mean's weights kept from summing to ~0: it divides by their sum,
                # where two orders of summation differ by far more than rounding
                # (found: 0.4622 and -0.4623, 9e-4 apart on the simulated GPU).
                low = 0.1 if mode == "mean" else -1.0
                weights = np.random.default_rng(seed).uniform(low, 2, len(ids))
                entry = (*entry, weights.astype(dtype))
            batch[feature] = entry
    return Setup(tables, dtype, batch, num_bags)


@dataclass
class _Tables:
    """Stands in for a collection in the per-feature helpers: its tables and columns."""

    weights: dict
    columns: dict


def host_tables(coll, backend: Backend) -> _Tables:
    """Copies of a collection's tables on the host, to run the per-feature calls on."""
    weights = {name: backend.host(w).copy() for name, w in coll.weights.items()}
    return _Tables(weights, coll.columns)


def per_feature_forward(coll, setup: Setup):
    """Each feature by its own nbbag call: (the output's blocks, the contexts)."""
    blocks, contexts = [], {}
    for table in setup.tables:
        for feature in table.features:
            ids, offsets, *weights = setup.batch[feature]
            out, ctx = nbbag.embedding_bag_fwd(
                coll.weights[table.name], ids, offsets, mode=table.mode,
                per_sample_weights=weights[0] if weights else None,
                padding_idx=table.padding_idx,
            )  # fmt: skip
            blocks.append(out)
            contexts[feature] = ctx
    return np.concatenate(blocks, axis=1), contexts


def per_table_grads(coll, setup: Setup, contexts, grad_output) -> dict:
    """Each table's gradient: its features' gradients added, on the union of their rows
    (a row a token read keeps its entry, zeros included, as a single table's does)."""
    grads = {}
    for table in setup.tables:
        dense = np.zeros((table.num_embeddings, table.embedding_dim), setup.dtype)
        rows = []
        for feature in table.features:
            grad = nbbag.embedding_bag_bwd(
                grad_output[:, coll.columns[feature]], contexts[feature]
            )
            dense[grad.rows] += grad.values
            rows.append(grad.rows)
        union = np.unique(np.concatenate(rows))
        grads[table.name] = nbbag.RowSparseGrad(union, dense[union], dense.shape)
    return grads


def dense(grad: nbbag.RowSparseGrad, backend: Backend | None = None) -> np.ndarray:
    rows, values = grad.rows, grad.values
    if backend is not None:
        rows, values = backend.host(rows), backend.host(values)
    out = np.zeros(grad.shape, values.dtype)
    out[rows] = values
    return out


def close(dtype) -> dict:
    return {"rtol": 2e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12}


def check_forward_and_backward(setup: Setup, backend: Backend) -> None:
    coll = setup.collection(backend)
    out = backend.host(coll(setup.batch_on(backend)))
    expected, contexts = per_feature_forward(host_tables(coll, backend), setup)
    assert out.shape == (setup.num_bags, coll.embedding_dim)
    np.testing.assert_allclose(out, expected, **close(setup.dtype))
    grad_output = np.random.default_rng(2).standard_normal(out.shape).astype(setup.dtype)
    grads = coll.backward(backend.array(grad_output))
    reference = per_table_grads(coll, setup, contexts, grad_output)
    assert sorted(grads) == sorted(reference)
    for name, grad in grads.items():
        assert grad.shape == reference[name].shape
        np.testing.assert_array_equal(backend.host(grad.rows), reference[name].rows)
        np.testing.assert_allclose(
            dense(grad, backend), dense(reference[name]), **close(setup.dtype)
        )


def test_forward_and_backward_equal_per_feature_calls(backend):
    backend.examples(
        setups(),
        lambda setup: check_forward_and_backward(setup, backend),
        cuda_examples=10,
        cpu_examples=20,  # the suite's time: compiling, not examples, is most of it
    )


def check_fused_steps(optimizer: str, setup: Setup, backend: Backend) -> None:
    coll = setup.collection(backend)
    opt = OPTIMIZERS[optimizer](coll)
    coll.attach(opt)
    tables = host_tables(coll, backend)
    references = {name: OPTIMIZERS[optimizer](w) for name, w in tables.weights.items()}
    rng = np.random.default_rng(3)
    for _ in range(3):
        for table in setup.tables:  # what the collection's forward does first
            for feature in table.features:
                references[table.name].catch_up(setup.batch[feature][0])
        out = backend.host(coll(setup.batch_on(backend)))
        expected, contexts = per_feature_forward(tables, setup)
        np.testing.assert_allclose(out, expected, **close(setup.dtype))
        grad_output = rng.standard_normal(out.shape).astype(setup.dtype)
        coll.step(backend.array(grad_output))
        grads = per_table_grads(coll, setup, contexts, grad_output)
        for name, grad in grads.items():
            references[name].step(grad)
    opt.flush()
    for name, reference in references.items():
        reference.flush()
        np.testing.assert_allclose(
            backend.host(coll.weights[name]), tables.weights[name], **close(setup.dtype)
        )
    assert opt.step_count == 3


# float32 only: each optimizer's float64 kernels are the single table's, tested in
# test_optim.py; compiling them again for the stacks would cost CI ~40 s.
@on_backends("optimizer", sorted(OPTIMIZERS), cuda=["adam", "sgd-momentum"])
def test_fused_steps_equal_per_table_optimizers(backend, optimizer):
    backend.examples(
        setups(max_tables=3, dtypes=(np.float32,)),
        lambda setup: check_fused_steps(optimizer, setup, backend),
        cuda_examples=3,
        cpu_examples=6,
    )


def test_optimizer_over_a_collection_step_and_hyperparameters():
    coll = nbbag.EmbeddingBagCollection(
        [nbbag.TableConfig("a", 10, 4), nbbag.TableConfig("b", 5, 2, "mean")], seed=0
    )
    opt = nbbag.optim.SGD(coll, lr=0.5)
    assert isinstance(opt, nbbag.optim.CollectionOptimizer) and opt.lr == 0.5
    opt.lr = 0.25
    assert opt.lr == 0.25
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1
    assert opt.lr == 0.25
    before = {name: weight.copy() for name, weight in coll.weights.items()}
    grad = nbbag.RowSparseGrad(np.array([1, 3]), np.ones((2, 4), np.float32), (10, 4))
    opt.step({"a": grad})
    np.testing.assert_allclose(coll.weights["a"][[1, 3]], before["a"][[1, 3]] - 0.25)
    np.testing.assert_array_equal(coll.weights["b"], before["b"])
    assert opt.step_count == 1
    with pytest.raises(ValueError, match="unknown table 'c'"):
        opt.step({"c": grad})
    with pytest.raises(
        ValueError, match=r"grads\['b'\]: grad must have the weight's shape"
    ):
        opt.step({"b": grad})
    assert opt.step_count == 1
    assert "SGD(lr=0.25" in repr(opt) and "2 tables" in repr(opt)


@on_backends("device", ["cpu"], cuda=["cuda"])
def test_checkpoint_resumes_bit_identically(backend, device):
    tables = [
        nbbag.TableConfig("a", 50, 16, "sum", features=["a1", "a2"]),
        nbbag.TableConfig("b", 20, 3, "mean", padding_idx=0),
    ]
    rng = np.random.default_rng(0)

    def batch():
        return {
            name: (rng.integers(0, rows, 12), np.arange(0, 12, 3))
            for name, rows in (("a1", 50), ("a2", 50), ("b", 20))
        }

    def train(coll, batches):
        for features, grad_output in batches:
            coll(
                {name: tuple(map(backend.array, entry)) for name, entry in features.items()}
            )
            coll.step(backend.array(grad_output))

    batches = [(batch(), rng.standard_normal((4, 35)).astype(np.float32)) for _ in range(4)]
    coll = nbbag.EmbeddingBagCollection(tables, seed=0, device=device)
    opt = nbbag.optim.SGD(coll, lr=0.1, momentum=0.9, weight_decay=0.01)
    coll.attach(opt)
    train(coll, batches[:2])
    weights, state = coll.state_dict(), opt.state_dict()
    assert set(state) >= {"a/momentum_buffer", "b/last_step", "step_count", "lr"}
    train(coll, batches[2:])
    opt.flush()

    resumed = nbbag.EmbeddingBagCollection(tables, seed=5, device=device)
    resumed.load_state_dict(weights)
    opt2 = nbbag.optim.SGD(resumed, lr=0.1, momentum=0.9, weight_decay=0.01)
    opt2.load_state_dict(state)
    resumed.attach(opt2)
    train(resumed, batches[2:])
    opt2.flush()
    for name in coll.weights:
        np.testing.assert_array_equal(
            backend.host(resumed.weights[name]), backend.host(coll.weights[name])
        )


def snapshot(coll, opt) -> list[np.ndarray]:
    return list(coll.state_dict().values()) + [
        np.asarray(v).copy() for v in opt.state_dict().values()
    ]


BAD_INPUTS = dict(
    zip(
        ["unknown", "missing", "mismatched-B", "id-past-table", "negative-id",
         "weights-on-max", "bad-offsets", "float-ids"],
        [
            (lambda b: b.update(z=([1], [0])), ValueError, "unknown feature 'z'"),
            (lambda b: b.pop("liked"), ValueError, "feature 'liked' is missing"),
            (
                lambda b: b.update(liked=([1, 2], [0, 1, 2])),
                ValueError,
                "feature 'liked' has 3 bags, feature 'user' 2",
            ),
            (
                lambda b: b.update(genre=([1, 20], [0, 1])),
                IndexError,
                r"feature 'genre' \(table 'genre'\): indices\[1\] = 20 is outside "
                r"\[0, 20\)",
            ),
            (
                lambda b: b.update(liked=([1, -1], [0, 1])),
                IndexError,
                r"feature 'liked' \(table 'genre'\): indices\[1\] = -1",
            ),
            (
                lambda b: b.update(item=([1, 2], [0, 1], [0.5, 1.0])),
                ValueError,
                "feature 'item': per_sample_weights is not supported with mode 'max'",
            ),
            (
                lambda b: b.update(user=([1, 2], [1, 1])),
                ValueError,
                r"feature 'user' \(table 'user'\): offsets\[0\] must be 0",
            ),
            (
                lambda b: b.update(user=([1.0, 2.0], [0, 1])),
                TypeError,
                "feature 'user': indices must be int32 or int64",
            ),
        ],
        strict=True,
    )
)  # fmt: skip


@on_backends("case", list(BAD_INPUTS))
def test_bad_input_names_the_feature_and_changes_nothing(backend, case):
    edit, error, message = BAD_INPUTS[case]
    coll = nbbag.EmbeddingBagCollection(
        [
            nbbag.TableConfig("user", 10, 4, "sum"),
            nbbag.TableConfig("item", 10, 4, "max"),
            nbbag.TableConfig("genre", 20, 2, "mean", features=["genre", "liked"]),
        ],
        seed=0,
        device=backend.name,
    )
    opt = nbbag.optim.SGD(coll, lr=0.1, momentum=0.9, weight_decay=0.1)
    coll.attach(opt)
    good = {
        "user": ([1, 2], [0, 1]),
        "item": ([3, 4], [0, 1]),
        "genre": ([5, 6, 7], [0, 2]),
        "liked": ([8], [0, 1]),
    }
    coll(good)
    coll.step(np.ones((2, 12), np.float32))  # rows now lag behind: a catch-up would write
    before = snapshot(coll, opt)
    bad = dict(good)
    edit(bad)
    bad = {  # on the GPU, device arrays: checked there
        name: tuple(backend.array(np.asarray(x)) for x in entry)
        for name, entry in bad.items()
    }
    with pytest.raises(error, match=message):
        coll(bad)
    for was, now in zip(before, snapshot(coll, opt), strict=True):
        np.testing.assert_array_equal(was, now)


def test_table_configs_are_checked():
    with pytest.raises(ValueError, match="table 'a': num_embeddings must be a positive"):
        nbbag.TableConfig("a", 0, 4)
    with pytest.raises(ValueError, match="table 'a': mode"):
        nbbag.TableConfig("a", 3, 4, "median")
    with pytest.raises(ValueError, match="table 'a': padding_idx"):
        nbbag.TableConfig("a", 3, 4, padding_idx=3)
    with pytest.raises(TypeError, match="features must be a sequence"):
        nbbag.TableConfig("a", 3, 4, features="a")
    assert nbbag.TableConfig("a", 3, 4, padding_idx=-1).padding_idx == 2
    with pytest.raises(ValueError, match=r"features \['x'\] are read by more than one"):
        nbbag.EmbeddingBagCollection(
            [
                nbbag.TableConfig("a", 3, 4, features=["x"]),
                nbbag.TableConfig("b", 3, 4, features=["x"]),
            ]
        )


def test_each_feature_has_its_columns_and_one_stack_returns_its_output_whole():
    coll = nbbag.EmbeddingBagCollection(
        [nbbag.TableConfig(f"t{i}", 100, 8) for i in range(5)], seed=0
    )
    batch = {f"t{i}": (np.arange(6) + i, np.array([0, 2, 4])) for i in range(5)}
    out = coll(batch)
    assert out.shape == (3, 40) and coll.columns["t3"] == slice(24, 32)
    for i in range(5):
        expected = nbbag.embedding_bag(coll.weights[f"t{i}"], *batch[f"t{i}"], mode="sum")
        np.testing.assert_array_equal(out[:, coll.columns[f"t{i}"]], expected)


def test_backward_reads_its_forwards_batch_not_the_callers_arrays(backend):
    """A caller that refills its id and weight arrays after the forward (one buffer
    reused batch after batch) gets the gradient of the batch the forward read."""
    tables = [nbbag.TableConfig(f"t{i}", 50, 4, features=[f"f{i}"]) for i in range(3)]
    rng = np.random.default_rng(5)
    batch = {
        f"f{i}": (
            rng.integers(0, 50, size=12),
            np.array([0, 3, 6, 9]),
            rng.uniform(0.5, 2.0, size=12),
        )
        for i in range(3)
    }
    grad_output = backend.array(rng.standard_normal((4, 12)))
    reused, fresh = (
        nbbag.EmbeddingBagCollection(tables, dtype=np.float64, seed=0, device=backend.name)
        for _ in range(2)
    )
    out = reused(batch)
    copied = {name: tuple(x.copy() for x in entry) for name, entry in batch.items()}
    np.testing.assert_array_equal(backend.host(out), backend.host(fresh(copied)))
    for ids, _, weights in batch.values():  # the next batch, in the same arrays
        ids[:] = rng.integers(0, 50, size=ids.size)
        weights[:] = rng.uniform(0.5, 2.0, size=weights.size)
    grads, expected = reused.backward(grad_output), fresh.backward(grad_output)
    for name in expected:
        np.testing.assert_array_equal(
            backend.host(grads[name].rows), backend.host(expected[name].rows)
        )
        np.testing.assert_array_equal(
            backend.host(grads[name].values), backend.host(expected[name].values)
        )


def test_a_large_batch_runs_the_parallel_kernels_and_names_a_bad_feature():
    """Past the serial kernels' sizes (4,608 ids x D = 16) the collection's forward
    runs the parallel kernels: its output and gradient equal per-feature calls.  An id
    outside its table there raises naming the feature and changes nothing: with no
    optimizer, one that never catches up (the forward skips the catch-up), or SGD with
    momentum (which catches up the rows before the forward reads them)."""
    num_bags, bag_len = 512, 3
    tables = [nbbag.TableConfig(f"t{i}", 40 + i, 16, features=[f"f{i}"]) for i in range(3)]
    rng = np.random.default_rng(7)
    starts = np.arange(0, num_bags * bag_len, bag_len)
    batch = {
        f"f{i}": (rng.integers(0, 40 + i, num_bags * bag_len), starts) for i in range(3)
    }
    coll = nbbag.EmbeddingBagCollection(tables, dtype=np.float32, seed=0)
    out = coll(batch)
    grad_output = rng.standard_normal(out.shape).astype(np.float32)
    grads = coll.backward(grad_output)
    for i in range(3):
        expected, ctx = nbbag.embedding_bag_fwd(
            coll.weights[f"t{i}"], *batch[f"f{i}"], mode="sum"
        )
        np.testing.assert_allclose(
            out[:, coll.columns[f"f{i}"]], expected, **close(np.float32)
        )
        grad = nbbag.embedding_bag_bwd(grad_output[:, coll.columns[f"f{i}"]], ctx)
        np.testing.assert_array_equal(grads[f"t{i}"].rows, grad.rows)
        np.testing.assert_allclose(grads[f"t{i}"].values, grad.values, **close(np.float32))

    bad_ids = batch["f1"][0].copy()
    bad_ids[1000] = 41  # t1 has 41 rows
    bad = {**batch, "f1": (bad_ids, starts)}
    for make in (None, lambda c: nbbag.optim.SGD(c, lr=0.1),
                 lambda c: nbbag.optim.SGD(c, lr=0.1, momentum=0.9)):  # fmt: skip
        coll = nbbag.EmbeddingBagCollection(tables, dtype=np.float32, seed=0)
        opt = None if make is None else make(coll)
        if opt is not None:
            coll.attach(opt)
            coll(batch)
            coll.step(grad_output)  # rows now lag behind: a catch-up would write
        before = list(coll.state_dict().values())
        if opt is not None:
            before += [np.asarray(v).copy() for v in opt.state_dict().values()]
        with pytest.raises(
            IndexError, match=r"feature 'f1' \(table 't1'\): indices\[1000\]"
        ):
            coll(bad)
        after = list(coll.state_dict().values())
        if opt is not None:
            after += [np.asarray(v) for v in opt.state_dict().values()]
        for was, now in zip(before, after, strict=True):
            np.testing.assert_array_equal(was, now)


def test_a_batch_of_no_bags_still_checks_its_ids(backend):
    """B = 0 with ids (every token in no bag): an id outside its table still raises
    naming the feature, and good ids give a (0, W) output and empty gradients."""
    coll = nbbag.EmbeddingBagCollection(
        [nbbag.TableConfig("t", 10, 4, features=["a", "b"])], seed=0, device=backend.name
    )
    no_bags = np.zeros(0, dtype=np.int64)
    with pytest.raises(IndexError, match=r"feature 'b' \(table 't'\): indices\[2\] = 300"):
        coll({"a": ([1, 2, 3], no_bags), "b": ([1, 2, 300], no_bags)})
    out = coll({"a": ([1, 2, 3], no_bags), "b": ([4, 5, 6], no_bags)})
    assert backend.host(out).shape == (0, 8)
    grads = coll.backward(backend.array(np.zeros((0, 8), np.float32)))
    assert backend.host(grads["t"].rows).shape == (0,)
