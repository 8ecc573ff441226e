"""Summarise a pytest-benchmark JSON file as nbbag-vs-torch ratios, one row per group.

Usage: ``python benchmarks/ratios.py results.json``.  A ratio torch/nbbag above 1 means
nbbag is faster.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _impl(bench: dict) -> str | None:
    return bench.get("extra_info", {}).get("impl") or bench.get("params", {}).get("impl")


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

    medians: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        group = bench.get("group") or bench["name"]
        medians[group][_impl(bench)] = bench["stats"]["median"]

    print("| group | nbbag median (ms) | torch median (ms) | torch/nbbag |")
    print("|---|---:|---:|---:|")
    for group, by_impl in medians.items():
        ours, theirs = by_impl.get("nbbag"), by_impl.get("torch")
        ratio = f"{theirs / ours:.2f}" if ours and theirs else "-"
        print(f"| {group} | {_ms(ours)} | {_ms(theirs)} | {ratio} |")


if __name__ == "__main__":
    main()
