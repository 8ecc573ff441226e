"""Numba's threading layers against each other on nbbag's kernels: each layer in its
own process (a process has one layer), the processes alternated, so that the machine's
drift hits every layer alike.

    python -m benchmarks.threading_layers [--layers tbb omp workqueue] [--rounds 3]

Per layer and case: the median time per call over the rounds (each round a fresh
process, 30 calls after a warm-up).  Cases: the forward (sum) and the backward (mean,
Zipf ids) at V = 1M x D = 64, 4096 bags of ~50 ids, and the fused training step (mean)
with SGD and with Adam.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, time
import numpy as np
import numba
import nbbag
from benchmarks.common import (
    NUM_BAGS, D, V, aligned_copy, aligned_table, bag_ids, bag_offsets,
)

offsets = bag_offsets(NUM_BAGS)
ids = bag_ids("zipf", int(offsets[-1]), V)
starts = offsets[:-1]
table = aligned_table(V, D)
grad_output = np.random.default_rng(0).standard_normal((NUM_BAGS, D), np.float32)

def forward():
    nbbag.embedding_bag(table, ids, starts, mode="sum")

_, ctx = nbbag.embedding_bag_fwd(table, ids, starts, mode="mean")
def backward():
    nbbag.embedding_bag_bwd(grad_output, ctx)

def stepper(make):
    weight = aligned_copy(table)
    opt = make(weight)
    def step():
        _, c = nbbag.embedding_bag_fwd(weight, ids, starts, mode="mean")
        opt.step_fused(grad_output, c)
    return step

cases = {
    "forward-sum": forward,
    "backward-mean": backward,
    "step-sgd": stepper(lambda w: nbbag.optim.SGD(w, lr=0.01)),
    "step-adam": stepper(lambda w: nbbag.optim.Adam(w, lr=1e-3)),
}
result = {}
for name, call in cases.items():
    call(); call()
    times = []
    for _ in range(30):
        start = time.perf_counter(); call(); times.append(time.perf_counter() - start)
    result[name] = sorted(times)[len(times) // 2]
result["layer"] = numba.threading_layer()
print(json.dumps(result))
"""


def run(layer: str) -> dict:
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["tbb", "omp", "workqueue"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {layer: [] for layer in args.layers}
    for r in range(args.rounds):
        order = args.layers if r % 2 == 0 else list(reversed(args.layers))
        for layer in order:
            runs[layer].append(run(layer))
    cases = [key for key in runs[args.layers[0]][0] if key != "layer"]
    first = args.layers[0]
    header = " | ".join(f"{layer} (ms)" for layer in args.layers)
    ratios = " | ".join(f"{layer}/{first}" for layer in args.layers[1:])
    print(f"| case | {header} | {ratios} |")
    print("|---|" + "---:|" * (2 * len(args.layers) - 1))
    for case in cases:
        medians = [
            statistics.median(run[case] for run in runs[layer]) for layer in args.layers
        ]
        cells = " | ".join(f"{m * 1e3:.2f}" for m in medians)
        rel = " | ".join(f"{m / medians[0]:.2f}" for m in medians[1:])
        print(f"| {case} | {cells} | {rel} |")
    print("layers run:", {layer: runs[layer][0]["layer"] for layer in args.layers})


if __name__ == "__main__":
    main()
