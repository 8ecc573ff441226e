"""A training step on a table in a file larger than RAM, against the same batch on a
table in memory.

Each case runs in a child process of its own (so that its peak RSS is its own): a
(V, 64) float32 table, 4096 bags of 1-99 Zipf(1.05) ids spread over the table (the same
batch every step, or with ``--fresh`` a new one), a fused step (forward, then ``step``
with a fixed grad_output) of ``--optimizers`` (``adagrad``, ``sgd-plain``; ``sgd``:
with momentum, not for ``cached``), ``--steps`` steps after 3 of warm-up; the median
step and the child's peak RSS (``ru_maxrss``) are printed as one JSON line each.

- ``cached``: ``CachedEmbeddingBag(V, 64, path=..., cache_rows=...)`` on a file of
  ``--file-rows`` rows, ``--cache-rows`` (2M) rows and their state in RAM.

- ``file``: ``EmbeddingBag(V, 64, path=...)`` on a file of ``--file-rows`` rows (120M:
  30.7 GB, beyond this machine's 24 GiB), the optimizer's ``state_dir`` beside it.  The
  file is made sparse (``np.lib.format.open_memmap``: zeros, no rows written), as the
  issue allows: creating 30 GB of random rows would take the disk minutes and change
  nothing a step reads.
- ``memory``: the same on a table of ``--memory-rows`` rows (4M: 1 GB) in memory.

Usage: ``python benchmarks/file_backed.py --dir /path/with/space`` (the files are
removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
import numpy as np
import nbbag
from benchmarks.common import SEED, bag_offsets, zipf_ranks

kind, rows, directory, steps, optimizer, fresh, cache_rows = sys.argv[1:8]
rows, steps, fresh, cache_rows = int(rows), int(steps), fresh == "1", int(cache_rows)
state_dir = os.path.join(directory, optimizer)
table = os.path.join(directory, "table.npy")
if kind != "memory":  # a sparse file: zeros, no rows written
    np.lib.format.open_memmap(table, mode="w+", dtype=np.float32, shape=(rows, 64))
if kind == "cached":
    bag = nbbag.CachedEmbeddingBag(rows, 64, "mean", path=table, cache_rows=cache_rows)
    kwargs = {} if optimizer == "adagrad" else {"momentum": 0.0}
    bag.attach(getattr(nbbag.optim, "Adagrad" if optimizer == "adagrad" else "SGD"),
               lr=0.1, state_dir=state_dir, **kwargs)
else:
    if kind == "file":
        bag = nbbag.EmbeddingBag(rows, 64, mode="mean", path=table)
        state = {"state_dir": state_dir}
    else:
        bag = nbbag.EmbeddingBag(rows, 64, mode="mean", seed=0)
        state = {}
    if optimizer == "sgd":
        opt = nbbag.optim.SGD(bag.weight, lr=0.1, momentum=0.9, **state)
    elif optimizer == "sgd-plain":
        opt = nbbag.optim.SGD(bag.weight, lr=0.1, **state)
    else:
        opt = nbbag.optim.Adagrad(bag.weight, lr=0.1, **state)
    bag.attach(opt)
offsets = bag_offsets(4096)
# Zipf ranks scattered over the table by one fixed permutation: a fresh batch draws new
# ranks (the same hot rows stay hot); without --fresh every step reads the same batch.
scatter = np.random.default_rng(SEED + 2).permutation(rows)
batches = [scatter[zipf_ranks(int(offsets[-1]), SEED + step) % rows]
           for step in range(steps + 3 if fresh else 1)]
grad_output = np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32)
times = []
for step in range(steps + 3):
    ids = batches[step if fresh else 0]
    start = time.perf_counter()
    bag(ids, offsets[:-1])
    bag.step(grad_output)
    print(f"{kind} {optimizer} step {step}: {time.perf_counter() - start:.3f} s",
          file=sys.stderr, flush=True)
    if step >= 3:
        times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
table_bytes = rows * 64 * 4
median = 1e3 * float(np.median(times))
print(json.dumps({"kind": kind, "optimizer": optimizer, "rows": rows, "fresh": fresh,
                  "table_gb": table_bytes / 1e9, "median_step_ms": median,
                  "peak_rss_gb": peak / 1e9}))
"""


def run(kind: str, rows: int, directory: str, steps: int, optimizer: str, fresh: bool,
        cache_rows: int) -> dict:  # fmt: skip
    code = "import os\n" + CHILD
    argv = [
        kind,
        str(rows),
        directory,
        str(steps),
        optimizer,
        str(int(fresh)),
        str(cache_rows),
    ]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip  (each step's time goes to stderr as it ends)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", default=None, help="where the files go (default: a temp dir)"
    )
    parser.add_argument("--file-rows", type=int, default=120_000_000)
    parser.add_argument("--memory-rows", type=int, default=4_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cache-rows", type=int, default=2_000_000)
    parser.add_argument(
        "--kinds", nargs="+", default=["memory", "cached"], help="memory, cached, file"
    )
    parser.add_argument("--optimizers", nargs="+", default=["adagrad", "sgd-plain"])
    parser.add_argument(
        "--fresh", action="store_true", help="a new batch every step (default: the same)"
    )
    args = parser.parse_args()
    base = tempfile.mkdtemp(dir=args.dir, prefix="nbbag-files-")
    try:
        for optimizer in args.optimizers:
            for kind in args.kinds:
                rows = args.memory_rows if kind == "memory" else args.file_rows
                directory = os.path.join(base, f"{optimizer}-{kind}")
                os.makedirs(directory)
                result = run(kind, rows, directory, args.steps, optimizer, args.fresh,
                             args.cache_rows)  # fmt: skip
                print(json.dumps(result), flush=True)
                shutil.rmtree(directory)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
