import os
import sys
import zlib

# The GPU tests run the CUDA kernels under Numba's simulator where there is no GPU.  It
# must be chosen before numba.cuda is first imported; NUMBA_ENABLE_CUDASIM=0 in the
# environment runs them on a real GPU instead.  The CPU tests do not touch numba.cuda.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
if os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
    # The simulator runs each GPU thread as a Python thread; at a barrier they hand the
    # GIL round, each after up to the switch interval (5 ms by default).  0.5 ms made
    # the simulated optimizer steps 3-6x faster (measured); NumPy and the CPU kernels'
    # threads do not hold the GIL while they compute.
    sys.setswitchinterval(5e-4)

import numpy as np
import pytest
from backends import NAMES, Backend, backend_param
from hypothesis import HealthCheck, settings

# Derandomised in CI so a red run can be reproduced; random locally to keep exploring.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# The suite's cold run (an empty Numba cache, as in CI) spends most of its time
# compiling kernels, file by file: under `pytest -n 2 --dist loadfile` the files that
# take longest cold (measured, seconds on this project's 2-core machine: optim 256,
# distributed 166, kernels 110, collection 95, backward 88, torch_parity 72, half 71)
# go first, so that neither worker is left with a long file at the end.  xdist would
# otherwise hand out the files with most tests first (distributed has few, so it came
# last: one worker ran it alone for its last ~75 s).
SLOWEST_FILES_COLD = (
    "test_optim.py", "test_distributed.py", "test_kernels.py", "test_collection.py",
    "test_backward.py", "test_torch_parity.py", "test_half.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(SLOWEST_FILES_COLD)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order above
        config.option.loadscopereorder = False
    config.addinivalue_line(
        "markers", "cuda: runs the GPU's kernels (the backend fixture's 'cuda' cases)"
    )
    # Record the simulated kernel launches for tests/gpu_compile.py (CI sets it).
    folder = os.environ.get("NBBAG_RECORD_LAUNCHES")
    if folder and os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
        from gpu_compile import LaunchRecorder

        config.pluginmanager.register(LaunchRecorder(folder), "nbbag-launch-recorder")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh data per test, reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _copy_through_buffers(monkeypatch):
    """Make the simulator's host <-> device copies take the host array's buffer, as a
    real GPU's do: NumPy exports no buffer of a bfloat16 array, so on a GPU copying one
    raises (the simulator's copies, plain NumPy ones, would not)."""
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def through_buffer(copy, host_position):
        def checked(*args, **kwargs):
            host = args[host_position] if len(args) > host_position else None
            if isinstance(host, np.ndarray):
                memoryview(host)  # ValueError for a dtype the buffer protocol lacks
            result = copy(*args, **kwargs)
            if isinstance(result, np.ndarray):
                memoryview(result)
            return result

        return checked

    monkeypatch.setattr(cuda, "to_device", through_buffer(cuda.to_device, 0))
    for name in ("copy_to_device", "copy_to_host"):
        method = getattr(FakeCUDAArray, name)
        monkeypatch.setattr(FakeCUDAArray, name, through_buffer(method, 1))


@pytest.fixture(params=[backend_param(name) for name in NAMES])
def backend(request, monkeypatch):
    """The backend the test body runs on (see ``tests/backends.py``): "cpu" (NumPy
    tables) and "cuda" (device tables; the GPU's kernels, simulated where there is no
    GPU), the latter skipped without numba-cuda.  On the GPU, thread groups of 3 lanes
    and blocks of 7 threads, so that partial groups (D = 5) and partial blocks (2 bags
    a block: an odd number of bags) run."""
    if request.param == "cuda":
        try:
            from nbbag.cuda import launch
        except ImportError as error:
            pytest.skip(f"the GPU backend needs numba-cuda: {error}")
        monkeypatch.setattr(launch, "GROUP_SIZE", 3)
        monkeypatch.setattr(launch, "BLOCK_SIZE", 7)
        if os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
            _copy_through_buffers(monkeypatch)
    return Backend(request.param, request.node.nodeid)
