"""benchmarks.ceiling's timing and table, on stand-in cases: no C is built here."""

from __future__ import annotations

import math

import pytest

from benchmarks import ceiling


def test_interleaved_medians_warms_up_then_times_every_case_each_round():
    calls = {"a": 0, "b": 0}

    def case(name):
        def call():
            calls[name] += 1

        return call

    medians = ceiling.interleaved_medians({name: case(name) for name in calls}, 5)
    assert calls == {"a": 2 + 5, "b": 2 + 5}
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


def test_table_reports_the_best_c_kernel_and_the_ratios():
    row = dict(dim=64, dist="zipf", moved=2e9, nbbag=1.0e-3, torch=1.2e-3)
    row.update({"best": "C prefetch 16, half", "C prefetch 16, half": 1.0e-3})
    lines = ceiling.table([row]).splitlines()
    assert lines[0].startswith("| D | ids |") and len(lines) == 3
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    times = ["1.000", "1.200", "1.000 (prefetch 16, half)"]
    assert cells == ["64", "zipf", *times, "2000.0", "1.20", "1.20"]


def test_table_without_torch_leaves_its_ratios_undefined():
    row = dict(dim=16, dist="uniform", moved=1e9, nbbag=1e-3)
    row.update({"best": "C no prefetch", "C no prefetch": 1e-3})
    cells = ceiling.table([row]).splitlines()[2].strip("|").split("|")
    assert math.isnan(float(cells[3])) and math.isnan(float(cells[6]))


def test_main_rejects_a_width_the_c_kernels_do_not_cover():
    with pytest.raises(SystemExit):
        ceiling.main(["--dims", "32"])


def test_c_variants_ask_for_whole_rows_or_their_leading_half():
    variants = ceiling.c_variants(64)
    assert variants["no prefetch"] == (0, 0)
    assert variants["prefetch 16, whole"] == (16, 4)
    assert variants["prefetch 8, half"] == (8, 2)
    assert ceiling.c_variants(16)["prefetch 32, half"] == (32, 1)
    assert len(variants) == 1 + len(ceiling.DISTANCES) * len(ceiling.SHARES)
