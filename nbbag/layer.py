"""EmbeddingBag: a table that owns its weight and remembers its last forward."""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from nbbag import _files
from nbbag._device import backend_for
from nbbag._validate import check_weight, checked_state_array, forward_options, is_integer
from nbbag.base.constants import NO_PADDING
from nbbag.base.dtypes import BFLOAT16, parse_table_dtype, standard_normal_into
from nbbag.base.records import BagContext, ForwardOptions
from nbbag.cpu.api import table as host_table
from nbbag.functional import embedding_bag_bwd
from nbbag.modes import Mode
from nbbag.rules import catches_up
from nbbag.sparse import RowSparseGrad


class TableOptions:
    """torch.nn.EmbeddingBag's attributes that a table's ``options`` (a checked
    :class:`~nbbag.base.records.ForwardOptions`) hold: shared by nbbag's tables."""

    options: ForwardOptions

    @property
    def mode(self) -> Mode:
        return self.options.mode

    @property
    def padding_idx(self) -> int | None:
        padding = self.options.padding_idx
        return None if padding == NO_PADDING else padding

    @property
    def include_last_offset(self) -> bool:
        return self.options.include_last_offset

    @property
    def max_norm(self) -> float | None:
        return self.options.max_norm

    @property
    def norm_type(self) -> float:
        return self.options.norm_type

    @property
    def scale_grad_by_freq(self) -> bool:
        return self.options.scale_grad_by_freq


class TableAttributes(TableOptions):
    """With the sizes of a table held in ``weight`` (or mapped from a file)."""

    weight: Any

    @property
    def num_embeddings(self) -> int:
        return int(self.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.weight.shape[1])


