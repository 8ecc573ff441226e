"""Compile every GPU kernel the tests launch for a real GPU, on a machine without one.

The GPU tests run the CUDA kernels under Numba's simulator, which runs them as Python:
it never types or compiles them, so code that the simulator runs but numba-cuda cannot
compile would pass every test here and fail on the first real GPU.  This closes that
gap in two steps:

1. the tests run with ``NBBAG_RECORD_LAUNCHES`` set to a folder: each test process
   records every kernel launch's argument types (the types a real launch compiles
   for) into a file there (:class:`LaunchRecorder`, registered by ``conftest.py``);
2. ``python tests/gpu_compile.py FOLDER`` compiles each recorded (kernel, types) once
   to PTX for compute capability 9.0 with ``numba.cuda.compile_ptx``, with the real
   CUDA target (``NUMBA_ENABLE_CUDASIM=0``).

Step 2 needs NVVM and NVRTC (a CUDA toolkit, or the ``nvidia-cuda-nvcc-cu12`` and
``nvidia-cuda-nvrtc-cu12`` wheels) but no GPU and no driver.  CI runs both steps::

    NBBAG_RECORD_LAUNCHES=launches .venv/bin/python -m pytest ...
    .venv/bin/python tests/gpu_compile.py launches

It prints each failure with its kernel and types and exits 1 if any launch did not
compile (or none was recorded).  PTX is as far as it goes: it cannot show what the
kernels compute on a GPU (the simulated tests do) nor how fast they run.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

COMPUTE_CAPABILITY = (9, 0)


# -- step 1: record the launches under the simulator ---------------------------------
def _host_value(value):
    """A simulated kernel argument as the host value its type is read from: a
    simulated device array as its NumPy array, tuples element by element."""
    array = getattr(value, "_ary", None)
    if array is not None:
        return array
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_host_value(item) for item in value)
    return value


class LaunchRecorder:
    """A pytest plugin that records (module, kernel name, argument types) of every
    nbbag kernel the simulator launches, written at the session's end to a file of
    its own (one per test process) in ``folder``."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.launches: set = set()

    def pytest_sessionstart(self, session):
        from numba import typeof
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        launched = FakeCUDAKernel.__call__
        launches = self.launches

        def recording_call(kernel, *args):
            function = kernel.fn
            if not kernel._device and function.__module__.startswith("nbbag."):
                types = tuple(typeof(_host_value(arg)) for arg in args)
                launches.add((function.__module__, function.__qualname__, types))
            return launched(kernel, *args)

        FakeCUDAKernel.__call__ = recording_call

    def pytest_sessionfinish(self, session):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"launches-{os.getpid()}.pickle", "wb") as file:
            pickle.dump(self.launches, file)


# -- step 2: compile them for the real target ---------------------------------------
def compile_all(folder: str) -> int:
    """Compile each launch recorded in ``folder`` to PTX; the number that failed
    (every launch, if none was recorded)."""
    import importlib
    import types as pytypes

    from numba import cuda
    from numba.cuda import dispatcher

    # Typing a call to a device function compiles it for the current device; there is
    # none here, so it is told the capability the kernels are compiled for.
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(
        compute_capability=COMPUTE_CAPABILITY
    )
    launches: set = set()
    for path in sorted(Path(folder).glob("launches-*.pickle")):
        with open(path, "rb") as file:
            launches |= pickle.load(file)
    if not launches:
        print(f"no kernel launch was recorded in {folder}", file=sys.stderr)
        return 1
    failed = 0
    for module_name, name, types in sorted(launches, key=lambda x: (x[0], x[1], str(x[2]))):
        kernel = getattr(importlib.import_module(module_name), name)
        try:
            cuda.compile_ptx(kernel.py_func, types, cc=COMPUTE_CAPABILITY)
        except Exception as error:  # report every failure, not just the first
            failed += 1
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"FAILED {module_name}.{name}{types}:\n    {type(error).__name__}: "
                  f"{first_line}")  # fmt: skip
    print(f"{len(launches) - failed} of {len(launches)} kernel launches compiled to PTX "
          f"for compute capability {COMPUTE_CAPABILITY}")  # fmt: skip
    return failed


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"  # before numba.cuda is imported
    return 1 if compile_all(argv[0]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
