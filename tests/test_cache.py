"""Compiled kernels are cached on disk: a new process does not compile again."""

import json
import subprocess
import sys
from pathlib import Path

FIRST_CALL = Path(__file__).parents[1] / "benchmarks" / "first_call.py"


def test_second_process_first_call_is_fast():
    """The first embedding_bag call of a process, with the cache warm, is under 1 s."""
    done = subprocess.run(
        [sys.executable, str(FIRST_CALL), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    assert timings["first_call"] < 1.0, timings
