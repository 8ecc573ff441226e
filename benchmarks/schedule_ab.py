"""Interleaved timing of a learning-rate schedule's cost: one SGD optimizer on one
table, rounds of fused steps with the learning rate left alone alternating with rounds
that set it before every step (linear decay), so that the machine's drift hits both.

    python -m benchmarks.schedule_ab [--rows 10000000] [--rounds 15] [--steps 5]

Prints the median step time of each and their ratio, for plain SGD and for SGD with
momentum 0.9 (with ``catch_up(ids)`` before the forward).  The batch is the scaling
sweep's (4096 bags of ~50 Zipf ids over 10**4 distinct rows spread over the table).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import nbbag
from benchmarks.common import NUM_BAGS, aligned_table, bag_offsets, spread_ids, zipf_ranks

NUM_DISTINCT, D, LR = 10**4, 64, 0.01


def run(rows: int, rounds: int, steps: int, momentum: float) -> tuple[float, float]:
    table = aligned_table(rows, D)
    offsets = bag_offsets(NUM_BAGS)
    ids = spread_ids(zipf_ranks(int(offsets[-1])) % NUM_DISTINCT, NUM_DISTINCT, rows)
    starts = offsets[:-1]
    grad_output = np.random.default_rng(0).standard_normal((NUM_BAGS, D), np.float32)
    opt = nbbag.optim.SGD(table, lr=LR, momentum=momentum)
    count = [0]

    def step(schedule: bool) -> float:
        start = time.perf_counter()
        if schedule:
            opt.lr = LR * (1 - count[0] / 10**6)
        count[0] += 1
        if momentum:
            opt.catch_up(ids)
        _, ctx = nbbag.embedding_bag_fwd(table, ids, starts, mode="mean")
        opt.step_fused(grad_output, ctx)
        return time.perf_counter() - start

    step(True), step(False)  # compile or load
    times = {False: [], True: []}
    for r in range(rounds):
        for schedule in (False, True) if r % 2 else (True, False):
            times[schedule] += [step(schedule) for _ in range(steps)]
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10**7)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"V = {args.rows:,}, D = {D} float32; medians over {args.rounds} x {args.steps}")
    print("| optimizer | fixed lr (ms) | lr set every step (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for name, momentum in (("SGD", 0.0), ("SGD, momentum 0.9", 0.9)):
        fixed, scheduled = run(args.rows, args.rounds, args.steps, momentum)
        print(f"| {name} | {fixed * 1e3:.2f} | {scheduled * 1e3:.2f} | "
              f"{scheduled / fixed:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
