"""Compiling ahead (``nbbag.warm_up``) and the one line said at a process's first
compile of an nbbag kernel."""

import types

import pytest
from numba import njit

import nbbag
from nbbag import _notice
from nbbag.warm_up import OPTIMIZERS, main, warm_up


def test_warm_up_times_each_piece_and_reports_it():
    reported = []
    timings = warm_up(
        [16], modes=[nbbag.Mode.SUM, "max"], optimizers=["sgd"], weighted=True,
        report=lambda name, seconds: reported.append(name),
    )  # fmt: skip
    assert list(timings) == reported
    assert reported == [
        "D=16 sum: forward + backward",
        "D=16 sum weighted: forward + backward",
        "D=16 max: forward + backward",  # max takes no weights
        "D=16 sgd: steps",
    ]
    assert all(seconds > 0 for seconds in timings.values())


def test_warm_up_refuses_an_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizers: unknown 'sgdd'"):
        warm_up(8, optimizers=["sgdd"])


def test_warm_up_command_line(capsys):
    # the pieces of the test above, compiled by then: the command line is what is tested
    assert main(["--dim", "16", "--modes", "sum", "--optimizers", "sgd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["D=16", "sum:", "forward"],
        ["D=16", "sgd:", "steps"],
        ["total", lines[-1].split()[1], "s"],
    ]
    with pytest.raises(SystemExit):
        main(["--dim", "0"])
    assert "--dim must be positive, got 0" in capsys.readouterr().err
    assert set(OPTIMIZERS) == {"sgd", "sgd-momentum", "adagrad", "rowwise-adagrad", "adam"}


def compile_function_of(module: str):
    """Compile a new function that Numba sees as defined in ``module``."""
    source = types.FunctionType((lambda x: x + 1).__code__, {}, "plus_one")
    source.__module__ = module
    njit(source)(1)


@pytest.fixture
def fresh_notice(monkeypatch):
    monkeypatch.setattr(_notice.NOTICE, "printed", False)
    monkeypatch.delenv("NBBAG_COMPILE_NOTICE", raising=False)


def test_the_first_compile_of_an_nbbag_kernel_says_so_once(fresh_notice, capsys):
    compile_function_of("users_code")
    assert capsys.readouterr().err == ""
    compile_function_of("nbbag.cpu.forward")
    compile_function_of("nbbag.cpu.backward")
    assert capsys.readouterr().err == _notice.MESSAGE + "\n"


def test_the_compile_notice_can_be_silenced(fresh_notice, monkeypatch, capsys):
    monkeypatch.setenv("NBBAG_COMPILE_NOTICE", "0")
    compile_function_of("nbbag.cpu.forward")
    assert capsys.readouterr().err == ""
