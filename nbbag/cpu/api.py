"""The CPU host pipeline: what the front (:mod:`nbbag.functional`, :mod:`nbbag.layer`,
:mod:`nbbag.optim`) calls for NumPy tables.  :mod:`nbbag.cuda.api` has the same
functions for device tables.

Inputs are checked (:mod:`nbbag._validate`), outputs allocated once here, and the
kernel variant that runs each call is chosen by :mod:`nbbag.cpu.variants`.  Each
function the front calls that may run a parallel kernel is :func:`~nbbag._threads.guarded`
(serialised under Numba's workqueue layer, refused in a child forked after GNU OpenMP).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from nbbag import _validate as checks
from nbbag._memory import aligned_empty, aligned_full, padded_length
from nbbag._threads import guarded
from nbbag._validate import INDEX_DTYPE_SET
from nbbag.base.constants import BAD_ID, OK
from nbbag.base.dtypes import FLOAT32, compute_dtype, is_half, kernel_table
from nbbag.base.records import BagBatch, BagContext, ForwardOptions, TokenGroups
from nbbag.cpu import backward, optim, variants
from nbbag.cpu.checks import index_range
from nbbag.cpu.forward import offsets_to_csr, renorm_rows
from nbbag.sparse import RowSparseGrad

NAME = "cpu"


# -- tables ------------------------------------------------------------------------------
def check_table(weight, writeable_for: str | None = None) -> np.ndarray:
    """``weight`` checked as a table; ``writeable_for`` says why it must be writeable."""
    weight = checks.check_weight(weight)
    if writeable_for is not None:
        checks.check_writeable(weight.flags.writeable, writeable_for)
    return weight


def check_writes(arrays: dict, why: str) -> None:
    """Each of ``arrays`` (by name) writeable: a flag the caller can clear any time."""
    for name, array in arrays.items():
        checks.check_writeable(array.flags.writeable, why, name)


def table(shape: tuple[int, int], dtype) -> np.ndarray:
    """A new (uninitialised) table, 64-byte aligned."""
    return aligned_empty(shape, dtype)


# -- the forward -------------------------------------------------------------------------
@guarded
def embedding_bag(
    weight, indices, offsets, per_sample_weights, options: ForwardOptions, out=None
):
    """The forward's output (``weight`` checked by :func:`check_table`), in ``out`` if
    given."""
    return _forward(weight, indices, offsets, per_sample_weights, options, False, out)[0]


@guarded
def embedding_bag_fwd(
    weight, indices, offsets, per_sample_weights, options: ForwardOptions
):
    """The forward's output and its :class:`~nbbag.base.records.BagContext`."""
    return _forward(weight, indices, offsets, per_sample_weights, options, True)


def _forward(
    weight, indices, offsets, per_sample_weights, options, keep_context, out=None,
    stack=None,
):  # fmt: skip
    # ``stack``: a collection stack's PendingIds.stack, whose ids the kernel combines
    # into ``indices`` (the stack's own array) as it reads them; the context is then
    # None where one is outside its feature's table.
    stacked = stack is not None
    # Every call pays for each line here: a tiny batch's whole forward is ~4 us.
    indices = checks.check_indices(indices)
    offsets, append_end, num_bags = checks.bag_offsets(
        offsets, indices, options.include_last_offset
    )
    weights = None
    # A half table (the only 16-bit tables the checks let in): its integer view for
    # the kernels, float32 sums.  Tested by itemsize: no call, no hashing of a dtype.
    table, values_dtype = weight, weight.dtype
    if weight.itemsize == 2:
        table, values_dtype = kernel_table(weight), FLOAT32
    if per_sample_weights is not None:
        weights = checks.check_per_sample_weights(
            per_sample_weights, indices, options.mode, values_dtype
        )
    flat = checks.flat_contiguous(indices)
    # The context answers for this batch, whatever the caller's buffers hold later (a
    # stack's ids and weights are the collection's own, made for this call).
    if keep_context and not stacked:
        flat = _private(flat, indices)
        weights = None if weights is None else _private(weights, per_sample_weights)
    num_rows, dim = weight.shape
    variant = variants.forward_variant(options.mode, dim, flat.shape[0], keep_context)
    if out is None:
        out = np.empty((num_bags, dim), dtype=values_dtype)
    elif not stacked:  # a caller's (a stacked one is the collection's own: trusted)
        checks.check_out(out, (num_bags, dim), weight)
    csr = np.empty(num_bags + 1, dtype=np.int64)
    if options.max_norm is not None:  # a write: everything checked and allocated first
        checks.check_writeable(
            weight.flags.writeable, "rows are renormed in place with max_norm"
        )
        _check_contents(indices, flat, offsets, append_end, num_rows)
        renorm_rows(table, np.unique(flat), options.max_norm, options.norm_type)
    status, argmax = variant.run(
        table, flat, offsets, append_end, csr, weights, out, options.padding_idx, stack
    )
    if status != OK:
        if stacked:
            return out, None
        checks.check_bag_contents(indices, offsets, num_rows)
    if not keep_context:
        return out, None
    batch = BagBatch(weight, flat, csr, weights, options, indices.shape)
    if stacked:
        # A (B', F, D) output's rows, bag-major, are those of the gradient and the
        # winners (BagContext.features).  No copy of the output: the collection never
        # asks for the weights' gradient.
        winners = None if argmax is None else argmax.reshape(-1, dim)
        return out, BagContext(batch, None, winners, out.shape[1])
    # The weights' gradient of mean and sqrtn reads the output: a copy of its own, so
    # that the caller may edit the one returned (an in-place activation, say).
    kept = None
    if weights is not None and options.mode.divides:
        kept = out.copy()
    return out, BagContext(batch, kept, argmax)


