"""Interleaved A/B timing: the working tree's nbbag against nbbag at a git revision.

    python -m benchmarks.ab --base REV [--rounds 15] [--quick] [-k SUBSTRING] [--out FILE]

Both versions run in one process on the same arrays: REV's ``nbbag/`` is exported into
a temporary directory and imported as ``nbbag_base`` (``benchmarks/versions.py``), the
working tree's is ``nbbag``.  Each case warms both up (their kernels compile: REV's
anew each run, its Numba cache living in the temporary directory), checks that their
outputs agree, then alternates base and new for R rounds of k calls each (k sized for a
round of about ``ROUND_SECONDS``; the order flips every round), so the machine's drift
hits both alike.  Not alike: which version's objects were made first.  The fused
update of a collection's SGD step (2048 x 1, random rows of a 380 MB stack) took
300-480 us less in the version made first, whichever that was (three runs, the phases
timed in one process): the step cases lean that way, toward the base, by up to ~10%.
Per case it prints the median time per call of each, base/new (> 1:
the working tree is faster) and the spread of the per-round ratios (min-max).

Cases (threads: ``NBBAG_BENCH_THREADS``, default 2, as the suite): the forward (sum,
mean, max) at V = 1M x D = 64, 4096 bags of ~50 uniform or Zipf(1.05) ids; the backward
(mean, Zipf; ``embedding_bag_bwd`` timed alone on its version's own forward context);
SGD and Adam training steps (``embedding_bag_fwd`` + ``step_fused``, mean, Zipf), each
version on its own aligned copy of the table with its own optimizer; the tiny forward
(sum, B = 1 and 32 bags of 20 ids, V = 100k); the collection of
``benchmarks/test_bench_collection.py`` (26 Criteo tables, D = 64, sum, Zipf ids): its
forward at B = 128 and 2048 bags of one id and 2048 bags of 10, SGD and row-wise
Adagrad steps at B = 2048 bags of one id, and SGD steps at 2048 bags of 10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

import nbbag
from benchmarks import versions
from benchmarks.common import (
    NUM_BAGS,
    SEED,
    THREADS,
    TINY_BAG_COUNTS,
    TINY_V,
    D,
    TinyBatch,
    V,
    aligned_copy,
    aligned_table,
    bag_ids,
    bag_offsets,
    calls_per_round,
    cpu_model,
)
from benchmarks.steps import ADAGRAD_EPS, ADAM_EPS, BETAS, LR
from benchmarks.test_bench_collection import NAMES as COLLECTION_NAMES
from benchmarks.test_bench_collection import ROWS as COLLECTION_ROWS
from benchmarks.test_bench_collection import CollectionBatch, CollectionCase

ROUNDS, QUICK_ROUNDS = 15, 5
ROUND_SECONDS, QUICK_ROUND_SECONDS = 0.02, 0.01
TRAIN_MODE = "mean"  # the backward's and the steps' mode, as in the suite
RTOL, ATOL = 1e-4, 1e-5  # float32 sums in different orders


class Data:
    """The arrays every case reads, built on first use (``-k tiny`` builds no 1M table)."""

    def __init__(self):
        self._ids: dict[str, np.ndarray] = {}
        self._batches: dict[tuple, CollectionBatch] = {}

    @cached_property
    def table(self) -> np.ndarray:
        """The V = 1M x D = 64 float32 table, 64-byte aligned."""
        return aligned_table(V, D)

    @cached_property
    def offsets(self) -> np.ndarray:
        """The CSR offsets of the 4096 bags."""
        return bag_offsets(NUM_BAGS)

    @property
    def starts(self) -> np.ndarray:
        """The bag starts, as the API takes them."""
        return self.offsets[:-1]

    def ids(self, dist: str) -> np.ndarray:
        """The ids of the 4096 bags, uniform or Zipf(1.05)."""
        if dist not in self._ids:
            self._ids[dist] = bag_ids(dist, int(self.offsets[-1]), V)
        return self._ids[dist]

    @cached_property
    def grad_output(self) -> np.ndarray:
        """A fixed random (4096, D) grad_output."""
        rng = np.random.default_rng(SEED + 1)
        return rng.standard_normal((NUM_BAGS, D), dtype=np.float32)

    @cached_property
    def collection_tables(self) -> list[np.ndarray]:
        """The collection cases' 26 tables (as the collection benchmarks make them)."""
        return CollectionCase().tables

    def collection_batch(self, num_bags: int, bag_len: int) -> CollectionBatch:
        key = ("collection", num_bags, bag_len)
        if key not in self._batches:
            self._batches[key] = CollectionBatch(num_bags, bag_len)
        return self._batches[key]

    @cached_property
    def tiny_table(self) -> np.ndarray:
        """The V = 100k x D = 64 table of the tiny batches."""
        return aligned_table(TINY_V, D)


