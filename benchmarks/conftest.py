"""Fixtures of the benchmarks: the 1M x 64 table and its uniform and Zipf workloads.

Sizes, threads and the rounds policy live in ``benchmarks/common.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import tbe
from benchmarks.common import (
    DISTS,
    NUM_BAGS,
    D,
    V,
    Workload,
    aligned_table,
    bag_ids,
    bag_offsets,
    torch,
)
from benchmarks.common import machine_info as bench_machine_info


@pytest.fixture(scope="session")
def forward_table() -> np.ndarray:
    """The V = 1M x D = 64 float32 table, 64-byte aligned."""
    return aligned_table(V, D)


@pytest.fixture(scope="session")
def forward_workloads(forward_table) -> dict[str, Workload]:
    """The D = 64 workloads by id distribution, sharing one table."""
    offsets = bag_offsets(NUM_BAGS)
    n = int(offsets[-1])
    return {dist: Workload(forward_table, bag_ids(dist, n, V), offsets) for dist in DISTS}


@pytest.fixture(scope="session")
def torch_module():
    """The torch module, or a skip when torch is not installed."""
    if torch is None:
        pytest.skip("torch is not installed: the torch comparison cases are skipped")
    return torch


@pytest.fixture(scope="session")
def tbe_module():
    """``benchmarks.tbe`` (FBGEMM's CPU TBE), checked against NumPy once, or a skip
    naming how to install fbgemm_gpu where it cannot be imported."""
    reason = tbe.unavailable()
    if reason is not None:
        pytest.skip(reason)
    tbe.check()
    return tbe


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record versions and thread counts beside pytest-benchmark's CPU info."""
    machine_info.update(bench_machine_info())
