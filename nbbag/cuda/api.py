"""The GPU host pipeline: :mod:`nbbag.cpu.api`'s functions, for device tables.

Inputs are validated (:mod:`nbbag.cuda.checks`), outputs are allocated once here, and
the kernels do the rest on the device.  Which kernel runs a call (mode, weighted or
not, max's winners or not) is chosen by the lookups below; the kernels are compiled
for the types they meet (no disk cache on the GPU).
"""

from __future__ import annotations

import numpy as np

from nbbag import _validate
from nbbag.base.constants import OK
from nbbag.base.dtypes import compute_dtype
from nbbag.base.halves import NEAREST
from nbbag.base.records import BagBatch, BagContext, ForwardOptions, TokenGroups
from nbbag.base.schedule import Schedule
from nbbag.cuda import (
    arrays,
    backward,
    checks,
    collection,
    forward,
    grouping,
    launch,
    optim,
    quantized,
    variants,
)
from nbbag.sparse import RowSparseGrad

NAME = "cuda"


# -- tables ------------------------------------------------------------------------------
def check_table(weight, writeable_for: str | None = None):
    """``weight`` as a Numba device array (no copy), checked as a table."""
    return checks.check_weight(weight)


def check_writes(arrays: dict, why: str) -> None:
    """Nothing to check: a device array has no read-only flag."""


def table(shape: tuple[int, int], dtype):
    """A new (uninitialised) device table."""
    return arrays.empty(shape, dtype)


# -- the forward -------------------------------------------------------------------------
def embedding_bag(
    weight, indices, offsets, per_sample_weights, options: ForwardOptions, out=None
):
    if out is None:  # (into out=, every check must pass before the first write)
        inputs = checks.inputs_for_unchecked_launch(
            weight, indices, offsets, per_sample_weights, options
        )
        if inputs is not None:
            ids, bag_offsets, weights = inputs
            return _forward_then_checks(weight, ids, bag_offsets, weights, options)
    batch = checks.validate(weight, indices, offsets, per_sample_weights, options)
    if out is not None:
        out = checks.check_device_out(out, (batch.num_bags, weight.shape[1]), weight)
    return _run_forward(batch, False, out)[0]


def _forward_then_checks(weight, indices, offsets, per_sample_weights, options):
    """The forward of device ids and offsets launched right behind their checks, and
    one copy back of what the checks found (a wait) instead of a wait before the
    forward: raises for bad input, whose output (nbbag's own, new) is dropped; the
    kernels read the caller's offsets as they are (no CSR copy), clamped, and skip
    ids outside the table, so bad input never reads out of bounds.  (One kernel doing
    both held 48 registers against the forward's 40 and ran 14% slower on an H200.)"""
    found = checks.launch_batch_checks(indices, offsets, weight.shape[0])
    num_bags = offsets.shape[0] - (1 if options.include_last_offset else 0)
    out = arrays.empty((num_bags, weight.shape[1]), compute_dtype(weight.dtype))
    grid, block = launch.grouped(num_bags, weight.shape[1])
    variants.launch_bags(
        grid, block, weight, indices, offsets, per_sample_weights, options, out
    )
    checks.raise_found(indices, offsets, found.copy_to_host(), weight.shape[0])
    return out


def embedding_bag_fwd(
    weight, indices, offsets, per_sample_weights, options: ForwardOptions
):
    batch = checks.validate(
        weight, indices, offsets, per_sample_weights, options, private=True
    )
    out, argmax = _run_forward(batch, True)
    # The weights' gradient of mean and sqrtn reads the output: a copy of its own, so
    # that the caller may edit the one returned.
    kept = None
    if batch.per_sample_weights is not None and options.mode.divides:
        kept = arrays.copy(out)
    return out, BagContext(batch, kept, argmax)


def check_batch(weight, indices, offsets, per_sample_weights, options: ForwardOptions):
    """Every check of a forward, without running it."""
    checks.validate(weight, indices, offsets, per_sample_weights, options)


def _run_forward(batch: BagBatch, keep_context: bool, out=None):
    """The forward kernels on a validated device batch: (out, max's winners or None);
    into ``out`` (checked) if given."""
    weight, options = batch.weight, batch.options
    num_bags, dim = batch.num_bags, weight.shape[1]
    if out is None:
        out = arrays.empty((num_bags, dim), compute_dtype(weight.dtype))
    argmax = None
    if variants.records_winners(options.mode, keep_context):
        argmax = arrays.empty((num_bags, dim), np.int64)
    if options.max_norm is not None:  # a write: everything allocated before it
        rows = grouping.unique_rows(batch.indices, weight.shape[0])
        if rows.shape[0]:
            row_grid, row_block = launch.linear(rows.shape[0])
            forward.renorm_rows[row_grid, row_block](
                arrays.kernel_table(weight), rows, options.max_norm, options.norm_type
            )
    if num_bags and dim:
        grid, block = launch.grouped(num_bags, dim)
        variants.forward_launch(grid, block, batch, out, argmax)
    return out, argmax


