"""The reduction modes, as an IntEnum; the public API takes the enum or its name."""

from __future__ import annotations

from enum import IntEnum


class Mode(IntEnum):
    """How a bag's rows are reduced to one row."""

    SUM = 0
    MEAN = 1
    MAX = 2
    SQRTN = 3

    def __str__(self) -> str:
        """The mode's name as the API spells it: ``str(Mode.MEAN) == "mean"``."""
        return self.name.lower()

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @property
    def takes_weights(self) -> bool:
        """Whether the mode takes ``per_sample_weights`` (all but max)."""
        return self is not Mode.MAX

    @property
    def divides(self) -> bool:
        """Whether a bag's (weighted) sum is divided by something its weights give
        (mean, sqrtn): their gradient then reads the output."""
        return self in (Mode.MEAN, Mode.SQRTN)

    @classmethod
    def parse(cls, mode: Mode | str) -> Mode:
        """Return the Mode for ``mode`` (a Mode or a case-insensitive name)."""
        # Exact types and a plain dict first: Enum's own lookups and isinstance run
        # Python code (~12 us a call when the interpreter's data is out of cache after
        # a kernel, measured).
        if type(mode) is str:
            found = _BY_NAME.get(mode)
            if found is not None:
                return found
        if isinstance(mode, cls):
            return mode
        found = _BY_NAME.get(mode.lower()) if isinstance(mode, str) else None
        if found is not None:
            return found
        names = ", ".join(repr(m.name.lower()) for m in cls)
        raise ValueError(f"mode must be one of {names}, got {mode!r}")


_BY_NAME = {member.name.lower(): member for member in Mode}
