"""The forward's sum against the hardware's ceiling: nbbag, torch, and a hand-written
AVX-512 C gather (``benchmarks/ceiling/gather.c``) on the suite's forward workloads.

    python -m benchmarks.ceiling [--dims 16 64 256] [--rounds 60]

The C kernel is what this project's best effort at the loop gives with no validation
and no Python: OpenMP over bags, the row in zmm accumulators, a software prefetch of
the row 8, 16 or 32 tokens ahead, its whole row or the leading half of its lines, or no
prefetch (the best of the seven is reported).  It is built here with the system's C
compiler (``cc -O3 -march=native -fopenmp``); it needs AVX-512.

All cases of one workload run interleaved, in a new random order each round, after two
warm-up calls each (the JIT and the pages); medians.  Prints a Markdown table: where
torch is within a few percent of the C kernel, no kernel can be much faster than torch
on this machine.  Threads: ``NBBAG_BENCH_THREADS`` (default 2), as the suite.
"""

from __future__ import annotations

import argparse
import ctypes
import pathlib
import random
import shutil
import subprocess
import tempfile
import time

import numpy as np

import nbbag
from benchmarks.common import (
    DIMS,
    DISTS,
    NUM_BAGS,
    THREADS,
    V,
    aligned_table,
    bag_ids,
    bag_offsets,
    cpu_model,
    torch,
)

SOURCE = pathlib.Path(__file__).with_name("ceiling") / "gather.c"
DISTANCES = (8, 16, 32)  # tokens ahead
SHARES = ("whole", "half")  # of the row's lines prefetched
ROUNDS = 60


def build(directory: pathlib.Path) -> ctypes.CDLL:
    """Compile ``gather.c`` into a shared library in ``directory`` and load it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler (cc or gcc) on PATH")
    library = directory / "libgather.so"
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    subprocess.run([compiler, *flags, str(SOURCE), "-o", str(library)], check=True)
    return ctypes.CDLL(str(library))


def c_gather(library: ctypes.CDLL, dim: int):
    """The C function for rows of ``dim`` floats (a multiple of 16: whole lines)."""
    function = getattr(library, f"gather_sum_{dim // 16}")
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    int32 = ctypes.c_int
    function.argtypes = [pointer, pointer, pointer, int64, pointer, int64, int32, int32]
    function.restype = None
    return function


def interleaved_medians(cases: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each case, the cases run in a new random order each round."""
    for call in cases.values():
        call()
        call()
    times = {name: [] for name in cases}
    names = list(cases)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def c_variants(dim: int) -> dict[str, tuple[int, int]]:
    """The C kernel's prefetch variants: name -> (tokens ahead, lines requested)."""
    lines = dim // 16
    variants = {"no prefetch": (0, 0)}
    for distance in DISTANCES:
        for share in SHARES:
            requested = lines if share == "whole" else -(-lines // 2)
            variants[f"prefetch {distance}, {share}"] = (distance, requested)
    return variants


def workload_cases(function, weight, ids, offsets, out) -> dict:
    """nbbag, torch (when installed) and the C kernel in each prefetch variant (keys
    "C <variant>")."""
    starts = offsets[:-1]
    addresses = (weight.ctypes.data, ids.ctypes.data, offsets.ctypes.data)
    cases = {
        f"C {name}": (
            lambda ahead=ahead, lines=lines: function(
                *addresses, NUM_BAGS, out.ctypes.data, ahead, lines, THREADS
            )
        )
        for name, (ahead, lines) in c_variants(weight.shape[1]).items()
    }
    cases["nbbag"] = lambda: nbbag.embedding_bag(weight, ids, starts, mode="sum")
    if torch is not None:
        args = [torch.from_numpy(a) for a in (ids, weight, starts)]
        cases["torch"] = lambda: torch.nn.functional.embedding_bag(*args, mode="sum")
    return cases


def measure(library, dim: int, rounds: int) -> list[dict]:
    """One row per id distribution at ``dim``: medians (s) and the C kernel's best."""
    function = c_gather(library, dim)
    weight = aligned_table(V, dim)
    offsets = bag_offsets(NUM_BAGS)
    num_ids = int(offsets[-1])
    out = np.empty((NUM_BAGS, dim), dtype=np.float32)
    rows = []
    for dist in DISTS:
        ids = bag_ids(dist, num_ids, V)
        cases = workload_cases(function, weight, ids, offsets, out)
        cases["C prefetch 8, whole"]()  # checked against nbbag before any timing
        expected = nbbag.embedding_bag(weight, ids, offsets[:-1], mode="sum")
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        medians = interleaved_medians(cases, rounds)
        best = min((name for name in medians if name.startswith("C ")), key=medians.get)
        moved = (num_ids + NUM_BAGS) * dim * weight.itemsize  # rows read + out written
        rows.append(dict(dim=dim, dist=dist, best=best, moved=moved, **medians))
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table of ``rows``."""
    lines = [
        "| D | ids | nbbag (ms) | torch (ms) | best C (ms) | C GB/s | "
        "torch/nbbag | torch/C |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        c_time, torch_time = row[row["best"]], row.get("torch", float("nan"))
        lines.append(
            f"| {row['dim']} | {row['dist']} | {row['nbbag'] * 1e3:.3f} | "
            f"{torch_time * 1e3:.3f} | {c_time * 1e3:.3f} ({row['best'][2:]}) | "
            f"{row['moved'] / c_time / 1e9:.1f} | {torch_time / row['nbbag']:.2f} | "
            f"{torch_time / c_time:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    if not set(args.dims) <= {16, 64, 256}:  # the widths gather.c is built for
        parser.error(f"--dims: each of 16, 64, 256, got {args.dims}")
    with tempfile.TemporaryDirectory() as directory:
        library = build(pathlib.Path(directory))
        rows = [row for dim in args.dims for row in measure(library, dim, args.rounds)]
    print(f"{cpu_model()}, {THREADS} threads, V = {V:,}, {NUM_BAGS} bags of ~50 ids")
    print(table(rows))


if __name__ == "__main__":
    main()