# -- a quantized table's forward ---------------------------------------------------------
def quantized_embedding_bag(
    table, indices, offsets, per_sample_weights, options: ForwardOptions, out=None
):  # fmt: skip
    """The forward of a :class:`nbbag.QuantizedTable` whose rows are on the device:
    float32 (B, D) (in ``out`` if given), with the float forward's checks (the table's
    (V, P / 4) float32 view stands for the weight in them)."""
    batch = checks.validate(table.params, indices, offsets, per_sample_weights, options)
    shape = (batch.num_bags, table.embedding_dim)
    if out is None:
        out = arrays.empty(shape, np.float32)
    else:
        out = checks.check_device_out(out, shape, table.params)
    weights = batch.per_sample_weights  # a kernel launch cannot take None: ones
    if weights is None:
        weights = arrays.full(batch.indices.shape[0], 1, np.float32)
    if batch.num_bags and table.embedding_dim:
        grid, block = launch.grouped(batch.num_bags, table.embedding_dim)
        quantized.quantized_bags[grid, block](
            table.data, table.params, table.bits, batch.indices, batch.offsets, weights,
            out, batch.padding_idx, int(batch.mode),
        )  # fmt: skip
    return out


# -- a collection: its features as one stack's bags ---------------------------------
def from_host(array: np.ndarray):
    """A host array (a new stack's rows, a gradient's rows) as a device array."""
    return arrays.to_device(array)


def check_feature(indices, offsets, per_sample_weights, mode, dtype) -> tuple:
    """:func:`nbbag.cpu.api.check_feature` for host or device arrays: device ones are
    checked for dtype and shape here, their values on the device by
    :func:`combine_features`."""
    on_device = arrays.is_device(indices)
    indices = (
        checks.device_indices(indices) if on_device else _validate.check_indices(indices)
    )
    if offsets is not None and arrays.is_device(offsets) and indices.ndim == 1:
        offsets = checks.device_index_array(offsets, "offsets")
        _validate.check_offsets_shape(offsets, False)
        starts, num_bags = offsets, offsets.shape[0]
    else:  # host offsets, or those of 2-D indices (refusing any given with them)
        offsets, append_end, num_bags = _validate.bag_offsets(offsets, indices, False)
        starts = offsets if append_end else offsets[:num_bags]
    weights = None
    if per_sample_weights is not None and arrays.is_device(per_sample_weights):
        weights = checks.check_device_per_sample_weights(
            per_sample_weights, indices.shape, mode, dtype
        )
    else:
        weights = _validate.check_per_sample_weights(
            per_sample_weights, indices, mode, dtype
        )
    flat = indices.reshape(indices.size)
    return flat, num_bags, starts, weights, indices, offsets


def combine_features(ids, starts, tables, pad_row: int, weights, dtype):
    """:func:`nbbag.cpu.api.combine_features` on the device: the features' arrays
    (host or device) gathered into device arrays, then one kernel."""
    lengths = [feature_ids.shape[0] for feature_ids in ids]
    token_starts = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=token_starts[1:])
    num_features, num_bags = len(starts), starts[0].shape[0]
    bag_starts = arrays.concatenated(starts, [num_bags] * num_features, np.int64)
    out_ids = arrays.empty(int(token_starts[-1]), np.int64)
    out_offsets = arrays.empty(num_features * num_bags + 1, np.int64)
    status = arrays.to_device(np.full(1, OK, dtype=np.int64))
    grid, block = launch.linear(max(num_features * num_bags, out_ids.shape[0], 1))
    collection.combine_features[grid, block](
        arrays.concatenated(ids, lengths, np.int64), arrays.to_device(token_starts),
        bag_starts.reshape(num_features, num_bags), *tables, pad_row, out_ids,
        out_offsets, status,
    )  # fmt: skip
    stacked_weights = None
    if any(w is not None for w in weights):  # None: 1 for each of the feature's tokens
        stacked_weights = arrays.concatenated(weights, lengths, dtype)
    return int(status.copy_to_host()[0]), out_ids, out_offsets, stacked_weights


def stack_ids(ids) -> tuple:
    """:func:`nbbag.cpu.api.stack_ids`: (OK, ``ids``), which :func:`combine_features`
    combined and checked already."""
    return OK, ids


