"""The reduction modes, as an IntEnum; the public API takes the enum or its name."""

from __future__ import annotations

from enum import IntEnum


class Mode(IntEnum):
    """How a bag's rows are reduced to one row."""

    SUM = 0
    MEAN = 1
    MAX = 2
    SQRTN = 3

    @classmethod
    def parse(cls, mode: Mode | str) -> Mode:
        """Return the Mode for ``mode`` (a Mode or a case-insensitive name)."""
        if isinstance(mode, cls):
            return mode
        if isinstance(mode, str) and mode.upper() in cls.__members__:
            return cls[mode.upper()]
        names = ", ".join(repr(m.name.lower()) for m in cls)
        raise ValueError(f"mode must be one of {names}, got {mode!r}")
