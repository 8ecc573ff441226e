"""The benchmark report's machinery on a small synthetic run: no benchmark runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from benchmarks import report  # noqa: E402
from benchmarks.acceptance import acceptance_checks  # noqa: E402
from benchmarks.results import Results  # noqa: E402
from benchmarks.tables import (  # noqa: E402
    COLLECTION_TITLE,
    TINY_TITLE,
    collection_lines,
    ratio_lines,
    scaling_lines,
    tiny_lines,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GB = 1e9


def _bench(group: str, impl: str, median: float, **extra) -> dict:
    name = f"test[{group}-{impl}-{extra.get('V', '')}]"
    return {
        "name": name,
        "group": group,
        "stats": {"median": median},
        "extra_info": {"impl": impl, **extra},
    }


def _forward(mode, dim, dist, nbbag_s, torch_ratio):
    extra = dict(op="forward", mode=mode, dim=dim, dist=dist, bytes_moved=8 * GB)
    group = f"forward-{mode}-D{dim}-{dist}"
    return [
        _bench(group, "nbbag", nbbag_s, **extra),
        _bench(group, "torch", nbbag_s * torch_ratio, **extra),
        _bench(group, "dense", nbbag_s * 20, **extra),
    ]


def _scaling(impl, times):
    sizes = (10**4, 10**5, 10**6)
    return [
        _bench("step-scaling", impl, t, op="step-scaling", V=v)
        for v, t in zip(sizes, times, strict=True)
    ]


def _tiny(op, num_bags, nbbag_call_s, torch_call_s):
    """A tiny group: rounds of many calls, the median per round in ``stats``."""
    extra = dict(op=f"tiny-{op}", mode="sum", dim=64, V=100_000, num_bags=num_bags)
    group = f"tiny-{op}-B{num_bags}"
    return [
        _bench(group, "nbbag", nbbag_call_s * 200, calls_per_round=200, **extra),
        _bench(group, "torch", torch_call_s * 50, calls_per_round=50, **extra),
    ]


@pytest.fixture
def run_data() -> dict:
    benches = _forward("sum", 64, "uniform", 0.002, 1.5)  # passes >= 1.2
    benches += _forward("sum", 64, "zipf", 0.002, 1.1)  # fails >= 1.2
    benches += _forward("sum", 256, "uniform", 1.0, 1.0)  # 8 GB/s: 80% of the copy
    benches += [
        _bench("copy", "numba", 0.2, op="copy", nbytes=GB, bytes_moved=2 * GB),
        _bench("copy", "numpy", 0.4, op="copy", nbytes=GB, bytes_moved=2 * GB),
        _bench("step-sgd-zipf", "nbbag", 0.010, op="step", opt="sgd"),
        _bench("step-sgd-zipf", "torch", 0.050, op="step", opt="sgd"),
        _bench("step-sgd-zipf", "dense", 0.200, op="step", opt="sgd"),
    ]
    benches += _scaling("nbbag", (0.010, 0.011, 0.0115))  # flat
    benches += _scaling("nbbag-grad", (0.010, 0.012, 0.020))  # not flat
    benches += _scaling("dense", (0.1, 0.3, 2.0))
    benches += _scaling("torch", (0.03, 0.03, 0.04))
    machine = {"cpu_model": "Test CPU", "logical_cores": 2, "numba_threads": 2}
    return {"machine_info": machine, "datetime": "2026-01-01", "benchmarks": benches}


@pytest.fixture
def json_path(tmp_path, run_data):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(run_data))
    return path


def _checks(run_data) -> dict[str, object]:
    return {check.what: check for check in acceptance_checks(Results(run_data))}


def test_forward_and_step_checks(run_data):
    checks = _checks(run_data)
    assert checks["forward sum, D=64, uniform: torch/nbbag"].verdict == "pass"
    zipf = checks["forward sum, D=64, zipf: torch/nbbag"]
    assert zipf.verdict == "FAIL" and zipf.value == pytest.approx(1.1)
    assert checks["forward mean, D=64, uniform: torch/nbbag"].verdict == "not measured"
    assert checks["forward sum, D=256, uniform: torch/nbbag"].verdict == "pass"  # on par
    assert checks["step sgd (fwd+bwd+update): torch SGD/nbbag"].verdict == "pass"  # 5x
    dense = checks["step sgd (fwd+bwd+update): dense scatter-add/nbbag"]
    assert dense.verdict == "FAIL" and dense.value == pytest.approx(20)


def test_scaling_and_bandwidth_checks(run_data):
    checks = _checks(run_data)
    flat = checks["scaling: nbbag step time max/min over V"]
    assert flat.verdict == "pass" and flat.value == pytest.approx(1.15)
    assert flat.note == "V = 1e+04..1e+06"
    assert checks["scaling: nbbag-grad step time max/min over V"].verdict == "FAIL"
    grows = checks["scaling: dense step time, largest V / smallest V (grows)"]
    assert grows.value == pytest.approx(20)
    bandwidth = checks["forward sum, D=256, uniform: GB/s / large-copy GB/s"]
    assert bandwidth.value == pytest.approx(0.8) and bandwidth.verdict == "pass"
    assert checks["forward sum, D=256, zipf: GB/s / large-copy GB/s"].passed is None


def test_tables(run_data):
    results = Results(run_data)
    assert results.copy_bandwidth() == pytest.approx(10.0)  # 2 GB in 0.2 s
    ratios = "\n".join(ratio_lines(results))
    assert "| step-sgd-zipf | - | 10.000 | 50.000 | 5.00 | 200.000 | 20.00 |" in ratios
    assert "step-scaling" not in ratios and "copy" not in ratios
    scaling = "\n".join(scaling_lines(results))
    assert (
        "| 1,000,000 | 11.500 | 20.000 | - | 40.000 | 2000.000 | 3.48 | 173.91 |" in scaling
    )


def _collection(op, num_bags, nbbag_s, per_feature_s, tbe_s):
    opt = None if op == "forward" else op.removeprefix("step-")
    extra = dict(
        op="collection-forward" if opt is None else "collection-step",
        opt=opt,
        num_tables=26,
        max_rows=200_000,
        V=1_483_115,
        num_bags=num_bags,
        bag_len=10,
    )
    group = f"collection-{op}-B{num_bags}-L10"
    return [
        _bench(group, "nbbag", nbbag_s, **extra),
        _bench(group, "nbbag-per-feature", per_feature_s, **extra),
        _bench(group, "tbe", tbe_s, **extra),
    ]


def test_collections_and_tbe(run_data, tmp_path):
    data = dict(run_data)
    data["benchmarks"] = run_data["benchmarks"] + [
        _bench("step-sgd-zipf", "tbe", 0.030, op="step", opt="sgd"),
        *_collection("forward", 2048, 0.002, 0.006, 0.004),
        *_collection("step-sgd", 128, 0.001, 0.005, 0.0005),
    ]
    results = Results(data)
    ratios = "\n".join(ratio_lines(results))
    assert "| tbe (ms) | tbe/nbbag |" in ratios
    row = "| step-sgd-zipf | - | 10.000 | 50.000 | 5.00 | 200.000 | 20.00 | 30.000 | 3.00 |"
    assert row in ratios
    forward = [line for line in ratios.splitlines() if line.startswith("| forward-")]
    assert forward and all(line.endswith("| - | - |") for line in forward)  # no TBE
    assert "collection" not in ratios  # a table of their own
    lines = collection_lines(results)
    assert lines[0].startswith(
        "26 tables (the Criteo-Kaggle cardinalities capped at 200,000"
    )
    assert (
        "| collection-forward-B2048-L10 | 2048 | 10 | 2.000 | 6.000 | 3.00 | 4.000 | 2.00 |"
        in lines
    )
    assert (
        "| collection-step-sgd-B128-L10 | 128 | 10 | 1.000 | 5.000 | 5.00 | 0.500 | 0.50 |"
        in lines
    )
    # without TBE in the run, the ratio table is as it was
    assert "tbe" not in "\n".join(ratio_lines(Results(run_data)))
    assert collection_lines(Results(run_data)) == ["None in this run."]
    json_path = tmp_path / "bench.json"
    json_path.write_text(json.dumps(data))
    assert report.main(["--from-json", str(json_path), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert f"### {COLLECTION_TITLE}" in text and "| collection-forward-B2048-L10 |" in text


@pytest.fixture
def tiny_data() -> dict:
    """A partial run, as ``-k tiny`` gives: the tiny groups alone."""
    benches = _tiny("forward", 1, 4e-6, 5e-6)  # passes: 1.25
    benches += _tiny("forward", 32, 10e-6, 8e-6)  # fails: 0.80
    benches += _tiny("step", 1, 50e-6, 250e-6)
    benches += _tiny("step", 32, 100e-6, 1e-3)
    machine = {"cpu_model": "Test CPU", "logical_cores": 2, "quick": True}
    return {"machine_info": machine, "datetime": "2026-01-02", "benchmarks": benches}


def test_tiny_checks(tiny_data):
    checks = _checks(tiny_data)
    one = checks["tiny forward B=1: torch/nbbag"]
    assert one.verdict == "pass" and one.value == pytest.approx(1.25)  # per call
    assert one.item == 6 and one.target == ">= 1" and "call-cost" in one.note
    many = checks["tiny forward B=32: torch/nbbag"]
    assert many.verdict == "FAIL" and many.value == pytest.approx(0.8)
    step = checks["tiny step B=32 (fwd+bwd+Adagrad): torch/nbbag"]
    assert step.verdict == "reported" and step.value == pytest.approx(10)
    assert step.passed is None and not step.scored
    assert checks["forward sum, D=64, uniform: torch/nbbag"].verdict == "not measured"
    absent = _checks({"benchmarks": []})["tiny step B=1 (fwd+bwd+Adagrad): torch/nbbag"]
    assert absent.verdict == "not measured"


def test_tiny_lines_are_per_call(tiny_data, run_data):
    results = Results(tiny_data)
    assert results.median("nbbag", op="tiny-forward", num_bags=1) == pytest.approx(4e-6)
    lines = tiny_lines(results)
    assert "| forward (sum) | 1 | 4.00 | 5.00 | 1.25 |" in lines
    assert "| step (fwd+bwd+Adagrad) | 32 | 100.00 | 1000.00 | 10.00 |" in lines
    assert tiny_lines(Results(run_data)) == ["None in this run."]
    combined = Results({"benchmarks": run_data["benchmarks"] + tiny_data["benchmarks"]})
    assert "tiny" not in "\n".join(ratio_lines(combined))


def test_write_report_of_a_partial_run(tmp_path, tiny_data):
    json_path = tmp_path / "bench.json"
    json_path.write_text(json.dumps(tiny_data))
    assert report.main(["--from-json", str(json_path), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert f"### {TINY_TITLE}" in text
    assert "| forward (sum) | 32 | 10.00 | 8.00 | 0.80 |" in text
    assert "scaling.png: no data in this run" in text
    # ratios, collections, scaling, copy, forward GB/s
    assert text.count("None in this run.") == 5
    assert "Acceptance" not in text
    text = (tmp_path / "DEVELOPMENT.md").read_text()
    assert (
        "1 of 2 measured checks pass (31 checks in all, 2 of them without a target)" in text
    )
    row = "| 6 | tiny forward B=1: torch/nbbag | 1.25 | >= 1 | pass | host-layer issue"
    assert row in text
    assert (
        "| 6 | tiny step B=1 (fwd+bwd+Adagrad): torch/nbbag | 5.00 | none | reported |"
        in text
    )


def test_replace_block_keeps_text_outside_the_markers():
    text = f"# Title\nbefore\n{report.BEGIN}\nold\n{report.END}\nafter\n"
    new = report.replace_block(text, "new block")
    assert new == f"# Title\nbefore\n{report.BEGIN}\nnew block\n{report.END}\nafter\n"
    assert report.replace_block(new, "new block") == new
    appended = report.replace_block("# Title\n", "block")
    assert appended == f"# Title\n\n{report.BEGIN}\nblock\n{report.END}\n"


def test_write_report(tmp_path, json_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "RESULTS.md").write_text(f"hand-written\n{report.BEGIN}\n{report.END}\ntail\n")
    assert report.main(["--from-json", str(json_path), "--out", str(out)]) == 0
    text = (out / "RESULTS.md").read_text()
    assert text.startswith("hand-written\n") and text.endswith(f"{report.END}\ntail\n")
    assert "machine: Test CPU, 2 logical cores" in text
    assert "![scaling.png](scaling.png)" in text
    development = (out / "DEVELOPMENT.md").read_text()
    assert development.startswith("# Benchmarks: acceptance and development log\n")
    row = "| 1 | forward sum, D=64, zipf: torch/nbbag | 1.10 | >= 1.2 | FAIL |"
    assert row in development
    for name in ("scaling.png", "bandwidth.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


class _Bar:
    total = None
    n = 0

    def refresh(self):
        pass

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def update(self, n):
        self.n += n


def test_progress_plugin_reports_the_selected_and_each_finished_test(tmp_path):
    """pytest with the plugin, as run_suite starts it: the total after deselection,
    then one event per test whether it passed, failed or was skipped."""
    (tmp_path / "test_cases.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_fails(): assert False\n"
        "@pytest.mark.skip\n"
        "def test_skipped(): pass\n"
        "def test_deselected(): pass\n"
    )
    read_end, write_end = os.pipe()
    env = dict(os.environ, NBBAG_PROGRESS_FD=str(write_end))
    command = [sys.executable, "-m", "pytest", str(tmp_path), "-p", "benchmarks.progress",
               "-p", "no:cacheprovider", "-k", "not deselected", "-q"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=report.ROOT, env=env, pass_fds=(write_end,), stdout=subprocess.DEVNULL
    )
    os.close(write_end)
    with os.fdopen(read_end) as events:
        lines = [line.rstrip("\n") for line in events]
    process.wait()
    assert lines[0] == "total 3"
    assert sorted(line.rsplit("::", 1)[-1] for line in lines[1:]) == [
        "test_fails", "test_passes", "test_skipped",
    ]  # fmt: skip

    bar = _Bar()
    for line in lines:
        report._advance(bar, line)
    assert bar.total == 3 and bar.n == 3


def test_parse_args_splits_pytest_arguments():
    args, pytest_args = report.parse_args(["--quick", "--", "-k", "forward"])
    assert args.quick and args.from_json is None and pytest_args == ["-k", "forward"]
