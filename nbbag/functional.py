"""The functional front door: validate, pick the kernel, run it."""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from nbbag._device import cuda_backend, is_device_array
from nbbag._validate import (
    BagBatch,
    BagContext,
    check_grad_output,
    check_weights_grad_request,
    validate_forward,
)
from nbbag.cpu import backward, forward
from nbbag.modes import Mode
from nbbag.sparse import RowSparseGrad


def kernels_by_mode(kernels) -> tuple[dict, dict]:
    """(unweighted, weighted) bag kernels by mode, from a module of bag kernels:
    :mod:`nbbag.cpu.forward` or :mod:`nbbag.cuda.forward` (the same names)."""
    unweighted = {
        Mode.SUM: kernels.bag_sum,
        Mode.MEAN: kernels.bag_mean,
        Mode.SQRTN: kernels.bag_sqrtn,
        Mode.MAX: kernels.bag_max,
    }
    weighted = {
        Mode.SUM: kernels.bag_weighted_sum,
        Mode.MEAN: kernels.bag_weighted_mean,
        Mode.SQRTN: kernels.bag_weighted_sqrtn,
    }
    return unweighted, weighted


# A kernel per mode, chosen once per call: the inner loops never branch on the mode.
_UNWEIGHTED_KERNELS, _WEIGHTED_KERNELS = kernels_by_mode(forward)


