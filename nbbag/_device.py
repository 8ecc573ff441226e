"""Which backend an array belongs to: the one lookup the front makes before it calls
the backend's host module (:mod:`nbbag.cpu.api` or :mod:`nbbag.cuda.api`, the same
function names).

nbbag imports without numba-cuda: nothing here imports ``numba.cuda``.  The GPU
backend is loaded the first time a device array arrives.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from nbbag.cpu import api as cpu_api

CUDA_EXTRA_HINT = "GPU arrays need the 'cuda' extra: pip install nbbag[cuda] (numba-cuda)"


def is_device_array(value) -> bool:
    """Whether ``value`` lives on a GPU: a Numba device array (real or simulated) or
    anything exposing ``__cuda_array_interface__`` (CuPy, torch CUDA tensors)."""
    if value is None or isinstance(value, np.ndarray):
        return False
    return bool(getattr(value, "__cuda_ndarray__", False)) or hasattr(
        value, "__cuda_array_interface__"
    )


def cuda_backend():
    """The GPU host module (:mod:`nbbag.cuda.api`); ImportError naming the ``cuda``
    extra when numba-cuda is not installed."""
    try:
        importlib.import_module("numba_cuda")
    except ImportError as error:
        raise ImportError(CUDA_EXTRA_HINT) from error
    return importlib.import_module("nbbag.cuda.api")


def backend_for(array):
    """The host module of the backend ``array`` (a table) belongs to: the GPU's for a
    device array, else the CPU's (whose checks refuse what is not a NumPy array)."""
    if type(array) is np.ndarray or not is_device_array(array):
        return cpu_api
    return cuda_backend()


def backend_named(device) -> Any:
    """The host module for ``device``, "cpu" or "cuda" (where a new table is made)."""
    if device == "cpu":
        return cpu_api
    if device == "cuda":
        return cuda_backend()
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
