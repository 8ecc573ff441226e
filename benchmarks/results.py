"""A pytest-benchmark JSON file as the report reads it: one median per case.

A case whose round is a loop of calls (the tiny batches: ``calls_per_round`` in its
extra_info) gets the median per call, the round's median divided by the loop's length,
so that every ratio compares calls, whatever each side's loop length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """One benchmark: its group, impl (path), median in seconds per call and
    extra_info."""

    group: str
    impl: str
    median: float
    extra: dict = field(default_factory=dict)

    def matches(self, **wanted) -> bool:
        """Whether every ``key=value`` in ``wanted`` is in extra_info."""
        return all(self.extra.get(key) == value for key, value in wanted.items())


class Results:
    """The entries and machine info of one run."""

    def __init__(self, data: dict):
        self.machine = data.get("machine_info", {})
        self.datetime = data.get("datetime", "?")
        self.entries = [_entry(bench) for bench in data.get("benchmarks", [])]

    @classmethod
    def load(cls, path) -> Results:
        """Read ``path``, written by ``pytest --benchmark-json``."""
        with open(path) as f:
            return cls(json.load(f))

    def find(self, impl: str, **extra) -> Entry | None:
        """The first entry of ``impl`` whose extra_info holds ``extra``."""
        for entry in self.entries:
            if entry.impl == impl and entry.matches(**extra):
                return entry
        return None

    def median(self, impl: str, **extra) -> float | None:
        """The median (s) of ``find(impl, **extra)``, None when absent."""
        entry = self.find(impl, **extra)
        return None if entry is None else entry.median

    def groups(self) -> dict[str, list[Entry]]:
        """The entries by group, in run order."""
        by_group: dict[str, list[Entry]] = {}
        for entry in self.entries:
            by_group.setdefault(entry.group, []).append(entry)
        return by_group

    def copy_bandwidth(self) -> float | None:
        """The machine's large-copy bandwidth in GB/s (read + written): the faster
        copy impl's median."""
        rates = [gbps(e) for e in self.entries if e.extra.get("op") == "copy"]
        return max(rates, default=None)  # GB/s


def gbps(entry: Entry) -> float:
    """``entry``'s bytes moved (extra_info ``bytes_moved``) per second, in GB/s."""
    return entry.extra["bytes_moved"] / entry.median / 1e9


def per_call_median(bench: dict) -> float:
    """The median of ``bench`` (one benchmark of the JSON) per call, in seconds: its
    rounds' median divided by its extra_info's ``calls_per_round`` (1 when absent)."""
    calls = (bench.get("extra_info") or {}).get("calls_per_round") or 1
    return bench["stats"]["median"] / calls


def _entry(bench: dict) -> Entry:
    extra = bench.get("extra_info") or {}
    impl = extra.get("impl") or (bench.get("params") or {}).get("impl") or "nbbag"
    return Entry(bench.get("group") or bench["name"], impl, per_call_median(bench), extra)
