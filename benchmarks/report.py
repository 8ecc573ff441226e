"""Run the benchmark suite and write benchmarks/RESULTS.md (for users), its plots, and
benchmarks/DEVELOPMENT.md (the acceptance checks).

Usage::

    python -m benchmarks.report                 # the full suite
    python -m benchmarks.report --quick         # a smoke-sized run (rough numbers)
    python -m benchmarks.report --from-json benchmarks/bench.json   # no rerun
    python -m benchmarks.report -- -k forward   # extra pytest arguments after --

The suite runs under pytest-benchmark (``--benchmark-json``) with a progress bar, one
tick per benchmark (reported by a pytest plugin, ``benchmarks/progress.py``); pytest's
output goes to ``report.log`` beside the JSON.  The report
replaces the text between ``<!-- report:begin -->`` and ``<!-- report:end -->`` in each
file and keeps everything outside the markers (the summary, the log).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from benchmarks import plots
from benchmarks.acceptance import acceptance_checks
from benchmarks.results import Results
from benchmarks.tables import render, render_acceptance

BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def pytest_command(json_path: Path, pytest_args: list[str]) -> list[str]:
    """The pytest command line that runs the suite and writes ``json_path``."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "-v",
        "-p",
        "no:cacheprovider",
        "-p",
        "benchmarks.progress",
        f"--benchmark-json={json_path}",
        *pytest_args,
    ]


def run_suite(json_path: Path, log_path: Path, quick: bool, pytest_args: list[str]) -> int:
    """Run the suite with a progress bar (driven by the ``benchmarks.progress`` plugin
    through a pipe); pytest's output goes to ``log_path``.  Returns pytest's exit
    status."""
    read_end, write_end = os.pipe()
    env = dict(os.environ, NBBAG_BENCH_QUICK="1" if quick else "0")
    env["NBBAG_PROGRESS_FD"] = str(write_end)
    command = pytest_command(json_path, pytest_args)
    with open(log_path, "w") as log, tqdm(unit="bench", desc="benchmarks") as bar:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
        )
        os.close(write_end)  # the child's copy stays open until it exits
        with os.fdopen(read_end) as events:
            for event in events:
                _advance(bar, event.rstrip("\n"))
        return process.wait()


def _advance(bar, event: str) -> None:
    """One tick per finished benchmark; the total once pytest has collected."""
    kind, _, value = event.partition(" ")
    if kind == "total":
        bar.total = int(value)
        bar.refresh()
    elif kind == "done":
        case = value.split("[", 1)[-1].rstrip("]")  # the case's id
        bar.set_postfix_str(case, refresh=False)
        bar.update(1)


def replace_block(text: str, block: str) -> str:
    """``text`` with ``block`` between the report markers (appended, with the markers,
    when ``text`` has none)."""
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        return f"{text.rstrip()}\n\n{BEGIN}\n{block.strip()}\n{END}\n".lstrip()
    return f"{text[: begin + len(BEGIN)]}\n{block.strip()}\n{text[end:]}"


def write_report(json_path: Path, out_dir: Path) -> Path:
    """Write the plots, the RESULTS.md block (for users) and the DEVELOPMENT.md block
    (the acceptance checks) for the run in ``json_path``."""
    results = Results.load(json_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "scaling.png": plots.plot_scaling(results, out_dir / "scaling.png"),
        "bandwidth.png": plots.plot_bandwidth(results, out_dir / "bandwidth.png"),
    }
    blocks = {
        "RESULTS.md": ("# Benchmark results\n", render(results, figures)),
        "DEVELOPMENT.md": (
            "# Benchmarks: acceptance and development log\n",
            render_acceptance(results, acceptance_checks(results)),
        ),
    }
    for name, (title, block) in blocks.items():
        path = out_dir / name
        text = path.read_text() if path.exists() else title
        path.write_text(replace_block(text, block))
    return out_dir / "RESULTS.md"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The report's options, and the pytest arguments after ``--``."""
    pytest_args: list[str] = []
    if "--" in argv:
        argv, pytest_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke-sized run (NBBAG_BENCH_QUICK=1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE,
        help="where RESULTS.md, the plots and the JSON go (default: benchmarks/)",
    )
    parser.add_argument(
        "--from-json", type=Path, help="report on this saved JSON; run nothing"
    )
    return parser.parse_args(argv), pytest_args


def main(argv: list[str] | None = None) -> int:
    """Run (or reload) the suite and write the report; the exit status."""
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    status = 0
    json_path = args.from_json
    if json_path is None:
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / "bench.json"
        log_path = args.out / "report.log"
        status = run_suite(json_path.resolve(), log_path, args.quick, pytest_args)
        if status != 0:
            print(f"pytest exited with {status}: see {log_path}", file=sys.stderr)
        if not json_path.exists():
            return status or 1
    results_md = write_report(json_path, args.out)
    print(f"wrote {results_md} and its plots from {json_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
