"""The GPU backend: ``@cuda.jit`` kernels with the CPU kernels' argument order.

Needs numba-cuda (``pip install nbbag[cuda]``); importing this package without it
raises an ImportError that says so.  The public functions reach it on their own when a
device array comes in; :mod:`nbbag.kernels.cuda` re-exports the kernels.  Without a GPU
the kernels run under Numba's simulator (``NUMBA_ENABLE_CUDASIM=1``, set before
``numba.cuda`` is first imported).
"""

try:
    import numba_cuda  # noqa: F401  (numba.cuda is numba-cuda's only when installed)
    from numba import cuda  # noqa: F401
except ImportError as _error:
    from nbbag._device import CUDA_EXTRA_HINT

    raise ImportError(CUDA_EXTRA_HINT) from _error
