"""Many tables in one call: :class:`TableConfig` and :class:`EmbeddingBagCollection`.

A recommender reads tens of sparse features per example, each from its own table. The
collection looks them all up in one call: the tables that share a width D, a mode and
a dtype live in one *stack* (their rows one after another, plus one spare row standing
for every table's padding), a batch's features become bags of their stack (the
backend's ``combine_features``, which checks every offset; the GPU's also moves and
checks every id there, the CPU's forward as it reads them, each against its own
table), and each stack then runs the single table's forward, backward and fused
optimizer step: a DLRM-like model whose tables all have one D, one mode and one dtype
is one stack, and a call is two parallel regions whatever the number of tables.

A stack's bags are feature-major (feature f's bag b is its bag f * B + b: each table's
rows are read together), and its forward writes bag f * B + b straight into row b,
columns of feature f, of a (B, F, D) view of the output: where one stack holds every
feature, the collection's output is written in place, not copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from nbbag import _validate as checks
from nbbag._device import backend_named, is_device_array
from nbbag._memory import aligned_full
from nbbag.base.constants import NO_PADDING, OK
from nbbag.base.dtypes import compute_dtype, parse_table_dtype, standard_normal_into
from nbbag.base.records import BagContext, ForwardOptions
from nbbag.functional import embedding_bag_bwd
from nbbag.modes import Mode
from nbbag.sparse import RowSparseGrad

__all__ = ["EmbeddingBagCollection", "TableConfig"]


@dataclass(frozen=True)
class TableConfig:
    """One table of a collection, and the features that read it.

    Parameters
    ----------
    name : str
        The table's name (``coll.weights[name]``, the keys of gradients and state).
    num_embeddings, embedding_dim : int
        The table's shape (V, D).
    mode : {"sum", "mean", "max", "sqrtn"} or Mode, default "sum"
        How each feature's bags of rows are reduced (TorchRec's default pooling, sum).
    features : sequence of str, optional
        The features that read this table (default, or empty: one, named as the
        table).  Their
        gradients add up in the table.
    padding_idx : int, optional
        A row left out of every bag of this table's features (negative counts from the
        end), as :class:`nbbag.EmbeddingBag`'s; initialised to zeros.
    dtype : float32, float64, float16 or bfloat16, optional
        This table's dtype (default: the collection's).  float32, float16 and bfloat16
        tables mix in one collection (their outputs are float32); float64 tables go
        with float64 tables only.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    mode: Mode | str = "sum"
    features: Sequence[str] = ()
    padding_idx: int | None = None
    dtype: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"TableConfig name must be a non-empty str, got {self.name!r}")
        where = f"table {self.name!r}"
        for key in ("num_embeddings", "embedding_dim"):
            value = getattr(self, key)
            if not checks.is_integer(value) or value <= 0:
                raise ValueError(f"{where}: {key} must be a positive int, got {value!r}")
            object.__setattr__(self, key, int(value))
        try:
            object.__setattr__(self, "mode", Mode.parse(self.mode))
            padding = checks.check_padding_idx(self.padding_idx, self.num_embeddings)
            if self.dtype is not None:
                object.__setattr__(self, "dtype", parse_table_dtype(self.dtype))
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None
        object.__setattr__(self, "padding_idx", None if padding == NO_PADDING else padding)
        features = self.features
        if isinstance(features, str) or not all(
            isinstance(name, str) and name for name in features
        ):
            raise TypeError(f"{where}: features must be a sequence of non-empty str")
        features = tuple(features) or (self.name,)
        if len(set(features)) != len(features):
            raise ValueError(f"{where}: features must be distinct, got {list(features)}")
        object.__setattr__(self, "features", tuple(features))


@dataclass
class _Stack:
    """Tables of one (D, mode, dtype): their rows, then the spare padding row."""

    dim: int
    mode: Mode
    dtype: np.dtype
    tables: list[TableConfig] = field(default_factory=list)
    row_base: dict[str, int] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)  # in the output's column order
    weight: Any = None
    options: ForwardOptions | None = None
    # (row_base, num_rows, padding) of each feature's table, as int64 arrays (F,),
    # and each feature's first column in the output: on the stack's backend
    feature_tables: tuple = ()
    column_starts: Any = None

    @property
    def pad_row(self) -> int:
        """The spare row: the one after the last table's rows."""
        if not self.tables:
            return 0
        last = self.tables[-1]
        return self.row_base[last.name] + last.num_embeddings

    def table_rows(self) -> list[tuple[str, int, int]]:
        """(table name, first row in the stack, rows) of each table."""
        return [
            (table.name, self.row_base[table.name], table.num_embeddings)
            for table in self.tables
        ]


