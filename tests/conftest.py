import os
import zlib

# The GPU tests run the CUDA kernels under Numba's simulator where there is no GPU.  It
# must be chosen before numba.cuda is first imported; NUMBA_ENABLE_CUDASIM=0 in the
# environment runs them on a real GPU instead.  The CPU tests do not touch numba.cuda.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
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


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh data per test, reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
