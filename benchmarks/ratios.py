"""Summarise a pytest-benchmark JSON file as nbbag-vs-peer ratios, one row per group.

Usage: ``python benchmarks/ratios.py results.json``.  A ratio peer/nbbag above 1 means
nbbag is faster.  The peers are torch and, where a group has one, a dense NumPy
baseline, FBGEMM's TBE and, in the collection groups, nbbag called per table
(``nbbag-per-feature``); a peer's columns appear only when some group has it (torch's
always).  Groups with nbbag alone (such as ``to_scipy``) get a second table: one row per
size V.  Groups with peers at several sizes V (such as ``step-scaling``) get a third:
one row per V, the impls side by side.  A case timed as a loop of calls
(``calls_per_round`` in its extra_info, the tiny batches) is shown per call.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

# the column order; any other peer follows, sorted
PEERS = ("torch", "dense", "tbe", "nbbag-per-feature")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3f}" if seconds >= 1e-4 else f"{seconds * 1e3:.5f}"


def _median(bench: dict) -> float:
    """The median per call: the rounds' median over ``calls_per_round`` (default 1)."""
    calls = bench.get("extra_info", {}).get("calls_per_round") or 1
    return bench["stats"]["median"] / calls


def _impl(bench: dict) -> str | None:
    return bench.get("extra_info", {}).get("impl") or bench.get("params", {}).get("impl")


def _print_ratios(medians: dict[str, dict[str, float]]) -> None:
    present = {impl for by_impl in medians.values() for impl in by_impl} - {"nbbag"}
    peers = [p for p in PEERS if p in present] + sorted(present - set(PEERS), key=str)
    if "torch" not in peers:
        peers.insert(0, "torch")  # always shown, as before the other peers existed
    header = ["group", "nbbag median (ms)"]
    for peer in peers:
        header += [f"{peer} median (ms)", f"{peer}/nbbag"]
    print("| " + " | ".join(header) + " |")
    print("|---" + "|---:" * (len(header) - 1) + "|")
    for group, by_impl in medians.items():
        ours = by_impl.get("nbbag")
        cells = [group, _ms(ours)]
        for peer in peers:
            theirs = by_impl.get(peer)
            cells += [_ms(theirs), f"{theirs / ours:.2f}" if ours and theirs else "-"]
        print("| " + " | ".join(cells) + " |")


def _print_scaling(scaling: dict[str, list[dict]]) -> None:
    present = {_impl(bench) for benches in scaling.values() for bench in benches}
    peers = [p for p in PEERS if p in present]
    peers += sorted(present - set(PEERS) - {"nbbag"}, key=str)
    header = ["group", "V", "nbbag median (ms)"]
    for peer in peers:
        header += [f"{peer} median (ms)", f"{peer}/nbbag"]
    print("| " + " | ".join(header) + " |")
    print("|---" + "|---:" * (len(header) - 1) + "|")
    for group, benches in scaling.items():
        by_size: dict[int, dict[str, float]] = defaultdict(dict)
        for bench in benches:
            by_size[bench["extra_info"]["V"]][_impl(bench)] = _median(bench)
        for size, by_impl in sorted(by_size.items()):
            ours = by_impl.get("nbbag")
            cells = [group, f"{size:,}", _ms(ours)]
            for peer in peers:
                theirs = by_impl.get(peer)
                cells += [_ms(theirs), f"{theirs / ours:.2f}" if ours and theirs else "-"]
            print("| " + " | ".join(cells) + " |")


def _print_sizes(alone: dict[str, list[dict]]) -> None:
    print("| group | V | nbbag median (ms) |")
    print("|---|---:|---:|")
    for group, benches in alone.items():
        for bench in benches:
            size = bench.get("extra_info", {}).get("V")
            size = "-" if size is None else f"{size:,}"
            print(f"| {group} | {size} | {_ms(_median(bench))} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", help="output of pytest --benchmark-json=...")
    args = parser.parse_args(argv)
    with open(args.json_file) as f:
        data = json.load(f)

    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    print(f"cpu: {cpu.get('brand_raw', '?')} ({cpu.get('count', '?')} logical cores)")
    print(
        f"python {info.get('python_version', '?')}, "
        f"numba {info.get('numba_version', '?')}, "
        f"numpy {info.get('numpy_version', '?')}, torch {info.get('torch_version', '?')}"
    )
    print(
        f"threads: numba {info.get('numba_threads', '?')}, "
        f"torch {info.get('torch_threads', '?')}; run {data.get('datetime', '?')}"
    )
    print()

    by_group: dict[str, list[dict]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        by_group[bench.get("group") or bench["name"]].append(bench)

    medians: dict[str, dict[str, float]] = {}
    # Groups without a peer that hold several sizes: one row per benchmark.
    alone: dict[str, list[dict]] = {}
    # Groups with peers at several sizes: one row per size.
    scaling: dict[str, list[dict]] = {}
    for group, benches in by_group.items():
        no_peer = all(_impl(bench) in ("nbbag", None) for bench in benches)
        sizes = {bench.get("extra_info", {}).get("V") for bench in benches} - {None}
        if no_peer and (sizes or len(benches) > 1):
            alone[group] = benches
        elif not no_peer and len(sizes) > 1:
            scaling[group] = benches
        else:
            medians[group] = {_impl(bench): _median(bench) for bench in benches}

    if medians:
        _print_ratios(medians)
    if alone:
        if medians:
            print()
        _print_sizes(alone)
    if scaling:
        if medians or alone:
            print()
        _print_scaling(scaling)


if __name__ == "__main__":
    main()