class _FeatureBatch(NamedTuple):
    """One feature's part of a batch, checked (its values still to be, by the kernel);
    arrays of the collection's backend, or host arrays."""

    ids: Any  # (N,) C-contiguous
    num_bags: int
    starts: Any  # (B,) where each bag starts in ids
    weights: Any  # (N,) in the table's dtype, or None
    indices: Any  # as given (1-D or 2-D) and offsets as read: for the messages
    offsets: Any


@dataclass
class CollectionContext:
    """What a collection's backward needs from its forward: each stack's context."""

    num_bags: int
    contexts: list[BagContext]


class EmbeddingBagCollection:
    """Many embedding tables, looked up, differentiated and trained in one call.

    Parameters
    ----------
    tables : sequence of TableConfig
        Names distinct, feature names distinct across tables.
    dtype : float32, float64, float16 or bfloat16, default float32
        The tables' dtype (``ml_dtypes.bfloat16``, or the string "bfloat16"), unless a
        TableConfig gives its own.  With float16 or bfloat16 the outputs and gradients
        are float32, and optimizers keep float32 state (see :mod:`nbbag.optim`).
    seed : int, optional
        Seeds the initialisation: N(0, 1) as :class:`nbbag.EmbeddingBag`'s, drawn table
        by table in the list's order; padding rows are zeros.
    device : {"cpu", "cuda"}, default "cpu"
        Where the tables live and the kernels run: "cuda" (needs the ``cuda`` extra)
        keeps every table and its optimizer state on the GPU; the batch's arrays may
        then be NumPy or device arrays, and outputs and gradients are device arrays.

    Attributes
    ----------
    weights : dict of str to ndarray (V, D)
        Each table's rows: views into the collection's stacks (updated in place by
        its optimizer; write them to initialise); device arrays on "cuda".
    features : tuple of str
        The features, in the output's column order: tables in list order, each
        table's features in order.
    columns : dict of str to slice
        Each feature's D columns of the output (and of ``grad_output``).
    embedding_dim : int
        The output's width: D summed over the features.

    Examples
    --------
    >>> import numpy as np, nbbag
    >>> coll = nbbag.EmbeddingBagCollection(
    ...     [nbbag.TableConfig("user", 100, 4), nbbag.TableConfig("genre", 20, 2, "mean",
    ...      features=["genre", "liked"])], seed=0)
    >>> out = coll({"user": ([3, 7], [0, 1]), "genre": ([1, 2, 5], [0, 2]),
    ...             "liked": ([4], [0, 1])})
    >>> out.shape, coll.columns["liked"]
    ((2, 8), slice(6, 8, None))
    >>> sorted(coll.backward(np.ones_like(out)))
    ['genre', 'user']
    """

    def __init__(
        self,
        tables: Iterable[TableConfig],
        *,
        dtype: Any = np.float32,
        seed=None,
        device: str = "cpu",
    ):
        self.tables = tuple(tables)
        if not self.tables or not all(isinstance(t, TableConfig) for t in self.tables):
            raise TypeError("tables must be a non-empty sequence of nbbag.TableConfig")
        self._check_names()
        table_dtype = parse_table_dtype(dtype)
        self._dtypes = {
            t.name: table_dtype if t.dtype is None else t.dtype for t in self.tables
        }
        results = {compute_dtype(d) for d in self._dtypes.values()}
        if len(results) > 1:
            raise ValueError(
                "the tables' dtypes must give one output dtype: float32, float16 and "
                "bfloat16 tables mix (float32 out), float64 ones go with float64 only; "
                f"got {sorted({str(d) for d in self._dtypes.values()})}"
            )
        if seed is not None and (not checks.is_integer(seed) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self._backend: Any = backend_named(device)
        self.device = device
        self._table_of = {f: table for table in self.tables for f in table.features}
        self.features = tuple(f for table in self.tables for f in table.features)
        self.columns: dict[str, slice] = {}
        start = 0
        for table in self.tables:
            for feature in table.features:
                self.columns[feature] = slice(start, start + table.embedding_dim)
                start += table.embedding_dim
        self.embedding_dim = start
        self._stacks = self._make_stacks(seed)
        # what checking a feature's batch reads of its table, looked up once
        self._feature_checks = {
            f: (Mode.parse(table.mode), compute_dtype(self.weights[table.name].dtype))
            for f, table in self._table_of.items()
        }
        self._ctx: CollectionContext | None = None
        self.optimizer: Any = None

    def _check_names(self) -> None:
        names = [table.name for table in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be distinct, got {names}")
        features = [f for table in self.tables for f in table.features]
        repeated = sorted({f for f in features if features.count(f) > 1})
        if repeated:
            raise ValueError(f"features {repeated} are read by more than one table")

    def _make_stacks(self, seed) -> list[_Stack]:
        stacks: dict[tuple[int, Mode, np.dtype], _Stack] = {}
        for table in self.tables:
            key = (table.embedding_dim, Mode.parse(table.mode), self._dtypes[table.name])
            stack = stacks.setdefault(key, _Stack(*key))
            stack.row_base[table.name] = stack.pad_row
            stack.tables.append(table)
            stack.features.extend(table.features)
        rng = np.random.default_rng(seed)
        to_backend = self._backend.from_host
        self.weights: dict[str, Any] = {}
        for stack in stacks.values():
            tables = [self._table_of[f] for f in stack.features]
            stack.column_starts = to_backend(
                np.array([self.columns[f].start for f in stack.features], dtype=np.int64)
            )
            stack.feature_tables = tuple(
                to_backend(np.array(column, dtype=np.int64))
                for column in zip(
                    *[
                        (
                            stack.row_base[t.name],
                            t.num_embeddings,
                            NO_PADDING if t.padding_idx is None else t.padding_idx,
                        )
                        for t in tables
                    ],
                    strict=True,
                )
            )
            stack.weight = aligned_full((stack.pad_row + 1, stack.dim), 0, stack.dtype)
            stack.options = checks.forward_options(
                stack.mode, stack.pad_row, True, None, 2.0, False, stack.pad_row + 1
            )
        for table in self.tables:
            key = (table.embedding_dim, Mode.parse(table.mode), self._dtypes[table.name])
            stack = stacks[key]
            base = stack.row_base[table.name]
            weight = stack.weight[base : base + table.num_embeddings]
            standard_normal_into(rng, weight)
            if table.padding_idx is not None:
                weight[table.padding_idx] = 0
        for stack in stacks.values():  # drawn on the host, then on the backend
            stack.weight = to_backend(stack.weight)
            for table in stack.tables:
                base = stack.row_base[table.name]
                self.weights[table.name] = stack.weight[base : base + table.num_embeddings]
        return list(stacks.values())

    # -- the forward --------------------------------------------------------------------
    def __call__(self, features: Mapping[str, Any]) -> np.ndarray:
        """Look up every feature's bags and reduce each by its table's mode.

        Parameters
        ----------
        features : mapping of feature name to ``(indices, offsets)``,
            ``(indices, offsets, per_sample_weights)`` or 2-D ``indices`` (B, L)
            Every feature of the collection, each with the same number of bags B;
            offsets in torch's B form (B entries, the start of each bag).

        Returns
        -------
        ndarray (B, embedding_dim)
            Feature f's bags in columns ``columns[f]``.

        Raises
        ------
        ValueError, TypeError, IndexError
            Naming the feature: an unknown or missing feature, a B unlike the others',
            offsets or an id outside its table, weights on a max table.  Nothing is
            changed (tables, optimizer state).
        """
        batch = self._checked_batch(features)
        num_bags = batch[self.features[0]].num_bags
        combined = [self._combine(stack, batch, num_bags) for stack in self._stacks]
        optimizer = self.optimizer
        if optimizer is not None and optimizer.catches_up:
            optimizer.catch_up_stacks(
                [
                    self._stack_ids(stack, batch, ids)
                    for stack, (ids, _, _) in zip(self._stacks, combined, strict=True)
                ]
            )
        # 64-byte aligned on the CPU: a row then fills whole cache lines, where a
        # feature-major forward writes the rows of one feature far apart (NumPy's own
        # alignment made it 1.2 ms slower of 4.9 at B = 2048, 26 features, D = 64).
        out = self._backend.table(
            (num_bags, self.embedding_dim), compute_dtype(self._stacks[0].weight.dtype)
        )
        contexts = []
        for stack, (ids, offsets, weights) in zip(self._stacks, combined, strict=True):
            status, ctx = self._backend.stack_forward(
                stack.weight, ids, offsets, weights, stack.options, out,
                stack.column_starts,
            )  # fmt: skip
            if status != OK:
                self._raise_for(stack, batch, status)
            contexts.append(ctx)
        self._ctx = CollectionContext(num_bags, contexts)
        return out

    def _checked_batch(self, features: Mapping[str, Any]) -> dict[str, _FeatureBatch]:
        """Each feature's part of the batch, checked but for the values of its offsets
        and ids (the stacks' pass checks those)."""
        if not isinstance(features, Mapping):
            raise TypeError(
                f"features must be a mapping of feature name to (indices, offsets), got "
                f"{type(features).__name__}"
            )
        if features.keys() != self._table_of.keys():  # one comparison of sets, in C
            self._raise_for_names(features)
        batch = {}
        for name in self.features:
            try:
                batch[name] = self._checked_feature(name, features[name])
            except (TypeError, ValueError) as error:
                raise type(error)(f"feature {name!r}: {error}") from None
        first = self.features[0]
        num_bags = batch[first].num_bags
        for name, entry in batch.items():
            if entry.num_bags != num_bags:
                raise ValueError(
                    f"feature {name!r} has {entry.num_bags} bags, feature {first!r} "
                    f"{num_bags}: every feature needs the same B"
                )
        return batch

    def _raise_for_names(self, features: Mapping[str, Any]) -> None:
        """Raise for the first unknown feature of ``features``, or the first missing."""
        unknown = [name for name in features if name not in self._table_of]
        if unknown:
            raise ValueError(
                f"unknown feature {unknown[0]!r}: the collection's features are "
                f"{list(self.features)}"
            )
        missing = [name for name in self.features if name not in features]
        raise ValueError(f"feature {missing[0]!r} is missing from the batch")

    def _checked_feature(self, name: str, value) -> _FeatureBatch:
        # (indices, offsets) first, without isinstance or unpacking a padded copy: a
        # 128-bag batch of 26 features spent a third of its forward checking them.
        if type(value) is tuple and len(value) == 2:
            indices, offsets = value
            weights = None
        elif isinstance(value, tuple | list):
            if len(value) not in (2, 3):
                raise ValueError(
                    "expected (indices, offsets) or (indices, offsets, "
                    f"per_sample_weights), got a sequence of {len(value)}"
                )
            indices, offsets, weights = (*value, None)[:3]
        else:
            indices, offsets, weights = value, None, None
        mode, dtype = self._feature_checks[name]
        return _FeatureBatch._make(
            self._backend.check_feature(indices, offsets, weights, mode, dtype)
        )

    def _combine(
        self, stack: _Stack, batch: dict[str, _FeatureBatch], num_bags: int
    ) -> tuple:
        """The stack's bags for this batch: (ids, CSR offsets, weights or None)."""
        entries = [batch[f] for f in stack.features]
        status, ids, offsets, weights = self._backend.combine_features(
            [entry.ids for entry in entries],
            [entry.starts for entry in entries],
            stack.feature_tables,
            stack.pad_row,
            [entry.weights for entry in entries],
            compute_dtype(stack.weight.dtype),
        )
        if status != OK:
            self._raise_for(stack, batch, status)
        return ids, offsets, weights

    def _stack_ids(self, stack: _Stack, batch: dict[str, _FeatureBatch], ids):
        """The stack's ids of :meth:`_combine`, combined and checked now (the CPU's
        forward combines them as it reads them: an optimizer that catches up reads
        them first)."""
        status, ids = self._backend.stack_ids(ids)
        if status != OK:
            self._raise_for(stack, batch, status)
        return ids

    def _raise_for(self, stack: _Stack, batch: dict, status: int) -> None:
        """Raise the error, naming the feature, for what ``combine_features`` found (a
        bad offset or id): the first feature with either, its offsets checked first."""
        for name in stack.features:
            entry = batch[name]
            indices, offsets = (
                self._backend.to_host(x) if is_device_array(x) else x
                for x in (entry.indices, entry.offsets)
            )
            num_rows = self._table_of[name].num_embeddings
            try:
                checks.check_offsets_values(offsets, indices.size)
                checks.check_bag_contents(indices, offsets, num_rows)
            except (ValueError, IndexError) as error:
                table = self._table_of[name].name
                raise type(error)(f"feature {name!r} (table {table!r}): {error}") from None
        raise RuntimeError(f"combine_features returned {status} for valid input")

    # -- the backward and the step ------------------------------------------------------
    def _stack_grads(self, grad_output) -> list[np.ndarray]:
        """``grad_output`` (B, embedding_dim) as each stack's (F * B, D) gradient."""
        ctx = self._last_context()
        dtype = compute_dtype(self._stacks[0].weight.dtype)
        grad_output = self._backend.check_collection_grad(
            grad_output, (ctx.num_bags, self.embedding_dim), dtype
        )
        return [
            self._backend.stack_gradient(grad_output, stack.column_starts, stack.dim, dtype)
            for stack in self._stacks
        ]

    def backward(self, grad_output) -> dict[str, RowSparseGrad]:
        """The gradient of the last forward: ``{table name: RowSparseGrad (V, D)}``
        (features sharing a table add up; a table no token read has no rows)."""
        grads: dict[str, RowSparseGrad] = {}
        ctx = self._last_context()
        for stack, grad, stack_ctx in zip(
            self._stacks, self._stack_grads(grad_output), ctx.contexts, strict=True
        ):
            stacked = embedding_bag_bwd(grad, stack_ctx)
            stacked_rows = self._backend.to_host(stacked.rows)
            for name, base, rows in stack.table_rows():
                first, last = np.searchsorted(stacked_rows, (base, base + rows))
                grads[name] = RowSparseGrad._trusted(
                    self._backend.from_host(stacked_rows[first:last] - base),
                    stacked.values[first:last],
                    (rows, stack.dim),
                )
        return grads

    def attach(self, optimizer) -> None:
        """Train with ``optimizer`` (one of :mod:`nbbag.optim` built on this
        collection): forwards catch the rows they read up, :meth:`step` is fused."""
        if getattr(optimizer, "collection", None) is not self:
            raise ValueError("optimizer must be built on this collection")
        self.optimizer = optimizer

    def step(self, grad_output) -> None:
        """Backward of the last forward and the attached optimizer's update of every
        table, fused."""
        if self.optimizer is None:
            raise RuntimeError("step() needs an optimizer: call attach(optimizer) first")
        grads = self._stack_grads(grad_output)
        self.optimizer.step_fused_stacks(grads, self._last_context().contexts)

    def _last_context(self) -> CollectionContext:
        if self._ctx is None:
            raise RuntimeError("backward needs a forward first: call the collection")
        return self._ctx

    # -- for the optimizers ---------------------------------------------------------------
    def stacks(self) -> list[tuple[np.ndarray, list[tuple[str, int, int]]]]:
        """Each stack's (weight, [(table, first row, rows), ...]): what an optimizer
        over the collection keeps its state for."""
        return [(stack.weight, stack.table_rows()) for stack in self._stacks]

    # -- checkpoints, repr ----------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``{table name: a copy of its weight}`` (NumPy arrays, on either device)."""
        return {
            name: self._backend.to_host(weight) for name, weight in self.weights.items()
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Copy each table's weight in; every table is checked first."""
        arrays = {}
        for name, weight in self.weights.items():
            if name not in state:
                raise ValueError(f"state lacks table {name!r}")
            arrays[name] = checks.checked_state_array(name, state[name], weight)
        for name, array in arrays.items():
            self._backend.copy_into(self.weights[name], array)

    def __repr__(self) -> str:
        parts = [
            f"{t.name}: {t.num_embeddings}x{t.embedding_dim} {t.mode}"
            + (f" features={list(t.features)}" if t.features != (t.name,) else "")
            for t in self.tables
        ]
        where = "" if self.device == "cpu" else f", device={self.device!r}"
        return f"EmbeddingBagCollection({'; '.join(parts)}{where})"