def stack_forward(
    weight, indices, offsets, per_sample_weights, options, out, column_starts
):  # fmt: skip
    """:func:`nbbag.cpu.api.stack_forward` on the device: the forward kernels write
    the stack's (F * B, D) rows, then ``move_features`` puts them in their columns.
    The ids were checked by :func:`combine_features`: the status is OK."""
    batch = BagBatch(weight, indices, offsets, per_sample_weights, options, indices.shape)
    stack_out, argmax = _run_forward(batch, True)
    _move_features(stack_out, column_starts, out, True)
    # The output the weights' gradient of mean and sqrtn reads: the stack's own rows
    # (the caller never sees them, so no copy).
    kept = None
    if per_sample_weights is not None and options.mode.divides:
        kept = stack_out
    return OK, BagContext(batch, kept, argmax)


def _move_features(stack_rows, column_starts, wide, to_wide: bool) -> None:
    count, dim = stack_rows.shape
    if count and dim:
        grid, block = launch.grouped(count, dim)
        collection.move_features[grid, block](stack_rows, column_starts, wide, to_wide)


def check_collection_grad(grad_output, shape: tuple, dtype):
    """A collection's ``grad_output`` as a C-contiguous device array of the tables'
    ``dtype`` (a host one copied over), of the output's ``shape``."""
    if arrays.is_device(grad_output):
        grad_output = arrays.as_device(grad_output)
    else:
        grad_output = _validate.as_array(grad_output, "grad_output")
    _validate.check_grad_like(grad_output, shape, dtype)
    if not arrays.is_device(grad_output):
        return arrays.to_device(np.ascontiguousarray(grad_output, dtype=dtype))
    if not grad_output.is_c_contiguous():
        raise ValueError("grad_output must be C-contiguous")
    return arrays.cast(grad_output, dtype)


def stack_gradient(grad_output, column_starts, dim: int, dtype):
    """:func:`nbbag.cpu.api.stack_gradient` on the device (``move_features``)."""
    rows = arrays.empty((column_starts.shape[0] * grad_output.shape[0], dim), dtype)
    _move_features(rows, column_starts, grad_output, False)
    return rows


# -- the backward ------------------------------------------------------------------------
def check_grad_output(grad_output, ctx: BagContext):
    """A device array (a host array is copied over) of the forward output's shape and
    the weight's dtype."""
    _validate.check_context(ctx)
    if arrays.is_device(grad_output):
        grad_output = arrays.as_device(grad_output)
    elif isinstance(grad_output, np.ndarray):
        grad_output = arrays.to_device(grad_output)
    else:
        raise TypeError(
            f"grad_output must be a device or NumPy array, got {type(grad_output).__name__}"
        )
    _validate.check_grad_output_like(grad_output, ctx)
    if not grad_output.is_c_contiguous():
        raise ValueError("grad_output must be C-contiguous")
    # a floating one, as the CPU: the table's compute dtype
    return arrays.cast(grad_output, compute_dtype(ctx.batch.weight.dtype))


def group_tokens(ctx: BagContext) -> TokenGroups:
    """The batch's tokens grouped by row, on the device."""
    batch = ctx.batch
    return grouping.group_tokens(
        batch.weight, batch.indices, batch.offsets, batch.per_sample_weights, ctx.argmax,
        batch.padding_idx, batch.mode, features=ctx.features,
    )  # fmt: skip


def embedding_bag_bwd(grad_output, ctx, per_sample_weights_grad, deterministic):
    grad_output = check_grad_output(grad_output, ctx)
    _validate.check_weights_grad_request(per_sample_weights_grad, ctx)
    grad = _weight_grad(grad_output, ctx, deterministic)
    if not per_sample_weights_grad:
        return grad
    batch = ctx.batch
    weights_grad = arrays.full(
        batch.per_sample_weights.shape[0], 0, compute_dtype(batch.weight.dtype)
    )
    if batch.num_bags:
        grid, block = launch.linear(batch.num_bags)
        backward.per_sample_weights_grad[grid, block](
            arrays.kernel_table(batch.weight), batch.indices, batch.offsets,
            batch.per_sample_weights, ctx.output_for(grad_output), grad_output,
            batch.padding_idx, int(batch.mode), weights_grad,
        )  # fmt: skip
    return grad, weights_grad.reshape(ctx.indices_shape)


def _weight_grad(grad_output, ctx: BagContext, deterministic: bool) -> RowSparseGrad:
    """The row-sparse gradient on the device: rows (U,) and values (U, D)."""
    groups = group_tokens(ctx)
    num_rows, dim = ctx.weight_shape
    values = arrays.empty(
        (groups.num_contributing, dim), compute_dtype(ctx.batch.weight.dtype)
    )
    num_unique = groups.rows.shape[0]
    scale = ctx.batch.options.scale_grad_by_freq
    if groups.num_contributing and dim:
        kernel = backward.accumulate_rows
        if not deterministic:
            arrays.fill(values, 0)
            kernel = backward.accumulate_rows_atomic
        grid, block = launch.grouped(num_unique, dim)
        kernel[grid, block](grad_output, groups, scale, values)
    rows = groups.rows
    if groups.num_contributing < num_unique:
        rows = arrays.empty(groups.num_contributing, np.int64)
        row_grid, row_block = launch.linear(num_unique)
        backward.compact_rows[row_grid, row_block](groups.rows, groups.value_index, rows)
    return RowSparseGrad._trusted(rows, values, (num_rows, dim))


