"""EmbeddingBag: a table that owns its weight and remembers its last forward."""

from __future__ import annotations

import numpy as np

from nbbag._memory import aligned_empty
from nbbag._validate import (
    BagContext,
    check_flag,
    check_norm_options,
    check_padding_idx,
    check_weight,
    validate_forward,
)
from nbbag.functional import embedding_bag_bwd, forward_with_context
from nbbag.modes import Mode
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
    weight : ndarray (V, D), optional
        Use this array as the table (not copied: updates to it are the layer's).
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
        mode = Mode.parse(mode)
        check_padding_idx(padding_idx, shape[0])
        check_flag(include_last_offset, "include_last_offset")
        check_flag(scale_grad_by_freq, "scale_grad_by_freq")
        check_norm_options(max_norm, norm_type)
        if weight is None:
            if np.dtype(dtype) not in (np.float32, np.float64):
                raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
            weight = aligned_empty(shape, dtype)
            weight[...] = np.random.default_rng(seed).standard_normal(shape)
            if padding_idx is not None:
                weight[padding_idx] = 0
        else:
            check_weight(weight)
            if weight.shape != shape:
                raise ValueError(
                    f"weight must have shape (num_embeddings, embedding_dim) = {shape}, "
                    f"got {weight.shape}"
                )
        self.weight = weight
        self.options = {
            "mode": mode,
            "padding_idx": padding_idx,
            "include_last_offset": include_last_offset,
            "max_norm": max_norm,
            "norm_type": norm_type,
            "scale_grad_by_freq": scale_grad_by_freq,
        }
        self._ctx: BagContext | None = None
        self.optimizer = None

    def attach(self, optimizer) -> None:
        """Train with ``optimizer`` (one of :mod:`nbbag.optim`, built on this layer's
        weight): each forward first brings the rows it reads up to date
        (``optimizer.catch_up``), and :meth:`step` does backward and update in one pass.
        With SGD's momentum or weight decay, training then equals dense torch SGD."""
        if getattr(optimizer, "weight", None) is not self.weight:
            raise ValueError("optimizer must be built on this layer's weight array")
        self.optimizer = optimizer

    def step(self, grad_output) -> None:
        """Backward of the last forward and the attached optimizer's update, fused."""
        if self.optimizer is None:
            raise RuntimeError("step() needs an optimizer: call attach(optimizer) first")
        self.optimizer.step_fused(grad_output, self._last_context())

    @property
    def mode(self) -> Mode:
        return self.options["mode"]

    def __call__(self, indices, offsets=None, per_sample_weights=None) -> np.ndarray:
        """The forward (see :func:`nbbag.embedding_bag`); keeps what backward needs.

        With an attached optimizer, the rows the batch reads are first brought up to
        date, after the inputs are checked (bad input changes nothing)."""
        batch = validate_forward(
            self.weight,
            indices,
            offsets,
            per_sample_weights=per_sample_weights,
            **self.options,
        )
        if self.optimizer is not None:
            self.optimizer._catch_up(batch.indices)
        out, self._ctx = forward_with_context(batch)
        return out

    def backward(
        self, grad_output, *, per_sample_weights_grad: bool = False
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
        if self.weight.shape != self._ctx.weight_shape:
            raise ValueError(
                f"weight's shape changed from {self._ctx.weight_shape} at the forward to "
                f"{self.weight.shape}: run the forward again"
            )
        return self._ctx

    def __repr__(self) -> str:
        num_rows, dim = self.weight.shape
        return (
            f"EmbeddingBag({num_rows}, {dim}, mode={self.mode.name.lower()!r}, "
            f"dtype={self.weight.dtype})"
        )