# A case's maker: (the package, nbbag or nbbag_base; the data) -> one call to time.
Maker = Callable[[object, Data], Callable[[], object]]


@dataclass(frozen=True)
class Case:
    """One comparison: its name and the maker of its call for either version."""

    name: str
    make: Maker


def forward_case(mode: str, dist: str) -> Case:
    """The forward ``mode`` on the 4096 bags of ``dist`` ids."""

    def make(pkg, data: Data):
        table, ids, starts = data.table, data.ids(dist), data.starts
        return lambda: pkg.embedding_bag(table, ids, starts, mode=mode)

    return Case(f"forward-{mode}-{dist}", make)


def backward_case(dist: str) -> Case:
    """The backward (mean) alone, on its own version's forward context."""

    def make(pkg, data: Data):
        ids, grad_output = data.ids(dist), data.grad_output
        _, ctx = pkg.embedding_bag_fwd(data.table, ids, data.starts, mode=TRAIN_MODE)
        return lambda: pkg.embedding_bag_bwd(grad_output, ctx)

    return Case(f"backward-{dist}", make)


def _optimizer(pkg, opt: str, weight: np.ndarray):
    if opt == "sgd":
        return pkg.optim.SGD(weight, lr=LR[opt])
    if opt == "rowwise_adagrad":
        return pkg.optim.RowWiseAdagrad(weight, lr=LR[opt], eps=ADAGRAD_EPS)
    return pkg.optim.Adam(weight, lr=LR[opt], betas=BETAS, eps=ADAM_EPS)


def step_case(opt: str, dist: str) -> Case:
    """A training step (forward + fused update), on the version's own table copy."""

    def make(pkg, data: Data):
        weight = aligned_copy(data.table)
        optimizer = _optimizer(pkg, opt, weight)
        ids, starts, grad_output = data.ids(dist), data.starts, data.grad_output

        def step():
            out, ctx = pkg.embedding_bag_fwd(weight, ids, starts, mode=TRAIN_MODE)
            optimizer.step_fused(grad_output, ctx)
            return out

        return step

    return Case(f"step-{opt}-{dist}", make)


def tiny_forward_case(num_bags: int) -> Case:
    """The forward (sum) of ``num_bags`` bags of 20 ids in the 100k-row table."""
    batch = TinyBatch(num_bags)

    def make(pkg, data: Data):
        table, ids, starts = data.tiny_table, batch.ids, batch.starts
        return lambda: pkg.embedding_bag(table, ids, starts, mode="sum")

    return Case(f"tiny-forward-B{num_bags}", make)


def collection_case(num_bags: int, bag_len: int, opt: str | None = None) -> Case:
    """The collection's forward (``opt`` None) or a step with ``opt`` attached, on the
    version's own copy of the 26 tables."""

    def make(pkg, data: Data):
        configs = [
            pkg.TableConfig(name, rows, D, mode="sum")
            for name, rows in zip(COLLECTION_NAMES, COLLECTION_ROWS, strict=True)
        ]
        coll = pkg.EmbeddingBagCollection(configs, dtype=np.float32, seed=0)
        for name, table in zip(COLLECTION_NAMES, data.collection_tables, strict=True):
            np.copyto(coll.weights[name], table)
        batch = data.collection_batch(num_bags, bag_len)
        features, grad_output = batch.features(), batch.grad_output
        if opt is None:
            return lambda: coll(features)
        coll.attach(_optimizer(pkg, opt, coll))

        def step():
            out = coll(features)
            coll.step(grad_output)
            return out

        return step

    kind = "forward" if opt is None else f"step-{opt}"
    return Case(f"collection-{kind}-B{num_bags}-L{bag_len}", make)


def all_cases() -> list[Case]:
    """Every case, in the order they run."""
    cases = [
        forward_case(mode, dist)
        for mode in ("sum", "mean", "max")
        for dist in ("uniform", "zipf")
    ]
    cases += [backward_case("zipf"), step_case("sgd", "zipf"), step_case("adam", "zipf")]
    cases += [tiny_forward_case(num_bags) for num_bags in TINY_BAG_COUNTS]
    return cases + [
        collection_case(128, 1),
        collection_case(2048, 1),
        collection_case(2048, 10),
        collection_case(2048, 1, "sgd"),
        collection_case(2048, 1, "rowwise_adagrad"),
        collection_case(2048, 10, "sgd"),
    ]


def _arrays(result) -> list[np.ndarray]:
    """A call's result as arrays: a gradient's rows and values, or the output."""
    if hasattr(result, "rows") and hasattr(result, "values"):
        return [np.asarray(result.rows), np.asarray(result.values)]
    return [np.asarray(result)]