# -- optimizer state and steps -----------------------------------------------------------
def state_array(shape, fill, dtype):
    return arrays.full(shape, fill, dtype)


def to_host(array) -> np.ndarray:
    return arrays.to_host(array)


def copy_into(target, source: np.ndarray) -> None:
    arrays.copy_to_device(target, source)


def fill(array, value) -> None:
    arrays.fill(array, value)


def sync_schedule(log, on_device):
    """The log's arrays on the device: copied whole the first time, then only the
    entries that changed (a few a step while the hyperparameters change)."""
    changes = log.take_changes()
    if on_device is None:
        on_device = Schedule(
            arrays.to_device(log.starts), arrays.to_device(log.matrices),
            arrays.to_device(log.products), log.count,
        )  # fmt: skip
    else:
        for name, index in changes:
            source = getattr(log, name)[index : index + 1]
            getattr(on_device, name)[index : index + 1].copy_to_device(source)
    return on_device._replace(runs=log.count)


def same_table(a, b) -> bool:
    return arrays.same_array(arrays.as_device(a), arrays.as_device(b))


def as_gradient(grad: RowSparseGrad, weight) -> RowSparseGrad:
    """``grad`` with device arrays (copied over from the host if need be), its values
    cast to the weight's compute dtype as the CPU casts them (float32 for a half
    table)."""
    dtype = compute_dtype(weight.dtype)
    if not arrays.is_device(grad.values):
        values = grad.values.astype(dtype, copy=False)
        grad = RowSparseGrad._trusted(
            arrays.to_device(grad.rows), arrays.to_device(values), grad.shape
        )
    else:
        checks.check_device_gradient(grad.rows, grad.values, grad.shape)
    if grad.values.dtype != dtype:  # cast, as on the CPU
        values = arrays.cast(grad.values, dtype)
        grad = RowSparseGrad._trusted(grad.rows, values, grad.shape)
    return grad


# ``rounding`` (None: to nearest, or the key of stochastic rounding) reaches the kernels
# as an int, NEAREST for None: a launch cannot take None.
def _launch_rounding(rounding) -> int:
    return NEAREST if rounding is None else rounding


def apply_gradient(step, weight, grad: RowSparseGrad, state, t: int, rounding) -> None:
    num_rows, dim = grad.values.shape
    if num_rows == 0 or dim == 0:
        return
    grid, block = launch.grouped(num_rows, dim)
    optim.apply_row_gradients[grid, block](
        step, arrays.kernel_table(weight), grad.rows, grad.values, *state, t,
        _launch_rounding(rounding),
    )  # fmt: skip


def apply_fused(
    step, weight, grad_output, ctx: BagContext, state, t: int, rounding
) -> None:
    groups = group_tokens(ctx)
    num_rows, dim = groups.rows.shape[0], weight.shape[1]
    if num_rows == 0 or dim == 0:
        return
    grid, block = launch.grouped_resident(num_rows, dim)
    scratch = arrays.empty((grid * block[1], dim), compute_dtype(weight.dtype))
    optim.apply_fused[grid, block](
        step, arrays.kernel_table(weight), grad_output, groups,
        ctx.batch.options.scale_grad_by_freq, *state, t, scratch,
        _launch_rounding(rounding),
    )  # fmt: skip


def check_rows(indices, num_rows: int):
    """1-D device indices in [0, num_rows), from device or host ``indices``."""
    if arrays.is_device(indices):
        indices = checks.check_device_indices(indices, num_rows)
        return indices.reshape(indices.size)
    indices = _validate.check_indices(indices)
    checks.check_host_ids(indices, num_rows)
    return arrays.to_device(np.ascontiguousarray(indices.reshape(-1)))


def catch_up(step, weight, rows, state, target_step: int, rounding) -> None:
    if rows.shape[0] == 0:
        return
    grid, block = launch.linear(rows.shape[0])
    optim.catch_up_rows[grid, block](
        step, arrays.kernel_table(weight), rows, *state, target_step,
        _launch_rounding(rounding),
    )  # fmt: skip


def catch_up_all(step, weight, state, target_step: int, rounding) -> None:
    if weight.shape[0] == 0:
        return
    grid, block = launch.linear(weight.shape[0])
    optim.catch_up_all_rows[grid, block](
        step, arrays.kernel_table(weight), *state, target_step, _launch_rounding(rounding)
    )