def _private(array: np.ndarray, given) -> np.ndarray:
    """``array`` (checked from the caller's ``given``) or, where it may be the caller's
    own memory, a copy: one that nbbag allocated owns its data and is not ``given``."""
    if array.flags.owndata and array is not given:
        return array
    return array.copy()


@guarded
def check_batch(weight, indices, offsets, per_sample_weights, options: ForwardOptions):
    """Every check of a forward, the offsets' and ids' values included, without running
    it: for callers that write before the forward reads (an optimizer's catch-up)."""
    checked_batch(
        weight.shape[0], weight.dtype, indices, offsets, per_sample_weights, options
    )


@guarded
def checked_batch(
    num_rows: int, dtype, indices, offsets, per_sample_weights, options: ForwardOptions
) -> tuple:
    """Every check of a forward on a table of ``num_rows`` rows of ``dtype``, without
    the table: (flat ids, CSR offsets (B + 1,), weights in ``dtype`` or None)."""
    indices = checks.check_indices(indices)
    offsets, append_end, _ = checks.bag_offsets(
        offsets, indices, options.include_last_offset
    )
    weights = checks.check_per_sample_weights(
        per_sample_weights, indices, options.mode, compute_dtype(dtype)
    )
    flat = checks.flat_contiguous(indices)
    csr = _check_contents(indices, flat, offsets, append_end, num_rows)
    return flat, csr, weights


def _check_contents(indices, flat, offsets, append_end, num_rows) -> np.ndarray:
    """Raise for the first bad offset, then the first id outside the table; return
    the CSR offsets."""
    csr = np.empty(offsets.shape[0] + append_end, dtype=np.int64)
    if not offsets_to_csr(offsets, flat.shape[0], append_end, csr):
        checks.check_offsets_values(offsets, flat.shape[0])
    if _first_bad_id(flat, num_rows) >= 0:
        checks.check_bag_contents(indices, offsets, num_rows)
    return csr


# -- a quantized table's forward ---------------------------------------------------------
@guarded
def quantized_embedding_bag(
    table, indices, offsets, per_sample_weights, options: ForwardOptions, out=None
):  # fmt: skip
    """The forward of a :class:`nbbag.QuantizedTable`: float32 (B, D), in ``out`` if
    given (:func:`nbbag.cpu.variants.quantized_forward`); everything checked first."""
    indices = checks.check_indices(indices)
    offsets, append_end, num_bags = checks.bag_offsets(
        offsets, indices, options.include_last_offset
    )
    weights = checks.check_per_sample_weights(
        per_sample_weights, indices, options.mode, np.dtype(np.float32)
    )
    flat = checks.flat_contiguous(indices)
    shape = (num_bags, table.embedding_dim)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        checks.check_out(out, shape, table.params)
    csr = _check_contents(indices, flat, offsets, append_end, table.num_embeddings)
    variants.quantized_forward(
        table.data, table.params, table.bits, flat, csr, weights, out,
        options.padding_idx, options.mode,
    )  # fmt: skip
    return out


def _first_bad_id(flat, num_rows: int) -> int:
    """The first position of ``flat`` outside [0, num_rows), or -1."""
    if flat.shape[0] == 0:
        return -1
    smallest, largest = index_range(flat)  # parallel, and no temporary arrays
    if smallest >= 0 and largest < num_rows:
        return -1
    return checks.first_outside(flat, num_rows)


