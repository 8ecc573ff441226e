"""Compile nbbag's CPU kernels ahead of their first call.

Numba compiles a kernel the first time it meets a new combination of argument types
(the table's dtype, the ids' dtype, the mode, the optimizer, and D where the kernels are
specialised for the row width), then caches the machine code on disk: later processes
load it instead.  :func:`warm_up` makes the calls a training run makes, on a small
random table, so that the compiling happens at a moment of your choosing (after
``pip install``, in an image build, before a benchmark) instead of in the first batch.

Run ``python -m nbbag.warm_up --dim 64`` (``--help`` for the options); each piece's
seconds are printed as it finishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from nbbag import optim
from nbbag.base.dtypes import compute_dtype
from nbbag.cpu.variants import SERIAL_SORT_TOKENS, SERIAL_WORK
from nbbag.functional import embedding_bag_bwd, embedding_bag_fwd
from nbbag.layer import EmbeddingBag
from nbbag.modes import Mode

MODES = tuple(str(mode) for mode in Mode)
OPTIMIZERS: dict[str, Callable[[np.ndarray], Any]] = {
    "sgd": lambda weight: optim.SGD(weight, lr=0.01),
    "sgd-momentum": lambda weight: optim.SGD(
        weight, lr=0.01, momentum=0.9, weight_decay=1e-4
    ),
    "adagrad": lambda weight: optim.Adagrad(weight, lr=0.01),
    "rowwise-adagrad": lambda weight: optim.RowWiseAdagrad(weight, lr=0.01),
    "adam": lambda weight: optim.Adam(weight, lr=0.01),
}
NUM_ROWS = 1000


def warm_up(
    embedding_dim: int | Iterable[int] = 64,
    *,
    dtype: Any = np.float32,
    index_dtype: Any = np.int64,
    modes: Sequence[str | Mode] = MODES,
    optimizers: Sequence[str] = tuple(OPTIMIZERS),
    weighted: bool = False,
    large_batches: bool = False,
    report: Callable[[str, float], None] | None = None,
) -> dict[str, float]:
    """Compile (or load from the disk cache) the kernels of these calls.

    For each width D: for each mode, the forward and backward of a batch small enough
    to run serially and of one large enough to run in parallel (nbbag picks its kernel
    by the size of a batch); for each optimizer, a training step fused
    (``EmbeddingBag.step``), an unfused one (``optimizer.step(grad)``) and ``flush``.

    Parameters
    ----------
    embedding_dim : int or iterable of int, default 64
        The row widths D to compile for (kernels are specialised by D).
    dtype : float32, float64, float16 or bfloat16, default float32
        The table's dtype.
    index_dtype : int32 or int64, default int64
        The dtype of the ids and offsets.
    modes : sequence of str or Mode, default every mode
    optimizers : sequence of str, default every optimizer
        Names from :data:`OPTIMIZERS` (``"sgd-momentum"`` is SGD with momentum and
        weight decay, whose rows are caught up lazily).
    weighted : bool, default False
        Also compile the forward and backward with ``per_sample_weights`` (every mode
        but max, which takes none).
    large_batches : bool, default False
        Also compile what a batch of SERIAL_SORT_TOKENS ids or more runs (a parallel
        grouping of the ids by row; about 2.5 s more).
    report : callable (name, seconds), optional
        Called as each piece finishes.

    Returns
    -------
    dict
        Seconds per piece, named like ``"D=64 sum: forward + backward"``.
    """
    dims = [embedding_dim] if isinstance(embedding_dim, int) else list(embedding_dim)
    modes = [str(Mode.parse(mode)) for mode in modes]
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizers: unknown {name!r}, expected some of {OPTIMIZERS}")
    timings: dict[str, float] = {}

    def timed(name: str, work: Callable[..., None], *args: Any) -> None:
        start = time.perf_counter()
        work(*args)
        timings[name] = time.perf_counter() - start
        if report is not None:
            report(name, timings[name])

    rng = np.random.default_rng(0)
    for dim in dims:
        weight = EmbeddingBag(NUM_ROWS, dim, dtype=dtype, seed=0).weight
        sizes = _batch_sizes(dim, large_batches)
        batches = [_batch(rng, tokens, index_dtype) for tokens in sizes]
        for mode in modes:
            # max takes no per_sample_weights
            for weights in (False, True) if weighted and mode != "max" else (False,):
                label = f"{mode}{' weighted' if weights else ''}: forward + backward"
                timed(f"D={dim} {label}", _forward_backward, weight, batches, mode, weights)
        for name in optimizers:
            timed(f"D={dim} {name}: steps", _train, weight, batches, name)
    return timings


def _batch_sizes(dim: int, large_batches: bool) -> list[int]:
    """Token counts of a serial forward, a parallel one with a serial grouping, and
    (``large_batches``) a parallel grouping."""
    sizes = [8, min(SERIAL_SORT_TOKENS - 1, -(-SERIAL_WORK // dim) + 1)]
    return sizes + [SERIAL_SORT_TOKENS] if large_batches else sizes


def _batch(rng: np.random.Generator, tokens: int, index_dtype) -> tuple:
    """(indices, offsets) of ``tokens`` random ids in bags of 8 (the last one shorter)."""
    indices = rng.integers(0, NUM_ROWS, tokens).astype(index_dtype)
    offsets = np.arange(0, tokens, 8).astype(index_dtype)
    return indices, offsets


def _forward_backward(weight, batches, mode, weighted: bool) -> None:
    for indices, offsets in batches:
        weights = np.ones(len(indices), compute_dtype(weight.dtype)) if weighted else None
        out, ctx = embedding_bag_fwd(
            weight, indices, offsets, mode=mode, per_sample_weights=weights
        )
        embedding_bag_bwd(np.ones_like(out), ctx, per_sample_weights_grad=weighted)


def _train(weight, batches, name: str) -> None:
    """Fused and unfused steps on a copy of ``weight`` (the caller's stays as it was)."""
    layer = EmbeddingBag.from_pretrained(weight, "mean")
    optimizer = OPTIMIZERS[name](layer.weight)
    layer.attach(optimizer)
    for indices, offsets in batches:
        out = layer(indices, offsets)
        layer.step(np.ones_like(out))
        layer(indices, offsets)
        optimizer.step(layer.backward(np.ones_like(out)))
    optimizer.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbbag.warm_up",
        description="Compile nbbag's CPU kernels now (they are cached on disk).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dim", type=int, nargs="+", default=[64], help="row widths D")
    parser.add_argument(
        "--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32"
    )
    parser.add_argument("--index-dtype", choices=["int32", "int64"], default="int64")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--optimizers", nargs="+", choices=list(OPTIMIZERS), default=list(OPTIMIZERS)
    )
    parser.add_argument("--weighted", action="store_true", help="per_sample_weights too")
    parser.add_argument(
        "--large-batches", action="store_true", help=f">= {SERIAL_SORT_TOKENS} ids a batch"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object at the end")
    args = parser.parse_args(argv)
    for dim in args.dim:
        if dim <= 0:
            parser.error(f"--dim must be positive, got {dim}")

    def report(name: str, seconds: float) -> None:
        if not args.json:
            print(f"{name:<48} {seconds:7.2f} s", flush=True)

    start = time.perf_counter()
    timings = warm_up(
        args.dim, dtype=args.dtype, index_dtype=args.index_dtype, modes=args.modes,
        optimizers=args.optimizers, weighted=args.weighted,
        large_batches=args.large_batches, report=report,
    )  # fmt: skip
    total = time.perf_counter() - start
    if args.json:
        print(json.dumps({"pieces": timings, "total": total}))
    else:
        print(f"{'total':<48} {total:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
