"""The functional front door: one lookup of the backend, then its host pipeline
(:mod:`nbbag.cpu.api` or :mod:`nbbag.cuda.api`); no backend branches here."""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike

from nbbag._device import backend_for
from nbbag._validate import check_context, check_flag, forward_options
from nbbag.base.records import BagContext
from nbbag.modes import Mode
from nbbag.quantized import QuantizedTable
from nbbag.sparse import RowSparseGrad


def embedding_bag(
    weight: Any,
    indices: ArrayLike,
    offsets: ArrayLike | None = None,
    *,
    mode: Mode | str = "mean",
    per_sample_weights: ArrayLike | None = None,
    padding_idx: int | None = None,
    include_last_offset: bool = False,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    out: Any = None,
) -> np.ndarray:
    """Look up the rows of ``weight`` named by each bag of ``indices`` and reduce them.

    The semantics are those of ``torch.nn.functional.embedding_bag`` (note the argument
    order: the table comes first), plus the ``sqrtn`` mode and weighted ``mean``/``sqrtn``.

    On a GPU: when ``weight`` is a device array (Numba, CuPy, a torch CUDA tensor:
    anything with ``__cuda_array_interface__``; needs the ``cuda`` extra) the CUDA
    kernels run, on the table in place, and the result is a Numba device array.
    ``indices``, ``offsets`` and ``per_sample_weights`` may then be on either side.

    Parameters
    ----------
    weight : ndarray or device array, shape (V, D), float32 or float64, C-contiguous
        The embedding table.  Only modified with ``max_norm``.  On the CPU also
        float16 or ``ml_dtypes.bfloat16`` (a half table): its elements are widened to
        float32 as they are read, the arithmetic and the output are float32 (the
        float32 forward on the table's values, bit for bit), and ``max_norm`` rounds
        the rescaled rows to nearest.  Or a
        :class:`nbbag.QuantizedTable` (:func:`nbbag.quantize_rows`): its rows are
        dequantized as they are read, and the output is float32.
    indices : array_like of int32 or int64, shape (N,) or (B, L)
        Row ids in [0, V).  A 2-D array is B bags of length L (``offsets`` must be None).
    offsets : array_like of int32 or int64, shape (B,) or (B + 1,), optional
        Start of each bag in 1-D ``indices``; the last bag runs to N.  With
        ``include_last_offset=True`` it holds B + 1 entries (CSR form) and indices past
        the last entry belong to no bag (torch 2.13 drops them only in its float32 sum
        without padding, and folds them into the last bag elsewhere).
    mode : {"sum", "mean", "max", "sqrtn"} or Mode, default "mean"
        ``sqrtn`` is sum / sqrt(count), or sum_i w_i x_i / sqrt(sum_i w_i^2) with weights.
    per_sample_weights : array_like of float, shape of ``indices``, optional
        A weight per index: a weighted sum, a weighted mean (sum_i w_i x_i / sum_i w_i)
        or a weighted sqrtn.  Not allowed with ``max``.
    padding_idx : int, optional
        A row left out of every bag and out of the mean's count; negative counts from
        the end.
    include_last_offset : bool, default False
        Whether ``offsets`` holds the end of the last bag too.
    max_norm : float, optional
        Rows looked up whose ``norm_type``-norm exceeds it are scaled down to it, in
        ``weight``, before the reduction (as torch does).
    norm_type : float, default 2.0
        The p of the p-norm for ``max_norm`` (``inf`` allowed).
    scale_grad_by_freq : bool, default False
        Only affects the gradient (see ``embedding_bag_bwd``); accepted here so torch
        code ports unchanged.
    out : ndarray (a device array on the GPU), shape (B, D), optional
        Of the weight's dtype (float32 for a half table).  Where to write the result
        (NumPy's convention, for loops that reuse a buffer):
        C-contiguous, writeable, not overlapping ``weight``.  Returned.

    Returns
    -------
    ndarray (a Numba device array on the GPU), shape (B, D), weight's dtype
        (float32 for a half table).  One row per bag; a bag with nothing in it (or
        only padding) gives zeros.

    Raises
    ------
    IndexError
        An index outside [0, V).
    ValueError, TypeError
        Malformed offsets, shapes, dtypes or options; the message names the argument.

    Examples
    --------
    >>> import numpy as np, nbbag
    >>> weight = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    >>> nbbag.embedding_bag(weight, [1, 2, 4, 5, 4, 3, 2, 9], [0, 4], mode="sum")
    array([[24., 28.],
           [36., 40.]], dtype=float32)
    """
    return _run(
        "embedding_bag", weight, indices, offsets, per_sample_weights, mode, padding_idx,
        include_last_offset, max_norm, norm_type, scale_grad_by_freq, out=out,
    )  # fmt: skip