# -- a collection: its features as one stack's bags ---------------------------------
def from_host(array: np.ndarray) -> np.ndarray:
    """A host array (a new stack's rows, a gradient's rows) as this backend's: itself."""
    return array


def check_feature(indices, offsets, per_sample_weights, mode, dtype) -> tuple:
    """One feature of a collection's batch, checked but for the values of its offsets
    and ids (:func:`combine_features` checks those): (flat ids, B, bag starts (B,),
    weights (N,) in ``dtype`` or None, indices and offsets as read, for messages)."""
    if (  # the common case, decided without a call: ~1.5 us a feature less
        per_sample_weights is None
        and type(indices) is np.ndarray
        and type(offsets) is np.ndarray
        and indices.ndim == 1
        and offsets.ndim == 1
        and offsets.shape[0] > 0
        and indices.dtype in INDEX_DTYPE_SET
        and offsets.dtype in INDEX_DTYPE_SET
        and indices.flags.c_contiguous
    ):
        return indices, offsets.shape[0], offsets, None, indices, offsets
    indices = checks.check_indices(indices)
    offsets, append_end, num_bags = checks.bag_offsets(offsets, indices, False)
    weights = checks.check_per_sample_weights(per_sample_weights, indices, mode, dtype)
    starts = offsets if append_end else offsets[:num_bags]
    return checks.flat_contiguous(indices), num_bags, starts, weights, indices, offsets


class PendingIds(NamedTuple):
    """A stack's ids (N,) int64, ``out``, still to be combined from ``stack``: by the
    forward as it reads them, or by :func:`stack_ids`."""

    out: np.ndarray
    # the forward kernels' ``stack`` (:mod:`nbbag.cpu.forward`): (every feature's ids
    # one after another (N,), where each feature's start (F + 1,), and per feature
    # (F,) where its table starts in the stack, its rows and its padding row or -1,
    # then the stack's spare row); a plain tuple, which Numba's parallel kernels take
    stack: tuple


@guarded
def combine_features(ids, starts, tables, pad_row: int, weights, dtype):
    """(status, ids, CSR offsets, weights or None) of a stack's bags from its
    features' ``ids``, bag ``starts`` (B,) and ``weights`` (lists; a feature's weights
    None where it has none: 1 for each of its tokens); ``tables`` the (row_base,
    num_rows, padding) arrays (F,) of the features' tables.

    Only the offsets are combined (and checked) here
    (:func:`nbbag.cpu.collection.combine_offsets`): the ids come back as
    :class:`PendingIds`, which the forward combines and checks as it reads them (one
    pass over the ids fewer: 2,048 bags of 10 ids on 26 tables spent ~0.5 ms of a 4.8
    ms forward combining them), or :func:`stack_ids` before it."""
    lengths = np.array([feature_ids.shape[0] for feature_ids in ids], dtype=np.int64)
    token_starts = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=token_starts[1:])
    bag_starts = np.concatenate(starts).astype(np.int64, copy=False)
    bag_starts = bag_starts.reshape(len(starts), starts[0].shape[0])
    out_offsets = np.empty(bag_starts.size + 1, dtype=np.int64)
    status = np.full(1, OK, dtype=np.int64)
    variants.combine_offsets(token_starts, bag_starts, out_offsets, status)
    stack = (np.concatenate(ids), token_starts, *tables, pad_row)
    pending = PendingIds(np.empty(token_starts[-1], dtype=np.int64), stack)
    if status[0] == OK and not bag_starts.shape[1]:
        # No bags: no chunk of the forward would see the ids, which are still checked
        # (and the context's) as in a batch with bags.
        status[0] = _combine_ids_now(pending)
    stacked_weights = None
    if any(w is not None for w in weights):  # the tokens keep their order: feature-major
        stacked_weights = np.concatenate(
            [
                np.ones(n, dtype) if w is None else w
                for n, w in zip(lengths, weights, strict=True)
            ]
        )
    return int(status[0]), pending, out_offsets, stacked_weights


@guarded
def stack_ids(ids: PendingIds) -> tuple:
    """(status, the stack's ids) of :func:`combine_features`' ``ids``, combined now:
    for an optimizer that catches up the rows before the forward reads them.  The
    forward combines them again, the same."""
    return _combine_ids_now(ids), ids.out


def _combine_ids_now(ids: PendingIds) -> int:
    """Combine ``ids.out`` from ``ids.stack``
    (:func:`nbbag.cpu.collection.combine_stack_ids`); return the status."""
    status = np.full(1, OK, dtype=np.int64)
    variants.combine_stack_ids(ids.stack, ids.out, status)
    return int(status[0])


