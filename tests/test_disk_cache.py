"""Numba's disk cache is stamped with all of nbbag's sources: an edit to a file a kernel
only calls into (a row helper, a shared function, an optimizer rule) recompiles it."""

import shutil
from pathlib import Path

from nbbag import _cache
from nbbag.cpu import forward


def test_kernels_are_stamped_with_the_whole_package():
    locator = forward.bag_sum._cache._impl.locator
    assert type(locator).__name__.startswith("PackageStamped")
    assert locator.get_source_stamp() == _cache.package_stamp()


def test_the_stamp_covers_every_source_file(tmp_path, monkeypatch):
    copy = tmp_path / "nbbag"
    shutil.copytree(_cache.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "PACKAGE", copy)
    _cache.package_stamp.cache_clear()
    try:
        before = _cache.package_stamp()
        rules = copy / "rules.py"  # no kernel is defined in it: the optimizers' rules
        rules.write_text(rules.read_text() + "\n# an edit\n")
        _cache.package_stamp.cache_clear()
        assert _cache.package_stamp() != before
    finally:
        _cache.package_stamp.cache_clear()


def test_code_outside_the_package_keeps_numbas_own_stamp(tmp_path):
    source = tmp_path / "user_module.py"
    source.write_text("def f(x):\n    return x + 1\n")
    namespace: dict = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    from numba import njit

    user_kernel = njit(cache=True)(namespace["f"])
    locator = user_kernel._cache._impl.locator
    assert not type(locator).__name__.startswith("PackageStamped")
    assert Path(locator._py_file) == source