def embedding_bag_fwd(
    weight: Any,
    indices: ArrayLike,
    offsets: ArrayLike | None = None,
    *,
    mode: Mode | str = "mean",
    per_sample_weights: ArrayLike | None = None,
    padding_idx: int | None = None,
    include_last_offset: bool = False,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
) -> tuple[np.ndarray, BagContext]:
    """:func:`embedding_bag`, plus the context its backward needs.

    Takes the same arguments as :func:`embedding_bag`.  For ``max`` the forward also
    records which token won each (bag, dimension); for weighted ``mean`` and ``sqrtn``
    the context keeps a copy of the output.  The context answers for this forward:
    it keeps the ids and weights it read (a copy where they were the caller's arrays,
    O(N)), so that refilling those buffers or editing the output in place does not
    change what the backward computes.  It holds a reference to ``weight``: the
    gradient with respect to ``per_sample_weights`` reads the rows as they are then.

    Returns
    -------
    out : ndarray, shape (B, D)
        What :func:`embedding_bag` returns.
    ctx : BagContext
        Pass it to :func:`embedding_bag_bwd`; it can be used more than once.

    Examples
    --------
    >>> import numpy as np, nbbag
    >>> weight = np.ones((10, 3), dtype=np.float32)
    >>> out, ctx = nbbag.embedding_bag_fwd(weight, [1, 2, 2], [0, 1], mode="sum")
    >>> grad = nbbag.embedding_bag_bwd(np.ones_like(out), ctx)
    >>> grad.rows, grad.values[:, 0]
    (array([1, 2]), array([1., 2.], dtype=float32))
    """
    return _run(
        "embedding_bag_fwd", weight, indices, offsets, per_sample_weights, mode,
        padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq,
    )  # fmt: skip


def _run(
    name, weight, indices, offsets, per_sample_weights, mode, padding_idx,
    include_last_offset, max_norm, norm_type, scale_grad_by_freq, **extra,
):  # fmt: skip
    """Check the table and the options, then run the backend's ``name``."""
    quantized = isinstance(weight, QuantizedTable)
    backend = backend_for(weight.data if quantized else weight)
    if quantized and name == "embedding_bag":
        return _quantized(
            backend, weight, indices, offsets, per_sample_weights, mode, padding_idx,
            include_last_offset, max_norm, norm_type, scale_grad_by_freq, **extra,
        )  # fmt: skip
    try:
        weight = backend.check_table(weight)
    except TypeError as error:
        raise _order_hint(error, weight, indices) from None
    options = forward_options(
        mode, padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq,
        weight.shape[0],
    )  # fmt: skip
    return getattr(backend, name)(
        weight, indices, offsets, per_sample_weights, options, **extra
    )


def _quantized(
    backend, table, indices, offsets, per_sample_weights, mode, padding_idx,
    include_last_offset, max_norm, norm_type, scale_grad_by_freq, out=None,
):  # fmt: skip
    """The forward of a quantized table (read-only: no ``max_norm``)."""
    options = forward_options(
        mode, padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq,
        table.num_embeddings,
    )  # fmt: skip
    if options.max_norm is not None:
        raise ValueError(
            "max_norm renorms rows in place: a QuantizedTable is read-only (renorm the "
            "float table before quantize_rows)"
        )
    return backend.quantized_embedding_bag(
        table, indices, offsets, per_sample_weights, options, out
    )