@guarded
def stack_forward(
    weight, indices: PendingIds, offsets, per_sample_weights, options, out, column_starts
):  # fmt: skip
    """(status, :class:`~nbbag.base.records.BagContext`) of the forward of a
    collection's stack (its combined bags, the ids combined here) into ``out``, the
    collection's (B, W) output: the stack's bag f * B + b (feature f's bag b) goes to
    row b, columns ``column_starts[f]:column_starts[f] + D``.  The kernels write a (B,
    F, D) array (their bag f * B + b to ``[b, f]``): where the stack holds every
    feature, ``out`` itself.  Status BAD_ID (and no context): an id outside its
    feature's table (``out`` then to be discarded; the caller finds which)."""
    num_bags, width = out.shape
    num_features, dim = column_starts.shape[0], weight.shape[1]
    if offsets.shape[0] - 1 != num_bags * num_features:
        raise ValueError(f"out {out.shape} does not hold the stack's bags")
    in_place = num_features * dim == width  # its features are every column, in order
    by_feature = (
        out.reshape(num_bags, num_features, dim)
        if in_place
        else aligned_empty((num_bags, num_features, dim), compute_dtype(weight.dtype))
    )
    ctx = _forward(
        weight, indices.out, offsets, per_sample_weights, options, True, by_feature,
        stack=indices.stack,
    )[1]  # fmt: skip
    if ctx is None:
        return BAD_ID, None
    if not in_place:
        for f, column in enumerate(column_starts):
            out[:, column : column + dim] = by_feature[:, f]
    return OK, ctx


def check_collection_grad(grad_output, shape: tuple, dtype):
    """A collection's ``grad_output``: an array of the output's ``shape``, floating
    (cast to the tables' ``dtype`` by :func:`stack_gradient`)."""
    grad_output = checks.as_array(grad_output, "grad_output")
    checks.check_grad_like(grad_output, shape, dtype)
    return grad_output


def stack_gradient(grad_output, column_starts, dim: int, dtype) -> np.ndarray:
    """A stack's (B * F, D) gradient, bag-major (the rows of its context: see
    ``BagContext.features``), from the collection's (B, W) ``grad_output`` (checked):
    row b * F + f is row b's columns of feature f.  Where the stack's features are
    every column, in order, that is ``grad_output`` itself, reshaped (no copy)."""
    num_bags, width = grad_output.shape
    num_features = column_starts.shape[0]
    if (
        num_features * dim == width
        and grad_output.dtype == dtype
        and grad_output.flags.c_contiguous
    ):
        return grad_output.reshape(-1, dim)
    by_bag = np.empty((num_bags, num_features, dim), dtype=dtype)
    for f, column in enumerate(column_starts):
        by_bag[:, f] = grad_output[:, column : column + dim]
    return by_bag.reshape(-1, dim)


# -- the backward ------------------------------------------------------------------------
def check_grad_output(grad_output, ctx: BagContext) -> np.ndarray:
    return checks.check_grad_output(grad_output, ctx)


def group_tokens(ctx: BagContext) -> TokenGroups:
    """The batch's tokens grouped by row (:mod:`nbbag.cpu.backward`)."""
    batch = ctx.batch
    weight = batch.weight
    if is_half(weight.dtype):
        # The kernel reads only the table's row count and compute dtype: an empty
        # (V, 0) float32 stand-in runs the float32 tables' specialisation (one compile
        # fewer, of ~3 s, a format).
        weight = np.empty((weight.shape[0], 0), np.float32)
    return variants.group_tokens(
        weight, batch.indices, batch.offsets,
        batch.per_sample_weights, ctx.argmax, batch.padding_idx, batch.mode,
        ctx.features,
    )  # fmt: skip


@guarded
def embedding_bag_bwd(grad_output, ctx, per_sample_weights_grad, deterministic):
    """The row-sparse gradient (and the weights' gradient when asked for); the CPU
    backward is always deterministic."""
    grad_output = check_grad_output(grad_output, ctx)
    checks.check_weights_grad_request(per_sample_weights_grad, ctx)
    groups = group_tokens(ctx)
    values = np.empty(
        (groups.num_contributing, ctx.weight_shape[1]),
        compute_dtype(ctx.batch.weight.dtype),
    )
    variants.accumulate_rows(
        grad_output, groups, ctx.batch.options.scale_grad_by_freq, values
    )
    grad = RowSparseGrad._trusted(backward.compact_rows(groups), values, ctx.weight_shape)
    if not per_sample_weights_grad:
        return grad
    return grad, _weights_grad(grad_output, ctx)


