"""nbbag from several Python threads at once, and in processes forked after it ran, on
every threading layer Numba may pick: never an abort or a hang.

Each scenario runs in a child process (a hang fails the test at its timeout instead of
blocking the suite, an abort shows as the child's exit status) on small batches that
still take the parallel kernels: the forward (ids x D above the serial cut-off), the
backward, an optimizer step from a RowSparseGrad, the fused step, catch-up and flush.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nbbag
from nbbag import _threads

ROOT = Path(nbbag.__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for a child: ample for a cold cache; a hang waits this long

SCENARIO = r'''
import json, multiprocessing, sys, threading

import numba
import numpy as np

if sys.argv[2] == "hide-tbb":  # as on a machine where the tbb wheel does not install
    import importlib.metadata

    def no_files(name):
        raise importlib.metadata.PackageNotFoundError(name)

    sys.prefix, importlib.metadata.files = "/nonexistent", no_files

import nbbag

V, D, BAGS, BAG_LEN, STEPS = 2000, 16, 512, 16, 30  # 8192 ids x 16 > the serial cut-off


def train(seed):
    """A short training run on a table of its own: every kind of call nbbag makes."""
    rng = np.random.default_rng(seed)
    bag = nbbag.EmbeddingBag(V, D, mode="mean", seed=seed)
    opt = nbbag.optim.SGD(bag.weight, lr=0.05, momentum=0.9)
    bag.attach(opt)  # each forward catches its rows up first
    offsets = np.arange(0, BAGS * BAG_LEN, BAG_LEN)
    for _ in range(STEPS):
        ids = rng.integers(0, V, BAGS * BAG_LEN)
        grad_output = rng.standard_normal((BAGS, D)).astype(np.float32)
        out = bag(ids, offsets)
        opt.step(bag.backward(grad_output))
        bag(ids, offsets)
        bag.step(grad_output)  # the fused backward + update
        nbbag.embedding_bag(bag.weight, ids, offsets, mode="max")
    opt.flush()
    return np.concatenate([bag.weight.ravel(), out.ravel()])


def threads():
    """Two threads train at once; each must get what it gets alone."""
    results, errors = {}, []
    start = threading.Barrier(2)

    def worker(seed):
        try:
            start.wait()
            results[seed] = train(seed)
        except BaseException as error:
            errors.append(repr(error))

    workers = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join()
    if errors:
        return {"outcome": "error", "message": errors[0]}
    same = all(np.array_equal(results[seed], train(seed)) for seed in (1, 2))
    return {"outcome": "ok" if same else "different results"}


def checksum(seed):
    return float(train(seed).sum())


def fork():
    """A fork-start pool after a parallel call in the parent; its children train."""
    expected = [checksum(seed) for seed in (3, 4)]  # the parent's parallel calls
    with multiprocessing.get_context("fork").Pool(2) as pool:
        try:
            got = pool.map_async(checksum, (3, 4)).get(timeout=90)
        except RuntimeError as error:  # the refusal, raised in a child
            return {"outcome": "refused", "message": str(error)}
    return {"outcome": "ok" if got == expected else "different results"}


if __name__ == "__main__":
    report = {"threads": threads, "fork": fork}[sys.argv[1]]()
    report.update(layer=numba.threading_layer(), request=str(numba.config.THREADING_LAYER))
    print(json.dumps(report))
'''


def run_scenario(tmp_path, scenario: str, layer: str | None, variant: str = "-") -> dict:
    """Run ``scenario`` ("threads" or "fork") in a child on ``layer`` (None: nbbag's
    default) and return its report; fail on a hang, an abort or an exception."""
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    try:
        done = subprocess.run(
            [sys.executable, str(script), scenario, variant],
            capture_output=True, text=True, env=env, timeout=TIMEOUT, cwd=tmp_path,
        )  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{scenario} on {layer or 'the default layer'} hung: {expired}")
    assert done.returncode == 0, (
        f"{scenario} on {layer or 'the default layer'} exited {done.returncode}:\n"
        f"{done.stderr[-3000:]}"
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layer", [None, "workqueue"], ids=["default", "workqueue"])
def test_two_threads_at_once(tmp_path, layer):
    """Under workqueue (Numba aborts on concurrent parallel calls) nbbag's calls take a
    lock; on the default layer (TBB where its wheel installs) they run concurrently.
    Either way each thread's results equal a run alone."""
    report = run_scenario(tmp_path, "threads", layer)
    assert report["outcome"] == "ok", report
    if layer is not None:
        assert report["layer"] == layer  # the user's choice stands
    elif _threads.tbb_wheel_library() is not None:  # a dependency where it installs
        assert (report["layer"], report["request"]) == ("tbb", _threads.DEFAULT_REQUEST)


@pytest.mark.parametrize("layer", [None, "workqueue"], ids=["default", "workqueue"])
def test_fork_pool_after_a_parallel_call(tmp_path, layer):
    """Children forked after the parent ran parallel kernels train, and get the
    parent's results (under GNU OpenMP, today's default on Linux, they were terminated
    and the pool hung)."""
    report = run_scenario(tmp_path, "fork", layer)
    assert report["outcome"] == "ok", report


def test_without_tbb_the_default_is_still_fork_safe(tmp_path):
    """Without the wheel nbbag still asks for a fork-safe layer (workqueue on Linux,
    where its lock makes threads safe too), never GNU OpenMP."""
    report = run_scenario(tmp_path, "fork", None, variant="hide-tbb")
    assert report["outcome"] == "ok", report
    assert report["request"] == _threads.DEFAULT_REQUEST
    assert report["layer"] in ("tbb", "workqueue")
    report = run_scenario(tmp_path, "threads", None, variant="hide-tbb")
    assert report["outcome"] == "ok", report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP: Linux")
def test_fork_after_gnu_openmp_is_refused_cleanly(tmp_path):
    """The user's explicit omp stands; a child forked after it started refuses nbbag
    with a RuntimeError that says what to do, instead of being terminated (a hung
    pool)."""
    report = run_scenario(tmp_path, "fork", "omp")
    if report["layer"] != "omp":
        pytest.skip("Numba's omp layer does not load here")
    assert report["outcome"] == "refused", report
    assert "spawn" in report["message"] and "tbb" in report["message"]
