"""Row-sharded tables on Ray: one table's rows spread over Ray actors, trained like
:class:`nbbag.EmbeddingBag`.

Row ``i`` of a table on ``num_shards`` shards lives on shard ``i % num_shards`` (as its
row ``i // num_shards``); each shard is a Ray actor that owns its rows, their optimizer
state and its step count, and runs nbbag's kernels on them.  A forward routes each
token to its row's shard (a parallel kernel, the batch's order kept), each shard
reduces its part of every bag, and the driver combines the parts: the sum of the shards'
sums, divided by the bag's count or weight sum (mean) or its root (sqrtn), or the
largest of their maxima, ties to the earliest token.  ``step`` sends each shard the
bags' gradient; each applies the fused backward and update to its own rows.

Needs Ray (``pip install "nbbag[ray]"``): a process connected to a Ray cluster uses it,
else the first table starts a local one (``ray.init()``).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import numpy as np

try:
    import ray
    from ray.exceptions import RayActorError
except ImportError as error:  # pragma: no cover - the extra is installed in the tests
    raise ImportError(
        'nbbag.distributed needs Ray: pip install "nbbag[ray]" (ray >= 2.58)'
    ) from error

from nbbag import optim
from nbbag._shard import FORMAT, Shard, write_atomically
from nbbag._validate import check_grad_like, check_real, forward_options
from nbbag.base.constants import NO_PADDING
from nbbag.cpu.api import checked_batch
from nbbag.cpu.routing import count_routed, merge_maxima, route_tokens
from nbbag.layer import (
    TableOptions,
    _check_seed,
    _check_size,
    check_float_dtype,
    check_given_weight,
    check_shape,
)
from nbbag.modes import Mode

__all__ = ["ShardLostError", "ShardedEmbeddingBag"]

MANIFEST = "manifest.json"
# Shards spread over the cluster's machines (rather than packed on the first).
_RemoteShard = ray.remote(Shard).options(scheduling_strategy="SPREAD")


class ShardLostError(RuntimeError):
    """A shard's actor died: its rows and optimizer state since the last checkpoint are
    gone.  :meth:`ShardedEmbeddingBag.load` resumes from the last :meth:`save`."""


class _Routed:
    """A forward's batch as the shards saw it, and what its step needs."""

    __slots__ = ("num_bags", "scale", "winner")

    def __init__(self, num_bags: int, scale, winner):
        self.num_bags = num_bags
        self.scale = scale  # (B, 1): what each bag's sum was divided by, inverted
        self.winner = winner  # (B, D) max's winning shards, else None


