"""The report's figures: step time against V, and the forward's GB/s per mode and D.

matplotlib with the Agg backend: files only, no display needed.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.results import Results, gbps  # noqa: E402

SCALING_PATHS = {
    "nbbag": "nbbag: step_fused (no gradient built)",
    "nbbag-grad": "nbbag-grad: RowSparseGrad, then opt.step",
    "nbbag-scipy": "nbbag-scipy: the gradient as a SciPy CSR, then opt.step",
    "torch": "torch: sparse=True, backward, SGD",
    "dense": "dense: np.add.at into (V, D) zeros, dense update",
}
# The dense NumPy forward (30-100x slower) would be bars of ~1% of the axis: left out.
FORWARD_IMPLS = ("nbbag", "torch")
MODES = ("sum", "mean", "max", "sqrtn")
DPI = 120


def plot_scaling(results: Results, path) -> bool:
    """Step time (ms) against V, log-log, one line per path; False if no data."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for impl, label in SCALING_PATHS.items():
        points = sorted(
            (e.extra["V"], e.median * 1e3)
            for e in results.entries
            if e.impl == impl and e.extra.get("op") == "step-scaling"
        )
        if points:
            sizes, times = zip(*points, strict=True)
            ax.plot(sizes, times, marker="o", label=label)
            drawn = True
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("table rows V (D = 64 float32)")
    ax.set_ylabel("SGD step time, median (ms)")
    ax.set_title("One training step (fwd + bwd + SGD), 4096 bags x ~50 ids, vs V")
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        # outside the axes: inside, it hides the dense line
        ax.legend(title="path", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return drawn


def _forward_rates(results: Results, dist: str) -> dict[tuple[str, int], dict[str, float]]:
    rates: dict[tuple[str, int], dict[str, float]] = {}
    for entry in results.entries:
        extra = entry.extra
        if extra.get("op") == "forward" and extra.get("dist") == dist:
            rates.setdefault((extra["mode"], extra["dim"]), {})[entry.impl] = gbps(entry)
    return rates


def _bandwidth_panel(ax, results: Results, dist: str, copy: float | None) -> bool:
    rates = _forward_rates(results, dist)
    order = {mode: i for i, mode in enumerate(MODES)}
    cases = sorted(rates, key=lambda case: (order.get(case[0], len(order)), case[1]))
    x = np.arange(len(cases))
    width = 0.8 / len(FORWARD_IMPLS)
    for i, impl in enumerate(FORWARD_IMPLS):
        heights = [rates[case].get(impl, np.nan) for case in cases]
        where = x + (i - (len(FORWARD_IMPLS) - 1) / 2) * width
        ax.bar(where, heights, width, label=impl)
        for position, height in zip(where, heights, strict=True):
            if np.isnan(height):  # the peer lacks the mode (torch has no sqrtn)
                ax.text(position, 0, "n/a", ha="center", va="bottom", fontsize=7)
    if copy is not None:
        ax.axhline(
            copy, color="black", linestyle="--", label=f"large copy ({copy:.1f} GB/s)"
        )
    ax.set_xticks(x, [f"{mode}\nD={dim}" for mode, dim in cases], fontsize=8)
    ax.set_ylabel("GB/s (rows read + output written)")
    ids = "Zipf(1.05)" if dist == "zipf" else dist
    ax.set_title(f"Forward, V = 1M, 4096 bags x ~50 {ids} ids (medians)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return bool(cases)


def plot_bandwidth(results: Results, path) -> bool:
    """The forward's effective GB/s per mode and D (one panel per id distribution),
    with the large-copy bandwidth as a horizontal line; False if no data."""
    copy = results.copy_bandwidth()
    fig, axes = plt.subplots(2, 1, figsize=(10, 8))
    drawn = [
        _bandwidth_panel(ax, results, dist, copy)
        for ax, dist in zip(axes, ("uniform", "zipf"), strict=True)
    ]
    axes[-1].set_xlabel("mode and embedding dimension D (float32)")
    fig.text(
        0.5, 0.005,
        "Bytes read count each id's row once per occurrence; rows read again (Zipf's hot "
        "rows, small tables) come from the caches,\nso a rate above the copy line (DRAM "
        "read + write) measures cache hits, not a faster memory.",
        ha="center", va="bottom", fontsize=8,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return any(drawn)
