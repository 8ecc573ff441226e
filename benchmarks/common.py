"""What every benchmark shares: sizes, threads, the rounds policy and the workloads.

Two environment variables shape a run:

- ``NBBAG_BENCH_THREADS`` (default 2): the thread count of Numba and torch alike.
- ``NBBAG_BENCH_QUICK=1``: a smoke-sized run of the same suite, with few rounds, the
  scaling sweep up to V = 10**6 and a smaller copy; its numbers are rough.

The forward workload is V = 1,000,000 rows x D float32 (64-byte aligned), 4096 bags of
~50 ids each, uniform or Zipf(1.05).  The tiny-batch workload is V = 100,000 rows x D =
64, B = 1 or 32 bags of exactly 20 uniform ids.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import numba
import numpy as np

from nbbag._memory import ALIGNMENT, aligned_empty

QUICK = os.environ.get("NBBAG_BENCH_QUICK", "") not in ("", "0")
THREADS = int(os.environ.get("NBBAG_BENCH_THREADS", "2"))

V = 1_000_000
D = 64
DIMS = (16, 64, 256)
NUM_BAGS = 4096
MAX_BAG_LEN = 100  # bag lengths uniform in [1, 100): mean ~50
ZIPF_A = 1.05
DISTS = ("uniform", "zipf")
SEED = 20240601
TINY_V = 100_000
TINY_BAG_LEN = 20
TINY_BAG_COUNTS = (1, 32)

numba.set_num_threads(THREADS)

try:
    import torch
except ImportError:  # torch is optional: its cases are skipped
    torch = None
else:
    torch.set_num_threads(THREADS)


@dataclass(frozen=True)
class Rounds:
    """How often pytest-benchmark runs a case: timed rounds and untimed warm-ups."""

    rounds: int
    warmup_rounds: int


# Cost classes of a case: "fast" (milliseconds), "slow" (a dense pass over a 1M-row
# table, ~0.3-1 s) and "slowest" (a dense pass over 10**7 rows, seconds).
_ROUNDS = {
    False: {"fast": Rounds(50, 3), "slow": Rounds(3, 1), "slowest": Rounds(2, 0)},
    True: {"fast": Rounds(5, 1), "slow": Rounds(1, 0), "slowest": Rounds(1, 0)},
}


def rounds(cost: str) -> Rounds:
    """The rounds for a case of cost class ``cost`` ("fast", "slow" or "slowest")."""
    return _ROUNDS[QUICK][cost]


# The least a "fast" case's timed rounds add up to, and the most rounds that may take:
# 50 rounds of a 0.1 ms call span 5 ms, a window this shared machine's drift moves by
# 2x from one case to the next (the 128-bag collection forward measured 105-274 us in
# one process, a second apart); over a quarter second its median is the steady state.
MIN_FAST_SECONDS = 0.25
MAX_FAST_ROUNDS = 2_500


def time_case(benchmark, call, cost: str = "fast", setup=None):
    """Time ``call`` with ``benchmark.pedantic`` under the rounds policy (a "fast" case
    without ``setup`` for at least ``MIN_FAST_SECONDS``; ``call`` already warmed up)."""
    policy = rounds(cost)
    count = policy.rounds
    if cost == "fast" and setup is None and not QUICK:
        count = max(count, min(MAX_FAST_ROUNDS, _rounds_for(call, MIN_FAST_SECONDS)))
    return benchmark.pedantic(
        call,
        setup=setup,
        rounds=count,
        iterations=1,
        warmup_rounds=policy.warmup_rounds,
    )


def _rounds_for(call, seconds: float) -> int:
    """How many calls of ``call`` (the fastest of three) take ``seconds``."""
    fastest = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        call()
        fastest = min(fastest, time.perf_counter() - start)
    return max(1, round(seconds / max(fastest, 1e-9)))


def calls_per_round(call, seconds: float, limit: int = 100_000) -> int:
    """How many calls of ``call`` take about ``seconds``, from a short timed loop.

    For calls of a few microseconds, where one call per round would be below the
    timer's resolution.  ``call`` runs for about ``seconds`` (at least 3 times): a
    shorter loop misjudges calls whose first repetitions are slower.

    Parameters
    ----------
    call : callable
        The call to time; already warmed up (compiled).
    seconds : float
        The wanted duration of one round.
    limit : int, default 100_000
        The most calls a round may hold.

    Returns
    -------
    int
        Between 1 and ``limit``.
    """
    count, start = 0, time.perf_counter()
    while True:
        call()
        count += 1
        elapsed = time.perf_counter() - start
        if count >= 3 and elapsed >= seconds:
            break
    return max(1, min(limit, round(seconds * count / elapsed)))


def repeated(call, count: int):
    """A function that runs ``call`` ``count`` times (one round of a tiny case)."""

    def run():
        for _ in range(count):
            call()

    return run


def time_calls(benchmark, call, count: int, cost: str = "fast"):
    """Time rounds of ``count`` calls of ``call`` under the rounds policy, and record
    ``calls_per_round`` in ``extra_info`` (the report divides the round's median)."""
    benchmark.extra_info["calls_per_round"] = count
    return time_case(benchmark, repeated(call, count), cost)


def aligned_table(num_rows: int, dim: int, seed: int = SEED) -> np.ndarray:
    """A random (num_rows, dim) float32 table whose first byte is 64-byte aligned.

    NumPy puts large arrays 16 bytes past a cache line, so 64-byte rows would straddle
    two lines and slow both libraries down (torch by 24-100%, nbbag by up to 37%,
    measured on this project's machine).
    """
    table = aligned_empty((num_rows, dim), np.float32)
    np.random.default_rng(seed).standard_normal(dtype=np.float32, out=table)
    assert table.ctypes.data % ALIGNMENT == 0 and table.flags.c_contiguous
    return table


def aligned_copy(table: np.ndarray) -> np.ndarray:
    """A 64-byte aligned copy of ``table``."""
    copy = aligned_empty(table.shape, table.dtype)
    np.copyto(copy, table)
    return copy


def tiled_table(source: np.ndarray, num_rows: int) -> np.ndarray:
    """A (num_rows, D) aligned table filled with ``source``'s rows, repeated: cheap,
    deterministic, and the same values as ``source`` where they overlap."""
    table = aligned_empty((num_rows, source.shape[1]), source.dtype)
    for start in range(0, num_rows, source.shape[0]):
        stop = min(start + source.shape[0], num_rows)
        table[start:stop] = source[: stop - start]
    return table


def bag_offsets(num_bags: int, seed: int = SEED) -> np.ndarray:
    """int64 CSR offsets (num_bags + 1) of bags with lengths uniform in [1, MAX_BAG_LEN)."""
    lengths = np.random.default_rng(seed).integers(1, MAX_BAG_LEN, size=num_bags)
    offsets = np.zeros(num_bags + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def zipf_ranks(n: int, seed: int = SEED) -> np.ndarray:
    """``n`` Zipf(1.05) ranks, starting at 0 (unbounded: callers fold them)."""
    return np.random.default_rng(seed + 1).zipf(ZIPF_A, size=n) - 1


def bag_ids(dist: str, n: int, num_rows: int, seed: int = SEED) -> np.ndarray:
    """``n`` int64 row ids in [0, num_rows), uniform or Zipf(1.05).

    Zipf ids are scattered by a fixed permutation so the hot rows are not all adjacent
    (adjacent hot rows would share cache lines and pages, flattering both libraries).
    """
    if dist == "uniform":
        rng = np.random.default_rng(seed + 1)
        return rng.integers(0, num_rows, size=n, dtype=np.int64)
    if dist == "zipf":
        ranks = zipf_ranks(n, seed) % num_rows
        scatter = np.random.default_rng(seed + 2).permutation(num_rows)
        return scatter[ranks].astype(np.int64)
    raise ValueError(f"unknown id distribution {dist!r}")


def spread_ids(ranks: np.ndarray, num_distinct: int, num_rows: int, seed: int = SEED):
    """Map ``ranks`` (folded to ``num_distinct`` ids) onto a fixed random sorted set of
    ``num_distinct`` distinct rows of a ``num_rows`` table.

    Not ``id * (num_rows // num_distinct)``: at 10**7 rows that puts the rows 256,000
    bytes apart (a multiple of 2048), in 1/8 of the cache sets, which thrash and double
    the time for reasons that have nothing to do with V.
    """
    rng = np.random.default_rng(seed + 3)
    rows = np.sort(rng.choice(num_rows, num_distinct, replace=False)).astype(np.int64)
    return rows[ranks % num_distinct]


class Workload:
    """One forward workload: the table, the ids and the offsets (B starts, B + 1 total)."""

    def __init__(self, table: np.ndarray, ids: np.ndarray, offsets: np.ndarray):
        self.table = table
        self.ids = ids
        self.offsets = offsets  # CSR form; the APIs get offsets[:-1]

    @property
    def starts(self) -> np.ndarray:
        """The B bag starts, as ``embedding_bag`` takes them."""
        return self.offsets[:-1]


class TinyBatch:
    """B bags of ``TINY_BAG_LEN`` uniform ids into a ``TINY_V``-row table, their starts
    (torch's offsets), a fixed grad_output (B, D) and the distinct rows."""

    def __init__(self, num_bags: int, dim: int = D, seed: int = SEED):
        rng = np.random.default_rng(seed + num_bags)
        num_ids = num_bags * TINY_BAG_LEN
        self.ids = rng.integers(0, TINY_V, size=num_ids, dtype=np.int64)
        self.starts = np.arange(0, num_ids, TINY_BAG_LEN, dtype=np.int64)
        self.grad_output = rng.standard_normal((num_bags, dim), dtype=np.float32)
        self.rows = np.unique(self.ids)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """The CPU, versions and thread counts: what the ratios depend on."""
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "numba_version": numba.__version__,
        "numpy_version": np.__version__,
        "torch_version": torch.__version__ if torch is not None else None,
        "numba_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "quick": QUICK,
    }
