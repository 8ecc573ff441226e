"""EmbeddingBag: a table that owns its weight and remembers its last forward."""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from nbbag._device import backend_for
from nbbag._validate import forward_options
from nbbag.base.records import BagContext
from nbbag.cpu.api import table as host_table
from nbbag.functional import embedding_bag_bwd
from nbbag.modes import Mode
from nbbag.rules import catches_up
from nbbag.sparse import RowSparseGrad


class EmbeddingBag:
    """An embedding table with a bag forward and a row-sparse backward.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        The table's shape (V, D).
    mode : {"sum", "mean", "max", "sqrtn"} or Mode, default "mean"
    padding_idx : int, optional
        A row left out of every bag (negative counts from the end); initialised to
        zeros, as in torch.
    include_last_offset : bool, default False
    dtype : float32 or float64, default float32
    seed : int, optional
        Seeds the initialisation: N(0, 1), as torch's.
    weight : ndarray or device array (V, D), optional
        Use this array as the table (not copied: updates to it are the layer's).  A
        device array (Numba, CuPy, a torch CUDA tensor; needs the ``cuda`` extra)
        makes a layer on the GPU: its outputs and gradients are then device arrays.
    max_norm, norm_type, scale_grad_by_freq
        As in :func:`nbbag.embedding_bag`.

    Examples
    --------
    >>> import numpy as np, nbbag
    >>> bag = nbbag.EmbeddingBag(10, 3, mode="sum", seed=0)
    >>> out = bag([1, 2, 4, 5, 4, 3, 2, 9], [0, 4])
    >>> grad = bag.backward(np.ones_like(out))
    >>> grad.rows
    array([1, 2, 3, 4, 5, 9])
    >>> grad.values[:, 0]
    array([1., 2., 1., 2., 1., 1.], dtype=float32)
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Mode | str = "mean",
        *,
        padding_idx: int | None = None,
        include_last_offset: bool = False,
        dtype=np.float32,
        seed: int | None = None,
        weight: np.ndarray | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
    ):
        for name, value in (
            ("num_embeddings", num_embeddings),
            ("embedding_dim", embedding_dim),
        ):
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        shape = (int(num_embeddings), int(embedding_dim))
        # Options are checked now, not at the first forward.
        self.options = forward_options(
            mode, padding_idx, include_last_offset, max_norm, norm_type,
            scale_grad_by_freq, shape[0],
        )  # fmt: skip
        if weight is None:
            weight = _new_table(shape, dtype, seed, padding_idx)
        self._backend = backend_for(weight)
        self.weight = self._backend.check_table(weight)
        if tuple(self.weight.shape) != shape:
            raise ValueError(
                f"weight must have shape (num_embeddings, embedding_dim) = {shape}, "
                f"got {tuple(self.weight.shape)}"
            )
        self._ctx: BagContext | None = None
        self.optimizer = None

    def attach(self, optimizer) -> None:
        """Train with ``optimizer`` (one of :mod:`nbbag.optim`, built on this layer's
        weight): each forward first brings the rows it reads up to date
        (``optimizer.catch_up``), and :meth:`step` does backward and update in one pass.
        With SGD's momentum or weight decay, training then equals dense torch SGD."""
        weight = getattr(optimizer, "weight", None)
        if weight is None or not self._backend.same_table(weight, self.weight):
            raise ValueError("optimizer must be built on this layer's weight array")
        self.optimizer = optimizer

    def step(self, grad_output) -> None:
        """Backward of the last forward and the attached optimizer's update, fused."""
        if self.optimizer is None:
            raise RuntimeError("step() needs an optimizer: call attach(optimizer) first")
        self.optimizer.step_fused(grad_output, self._last_context())

    @property
    def mode(self) -> Mode:
        return self.options.mode

    def __call__(self, indices, offsets=None, per_sample_weights=None) -> np.ndarray:
        """The forward (see :func:`nbbag.embedding_bag`); keeps what backward needs.

        With an attached optimizer, the rows the batch reads are first brought up to
        date, after the inputs are checked (bad input changes nothing)."""
        backend, options = self._backend, self.options
        if self.optimizer is not None and catches_up(self.optimizer.step_type):
            # the rows are caught up before the forward reads them: check first
            backend.check_batch(self.weight, indices, offsets, per_sample_weights, options)
            self.optimizer.catch_up(indices)
        out, self._ctx = backend.embedding_bag_fwd(
            self.weight, indices, offsets, per_sample_weights, options
        )
        return out

    @overload
    def backward(
        self, grad_output: ArrayLike, *, per_sample_weights_grad: Literal[False] = False
    ) -> RowSparseGrad: ...

    @overload
    def backward(
        self, grad_output: ArrayLike, *, per_sample_weights_grad: Literal[True]
    ) -> tuple[RowSparseGrad, np.ndarray]: ...

    @overload
    def backward(
        self, grad_output: ArrayLike, *, per_sample_weights_grad: bool = False
    ) -> RowSparseGrad | tuple[RowSparseGrad, np.ndarray]: ...

    def backward(
        self, grad_output: ArrayLike, *, per_sample_weights_grad: bool = False
    ) -> RowSparseGrad | tuple[RowSparseGrad, np.ndarray]:
        """The gradient of the last forward (see :func:`nbbag.embedding_bag_bwd`)."""
        return embedding_bag_bwd(
            grad_output,
            self._last_context(),
            per_sample_weights_grad=per_sample_weights_grad,
        )

    def _last_context(self) -> BagContext:
        if self._ctx is None:
            raise RuntimeError("backward needs a forward first: call the layer")
        if tuple(self.weight.shape) != self._ctx.weight_shape:
            raise ValueError(
                f"weight's shape changed from {self._ctx.weight_shape} at the forward to "
                f"{tuple(self.weight.shape)}: run the forward again"
            )
        return self._ctx

    def __repr__(self) -> str:
        num_rows, dim = self.weight.shape
        return (
            f"EmbeddingBag({num_rows}, {dim}, mode={self.mode.name.lower()!r}, "
            f"dtype={self.weight.dtype})"
        )


def _new_table(shape: tuple[int, int], dtype, seed, padding_idx) -> np.ndarray:
    """A 64-byte aligned host table, N(0, 1) as torch's, the padding row zero."""
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    weight = host_table(shape, dtype)
    weight[...] = np.random.default_rng(seed).standard_normal(shape)
    if padding_idx is not None:
        weight[padding_idx] = 0
    return weight
