"""The CPU backend: ``@njit`` kernels, compiled on first use and cached on disk, and
their host pipeline (:mod:`nbbag.cpu.api`)."""

from typing import Any

# What Numba may run in parallel in a CPU kernel: its explicit prange loops only.  Array
# expressions and NumPy calls (np.arange, arr - 1) stay serial instead of becoming
# parallel regions of their own: each region costs ~0.3 s to compile and ~1.7 us to
# start, which their small arrays never win back.
PARALLEL: Any = {  # (Numba's annotations say a bool; a dict of passes is documented)
    "prange": True,
    "comprehension": False,
    "reduction": False,
    "inplace_binop": False,
    "setitem": False,
    "numpy": False,
    "stencil": False,
    "fusion": False,
}
