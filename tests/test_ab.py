"""The A/B script's export step: HEAD's nbbag written out and renamed ``nbbag_base``.

Nothing is compiled or timed here; the import runs in a fresh interpreter, so it shows
that the renamed package needs nothing from the working tree's ``nbbag``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import versions

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("tar") is None,
    reason="the export needs git and tar",
)

IMPORT_ALONE = """
import sys
sys.path.insert(0, sys.argv[1])
import nbbag_base, nbbag_base.kernels, nbbag_base.optim
leaked = sorted(m for m in sys.modules if m == "nbbag" or m.startswith("nbbag."))
assert not leaked, leaked
print(nbbag_base.__file__)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """HEAD's package, exported and renamed into a temporary directory."""
    if not (versions.ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return versions.export("HEAD", tmp_path_factory.mktemp("base"))


def test_rename_references():
    text = (
        "import nbbag\n"
        "from nbbag.cpu import api  # nbbag's CPU backend\n"
        'importlib.import_module("nbbag.cuda.api")\n'
        "nbbag_cache = nbbags\n"
    )
    assert versions.rename_references(text) == (
        "import nbbag_base\n"
        "from nbbag_base.cpu import api  # nbbag_base's CPU backend\n"
        'importlib.import_module("nbbag_base.cuda.api")\n'
        "nbbag_cache = nbbags\n"
    )


def test_export_renames_the_package_and_every_reference(exported):
    assert exported.name == versions.BASE_PACKAGE
    assert not (exported.parent / versions.PACKAGE).exists()
    assert versions.remaining_references(exported) == []
    committed = versions.git("ls-tree", "-r", "--name-only", "HEAD", "--", "nbbag")
    expected = {Path(name).relative_to("nbbag") for name in committed.splitlines()}
    files = [p for p in exported.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    written = {p.relative_to(exported) for p in files}
    assert written == expected


def test_renamed_package_imports_without_nbbag(exported):
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALONE, str(exported.parent)],
        cwd=exported.parent,  # not the repository: its nbbag is not on the path there
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().parent == exported.resolve()


def test_unknown_revision(tmp_path):
    with pytest.raises(ValueError, match="names no commit"):
        versions.export("no-such-revision", tmp_path)
