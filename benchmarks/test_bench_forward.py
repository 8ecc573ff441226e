"""Forward benchmarks: nbbag against torch.nn.functional.embedding_bag.

V = 1M x D = 64 float32 (64-byte aligned), 4096 bags of ~50 ids, 2 threads each.
Run with ``pytest benchmarks/test_bench_forward.py --benchmark-json=out.json`` and
summarise with ``python benchmarks/ratios.py out.json``.
"""

from __future__ import annotations

import itertools

import pytest

import nbbag

MODES = ("sum", "mean", "max")
DISTS = ("uniform", "zipf")
IMPLS = ("nbbag", "torch")
ROUNDS = 50
WARMUP_ROUNDS = 3

# impl varies fastest, so each nbbag case runs right before its torch peer: the two
# OpenMP runtimes and the machine's drift then hit both sides of a ratio alike.
CASES = [
    pytest.param(mode, dist, impl, id=f"mode={mode}-dist={dist}-impl={impl}")
    for mode, dist, impl in itertools.product(MODES, DISTS, IMPLS)
]


def _nbbag_call(workload, mode):
    table, ids, starts = workload.table, workload.ids, workload.starts
    return lambda: nbbag.embedding_bag(table, ids, starts, mode=mode)


def _torch_call(torch, workload, mode):
    # from_numpy shares memory (and the table's alignment); converting here keeps the
    # timed region to the call itself.
    table = torch.from_numpy(workload.table)
    ids = torch.from_numpy(workload.ids)
    starts = torch.from_numpy(workload.starts)
    embedding_bag = torch.nn.functional.embedding_bag

    def call():
        with torch.inference_mode():
            return embedding_bag(ids, table, starts, mode=mode)

    return call


@pytest.mark.parametrize(("mode", "dist", "impl"), CASES)
def test_forward(benchmark, request, forward_workloads, mode, dist, impl):
    workload = forward_workloads[dist]
    if impl == "nbbag":
        call = _nbbag_call(workload, mode)
    else:
        call = _torch_call(request.getfixturevalue("torch_module"), workload, mode)
    call()  # compiles (or loads from the cache) outside the timed region

    benchmark.group = f"forward-{mode}-{dist}"
    benchmark.extra_info.update(
        impl=impl,
        mode=mode,
        dist=dist,
        num_bags=workload.starts.shape[0],
        num_ids=workload.ids.shape[0],
        dim=workload.table.shape[1],
    )
    out = benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
    assert tuple(out.shape) == (workload.starts.shape[0], workload.table.shape[1])