def outputs_agree(base_result, new_result) -> bool:
    """Whether the two versions' results have the same shapes and close values."""
    pairs = list(zip(_arrays(base_result), _arrays(new_result), strict=True))
    return all(a.shape == b.shape and np.allclose(a, b, RTOL, ATOL) for a, b in pairs)


def warm_up(base_call, new_call) -> bool:
    """Two calls of each (the kernels compile on the first); whether the results
    agree, both times (a step's second call sees the first update)."""
    return all(outputs_agree(base_call(), new_call()) for _ in range(2))


def time_per_call(call, count: int) -> float:
    """Seconds per call over ``count`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - start) / count


def interleave(base_call, new_call, rounds: int, count: int):
    """Per-round seconds per call of each version, alternating which runs first."""
    base_times, new_times = [], []
    for round_index in range(rounds):
        if round_index % 2 == 0:
            base_times.append(time_per_call(base_call, count))
            new_times.append(time_per_call(new_call, count))
        else:
            new_times.append(time_per_call(new_call, count))
            base_times.append(time_per_call(base_call, count))
    return base_times, new_times


@dataclass(frozen=True)
class Comparison:
    """One case's outcome: medians (s per call), base/new, the per-round ratios'
    range, the calls per round and whether the outputs agreed."""

    name: str
    base: float
    new: float
    low: float
    high: float
    calls: int
    agree: bool

    @property
    def ratio(self) -> float:
        """base / new: above 1, the working tree is faster."""
        return self.base / self.new


def compare(case: Case, base, data: Data, rounds: int, seconds: float) -> Comparison:
    """Time ``case`` for ``base`` (nbbag_base) and the working tree, interleaved."""
    base_call, new_call = case.make(base, data), case.make(nbbag, data)
    agree = warm_up(base_call, new_call)
    count = calls_per_round(new_call, seconds)
    base_times, new_times = interleave(base_call, new_call, rounds, count)
    ratios = [b / n for b, n in zip(base_times, new_times, strict=True)]
    base_median, new_median = statistics.median(base_times), statistics.median(new_times)
    return Comparison(
        case.name, base_median, new_median, min(ratios), max(ratios), count, agree
    )


def _us(seconds: float) -> str:
    micro = seconds * 1e6
    return f"{micro:.1f}" if micro >= 100 else f"{micro:.2f}"


def table(comparisons: list[Comparison]) -> list[str]:
    """The Markdown table: one row per case."""
    lines = [
        "| case | base (us) | new (us) | base/new | spread | calls/round | outputs |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.name} | {_us(c.base)} | {_us(c.new)} | {c.ratio:.3f} | "
            f"{c.low:.2f}-{c.high:.2f} | {c.calls} | {'agree' if c.agree else 'DIFFER'} |"
        )
    return lines


def heading(base_commit: str, rounds: int) -> list[str]:
    """What was compared, where and how."""
    dirty = versions.git("status", "--porcelain", "--", versions.PACKAGE)
    new = "the working tree" + (" (with uncommitted changes to nbbag/)" if dirty else "")
    return [
        f"base: {versions.describe(base_commit)}; new: {new}",
        f"{cpu_model()}, {THREADS} threads, {rounds} interleaved rounds; "
        "medians per call; base/new > 1: new is faster; spread: min-max per round",
        "",
    ]


def select(cases: list[Case], substring: str | None) -> list[Case]:
    """The cases whose name contains ``substring`` (all when None)."""
    if substring is None:
        return cases
    chosen = [case for case in cases if substring in case.name]
    if not chosen:
        names = ", ".join(case.name for case in cases)
        raise SystemExit(f"-k {substring!r} selects no case; the cases: {names}")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--base", required=True, help="the git revision to compare against (hash, branch)"
    )
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {ROUNDS})")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROUNDS} short rounds: rough numbers"
    )
    parser.add_argument("-k", dest="select", help="only the cases whose name has this")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, commit: str) -> list[str]:
    """Export ``commit``'s nbbag, time the selected cases; the report's lines."""
    cases = select(all_cases(), args.select)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    seconds = QUICK_ROUND_SECONDS if args.quick else ROUND_SECONDS
    data = Data()
    with tempfile.TemporaryDirectory(prefix="nbbag-ab-") as directory:
        versions.export(commit, Path(directory))
        base = versions.import_base(Path(directory))
        comparisons = []
        for case in cases:
            print(f"{case.name} ...", file=sys.stderr, flush=True)
            comparisons.append(compare(case, base, data, rounds, seconds))
    return heading(commit, rounds) + table(comparisons)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print (and with ``--out`` write) its table."""
    args = parse_args(argv)
    here = Path(nbbag.__file__).resolve().parent
    if here != versions.ROOT / versions.PACKAGE:
        print(
            f"error: nbbag was imported from {here}, not the working tree", file=sys.stderr
        )
        return 2
    try:
        commit = versions.resolve(args.base)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = run(args, commit)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
