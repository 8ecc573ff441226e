"""Training steps on a table sharded over Ray actors (``nbbag.distributed``) against the
same steps on the single-process layer.

A (V, 64) float32 table (V = ``--rows``, 1M), 4096 bags of 1-99 Zipf(1.05) ids spread
over the table, mean mode, Adagrad; a step is the forward then ``step`` with a fixed
grad_output.  After 3 steps of warm-up, ``--steps`` steps are timed: the median step,
steps per second, and the bytes one step moves between the driver and the shards
(``bytes_to_shards`` / ``bytes_from_shards``: each shard's arrays, as if each shard were
on a machine of its own), for the layer and for each of ``--shards`` (1 2 4).

Usage: ``python -m benchmarks.sharded`` (a local Ray cluster of this machine's cores),
or on a cluster: ``ray start --head`` on one machine, ``ray start --address=<head>:6379``
on the others (or a second one on the same machine: ``--num-cpus 1`` each), then
``RAY_ADDRESS=<head>:6379 python -m benchmarks.sharded``.  Prints one JSON line a case,
then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import nbbag
from benchmarks.common import bag_ids, bag_offsets

DIM, BAGS = 64, 4096


def batch(rows: int):
    offsets = bag_offsets(BAGS)
    ids = bag_ids("zipf", int(offsets[-1]), rows)
    grad_output = np.random.default_rng(0).standard_normal((BAGS, DIM)).astype(np.float32)
    return ids, offsets[:-1], grad_output


def time_steps(bag, step, ids, offsets, grad_output, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        bag(ids, offsets)
        step(grad_output)
        times.append(time.perf_counter() - start)
    return times[3:]


def run_layer(rows: int, steps: int) -> dict:
    ids, offsets, grad_output = batch(rows)
    bag = nbbag.EmbeddingBag(rows, DIM, mode="mean", seed=0)
    bag.attach(nbbag.optim.Adagrad(bag.weight, lr=0.1))
    times = time_steps(bag, bag.step, ids, offsets, grad_output, steps)
    return {"case": "layer", "shards": 0, "tokens": len(ids), **summary(times, 0, 0, 1)}


def run_sharded(rows: int, shards: int, steps: int) -> dict:
    import nbbag.distributed as nd

    ids, offsets, grad_output = batch(rows)
    bag = nd.ShardedEmbeddingBag(rows, DIM, "mean", num_shards=shards, seed=0)
    bag.attach(nbbag.optim.Adagrad, lr=0.1)
    times = time_steps(bag, bag.step, ids, offsets, grad_output, steps)
    total = steps + 3
    return {
        "case": "sharded",
        "shards": shards,
        "tokens": len(ids),
        **summary(times, bag.bytes_to_shards, bag.bytes_from_shards, total),
    }


def summary(times: list[float], sent: int, received: int, steps: int) -> dict:
    median = float(np.median(times))
    return {
        "median_ms": round(median * 1e3, 2),
        "steps_per_s": round(1 / median, 2),
        "mb_to_shards_per_step": round(sent / steps / 1e6, 2),
        "mb_from_shards_per_step": round(received / steps / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    results = [run_layer(args.rows, args.steps)]
    print(json.dumps(results[-1]), flush=True)
    for shards in args.shards:
        results.append(run_sharded(args.rows, shards, args.steps))
        print(json.dumps(results[-1]), flush=True)
    layer_ms = results[0]["median_ms"]
    print("\n| table | step (median) | steps/s | vs the layer | MB to shards | MB back |")
    print("|---|---:|---:|---:|---:|---:|")
    for result in results:
        name = "layer" if not result["shards"] else f"{result['shards']} shards"
        print(
            f"| {name} | {result['median_ms']} ms | {result['steps_per_s']} | "
            f"{layer_ms / result['median_ms']:.2f}x | {result['mb_to_shards_per_step']} | "
            f"{result['mb_from_shards_per_step']} |"
        )


if __name__ == "__main__":
    main()
