"""One Python source, both targets: a device function built from a CPU ``@njit`` one.

The per-item math that is plain scalar and array code (no ``prange``, no ``cuda.*``)
is written once, as an ``@njit`` function in :mod:`nbbag.cpu`; ``device_twin`` compiles
the same Python function for the GPU.  Such a shared function is a leaf: it calls no
other ``@njit`` function (values are passed in instead), so that it compiles for the
device as it stands and runs under the simulator, which executes device functions as
plain Python.
"""

from __future__ import annotations

from numba import cuda


def device_twin(cpu_function):
    """``cpu_function`` (an ``@njit`` dispatcher) compiled as a CUDA device function
    from the same Python source."""
    return cuda.jit(device=True)(cpu_function.py_func)
