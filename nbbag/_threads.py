"""The threading layer nbbag's parallel kernels run on, and what keeps nbbag safe on it.

Numba runs every ``parallel=True`` kernel of a process on one threading layer, chosen
at the process's first parallel call and fixed from then on:

=========  ====================================  =====================================
layer      kernels called from several threads   a child forked after a parallel call
=========  ====================================  =====================================
tbb        safe                                  safe
omp        safe                                  GNU OpenMP (Linux): Numba terminates
                                                 the child at its first parallel call
                                                 (a fork-start pool then hangs)
workqueue  two at once abort the process         safe
=========  ====================================  =====================================

What nbbag does (:func:`choose_layer` at import, :func:`guarded` on each call):

* It makes the ``tbb`` wheel's library loadable: pip puts it in ``<prefix>/lib``, off
  the dynamic loader's path, so Numba alone never finds it.
* Unless the user chose a layer (``NUMBA_THREADING_LAYER``, ``numba.config``), it asks
  Numba for ``forksafe``: TBB where it loads, else a layer that survives fork
  (workqueue on Linux, OpenMP elsewhere, where it is not GNU's).  The choice is
  process-wide: it is also the layer of the user's own parallel Numba code.
* Every call of the CPU host pipeline that may run a parallel kernel goes through
  :func:`guarded`: under workqueue those calls take one process-wide lock (they run one
  at a time: safe, not concurrent); in a child forked after GNU OpenMP started they
  raise RuntimeError before any kernel runs, rather than die or hang.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numba
from numba.core import config

# Numba's settings are not in its type annotations.
_config: Any = config

# The file name Numba loads TBB by (numba.np.ufunc.parallel), per platform.
TBB_LIBRARIES = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}
# What nbbag asks Numba for when the user did not choose: TBB, else a fork-safe layer.
DEFAULT_REQUEST = "forksafe"

FORKED_OMP = (
    "nbbag cannot run in this process: it was forked after Numba's 'omp' threading layer "
    "(GNU OpenMP, which does not survive fork) started in its parent, and its first "
    "parallel kernel would terminate it. Start worker processes with multiprocessing's "
    "'spawn' or 'forkserver' method, or use the TBB layer (pip install tbb, then leave "
    "NUMBA_THREADING_LAYER unset or set it to 'tbb')"
)

_lock = threading.RLock()  # re-entrant: a guarded call may make another
_free = False  # the layer is known and needs no guard: calls go straight through
_refusal: str | None = None  # why every guarded call raises (a forked GNU OpenMP child)


# -- the choice, at import ---------------------------------------------------------------
def _platform_key() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform


def tbb_wheel_library() -> Path | None:
    """The TBB library the ``tbb`` wheel installed, or None.

    The wheel's data files land in the install scheme's data directory: ``<prefix>/lib``
    for a venv or a system install (looked at first: no metadata scan), elsewhere for
    ``--user`` installs or Windows (found through the wheel's file list).
    """
    name = TBB_LIBRARIES.get(_platform_key())
    if name is None:
        return None
    candidate = Path(sys.prefix, "lib", name)
    if candidate.is_file():
        return candidate
    try:
        files = importlib.metadata.files("tbb") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            return Path(file.locate())
    return None


def preload_tbb() -> Path | None:
    """Load the ``tbb`` wheel's library, so that Numba's own lookup by file name (and
    its ``tbbpool`` extension's link to it) finds the copy already loaded; the path
    loaded, or None (no wheel, or it would not load: Numba then falls back)."""
    path = tbb_wheel_library()
    if path is None:
        return None
    try:
        ctypes.CDLL(str(path))
    except OSError:
        return None
    return path


def user_chose_layer() -> bool:
    """Whether the user picked a layer: ``NUMBA_THREADING_LAYER`` set (even to
    'default'), or ``numba.config.THREADING_LAYER`` (or Numba's config file) changed."""
    return (
        "NUMBA_THREADING_LAYER" in os.environ
        or str(_config.THREADING_LAYER).lower() != "default"
    )


def current_layer() -> str | None:
    """The layer Numba runs parallel kernels on, or None before the first one."""
    try:
        return numba.threading_layer()
    except ValueError:  # not initialised yet
        return None


def choose_layer() -> None:
    """Make TBB loadable and, unless the user chose, ask Numba for a fork-safe layer.

    Nothing changes once a layer runs (a parallel call made before nbbag was imported):
    :func:`guarded` then deals with whichever it is.
    """
    if current_layer() is not None:
        return
    preload_tbb()
    if not user_chose_layer():
        _config.THREADING_LAYER = DEFAULT_REQUEST


# -- the guard, on each call -------------------------------------------------------------
def guarded(function):
    """``function`` (a CPU host function that may run a parallel kernel), made safe on
    the process's threading layer.

    Once the layer is known to be thread- and fork-safe here (tbb; omp in the process
    that started it) the call goes straight through.  Under workqueue, and before the
    first parallel call (the layer is not known yet), it holds the process-wide lock;
    in a child forked after GNU OpenMP started it raises RuntimeError.
    """

    @functools.wraps(function)
    def call(*args, **kwargs):
        if _free:
            return function(*args, **kwargs)
        return _guarded_call(function, args, kwargs)

    return call


def _guarded_call(function, args, kwargs):
    if _refusal is not None:
        raise RuntimeError(_refusal)
    layer = current_layer()
    if layer is None or layer == "workqueue":
        with _lock:
            result = function(*args, **kwargs)
        _settle(current_layer())
        return result
    _settle(layer)
    return function(*args, **kwargs)


def _settle(layer: str | None) -> None:
    """Let calls go straight through once the layer is known to need no guard."""
    global _free
    if layer is not None and layer != "workqueue" and _refusal is None:
        _free = True


def _gnu_openmp() -> bool:
    """Whether Numba's omp layer is GNU OpenMP (which does not survive fork)."""
    pool = sys.modules.get("numba.np.ufunc.omppool")
    return getattr(pool, "openmp_vendor", None) == "GNU"


def _after_fork_in_child() -> None:
    """In a forked child: a fresh lock (another thread of the parent may have held it),
    and the refusal when GNU OpenMP had started in the parent."""
    global _lock, _free, _refusal
    _lock = threading.RLock()
    if current_layer() == "omp" and _gnu_openmp():
        _free = False
        _refusal = FORKED_OMP


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


choose_layer()