class ShardedEmbeddingBag(TableOptions):
    """An embedding bag whose table's rows are sharded over Ray actors.

    Parameters
    ----------
    num_embeddings, embedding_dim, mode
        As :class:`nbbag.EmbeddingBag`'s.
    num_shards : int
        How many actors hold the rows: row ``i`` lives on shard ``i % num_shards``.
    weight : ndarray, optional
        The initial (V, D) table (copied to the shards: this array is not trained).
    seed : int, optional
        Without ``weight``: the table :class:`nbbag.EmbeddingBag` draws from this seed,
        each shard drawing the whole table's stream a chunk at a time and keeping its
        rows (no process holds the whole table).
    dtype : float32 or float64
    padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq
        As :class:`nbbag.EmbeddingBag`'s.

    ``bytes_to_shards`` and ``bytes_from_shards`` count the arrays the calls of this
    object sent to its shards and got back (each shard's own, as if each were on a
    machine of its own): the network cost of a step.

    Training equals :class:`nbbag.EmbeddingBag`'s on the same table and batches, within
    float round-off (the bags' sums are added shard by shard), and is bit-identical
    from run to run.  Several trainers (processes holding a copy of this object, which
    pickles as a handle to the same shards) may train the same table: each shard
    applies their steps in the order they arrive, every step to its current rows (a
    trainer's gradient may come from rows another trainer has since updated, as in
    asynchronous data-parallel training).

    Examples
    --------
    >>> import numpy as np, nbbag, nbbag.distributed as nd  # doctest: +SKIP
    >>> bag = nd.ShardedEmbeddingBag(1000, 16, "mean", num_shards=2, seed=0)
    >>> bag.attach(nbbag.optim.SGD, lr=0.1, momentum=0.9)
    >>> out = bag(np.array([1, 2, 999]), np.array([0, 2]))
    >>> bag.step(np.ones_like(out))
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Mode | str = "mean",
        *,
        num_shards: int,
        weight: np.ndarray | None = None,
        seed: int | None = None,
        dtype=np.float32,
        padding_idx: int | None = None,
        include_last_offset: bool = False,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
    ):
        shape = check_shape(num_embeddings, embedding_dim)
        num_shards, dtype = (
            _check_shards(num_shards),
            check_float_dtype(dtype, "ShardedEmbeddingBag"),
        )
        _check_seed(seed)
        if weight is not None:
            weight = _check_initial(weight, shape, dtype)
        self._setup(shape, num_shards, dtype, mode, padding_idx, include_last_offset,
                    max_norm, norm_type, scale_grad_by_freq)  # fmt: skip
        self._shards = [
            self._start(
                s, rows=None if weight is None else weight[s::num_shards], seed=seed
            )
            for s in range(self.num_shards)
        ]
        self._call("construct", [shard.step_count.remote() for shard in self._shards])

    def _setup(self, shape, num_shards, dtype, mode, padding_idx, include_last_offset,
               max_norm, norm_type, scale_grad_by_freq) -> None:  # fmt: skip
        self.options = forward_options(
            mode, padding_idx, include_last_offset, max_norm, norm_type,
            scale_grad_by_freq, shape[0],
        )  # fmt: skip
        _connect()
        self.num_embeddings, self.embedding_dim = shape
        self.num_shards = num_shards
        self.dtype = dtype
        self.optimizer: tuple[str, dict] | None = None
        self._trainer = uuid.uuid4().hex
        self._last: _Routed | None = None
        self.bytes_to_shards = 0  # the arrays every call sent to the shards, summed
        self.bytes_from_shards = 0  # the arrays the shards sent back

    def _start(self, s: int, **init):
        """Shard ``s``'s actor, its rows from ``init`` (see :class:`nbbag._shard.Shard`)."""
        return _RemoteShard.remote(
            s, self.num_shards, self.num_embeddings, self.embedding_dim, self.dtype.str,
            self._shard_options(s), **init,
        )  # fmt: skip

    def _shard_options(self, s: int) -> dict:
        """Shard ``s``'s keywords for :func:`nbbag.embedding_bag_fwd`."""
        options = self.options
        padding = options.padding_idx
        owns_padding = padding != NO_PADDING and padding % self.num_shards == s
        return {
            "mode": "max" if options.mode == Mode.MAX else "sum",
            "padding_idx": padding // self.num_shards if owns_padding else None,
            "max_norm": options.max_norm,
            "norm_type": options.norm_type,
            "scale_grad_by_freq": options.scale_grad_by_freq,
        }

    def __repr__(self) -> str:
        attached = "" if self.optimizer is None else f", optimizer={self.optimizer[0]}"
        return (
            f"ShardedEmbeddingBag({self.num_embeddings}, {self.embedding_dim}, "
            f"mode={self.mode.name.lower()!r}, num_shards={self.num_shards}, "
            f"dtype={self.dtype}{attached})"
        )

    # -- a handle that pickles: every copy is a trainer of its own -----------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_last"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._trainer = uuid.uuid4().hex

    # -- training -----------------------------------------------------------------------
    def attach(self, optimizer: type, **kwargs) -> None:
        """Train with ``optimizer`` (a class of :mod:`nbbag.optim`: SGD, Adagrad,
        RowWiseAdagrad or Adam) and its keywords: every shard builds one on its rows.
        Checked here first (on a one-row table), so bad keywords change nothing."""
        kind = getattr(optimizer, "__name__", None)
        if not (
            isinstance(optimizer, type)
            and issubclass(optimizer, optim._SparseOptimizer)
            and getattr(optim, kind or "", None) is optimizer
        ):
            raise TypeError(
                "optimizer must be one of nbbag.optim's classes (SGD, Adagrad, "
                f"RowWiseAdagrad, Adam), got {optimizer!r}"
            )
        if "state_dir" in kwargs:
            raise TypeError("state_dir: a shard keeps its optimizer state in memory")
        optimizer(np.zeros((1, self.embedding_dim), self.dtype), **kwargs)
        self._call("attach", [shard.attach.remote(kind, kwargs) for shard in self._shards])
        self.optimizer = (kind, kwargs)  # type: ignore[assignment]

    def __call__(self, indices, offsets=None, per_sample_weights=None) -> np.ndarray:
        """The forward (see :func:`nbbag.embedding_bag`): (B, D) in the table's dtype.
        With an optimizer attached, each shard first brings the rows it reads up to
        date.  Everything is checked before any shard is called."""
        flat, csr, weights = checked_batch(
            self.num_embeddings, self.dtype, indices, offsets, per_sample_weights,
            self.options,
        )  # fmt: skip
        num_bags, num_shards = csr.shape[0] - 1, self.num_shards
        counts = np.empty((num_shards, num_bags), dtype=np.int64)
        totals = np.empty((num_bags, 2), dtype=np.float64)
        padding = self.options.padding_idx
        count_routed(flat, csr, weights, padding, num_shards, counts, totals)
        shard_offsets = np.zeros((num_shards, num_bags + 1), dtype=np.int64)
        np.cumsum(counts, axis=1, out=shard_offsets[:, 1:])
        starts = np.zeros(num_shards + 1, dtype=np.int64)
        np.cumsum(shard_offsets[:, -1], out=starts[1:])
        cursors = shard_offsets[:, :-1] + starts[:-1, None]
        local_ids = np.empty(flat.shape[0], dtype=np.int64)
        local_weights = None if weights is None else np.empty_like(weights)
        positions = np.empty(flat.shape[0], dtype=np.int64)
        route_tokens(flat, csr, weights, num_shards, cursors, local_ids, local_weights,
                     positions)  # fmt: skip
        calls = []
        for s, shard in enumerate(self._shards):
            part = slice(starts[s], starts[s + 1])
            part_weights = None if local_weights is None else local_weights[part]
            sent = (local_ids[part], shard_offsets[s], part_weights)
            self.bytes_to_shards += sum(a.nbytes for a in sent if a is not None)
            calls.append(shard.forward.remote(self._trainer, *sent))
        parts = self._call("forward", calls)
        self.bytes_from_shards += sum(
            sum(a.nbytes for a in part) if isinstance(part, tuple) else part.nbytes
            for part in parts
        )
        if self.mode == Mode.MAX:
            out = np.empty((num_bags, self.embedding_dim), dtype=self.dtype)
            winner = np.empty((num_bags, self.embedding_dim), dtype=np.int32)
            values = np.stack([part[0] for part in parts])
            argmax = np.stack([part[1] for part in parts])
            merge_maxima(values, argmax, positions, starts, out, winner)
            self._last = _Routed(num_bags, None, winner)
            return out
        out = parts[0].copy()
        for part in parts[1:]:
            out += part
        scale = None
        if self.mode.divides:
            denominator = totals[:, 0] if self.mode == Mode.MEAN else np.sqrt(totals[:, 1])
            with np.errstate(divide="ignore"):
                scale = np.where(denominator != 0, 1 / denominator, 0).astype(self.dtype)
            out /= np.where(denominator != 0, denominator, np.inf)[:, None]
            scale = scale[:, None]
        self._last = _Routed(num_bags, scale, None)
        return out

    def step(self, grad_output, *, lr: float | None = None) -> None:
        """The fused backward of the last forward and every shard's update.
        ``lr``: a new learning rate for this step and the next (a schedule), sent with
        the step instead of a call of its own."""
        if self.optimizer is None:
            raise RuntimeError("step() needs an optimizer: call attach() first")
        last = self._last
        if last is None:
            raise RuntimeError("step() needs a forward first: call the table")
        grad_output = np.asarray(grad_output)
        check_grad_like(grad_output, (last.num_bags, self.embedding_dim), self.dtype)
        grad = np.ascontiguousarray(grad_output, dtype=self.dtype)
        if last.scale is not None:
            grad = grad * last.scale
        if lr is not None:
            lr = check_real(lr, "lr")
        grad_ref = ray.put(grad)
        winner = None if last.winner is None else ray.put(last.winner)
        sent = grad.nbytes + (0 if last.winner is None else last.winner.nbytes)
        self.bytes_to_shards += self.num_shards * sent  # each shard reads its copy
        trainer = self._trainer
        calls = [shard.step.remote(trainer, grad_ref, winner, lr) for shard in self._shards]
        self._call("step", calls)

    def flush(self) -> None:
        """Bring every row of every shard up to date (see ``optimizer.flush``)."""
        self._call("flush", [shard.flush.remote() for shard in self._shards])

    @property
    def step_count(self) -> int:
        """The step count of the shards (the same on each)."""
        return int(self._call("step_count", [self._shards[0].step_count.remote()])[0])

    def gather_weight(self) -> np.ndarray:
        """The whole (V, D) table, every row brought up to date (a copy)."""
        parts = self._call("gather_weight", [shard.rows.remote() for shard in self._shards])
        weight = np.empty((self.num_embeddings, self.embedding_dim), dtype=self.dtype)
        for s, rows in enumerate(parts):
            weight[s :: self.num_shards] = rows
        return weight

    # -- checkpoints --------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write every shard's rows and optimizer state into ``directory``: each shard
        its own file (written to a temporary name, synced, renamed), then
        ``manifest.json`` naming those files (likewise).  The manifest is replaced only
        once every shard's file is whole, so the directory always holds one whole
        checkpoint; the previous save's shard files are then removed.  On a cluster
        the directory must be one every shard's machine sees."""
        directory = os.path.abspath(os.fspath(directory))
        os.makedirs(directory, exist_ok=True)
        tag = uuid.uuid4().hex[:12]
        files = [f"shard-{s:05d}-of-{self.num_shards:05d}-{tag}.npz" for s in
                 range(self.num_shards)]  # fmt: skip
        paths = [os.path.join(directory, name) for name in files]
        try:
            pairs = zip(self._shards, paths, strict=True)
            self._call("save", [shard.save.remote(path) for shard, path in pairs])
        except BaseException:  # the checkpoint before stays whole: drop this one's files
            for path in paths:
                if os.path.exists(path):
                    os.remove(path)
            raise
        previous = _read_manifest(directory, missing_ok=True)
        manifest = {
            "format": FORMAT,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "num_shards": self.num_shards,
            "dtype": self.dtype.str,
            "options": self._options_record(),
            "optimizer": self.optimizer,
            "files": files,
        }
        write_atomically(
            os.path.join(directory, MANIFEST),
            lambda file: file.write(json.dumps(manifest, indent=1).encode()),
        )
        for name in [] if previous is None else previous["files"]:
            if name not in files and os.path.exists(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))

    def _options_record(self) -> dict:
        options = self.options
        return {
            "mode": options.mode.name.lower(),
            "padding_idx": self.padding_idx,
            "include_last_offset": options.include_last_offset,
            "max_norm": options.max_norm,
            "norm_type": options.norm_type,
            "scale_grad_by_freq": options.scale_grad_by_freq,
        }

    @classmethod
    def load(cls, directory) -> ShardedEmbeddingBag:
        """The table :meth:`save` wrote into ``directory``, on new actors, its
        optimizer attached: training continues bit-identically."""
        directory = os.path.abspath(os.fspath(directory))
        manifest = _read_manifest(directory)
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{directory!r} holds a checkpoint of format {manifest.get('format')!r}; "
                f"this nbbag reads format {FORMAT}"
            )
        self = cls.__new__(cls)
        shape = (manifest["num_embeddings"], manifest["embedding_dim"])
        options = manifest["options"]
        self._setup(shape, manifest["num_shards"], np.dtype(manifest["dtype"]),
                    options["mode"], options["padding_idx"],
                    options["include_last_offset"], options["max_norm"],
                    options["norm_type"], options["scale_grad_by_freq"])  # fmt: skip
        paths = [os.path.join(directory, name) for name in manifest["files"]]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"the checkpoint's shard file {path!r} is missing")
        self._shards = [self._start(s, checkpoint=path) for s, path in enumerate(paths)]
        self._call("load", [shard.step_count.remote() for shard in self._shards])
        optimizer = manifest["optimizer"]
        self.optimizer = None if optimizer is None else (optimizer[0], optimizer[1])
        return self

    # -- calls to the shards ------------------------------------------------------------
    def _call(self, what: str, calls: list) -> list:
        """Wait for every call (one to each shard), then raise the first failure: a dead
        shard's as a :class:`ShardLostError`, others as the shard raised them."""
        results: list[Any] = []
        failures: list[tuple[int, Exception]] = []
        for s, call in enumerate(calls):
            try:
                results.append(ray.get(call))
            except Exception as error:  # every call ends before one is raised
                failures.append((s, error))
                results.append(None)
        if not failures:
            return results
        s, failure = failures[0]
        if isinstance(failure, RayActorError):
            raise ShardLostError(
                f"{what}: shard {s} of {self.num_shards} is lost (its actor died: "
                f"{type(failure).__name__}); the rows it held since the last save are "
                "gone. Resume with ShardedEmbeddingBag.load(directory) from the last "
                "save (other shards may have applied this call: reload them all)"
            ) from failure
        raise failure


def _connect() -> None:
    """Use the connected Ray cluster, or connect to (or start) one as ``ray.init()``
    does: ``RAY_ADDRESS`` or a cluster started on this machine, else a local one."""
    if not ray.is_initialized():
        ray.init(log_to_driver=False, include_dashboard=False)


def _check_shards(num_shards) -> int:
    shards = _check_size(num_shards, "num_shards")
    if shards == 0:
        raise ValueError("num_shards must be at least 1, got 0")
    return shards


def _check_initial(weight, shape: tuple, dtype: np.dtype) -> np.ndarray:
    weight = np.asarray(weight)
    check_given_weight(
        weight, shape, dtype, "pass dtype=weight.dtype, or convert the weight first"
    )
    return weight


def _read_manifest(directory: str, missing_ok: bool = False) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        if missing_ok:
            return None  # type: ignore[return-value]
        raise FileNotFoundError(f"no checkpoint in {directory!r}: {MANIFEST} is missing")
    with open(path, encoding="utf-8") as file:
        return json.load(file)
