"""Time a fresh process's ``import nbbag`` and first ``embedding_bag`` call.

Runs the same child twice: the first may compile and fill Numba's on-disk cache, the
second shows what a user's second process pays with the cache warm.

Usage: ``python benchmarks/first_call.py`` (``--json``: the warm child's timings as one
JSON line, which ``tests/test_cache.py`` reads).
"""

from __future__ import annotations

import json
import subprocess
import sys

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


def main() -> None:
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
