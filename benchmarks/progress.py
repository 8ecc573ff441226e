"""A pytest plugin that reports the suite's progress to ``benchmarks.report``.

Loaded with ``-p benchmarks.progress``; writes one line per event to the file
descriptor named by ``NBBAG_PROGRESS_FD`` (a pipe the report reads): ``total N`` once
the suite is collected, then ``done NODEID`` as each benchmark finishes (passed,
failed or skipped).  Without the variable it does nothing.
"""

from __future__ import annotations

import os

_FD = os.environ.get("NBBAG_PROGRESS_FD")
_stream = os.fdopen(int(_FD), "w", buffering=1) if _FD else None


def _emit(kind: str, value) -> None:
    if _stream is not None:
        _stream.write(f"{kind} {value}\n")


def pytest_collection_finish(session) -> None:
    _emit("total", len(session.items))


def pytest_runtest_logreport(report) -> None:
    # A test's end: its call, or its setup when that failed or skipped it.
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _emit("done", report.nodeid)