def embedding_bag(
    weight,
    indices,
    offsets=None,
    *,
    mode: Mode | str = "mean",
    per_sample_weights=None,
    padding_idx: int | None = None,
    include_last_offset: bool = False,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
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
        The embedding table.  Only modified with ``max_norm``.
    indices : array_like of int32 or int64, shape (N,) or (B, L)
        Row ids in [0, V).  A 2-D array is B bags of length L (``offsets`` must be None).
    offsets : array_like of int32 or int64, shape (B,) or (B + 1,), optional
        Start of each bag in 1-D ``indices``; the last bag runs to N.  With
        ``include_last_offset=True`` it holds B + 1 entries (CSR form) and indices past
        the last entry belong to no bag.
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

    Returns
    -------
    ndarray (a Numba device array on the GPU), shape (B, D), weight's dtype
        One row per bag; a bag with nothing in it (or only padding) gives zeros.

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
    options = dict(
        mode=mode,
        per_sample_weights=per_sample_weights,
        padding_idx=padding_idx,
        include_last_offset=include_last_offset,
        max_norm=max_norm,
        norm_type=norm_type,
        scale_grad_by_freq=scale_grad_by_freq,
    )
    if is_device_array(weight):
        return cuda_backend().embedding_bag(weight, indices, offsets, **options)
    batch = validate_forward(weight, indices, offsets, **options)
    return _forward(batch)[0]


def embedding_bag_fwd(
    weight,
    indices,
    offsets=None,
    *,
    mode: Mode | str = "mean",
    per_sample_weights=None,
    padding_idx: int | None = None,
    include_last_offset: bool = False,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
) -> tuple[np.ndarray, BagContext]:
    """:func:`embedding_bag`, plus the context its backward needs.

    Takes the same arguments as :func:`embedding_bag`.  For ``max`` the forward also
    records which token won each (bag, dimension); for weighted ``mean`` and ``sqrtn``
    the context keeps the output.  The context holds references to ``weight`` and the
    (validated) inputs, not copies: the backward reads ``weight`` as it is then.

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
    options = dict(
        mode=mode,
        per_sample_weights=per_sample_weights,
        padding_idx=padding_idx,
        include_last_offset=include_last_offset,
        max_norm=max_norm,
        norm_type=norm_type,
        scale_grad_by_freq=scale_grad_by_freq,
    )
    if is_device_array(weight):
        return cuda_backend().embedding_bag_fwd(weight, indices, offsets, **options)
    batch = validate_forward(weight, indices, offsets, **options)
    return forward_with_context(batch)


def forward_with_context(batch: BagBatch) -> tuple[np.ndarray, BagContext]:
    """The forward on validated inputs, keeping what the backward needs."""
    out, argmax = _forward(batch, record_argmax=batch.mode == Mode.MAX)
    keep_out = batch.per_sample_weights is not None and batch.mode != Mode.SUM
    return out, BagContext(batch, out if keep_out else None, argmax)


def embedding_bag_bwd(
    grad_output, ctx: BagContext, *, per_sample_weights_grad=False, deterministic=True
):
    """The gradient of the bag reduction, as sorted unique rows and their values.

    Parameters
    ----------
    grad_output : ndarray, shape (B, D), the weight's dtype
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
        ``rows`` (U,) int64 sorted unique: the rows that got a contribution;
        ``values`` (U, D): their summed gradients; ``shape`` (V, D).  With
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
    if isinstance(ctx, BagContext) and is_device_array(ctx.batch.weight):
        return cuda_backend().embedding_bag_bwd(
            grad_output,
            ctx,
            per_sample_weights_grad=per_sample_weights_grad,
            deterministic=deterministic,
        )
    grad_output = check_grad_output(grad_output, ctx)
    check_weights_grad_request(per_sample_weights_grad, ctx.batch)
    grad = _weight_grad(grad_output, ctx)
    if not per_sample_weights_grad:
        return grad
    weights_grad = np.zeros_like(ctx.batch.per_sample_weights)
    backward.per_sample_weights_grad(*weights_grad_args(grad_output, ctx), weights_grad)
    return grad, weights_grad.reshape(ctx.indices_shape)


def weights_grad_args(grad_output, ctx: BagContext) -> tuple:
    """``per_sample_weights_grad``'s arguments but the output, either backend."""
    batch = ctx.batch
    return (
        batch.weight,
        batch.indices,
        batch.offsets,
        batch.per_sample_weights,
        ctx.out if ctx.out is not None else grad_output,  # out: read by mean/sqrtn only
        grad_output,
        batch.padding_idx,
        int(batch.mode),
    )


def _forward(batch: BagBatch, record_argmax: bool = False):
    """Run the forward kernels on validated inputs; return ``out`` (and, with
    ``record_argmax``, the max winners)."""
    weight = batch.weight
    if batch.max_norm is not None:
        forward.renorm_rows(
            weight, np.unique(batch.indices), batch.max_norm, batch.norm_type
        )
    out = np.empty((batch.num_bags, weight.shape[1]), dtype=weight.dtype)
    if record_argmax:
        argmax = np.empty(out.shape, dtype=np.int64)
        forward.bag_max_argmax(
            weight, batch.indices, batch.offsets, out, argmax, batch.padding_idx
        )
        return out, argmax
    # the sum family gets D as a compile-time constant (max reads rows in place)
    lanes = forward.lanes_for(weight.shape[1])
    if batch.mode == Mode.MAX:
        forward.bag_max(weight, batch.indices, batch.offsets, out, batch.padding_idx)
    elif batch.per_sample_weights is None:
        kernel = _UNWEIGHTED_KERNELS[batch.mode]
        kernel(weight, batch.indices, batch.offsets, out, batch.padding_idx, lanes)
    else:
        kernel = _WEIGHTED_KERNELS[batch.mode]
        kernel(
            weight,
            batch.indices,
            batch.offsets,
            batch.per_sample_weights,
            out,
            batch.padding_idx,
            lanes,
        )
    return out, None


NO_ARGMAX = np.empty((0, 0), dtype=np.int64)  # row_gradient's "not max"


class TokenGroups(NamedTuple):
    """The tokens of a batch grouped by row: what every row's gradient is made of."""

    bag_of: np.ndarray  # (N,) the bag of each token, -1 for padding / no bag
    coefficients: np.ndarray  # (N,) each token's coefficient (max: 1 for winners)
    argmax: np.ndarray  # the forward's max winners (B, D), or NO_ARGMAX
    rows: np.ndarray  # (U,) sorted rows with at least one token
    row_ptr: np.ndarray  # (U + 1,) row k's tokens are positions[row_ptr[k]:row_ptr[k+1]]
    positions: np.ndarray  # token positions grouped by row, increasing within a row
    value_index: np.ndarray  # (U,) row k's slot among the contributing rows, or -1
    num_contributing: int

    def token_args(self) -> tuple:
        """What every row-gradient kernel (``accumulate_rows``, ``apply_fused``) takes
        after ``grad_output``: (bag_of, coefficients, argmax, positions, row_ptr)."""
        return self.bag_of, self.coefficients, self.argmax, self.positions, self.row_ptr


def coefficients_kernel(kernels, ctx: BagContext, unweighted, bag_of, coefficients):
    """(kernel, arguments) that fill ``bag_of`` and ``coefficients``, from a module of
    backward kernels (:mod:`nbbag.cpu.backward` or :mod:`nbbag.cuda.backward`):
    ``max_token_coefficients`` for max, else ``token_coefficients`` (``unweighted``:
    the empty array that stands for no weights)."""
    batch = ctx.batch
    if batch.mode == Mode.MAX:
        args = (batch.indices, batch.offsets, ctx.argmax, batch.padding_idx)
        return kernels.max_token_coefficients, (*args, bag_of, coefficients)
    weights = batch.per_sample_weights
    args = (
        batch.indices,
        batch.offsets,
        weights if weights is not None else unweighted,
        batch.padding_idx,
        int(batch.mode),
    )
    return kernels.token_coefficients, (*args, bag_of, coefficients)


def group_tokens(ctx: BagContext) -> TokenGroups:
    """Each token's bag and coefficient, and the tokens grouped by row (stable)."""
    batch = ctx.batch
    num_tokens = batch.indices.shape[0]
    # The kernels write every token in a bag; bags are contiguous from 0, so only the
    # tokens past the last offset (include_last_offset) are in none.
    bag_of = np.empty(num_tokens, dtype=np.int64)
    coefficients = np.empty(num_tokens, dtype=batch.weight.dtype)  # f32 math for f32
    bag_of[batch.offsets[-1] :] = -1
    coefficients[batch.offsets[-1] :] = 0
    weights = batch.per_sample_weights
    kernel, args = coefficients_kernel(
        backward, ctx, np.empty(0, dtype=batch.weight.dtype), bag_of, coefficients
    )
    kernel(*args)
    num_rows = batch.weight.shape[0]
    # int32 sort keys where they fit: half the bytes of int64 through each radix pass
    fits_int32 = max(num_rows, num_tokens) < np.iinfo(np.int32).max
    rows, row_ptr, positions = backward.group_positions_by_row(
        batch.indices,
        bag_of,
        num_rows,
        numba.get_num_threads(),
        np.int32 if fits_int32 else np.int64,
    )
    if batch.mode == Mode.MAX or weights is not None:
        # A max loser, a weight of 0 or weights summing to 0 contribute nothing: only
        # rows with a non-zero coefficient get a gradient.
        contributes = np.empty(rows.shape[0], dtype=np.bool_)
        backward.contributing_rows(coefficients, positions, row_ptr, contributes)
        value_index = np.cumsum(contributes) - 1
        value_index[~contributes] = -1
        num_contributing = int(np.count_nonzero(contributes))
    else:  # every token in a bag has coefficient 1, 1/n or 1/sqrt(n)
        value_index = np.arange(rows.shape[0])
        num_contributing = rows.shape[0]
    argmax = ctx.argmax if batch.mode == Mode.MAX else NO_ARGMAX
    return TokenGroups(
        bag_of,
        coefficients,
        argmax,
        rows,
        row_ptr,
        positions,
        value_index,
        num_contributing,
    )


def _weight_grad(grad_output: np.ndarray, ctx: BagContext) -> RowSparseGrad:
    """Group the tokens by row, then sum each row's contributions on one thread."""
    groups = group_tokens(ctx)
    num_rows, dim = ctx.weight_shape
    values = np.empty((groups.num_contributing, dim), dtype=ctx.batch.weight.dtype)
    backward.accumulate_rows(
        grad_output,
        *groups.token_args(),
        groups.value_index,
        ctx.batch.scale_grad_by_freq,
        values,
        forward.lanes_for(dim),
    )
    rows = groups.rows
    if groups.num_contributing < rows.shape[0]:  # only max and weights leave rows out
        rows = rows[groups.value_index >= 0]
    return RowSparseGrad._trusted(rows, values, (num_rows, dim))
