"""Time a fresh process's ``import nbbag`` and first ``embedding_bag`` call.

Runs the same child twice: the first may compile and fill Numba's on-disk cache, the
second shows what a user's second process pays with the cache warm.

Usage: ``python benchmarks/first_call.py`` (``--json``: the warm child's timings as one
JSON line, which ``tests/test_cache.py`` reads).

``--pieces [warm_up options]``: the first call of each mode (forward + backward) and
each optimizer's steps, as ``python -m nbbag.warm_up`` makes them, in a child with an
empty cache (a fresh install: every kernel compiles) and then in a second child with
that cache (a later process); the README's first-call figures come from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, time
t0 = time.perf_counter()
import numpy as np
import nbbag
t1 = time.perf_counter()
weight = np.random.default_rng(0).standard_normal((10, 5)).astype(np.float32)
nbbag.embedding_bag(weight, [1, 2, 4, 5, 4, 3, 2, 9], [0, 4], mode="mean")
t2 = time.perf_counter()
nbbag.embedding_bag(weight, [1, 2, 4, 5, 4, 3, 2, 9], [0, 4], mode="mean")
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_call": t2 - t1, "second_call": t3 - t2}))
"""


def run_child() -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_warm_up(cache_dir: str, options: list[str]) -> dict:
    """``python -m nbbag.warm_up --json`` in a child whose Numba cache is ``cache_dir``."""
    result = subprocess.run(
        [sys.executable, "-m", "nbbag.warm_up", "--json", *options],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NUMBA_CACHE_DIR": cache_dir, "NBBAG_COMPILE_NOTICE": "0"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def pieces(options: list[str]) -> None:
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = run_warm_up(cache_dir, options)
        warm = run_warm_up(cache_dir, options)
    print(f"{'first call of':<44} {'empty cache':>12} {'cache warm':>11}")
    for name, seconds in cold["pieces"].items():
        print(f"{name:<44} {seconds:>10.2f} s {warm['pieces'][name]:>9.2f} s")
    print(f"{'total':<44} {cold['total']:>10.2f} s {warm['total']:>9.2f} s")


def main() -> None:
    if sys.argv[1:2] == ["--pieces"]:
        pieces(sys.argv[2:])
        return
    if "--json" in sys.argv[1:]:
        run_child()
        print(json.dumps(run_child()))
        return
    for label in ("child 1 (may fill the cache)", "child 2 (cache warm)"):
        t = run_child()
        print(
            f"{label}: import nbbag {t['import'] * 1e3:.1f} ms, "
            f"first embedding_bag {t['first_call'] * 1e3:.1f} ms, "
            f"second {t['second_call'] * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