def _weights_grad(grad_output, ctx: BagContext) -> np.ndarray:
    batch = ctx.batch
    weights_grad = np.zeros_like(batch.per_sample_weights)
    weight, indices, padding_idx = batch.weight, batch.indices, batch.padding_idx
    if is_half(weight.dtype):
        # The batch's rows widened to float32 (U x D, not the table), the ids renumbered
        # into them: the float32 kernel on the same values.
        rows, indices = np.unique(indices, return_inverse=True)
        weight = weight[rows].astype(np.float32)
        found = np.searchsorted(rows, padding_idx)
        padded = found < rows.shape[0] and rows[found] == padding_idx
        padding_idx = int(found) if padded else -1
    backward.per_sample_weights_grad(
        weight, indices, batch.offsets, batch.per_sample_weights,
        ctx.output_for(grad_output), grad_output, padding_idx, int(batch.mode),
        weights_grad,
    )  # fmt: skip
    return weights_grad.reshape(ctx.indices_shape)


# -- optimizer state and steps -----------------------------------------------------------
def state_array(shape, fill, dtype) -> np.ndarray:
    """A state array: 64-byte aligned when 2-D (its random rows are read and written
    beside the weight's)."""
    if len(shape) == 2 and shape[0]:
        return aligned_full(shape, fill, dtype)
    return np.full(shape, fill, dtype=dtype)


def to_host(array) -> np.ndarray:
    return array.copy()


def copy_into(target: np.ndarray, source: np.ndarray) -> None:
    np.copyto(target, source, casting="same_kind")


def fill(array: np.ndarray, value) -> None:
    array.fill(value)


def sync_schedule(log, on_backend):
    """The log's arrays as the kernels take them: on the CPU, the log's own."""
    log.take_changes()
    return log.schedule()


def same_table(a, b) -> bool:
    return a is b


def as_gradient(grad: RowSparseGrad, weight: np.ndarray) -> RowSparseGrad:
    """``grad`` with host arrays in the weight's compute dtype."""
    if not isinstance(grad.values, np.ndarray):
        grad = RowSparseGrad._trusted(*grad._host_arrays(), grad.shape)
    dtype = compute_dtype(weight.dtype)
    if grad.values.dtype != dtype:
        grad = RowSparseGrad._trusted(grad.rows, grad.values.astype(dtype), grad.shape)
    return grad


# ``rounding`` (the steps and catch-ups): how a half table's updates are rounded, None
# (to nearest) or the key of stochastic rounding (nbbag.cpu.elements).
@guarded
def apply_gradient(step, weight, grad: RowSparseGrad, state, t: int, rounding) -> None:
    """Step ``t`` of a rule (its step record ``step``) with a row-sparse gradient;
    ``state`` is (per-element state arrays, per-row state arrays)."""
    variants.apply_row_gradients(
        step, kernel_table(weight), grad.rows, grad.values, state, t, rounding
    )


@guarded
def apply_fused(
    step, weight, grad_output, ctx: BagContext, state, t: int, rounding
) -> None:
    """Step ``t`` with the gradient of ``ctx``'s forward, computed row by row."""
    groups = group_tokens(ctx)
    # A block of scratch rows per thread, each row padded to whole cache lines:
    # threads never write the same line.
    dtype = compute_dtype(weight.dtype)
    scratch = aligned_empty(
        (
            numba.get_num_threads(),
            optim.FUSED_BLOCK,
            padded_length(weight.shape[1], dtype.itemsize),
        ),
        dtype,
    )
    variants.apply_fused(
        step, kernel_table(weight), grad_output, groups,
        ctx.batch.options.scale_grad_by_freq, state, t, scratch, rounding,
    )  # fmt: skip


@guarded
def check_rows(indices, num_rows: int) -> np.ndarray:
    """``indices`` (any shape) checked against the table, as a flat array."""
    indices = checks.check_indices(indices)
    flat = checks.flat_contiguous(indices)
    position = _first_bad_id(flat, num_rows)
    if position >= 0:
        raise checks.index_error(indices.shape, position, flat[position], num_rows)
    return flat


@guarded
def catch_up(step, weight, rows, state, target_step: int, rounding) -> None:
    """Bring ``rows`` (checked, repeats allowed) up to ``target_step``."""
    element_state, row_state = state
    optim.catch_up_rows(
        step, kernel_table(weight), rows, element_state, row_state, target_step, rounding
    )


@guarded
def catch_up_all(step, weight, state, target_step: int, rounding) -> None:
    """Bring every row up to ``target_step``."""
    element_state, row_state = state
    optim.catch_up_all_rows(
        step, kernel_table(weight), element_state, row_state, target_step, rounding
    )
