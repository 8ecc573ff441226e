"""The performance issues' acceptance items, computed from one run's medians.

Items 1-4 are the performance issue's; item 6 is the host-layer issue's call-cost
target, on tiny batches.  Each check is a ratio (or a fraction) against a target: "on
par" is a ratio >= 1.0, "flat" is max / min <= 1.2 over the sizes measured.  A check
whose benchmarks are not in the run is reported as not measured, never as passed; a
check without a target (``scored=False``) only reports its value.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.results import Results, gbps

FORWARD_DIM = 64
FLAT = 1.2  # max / min of a time that should not grow with V
BANDWIDTH_FRACTION = 0.70
TINY_BAG_COUNTS = (1, 32)
TINY_NOTE = "host-layer issue: call-cost target"


@dataclass(frozen=True)
class Check:
    """One acceptance check: its item number, what it compares, the value, the
    target and whether it passed (None: not measured, or no target: ``scored`` False)."""

    item: int
    what: str
    value: float | None
    target: str
    passed: bool | None
    note: str = ""
    scored: bool = True

    @property
    def verdict(self) -> str:
        """ "pass", "FAIL", "reported" (no target) or "not measured"."""
        if self.value is not None and not self.scored:
            return "reported"
        if self.passed is None:
            return "not measured"
        return "pass" if self.passed else "FAIL"


def _ratio(results: Results, peer: str, **extra) -> float | None:
    ours, theirs = results.median("nbbag", **extra), results.median(peer, **extra)
    return None if ours is None or theirs is None else theirs / ours


def _at_least(item: int, what: str, value: float | None, minimum: float, note="") -> Check:
    passed = None if value is None else value >= minimum
    return Check(item, what, value, f">= {minimum:g}", passed, note)


def forward_checks(results: Results) -> list[Check]:
    """Item 1: the forward at V = 1M, 4096 bags x ~50, against torch."""
    checks = []
    targets = [
        ("sum", FORWARD_DIM, 1.2),
        ("mean", FORWARD_DIM, 1.2),
        ("max", FORWARD_DIM, 10),
    ]
    targets += [(mode, dim, 1.0) for dim in (16, 256) for mode in ("sum", "mean", "max")]
    for mode, dim, minimum in targets:
        for dist in ("uniform", "zipf"):
            value = _ratio(results, "torch", op="forward", mode=mode, dim=dim, dist=dist)
            what = f"forward {mode}, D={dim}, {dist}: torch/nbbag"
            checks.append(_at_least(1, what, value, minimum))
    return checks


def step_checks(results: Results) -> list[Check]:
    """Item 2: the training step at V = 1M against torch sparse and dense scatter-add."""
    checks = []
    for opt, torch_name in (("sgd", "torch SGD"), ("adam", "torch SparseAdam")):
        for peer, minimum in (("torch", 4), ("dense", 30)):
            value = _ratio(results, peer, op="step", opt=opt)
            name = torch_name if peer == "torch" else "dense scatter-add"
            what = f"step {opt} (fwd+bwd+update): {name}/nbbag"
            checks.append(_at_least(2, what, value, minimum))
    return checks


def _by_size(results: Results, impl: str) -> dict[int, float]:
    return {
        e.extra["V"]: e.median
        for e in results.entries
        if e.impl == impl and e.extra.get("op") == "step-scaling"
    }


def _size_note(sizes) -> str:
    return f"V = {min(sizes):.0e}..{max(sizes):.0e}" if sizes else ""


def scaling_checks(results: Results) -> list[Check]:
    """Item 3: the sparse paths' step time is flat in V; the dense one grows."""
    checks = []
    for impl in ("nbbag", "nbbag-grad"):
        times = _by_size(results, impl)
        value = max(times.values()) / min(times.values()) if len(times) > 1 else None
        passed = None if value is None else value <= FLAT
        what = f"scaling: {impl} step time max/min over V"
        checks.append(Check(3, what, value, f"<= {FLAT:g}", passed, _size_note(times)))
    times = _by_size(results, "dense")
    value = None
    if len(times) > 1:
        value = times[max(times)] / times[min(times)]
    what = "scaling: dense step time, largest V / smallest V (grows)"
    checks.append(_at_least(3, what, value, FLAT, _size_note(times)))
    return checks


def bandwidth_checks(results: Results) -> list[Check]:
    """Item 4: the forward's effective bandwidth (sum, D = 256) against a large copy."""
    copy = results.copy_bandwidth()
    checks = []
    for dist in ("uniform", "zipf"):
        entry = results.find("nbbag", op="forward", mode="sum", dim=256, dist=dist)
        value = None if entry is None or copy is None else gbps(entry) / copy
        note = "" if entry is None else f"{gbps(entry):.1f} GB/s"
        if copy is not None:
            note += f" vs copy {copy:.1f} GB/s"
        what = f"forward sum, D=256, {dist}: GB/s / large-copy GB/s"
        checks.append(_at_least(4, what, value, BANDWIDTH_FRACTION, note.strip()))
    return checks


def _reported(item: int, what: str, value: float | None, note: str = "") -> Check:
    return Check(item, what, value, "none", None, note, scored=False)


def tiny_checks(results: Results) -> list[Check]:
    """Item 6: the forward on tiny batches against torch (the call-cost target), and
    the tiny training step's ratio, reported without a target."""
    checks = []
    for num_bags in TINY_BAG_COUNTS:
        value = _ratio(results, "torch", op="tiny-forward", num_bags=num_bags)
        what = f"tiny forward B={num_bags}: torch/nbbag"
        checks.append(_at_least(6, what, value, 1.0, TINY_NOTE))
    for num_bags in TINY_BAG_COUNTS:
        value = _ratio(results, "torch", op="tiny-step", num_bags=num_bags)
        what = f"tiny step B={num_bags} (fwd+bwd+Adagrad): torch/nbbag"
        checks.append(_reported(6, what, value))
    return checks


def acceptance_checks(results: Results) -> list[Check]:
    """Every check of items 1-4 and 6, in order."""
    return (
        forward_checks(results)
        + step_checks(results)
        + scaling_checks(results)
        + bandwidth_checks(results)
        + tiny_checks(results)
    )
