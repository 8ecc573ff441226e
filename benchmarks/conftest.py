"""Shared workloads for the benchmarks: one large table, bags of uniform or Zipf ids.

The forward workload is V = 1,000,000 rows x D = 64 float32, 4096 bags of ~50 ids each,
built once per session.  Both libraries run on the same number of threads.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from nbbag._memory import ALIGNMENT, aligned_empty

V = 1_000_000
D = 64
NUM_BAGS = 4096
MAX_BAG_LEN = 100  # bag lengths uniform in [1, 100): mean ~50
ZIPF_A = 1.05
SEED = 20240601
THREADS = 2

numba.set_num_threads(THREADS)

try:
    import torch
except ImportError:  # torch is optional: its cases are skipped
    torch = None
else:
    torch.set_num_threads(THREADS)


def aligned_table(num_rows: int, dim: int, seed: int = SEED) -> np.ndarray:
    """A random (num_rows, dim) float32 table whose first byte is 64-byte aligned.

    NumPy puts large arrays 16 bytes past a cache line, so 64-byte rows would straddle
    two lines and slow both libraries down (see MEASURED.md, "Alignment").
    """
    table = aligned_empty((num_rows, dim), np.float32)
    np.random.default_rng(seed).standard_normal(dtype=np.float32, out=table)
    assert table.ctypes.data % ALIGNMENT == 0 and table.flags.c_contiguous
    return table


def bag_offsets(num_bags: int, seed: int = SEED) -> np.ndarray:
    """int64 start offsets of ``num_bags`` bags with lengths uniform in [1, MAX_BAG_LEN)."""
    lengths = np.random.default_rng(seed).integers(1, MAX_BAG_LEN, size=num_bags)
    offsets = np.zeros(num_bags + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def bag_ids(dist: str, n: int, num_rows: int, seed: int = SEED) -> np.ndarray:
    """``n`` int64 row ids in [0, num_rows), uniform or Zipf(1.05).

    Zipf ids are scattered by a fixed permutation so the hot rows are not all adjacent
    (adjacent hot rows would share cache lines and pages, flattering both libraries).
    """
    rng = np.random.default_rng(seed + 1)
    if dist == "uniform":
        return rng.integers(0, num_rows, size=n, dtype=np.int64)
    if dist == "zipf":
        ranks = (rng.zipf(ZIPF_A, size=n) - 1) % num_rows
        scatter = np.random.default_rng(seed + 2).permutation(num_rows)
        return scatter[ranks].astype(np.int64)
    raise ValueError(f"unknown id distribution {dist!r}")


class Workload:
    """One forward workload: the table, the ids and the offsets (B starts, B + 1 total)."""

    def __init__(self, table: np.ndarray, ids: np.ndarray, offsets: np.ndarray):
        self.table = table
        self.ids = ids
        self.offsets = offsets  # CSR form; the APIs get offsets[:-1]

    @property
    def starts(self) -> np.ndarray:
        return self.offsets[:-1]


@pytest.fixture(scope="session")
def forward_table() -> np.ndarray:
    return aligned_table(V, D)


@pytest.fixture(scope="session")
def forward_workloads(forward_table) -> dict[str, Workload]:
    """The forward workloads by id distribution, sharing one table."""
    offsets = bag_offsets(NUM_BAGS)
    n = int(offsets[-1])
    return {
        dist: Workload(forward_table, bag_ids(dist, n, V), offsets)
        for dist in ("uniform", "zipf")
    }


@pytest.fixture(scope="session")
def torch_module():
    """The torch module, or a skip when torch is not installed."""
    if torch is None:
        pytest.skip("torch is not installed: the torch comparison cases are skipped")
    return torch


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what the ratios depend on beside the CPU: versions and thread counts."""
    machine_info["numba_version"] = numba.__version__
    machine_info["numpy_version"] = np.__version__
    machine_info["torch_version"] = torch.__version__ if torch is not None else None
    machine_info["numba_threads"] = numba.get_num_threads()
    machine_info["torch_threads"] = torch.get_num_threads() if torch is not None else None
