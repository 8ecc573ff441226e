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


def pytest_configure(config):
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
    return Backend(request.param, request.node.nodeid)
