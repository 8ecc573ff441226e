"""A table in a file whose hot rows, and their optimizer state, live in a cache in RAM.

A memory-mapped table (``EmbeddingBag(..., path=...)``) larger than RAM pays a page
fault for every row a step reads that is not in memory, and a 4 KB page written back
for every row it changes, for the table and each state array: the step is bound by
the disk's random I/O.  :class:`CachedEmbeddingBag` keeps ``cache_rows`` rows in RAM
instead: a batch's rows are brought in together (read in file order), the least
recently used rows go back to the file only when their slot is needed (written in file
order, and only if changed), and the kernels run on the cache as on any table.
"""

from __future__ import annotations

import os

import numpy as np

from nbbag import _files
from nbbag._memory import aligned_empty
from nbbag._validate import forward_options, is_integer
from nbbag.base.constants import NO_PADDING
from nbbag.cpu.api import checked_batch
from nbbag.cpu.cache import FREE, PENDING, PINNED, admit_tokens, clock_victims, copy_rows
from nbbag.layer import (
    EmbeddingBag,
    TableAttributes,
    _check_seed,
    check_float_dtype,
    check_shape,
)
from nbbag.modes import Mode
from nbbag.rules import catches_up
from nbbag.sparse import RowSparseGrad


class CachedEmbeddingBag(TableAttributes):
    """An embedding bag whose (V, D) table is the ``.npy`` file ``path``, its rows read
    and written through a cache of ``cache_rows`` rows in RAM.

    Parameters
    ----------
    num_embeddings, embedding_dim, mode
        As :class:`nbbag.EmbeddingBag`'s.
    path : str or PathLike
        The table's file: opened as it is if it exists (its shape and dtype must
        match), else written chunk by chunk, N(0, 1) from ``seed`` (the values of
        ``EmbeddingBag(..., seed=seed)``), never whole in memory.
    cache_rows : int
        How many rows (and their optimizer state) the cache holds: at least the
        distinct rows of a batch (a larger batch is refused, nothing changed).
    padding_idx, include_last_offset, dtype, seed, max_norm, norm_type,
    scale_grad_by_freq
        As :class:`nbbag.EmbeddingBag`'s.

    Training equals the in-memory layer's bit for bit (tested).  ``weight`` is the
    file's array: rows changed in the cache reach it at their eviction or at
    :meth:`flush`.  Memory: the cache (``cache_rows`` rows and their state) and a
    4-byte slot number for each of the V rows.

    Examples
    --------
    >>> import numpy as np, nbbag  # doctest: +SKIP
    >>> bag = nbbag.CachedEmbeddingBag(10**8, 64, "sum", path="t.npy", cache_rows=10**6)
    >>> bag.attach(nbbag.optim.Adagrad, lr=0.1, state_dir="opt/")
    >>> out = bag(np.array([1, 5, 99_999_999]), np.array([0, 2]))
    >>> bag.step(np.ones_like(out)); bag.flush()
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Mode | str = "mean",
        *,
        path,
        cache_rows: int,
        padding_idx: int | None = None,
        include_last_offset: bool = False,
        dtype=None,
        seed: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
    ):
        shape = check_shape(num_embeddings, embedding_dim)
        table_dtype = check_float_dtype(
            np.float32 if dtype is None else dtype, "CachedEmbeddingBag"
        )
        _check_seed(seed)
        self.options = forward_options(
            mode, padding_idx, include_last_offset, max_norm, norm_type,
            scale_grad_by_freq, shape[0],
        )  # fmt: skip
        padded = self.options.padding_idx != NO_PADDING
        slots = _check_cache_rows(cache_rows, padded)
        self.weight = _files.normal_table(
            path, shape, table_dtype, seed, self.options.padding_idx
        )
        self._cache = EmbeddingBag(
            slots, shape[1], self.options.mode, padding_idx=0 if padded else None,
            include_last_offset=True, weight=aligned_empty((slots, shape[1]), table_dtype),
            max_norm=max_norm, norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq,
        )  # fmt: skip
        self._slot_of = np.full(
            shape[0], FREE, dtype=np.int32 if slots < 2**31 else np.int64
        )
        self._row_of = np.full(slots, FREE, dtype=np.int64)
        # the call that last read a slot; negative: -1 - that call once the clock's
        # hand has passed (and -1: never filled)
        self._used = np.full(slots, -1, dtype=np.int64)
        self._hand = 0
        self._dirty = np.zeros(slots, dtype=bool)
        self._calls = 0
        self._batch_slots: np.ndarray | None = None
        self._state_files: dict = {}
        if padded:  # slot 0, for good: the cache's padding row
            self._read(np.array([self.options.padding_idx]), np.array([0]))
            self._used[0] = PINNED

    # -- the layer's attributes -----------------------------------------------------------
    @property
    def cache_rows(self) -> int:
        return int(self._row_of.shape[0])

    @property
    def optimizer(self):
        """The optimizer :meth:`attach` built, on the cache (set ``lr`` on it)."""
        return self._cache.optimizer

    def __repr__(self) -> str:
        return (
            f"CachedEmbeddingBag({self.num_embeddings}, {self.embedding_dim}, "
            f"mode={self.mode.name.lower()!r}, cache_rows={self.cache_rows}, "
            f"path={self.weight.filename!r})"
        )

    # -- training -----------------------------------------------------------------------
    def attach(self, optimizer: type, *, state_dir, **kwargs) -> None:
        """Train with ``optimizer`` (a class of :mod:`nbbag.optim`) and its keywords,
        its state in new ``.npy`` files in ``state_dir`` (one a state array, V rows)
        and, for the cached rows, in the cache.  SGD with momentum or weight decay
        (whose untouched rows are caught up later) is not supported here."""
        built = optimizer(self._cache.weight, **kwargs)
        if catches_up(built.step_type):
            raise ValueError(
                "a cached table trains with optimizers that leave untouched rows as "
                "they are: SGD without momentum or weight decay, Adagrad, "
                "RowWiseAdagrad, Adam"
            )
        if self.optimizer is not None:
            raise RuntimeError("an optimizer is attached already")
        specs = {
            name: ((self.num_embeddings, *shape[1:]), dtype, fill)
            for name, (shape, dtype, fill) in built.state_specs.items()
        }
        self._state_files = _files.state_arrays(os.fspath(state_dir), specs)
        resident = np.flatnonzero(self._row_of != FREE)
        for name, file in self._state_files.items():
            getattr(built, name)[resident] = file[self._row_of[resident]]
        self._cache.attach(built)

    def __call__(self, indices, offsets=None, per_sample_weights=None) -> np.ndarray:
        """The forward (see :func:`nbbag.embedding_bag`): the batch's rows brought into
        the cache first (everything checked before)."""
        flat, csr, weights = checked_batch(
            self.num_embeddings, self.weight.dtype, indices, offsets, per_sample_weights,
            self.options,
        )  # fmt: skip
        slots = self._admit(flat)
        out = self._cache(slots, csr, weights)
        if self.options.max_norm is not None:  # the forward may have rescaled rows
            self._dirty[self._batch_slots] = True
        return out

    def step(self, grad_output) -> None:
        """Backward of the last forward and the attached optimizer's update, fused."""
        self._cache.step(grad_output)
        self._dirty[self._batch_slots] = True

    def backward(self, grad_output) -> RowSparseGrad:
        """The gradient of the last forward, by the table's rows."""
        grad = self._cache.backward(grad_output)
        rows = self._row_of[grad.rows]
        order = np.argsort(rows)
        return RowSparseGrad(rows[order], grad.values[order], tuple(self.weight.shape))

    def flush(self) -> None:
        """Write every changed row in the cache (and its state) back to the files, and
        flush the files."""
        self._write_back(np.flatnonzero(self._dirty))
        self.weight.flush()
        for file in self._state_files.values():
            file.flush()

    # -- the cache ------------------------------------------------------------------------
    def _admit(self, flat: np.ndarray) -> np.ndarray:
        """Bring the rows of ``flat`` into the cache; return ``flat`` as slots."""
        capacity = self.cache_rows - int(self._used[0] == PINNED)
        distinct = np.unique(flat).shape[0] if flat.shape[0] > capacity else 0
        if distinct > capacity:
            raise ValueError(
                f"the batch reads {distinct} distinct rows, more than "
                f"the cache's {capacity} (cache_rows={self.cache_rows}): a larger "
                "cache, or smaller batches"
            )
        self._calls += 1
        local = np.empty(flat.shape[0], dtype=self._slot_of.dtype)
        missing = np.empty(min(flat.shape[0], self.num_embeddings), dtype=np.int64)
        count = admit_tokens(flat, self._slot_of, self._used, self._calls, local, missing)
        if count:
            missing = np.sort(missing[:count])
            free = self._victims(count)
            self._write_back(free)
            held = self._row_of[free]
            self._slot_of[held[held != FREE]] = FREE
            self._read(missing, free)
            self._used[free] = self._calls
            pending = np.flatnonzero(local == PENDING)
            local[pending] = self._slot_of[flat[pending]]
        self._batch_slots = local
        return local

    def _victims(self, count: int) -> np.ndarray:
        """``count`` slots the current call does not read, never-filled ones first,
        then those unread longest (a clock: nearly least recently used)."""
        victims = np.empty(count, dtype=np.int64)
        self._hand = clock_victims(self._used, self._calls, self._hand, victims)
        return victims

    def _write_back(self, slots: np.ndarray) -> None:
        """The changed rows among ``slots`` to the files, in file order."""
        slots = slots[self._dirty[slots] & (self._row_of[slots] != FREE)]
        if not slots.shape[0]:
            return
        slots = slots[np.argsort(self._row_of[slots])]
        rows = self._row_of[slots]
        copy_rows(self._cache.weight, slots, np.asarray(self.weight), rows)
        for name, file in self._state_files.items():
            copy_rows(getattr(self.optimizer, name), slots, np.asarray(file), rows)
        self._dirty[slots] = False

    def _read(self, rows: np.ndarray, slots: np.ndarray) -> None:
        """Rows ``rows`` (sorted) of the files into ``slots``."""
        copy_rows(np.asarray(self.weight), rows, self._cache.weight, slots)
        for name, file in self._state_files.items():
            copy_rows(np.asarray(file), rows, getattr(self.optimizer, name), slots)
        self._row_of[slots] = rows
        self._slot_of[rows] = slots
        self._dirty[slots] = False


def _check_cache_rows(cache_rows, padded: bool) -> int:
    if not is_integer(cache_rows):
        raise TypeError(f"cache_rows must be an int, got {cache_rows!r}")
    least = 2 if padded else 1  # the padding row keeps a slot of its own
    if cache_rows < least:
        raise ValueError(f"cache_rows must be at least {least}, got {cache_rows}")
    return int(cache_rows)
