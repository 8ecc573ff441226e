"""Functions compiled for both targets from one Python source.

A function decorated with :func:`shared` is written once, in plain Python that Numba
compiles for either target: it is an ``@njit(inline="always")`` function, so a CPU
kernel inlines it into its own Numba IR (nothing is compiled on its own: each function
compiled separately cost ~0.1 s of a cold start), numba-cuda compiles it into the
calling ``@cuda.jit`` kernel or device function, and Numba's CUDA simulator, which runs
device code as Python, runs its Python source.  It may call only Python builtins,
``math``, NumPy's scalar functions and other shared functions: never a CPU-only
``@njit`` kernel or a device-only ``@cuda.jit`` function.  ``SHARED`` lists them all,
for the test that holds them to it.

An argument that is ``None`` removes the branches that test it (``if weights is
None``): that is how one source serves a weighted and an unweighted kernel.

:func:`scalar` marks the other kind of function both targets call: an ``@njit``
function of scalars built on LLVM intrinsics (:mod:`nbbag.base.halves`), which has no
Python source to run.  Both targets compile it as they compile a shared one; simulated
device code calls its CPU machine code on its scalars.  ``SCALAR`` lists them.
"""

from __future__ import annotations

from numba import config, njit
from numba.core.registry import CPUDispatcher

SHARED: list = []
SCALAR: list = []


class SharedDispatcher(CPUDispatcher):
    """A CPU dispatcher that, called from Python under the CUDA simulator (from
    simulated device code, whose arrays the CPU cannot take), runs its Python source."""

    def __call__(self, *args, **kwargs):
        if config.ENABLE_CUDASIM:
            return self.py_func(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def shared(function):
    """``function`` compiled for both targets (see the module's docstring)."""
    dispatcher = njit(inline="always")(function)
    dispatcher.__class__ = SharedDispatcher
    SHARED.append(function)
    return dispatcher


def scalar(**options):
    """An ``@njit(**options)`` function of scalars that both targets call (see the
    module's docstring)."""

    def decorate(function):
        dispatcher = njit(**options)(function)
        SCALAR.append(dispatcher)
        return dispatcher

    return decorate
