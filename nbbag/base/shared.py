"""Functions compiled for both targets from one Python source.

A function decorated with :func:`shared` is plain Python (so Numba's CUDA simulator,
which runs device code as Python, runs it as it stands) that Numba compiles into
whichever target calls it: a CPU ``@njit`` kernel, or a ``@cuda.jit`` kernel or device
function.  It may call only Python builtins, ``math``, NumPy's scalar functions and other
shared functions: never a CPU-only ``@njit`` function or a device-only ``@cuda.jit`` one.
``SHARED`` lists them all, for the test that holds them to it.

A shared function is compiled for the types it is called with, so an argument that is
``None`` removes the branches that test it (``if weights is None``): that is how one
source serves a weighted and an unweighted kernel.

Numba caches a CPU kernel on disk keyed on its own file, not on the files of the
shared functions compiled into it; ``nbbag._cache`` stamps every cache entry with the
whole package's sources instead, so an edit here recompiles what uses it.
"""

from __future__ import annotations

from numba.extending import register_jitable

SHARED: list = []


def shared(function):
    """Register ``function`` as compiled for both targets (see the module's docstring).

    Each is compiled as a function of its own, for the types of each call, and LLVM
    inlines it into its caller (an element update called in a loop over a row is
    vectorised with the loop).  Not inlined in Numba's IR: that would type the branches
    of its ``is None`` tests for every call, and numba-cuda mistypes the arguments of an
    overload inlined so."""
    SHARED.append(function)
    return register_jitable(function)