class EmbeddingBag(TableAttributes):
    """An embedding table with a bag forward and a row-sparse backward.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        The table's shape (V, D).
    mode : {"sum", "mean", "max", "sqrtn"} or Mode, default "mean"
    padding_idx : int, optional
        A row left out of every bag (negative counts from the end); in a new table
        initialised to zeros, as in torch (a given ``weight`` is used as it is).
    include_last_offset : bool, default False
    dtype : float32, float64, float16 or bfloat16, optional
        The new table's dtype (default float32; bfloat16 is ``ml_dtypes.bfloat16``, or
        the string "bfloat16").  With ``weight``: None, or the weight's own dtype (a
        different one is refused: the table is not converted).  A float16 or bfloat16
        table holds half the bytes of a float32 one (a faster forward on tables beyond
        the cache); its outputs and gradients are float32, computed from its values,
        and optimizers keep float32 state, rounding each update to the table's dtype
        (see :mod:`nbbag.optim`).
    seed : int >= 0, optional
        Seeds the initialisation: N(0, 1), as torch's, drawn straight into the table
        in its dtype (no temporary: the constructor's peak memory is the table's).
    weight : ndarray or device array (V, D), optional
        Use this array as the table (not copied: updates to it are the layer's).  A
        device array (Numba, CuPy, a torch CUDA tensor; needs the ``cuda`` extra)
        makes a layer on the GPU: its outputs and gradients are then device arrays.
    max_norm, norm_type, scale_grad_by_freq
        As in :func:`nbbag.embedding_bag`.
    path : str or path-like, optional
        Keep the table in this ``.npy`` file, mapped into memory (``weight`` is then an
        ``np.memmap``): a table larger than RAM trains at a cost that grows with the
        batch, the OS paging rows in and out (each row not in memory a page fault, and
        a 4 KB write-back once changed: slow for batches spread over such a table).
        A new file is written chunk by chunk (N(0, 1) from ``seed``: the same values
        as an in-memory table of that seed), under a temporary name renamed when
        complete; an existing file is opened as it is (its shape and dtype must be the
        layer's).  Optimizers keep their state in files with ``state_dir``.

    Attributes
    ----------
    weight : the table
    num_embeddings, embedding_dim, mode, padding_idx, include_last_offset, max_norm,
    norm_type, scale_grad_by_freq : the options, as torch's layer has them
        (``padding_idx`` as a row in [0, V), or None).

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
        dtype=None,
        seed: int | None = None,
        weight: np.ndarray | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        path=None,
    ):
        shape = check_shape(num_embeddings, embedding_dim)
        table_dtype = None if dtype is None else parse_table_dtype(dtype)
        _check_seed(seed)
        # Options are checked now, not at the first forward.
        self.options = forward_options(
            mode, padding_idx, include_last_offset, max_norm, norm_type,
            scale_grad_by_freq, shape[0],
        )  # fmt: skip
        if path is not None:
            if weight is not None:
                raise ValueError("pass weight or path, not both")
            if table_dtype == BFLOAT16:  # np.save would write raw 2-byte records
                raise TypeError(
                    "path=: a .npy file cannot hold a bfloat16 table (the format has no "
                    "bfloat16); use float16, or keep the table in memory"
                )
            weight = _files.normal_table(
                path, shape, table_dtype or np.dtype(np.float32), seed,
                self.options.padding_idx,
            )  # fmt: skip
        if weight is None:
            weight = _new_table(shape, table_dtype or np.dtype(np.float32), seed)
            if self.options.padding_idx != NO_PADDING:
                weight[self.options.padding_idx] = 0
        self._backend = backend_for(weight)
        self.weight = self._backend.check_table(weight)
        check_given_weight(
            self.weight, shape, table_dtype,
            "the given weight is used as it is (leave dtype out, or convert the weight "
            "first)",
        )  # fmt: skip
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

    # -- torch's attributes (the rest are TableAttributes') ---------------------------
    def __repr__(self) -> str:
        """As torch prints its layer (the options that differ from the defaults), with
        the dtype when it is not float32."""
        parts = [str(self.num_embeddings), str(self.embedding_dim)]
        if self.max_norm is not None:
            parts.append(f"max_norm={self.max_norm}")
        if self.norm_type != 2.0:
            parts.append(f"norm_type={self.norm_type}")
        if self.scale_grad_by_freq:
            parts.append("scale_grad_by_freq=True")
        parts.append(f"mode={str(self.mode)!r}")
        if self.include_last_offset:
            parts.append("include_last_offset=True")
        if self.padding_idx is not None:
            parts.append(f"padding_idx={self.padding_idx}")
        if self.weight.dtype != np.float32:
            parts.append(f"dtype={self.weight.dtype}")
        return f"EmbeddingBag({', '.join(parts)})"

    # -- construction from a table, checkpoints ---------------------------------------
    @classmethod
    def from_pretrained(
        cls, embeddings, mode: Mode | str = "mean", *, copy: bool = True, **options
    ) -> EmbeddingBag:
        """A layer whose table is ``embeddings`` (V, D), as torch's ``from_pretrained``.

        Parameters
        ----------
        embeddings : array (V, D), float32, float64, float16 or bfloat16, or a device
            array
        mode : as the constructor's
        copy : bool, default True
            Train a 64-byte aligned copy (the caller's array stays as it was); False
            uses ``embeddings`` itself (it must be C-contiguous and writeable to train).
        **options
            ``padding_idx``, ``include_last_offset``, ``max_norm``, ``norm_type``,
            ``scale_grad_by_freq``: as the constructor's.  torch's ``freeze`` has no
            counterpart: a table changes only when an optimizer steps it.
        """
        if copy and isinstance(embeddings, np.ndarray):
            table = check_weight(embeddings)
            weight = host_table(table.shape, table.dtype)
            np.copyto(weight, table)
        else:
            weight = embeddings
        rows, dim = weight.shape
        return cls(rows, dim, mode, weight=weight, **options)

    def state_dict(self) -> dict:
        """``{"weight": a host copy of the table}``, as torch's layer gives (an
        optimizer's state is its own ``state_dict``)."""
        return {"weight": self._backend.to_host(self.weight)}

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state["weight"]`` into the table (same shape; a dtype that casts
        safely), after checking it whole."""
        if not isinstance(state, dict) or "weight" not in state:
            raise ValueError("state must be a dict with a 'weight' entry")
        weight = checked_state_array("weight", state["weight"], self.weight)
        self._backend.copy_into(self.weight, weight)


def check_shape(num_embeddings, embedding_dim) -> tuple[int, int]:
    """A table's (V, D), checked."""
    return (
        _check_size(num_embeddings, "num_embeddings"),
        _check_size(embedding_dim, "embedding_dim"),
    )


def _check_size(value, name: str) -> int:
    if not is_integer(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return int(value)


def check_given_weight(weight, shape: tuple, dtype, hint: str) -> None:
    """A table given as ``weight=``: of ``shape`` and, unless ``dtype`` is None, of
    ``dtype`` (``hint`` says what to do instead)."""
    if tuple(weight.shape) != shape:
        raise ValueError(
            f"weight must have shape (num_embeddings, embedding_dim) = {shape}, "
            f"got {tuple(weight.shape)}"
        )
    if dtype is not None and weight.dtype != dtype:
        raise ValueError(f"dtype={dtype} but weight is {weight.dtype}: {hint}")


def check_float_dtype(dtype, what: str) -> np.dtype:
    """``dtype`` checked for a table that takes float32 or float64 only (``what``)."""
    table_dtype = parse_table_dtype(dtype)
    if table_dtype.itemsize == 2:
        raise TypeError(f"{what} takes float32 or float64 tables, got {table_dtype}")
    return table_dtype


def _check_seed(seed) -> None:
    if seed is None:
        return
    if not is_integer(seed):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must not be negative, got {seed}")


def _new_table(shape: tuple[int, int], dtype: np.dtype, seed) -> np.ndarray:
    """A 64-byte aligned host table, N(0, 1) as torch's, drawn in its own dtype
    straight into it: no float64 temporary (the peak is the table itself; a half
    table's draws are float32, a chunk at a time, rounded)."""
    weight = host_table(shape, dtype)
    standard_normal_into(np.random.default_rng(seed), weight)
    return weight
