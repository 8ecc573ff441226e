"""Numba's on-disk cache, made correct across nbbag's files.

Numba stamps a cached kernel with the source of the file that defines it, not with the
files of what it calls or inlines (the row helpers, the shared math, the optimizer
rules): after an edit to one of those, a kernel defined elsewhere would load stale
machine code.  Every kernel defined inside nbbag is stamped here with all of nbbag's
sources instead, so any edit to the package recompiles its kernels on their next call.
Kernels defined outside the package keep Numba's own locators.

Imported by ``nbbag/__init__.py`` before any kernel is defined.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from numba.core import caching

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def package_stamp() -> str:
    """A hash of every ``.py`` file of the package, read once per process."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _in_package(py_file: str) -> bool:
    return Path(py_file).resolve().is_relative_to(PACKAGE)


def _package_stamped(locator: type) -> type:
    """``locator`` for the package's own files, with the package-wide stamp."""

    class PackageStamped(locator):
        def get_source_stamp(self):
            return package_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not _in_package(py_file):
                return None
            return super().from_function(py_func, py_file)

    PackageStamped.__name__ = f"PackageStamped{locator.__name__}"
    return PackageStamped


def _numba_class(name: str) -> Any:
    """A class of Numba's caching module: ``name``, or ``_name`` as older Numba spells
    the locators."""
    found = getattr(caching, name, None) or getattr(caching, f"_{name}", None)
    if found is None:
        raise ImportError(f"numba.core.caching has no {name}: an unsupported Numba")
    return found


def install() -> None:
    """Put the package-stamped locators first (idempotent)."""
    classes = _numba_class("CacheImpl")._locator_classes
    if any(getattr(c, "__name__", "").startswith("PackageStamped") for c in classes):
        return
    ours = [
        _package_stamped(_numba_class(name))
        for name in (
            "UserProvidedCacheLocator",
            "InTreeCacheLocator",
            "UserWideCacheLocator",
        )
    ]
    classes[:0] = ours


install()
