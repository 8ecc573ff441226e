"""nbbag at a git revision, importable beside the working tree's nbbag as ``nbbag_base``.

``export(rev, directory)`` writes the revision's ``nbbag/`` (``git archive REV nbbag |
tar -x``) into ``directory``, renames the package ``nbbag_base`` and rewrites every
reference to the module ``nbbag`` in its ``.py`` files (``import nbbag``, ``from
nbbag.cpu import ...``, the string ``"nbbag.cuda.api"``, docstrings too) to
``nbbag_base``; ``import_base(directory)`` imports it.  Only the standard library is
used here: nothing is compiled or timed (``benchmarks/ab.py`` does that).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "nbbag"
BASE_PACKAGE = "nbbag_base"
REFERENCE = re.compile(rf"\b{PACKAGE}\b")
ROOT = Path(__file__).resolve().parent.parent


def git(*args: str, root: Path = ROOT) -> str:
    """The stripped standard output of ``git args`` run in ``root``.

    Raises
    ------
    ValueError
        git failed; the message is git's.
    """
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(rev: str, root: Path = ROOT) -> str:
    """The full hash of the commit ``rev`` names (a hash, branch, tag, ``HEAD~2``...).

    Raises
    ------
    ValueError
        ``rev`` names no commit of the repository at ``root``.
    """
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", root=root)
    except ValueError:
        raise ValueError(f"{rev!r} names no commit in {root}") from None


def describe(commit: str, root: Path = ROOT, width: int = 72) -> str:
    """``commit``'s short hash and subject (cut to ``width`` characters)."""
    text = git("log", "-1", "--format=%h %s", commit, root=root)
    return text if len(text) <= width else text[: width - 3] + "..."


def rename_references(text: str) -> str:
    """``text`` with every whole-word ``nbbag`` replaced by ``nbbag_base``."""
    return REFERENCE.sub(BASE_PACKAGE, text)


def remaining_references(package: Path) -> list[str]:
    """``file:line`` of each whole-word ``nbbag`` left in ``package``'s ``.py`` files."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if REFERENCE.search(line):
                found.append(f"{path.relative_to(package)}:{number}")
    return found


def _extract(commit: str, directory: Path, root: Path) -> None:
    """``git archive commit nbbag | tar -x -C directory``."""
    archive = subprocess.Popen(
        ["git", "archive", "--format=tar", commit, PACKAGE],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    untar = subprocess.run(
        ["tar", "-x", "-C", str(directory)], stdin=archive.stdout, capture_output=True
    )
    archive.stdout.close()
    error = archive.stderr.read().decode().strip()
    if archive.wait() != 0 or untar.returncode != 0:
        raise ValueError(f"cannot export {PACKAGE}/ at {commit}: {error or untar.stderr}")


def export(rev: str, directory: Path, root: Path = ROOT) -> Path:
    """Write the revision ``rev``'s package into ``directory`` as ``nbbag_base``.

    Parameters
    ----------
    rev : str
        A git revision of the repository at ``root``.
    directory : Path
        An existing directory without an ``nbbag`` or ``nbbag_base`` in it.
    root : Path
        The repository (default: this checkout).

    Returns
    -------
    Path
        The renamed package, ``directory / "nbbag_base"``.

    Raises
    ------
    ValueError
        ``rev`` names no commit, or the commit has no ``nbbag/``.
    """
    directory = Path(directory)
    _extract(resolve(rev, root), directory, root)
    package = (directory / PACKAGE).rename(directory / BASE_PACKAGE)
    for path in package.rglob("*.py"):
        path.write_text(rename_references(path.read_text()))
    return package


def import_base(directory: Path) -> ModuleType:
    """Import ``nbbag_base`` from ``directory`` (put first on ``sys.path``).

    Import the working tree's ``nbbag`` first: the first nbbag imported installs its
    Numba cache locators for its own files; the other one's kernels get Numba's own.
    """
    sys.path.insert(0, str(directory))
    module = importlib.import_module(BASE_PACKAGE)
    where = Path(module.__file__).resolve().parent
    if where != (Path(directory) / BASE_PACKAGE).resolve():
        raise ImportError(f"{BASE_PACKAGE} was imported from {where}, not {directory}")
    return module