def _order_hint(error: TypeError, weight, indices) -> TypeError:
    """``error``, with a hint when the arguments look like torch's order (the ids
    first, the table second): nbbag takes the table first."""
    ids_dtype = getattr(weight, "dtype", None)
    table_dtype = getattr(indices, "dtype", None)
    if (
        ids_dtype is not None
        and table_dtype is not None
        and np.issubdtype(ids_dtype, np.integer)
        and np.issubdtype(table_dtype, np.floating)
    ):
        return TypeError(
            f"{error}; the table comes first in nbbag: embedding_bag(weight, indices, "
            "offsets), where torch's F.embedding_bag takes (input, weight, offsets)"
        )
    return error


@overload
def embedding_bag_bwd(
    grad_output: ArrayLike,
    ctx: BagContext,
    *,
    per_sample_weights_grad: Literal[False] = False,
    deterministic: bool = True,
) -> RowSparseGrad: ...


@overload
def embedding_bag_bwd(
    grad_output: ArrayLike,
    ctx: BagContext,
    *,
    per_sample_weights_grad: Literal[True],
    deterministic: bool = True,
) -> tuple[RowSparseGrad, np.ndarray]: ...


@overload
def embedding_bag_bwd(
    grad_output: ArrayLike,
    ctx: BagContext,
    *,
    per_sample_weights_grad: bool = False,
    deterministic: bool = True,
) -> RowSparseGrad | tuple[RowSparseGrad, np.ndarray]: ...


def embedding_bag_bwd(
    grad_output: ArrayLike,
    ctx: BagContext,
    *,
    per_sample_weights_grad: bool = False,
    deterministic: bool = True,
) -> RowSparseGrad | tuple[RowSparseGrad, np.ndarray]:
    """The gradient of the bag reduction, as sorted unique rows and their values.

    Parameters
    ----------
    grad_output : ndarray, shape (B, D), the weight's dtype (float32 for a half table)
        The gradient of the loss with respect to the forward's output (a device array,
        or a NumPy one that is copied over, when the forward ran on the GPU).
    ctx : BagContext
        From :func:`embedding_bag_fwd`.
    per_sample_weights_grad : bool, default False
        Also return the gradient with respect to the forward's ``per_sample_weights``
        (same shape; 0 for padding).  Needs weights in the forward.
    deterministic : bool, default True
        On the GPU, ``False`` scatter-adds each token into its row with atomics instead
        of summing each row in a fixed order: the last bits may then differ from run
        to run.  The CPU backward is always deterministic and ignores it.

    Returns
    -------
    RowSparseGrad
        ``rows`` (U,) int64 sorted unique: every row with a token in a bag, as torch's
        sparse gradient (a row whose weights are all 0 is there, with zeros; for max,
        the rows that won a dimension); ``values`` (U, D): their summed gradients
        (float32 for a half table); ``shape`` (V, D).  With
        ``scale_grad_by_freq`` each row is divided by its count in the batch.  Padding
        and empty bags give no gradient.  Deterministic: bit-identical for any number
        of threads (CPU) or launch order (GPU).  On the GPU (a device weight in the
        forward) ``rows`` and ``values`` are Numba device arrays.
    ndarray, optional
        The gradient with respect to ``per_sample_weights``, when asked for.

    Raises
    ------
    ValueError
        ``grad_output`` of the wrong shape or dtype; a weight whose shape changed since
        the forward; ``per_sample_weights_grad`` without weights in the forward.
    """
    weight = check_context(ctx)
    return backend_for(weight).embedding_bag_bwd(
        grad_output, ctx,
        check_flag(per_sample_weights_grad, "per_sample_weights_grad"),
        check_flag(deterministic, "deterministic"),
    )  # fmt: skip
