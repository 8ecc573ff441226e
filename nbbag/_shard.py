"""One shard of a row-sharded table (:mod:`nbbag.distributed`): its rows, their
optimizer and the forwards its trainers are between.  Plain Python over nbbag's own
functions; :mod:`nbbag.distributed` runs each as a Ray actor.

A shard holds rows ``i`` of the table with ``i % num_shards == index`` (local row
``i // num_shards``).  It sees bags of local ids (the driver routes each token to its
shard, padding included) and reduces them with ``sum`` (the table's sum, mean and sqrtn:
the driver divides) or ``max``, so that its tokens' gradients are those of the table.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np

import nbbag
from nbbag import optim
from nbbag._files import normal_table_rows
from nbbag.cpu.api import table as host_table
from nbbag.rules import catches_up

FORMAT = 1  # a checkpoint's layout: manifest.json beside one .npz file a shard


def local_rows(num_rows: int, num_shards: int, index: int) -> int:
    """How many of a table's ``num_rows`` rows shard ``index`` of ``num_shards`` holds."""
    return (num_rows - index + num_shards - 1) // num_shards


class Shard:
    """Shard ``index`` of ``num_shards`` of a (``num_rows``, ``dim``) table.

    ``options``: the layer's options as keywords of :func:`nbbag.embedding_bag_fwd`
    (``mode`` "sum" or "max", ``padding_idx`` local to this shard or None,
    ``max_norm``, ``norm_type``, ``scale_grad_by_freq``).  ``rows``: this shard's rows,
    or None for rows drawn from ``seed`` as a whole table of that seed draws them
    (with a zero row at ``options['padding_idx']``), or the rows and optimizer in the
    file ``checkpoint`` (:meth:`save`'s).
    """

    def __init__(self, index: int, num_shards: int, num_rows: int, dim: int, dtype: str,
                 options: dict, rows=None, seed=None, checkpoint=None):  # fmt: skip
        self.index, self.num_shards = index, num_shards
        shape = (local_rows(num_rows, num_shards, index), dim)
        saved = None if checkpoint is None else np.load(checkpoint)
        if saved is not None:
            rows = saved["weight"]
        self.weight = host_table(shape, np.dtype(dtype))  # its own, 64-byte aligned
        if rows is None:
            normal_table_rows(num_rows, dim, self.weight.dtype, seed, index, num_shards,
                              self.weight)  # fmt: skip
            if options["padding_idx"] is not None:
                self.weight[options["padding_idx"]] = 0
        elif rows.shape != shape:
            raise ValueError(f"shard {index} needs rows of shape {shape}, got {rows.shape}")
        else:
            self.weight[...] = rows
        self.options = dict(options, include_last_offset=True)
        self.optimizer: optim._SparseOptimizer | None = None
        self.optimizer_args: tuple = ()
        # trainer -> the BagContext of its last forward (one a trainer: a trainer that
        # goes away leaves its last one here, a batch's worth of arrays)
        self._contexts: dict = {}
        if saved is not None:
            with saved:
                self._restore(saved)

    def attach(self, kind: str, kwargs: dict) -> None:
        """Train with ``nbbag.optim.<kind>(weight, **kwargs)``."""
        self.optimizer = getattr(optim, kind)(self.weight, **kwargs)
        self.optimizer_args = (kind, kwargs)

    def forward(self, trainer: str, ids, offsets, weights):
        """The reduction of this shard's part of the bags: (B, D) and, for max, the
        winners' positions among ``ids`` (-1 where a bag has none here)."""
        if self.optimizer is not None and catches_up(self.optimizer.step_type):
            self.optimizer.catch_up(ids)
        out, ctx = nbbag.embedding_bag_fwd(
            self.weight, ids, offsets, per_sample_weights=weights, **self.options
        )
        self._contexts[trainer] = ctx
        return (out, ctx.argmax) if ctx.argmax is not None else out

    def step(self, trainer: str, grad_output, winner, lr) -> int:
        """The fused backward and update of ``trainer``'s last forward with the bags'
        ``grad_output`` (already divided as the table's mode divides); for max,
        ``winner`` (B, D) names the shard whose token won each (bag, dimension): this
        shard's tokens get only the dimensions they won.  Returns the step count."""
        if self.optimizer is None:
            raise RuntimeError("step() needs an optimizer: call attach() first")
        ctx = self._contexts.get(trainer)
        if ctx is None:
            raise RuntimeError("step() needs a forward of this trainer first")
        if winner is not None:
            ctx.argmax = np.where(winner == self.index, ctx.argmax, -1)
        if lr is not None:
            self.optimizer.lr = lr  # type: ignore[attr-defined]
        self.optimizer.step_fused(grad_output, ctx)
        return self.optimizer.step_count

    def rows(self) -> np.ndarray:
        """This shard's rows, every one brought up to date."""
        self.flush()
        return self.weight

    def flush(self) -> None:
        if self.optimizer is not None:
            self.optimizer.flush()

    def step_count(self) -> int:
        return 0 if self.optimizer is None else self.optimizer.step_count

    # -- checkpoints --------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the rows and the optimizer's state to ``path`` (an ``.npz``): a
        temporary file, synced to disk, renamed over ``path``."""
        arrays = {"weight": self.weight}
        if self.optimizer is not None:
            state = self.optimizer.state_dict()
            arrays["optimizer"] = np.array(json.dumps(self.optimizer_args))
            arrays.update({f"state/{key}": np.asarray(v) for key, v in state.items()})
        write_atomically(path, lambda file: np.savez(file, **arrays))  # type: ignore[arg-type]

    def _restore(self, saved) -> None:
        """The optimizer :meth:`save` wrote, attached and its state loaded."""
        if "optimizer" not in saved:
            return
        kind, kwargs = json.loads(str(saved["optimizer"]))
        self.attach(kind, kwargs)
        state = {}
        for key in saved.files:
            if key.startswith("state/"):
                value = saved[key]
                state[key.removeprefix("state/")] = value[()] if value.ndim == 0 else value
        self.optimizer.load_state_dict(state)  # type: ignore[union-attr]


def write_atomically(path: str, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, synced to disk, then
    renamed to ``path`` (and the rename synced): ``path`` is always a whole file."""
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(partial, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
