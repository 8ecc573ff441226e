"""One line on stderr when a process first compiles one of nbbag's kernels.

A fresh install compiles each kernel at its first call (seconds for a training run's
set) and says nothing while it does; the kernels are then cached on disk, and later
processes load them in a fraction of a second.  Numba announces each compilation (a
load from its cache is not one) as a ``numba:compile`` event: the first for a function
of nbbag prints the line, once per process.  ``NBBAG_COMPILE_NOTICE=0`` silences it.

Imported by ``nbbag/__init__.py``.
"""

from __future__ import annotations

import os
import sys

from numba.core import event

MESSAGE = (
    "nbbag: compiling kernels for their first use (seconds, once: they are cached on "
    "disk; `python -m nbbag.warm_up` compiles ahead)"
)


class _FirstCompileNotice(event.Listener):
    def __init__(self) -> None:
        self.printed = False

    def on_start(self, ev: event.Event) -> None:
        if self.printed:
            return
        dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if module.startswith("nbbag."):
            self.printed = True
            if os.environ.get("NBBAG_COMPILE_NOTICE", "1") != "0":
                print(MESSAGE, file=sys.stderr, flush=True)

    def on_end(self, ev: event.Event) -> None:
        pass


NOTICE = _FirstCompileNotice()
event.register("numba:compile", NOTICE)
