"""Types: mypy checks a user's typed script against the package (its annotations,
the overloads of the backward, py.typed)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent


def test_a_typed_user_script_checks():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "tests/typed/user_script.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
