"""The GPU host pipeline: :mod:`nbbag.cpu.api`'s functions, for device tables.

Inputs are validated (:mod:`nbbag.cuda.checks`), outputs are allocated once here, and
the kernels do the rest on the device.  Which kernel runs a call (mode, weighted or
not, max's winners or not) is chosen by the lookups below; the kernels are compiled
for the types they meet (no disk cache on the GPU).
"""

from __future__ import annotations

import numpy as np

from nbbag import _validate
from nbbag.base.records import BagBatch, BagContext, ForwardOptions, TokenGroups
from nbbag.base.schedule import Schedule
from nbbag.cuda import arrays, backward, checks, forward, grouping, launch, optim, variants
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
    batch = checks.validate(weight, indices, offsets, per_sample_weights, options)
    if out is not None:
        out = checks.check_device_out(out, (batch.num_bags, weight.shape[1]), weight)
    return _run_forward(batch, False, out)[0]


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
        out = arrays.empty((num_bags, dim), weight.dtype)
    argmax = None
    if variants.records_winners(options.mode, keep_context):
        argmax = arrays.empty((num_bags, dim), np.int64)
    if options.max_norm is not None:  # a write: everything allocated before it
        rows = grouping.unique_rows(batch.indices, weight.shape[0])
        if rows.shape[0]:
            row_grid, row_block = launch.linear(rows.shape[0])
            forward.renorm_rows[row_grid, row_block](
                weight, rows, options.max_norm, options.norm_type
            )
    if num_bags and dim:
        grid, block = launch.grouped(num_bags, dim)
        variants.forward_launch(grid, block, batch, out, argmax)
    return out, argmax


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
    return arrays.cast(grad_output, ctx.batch.weight.dtype)  # a floating one, as the CPU


def group_tokens(ctx: BagContext) -> TokenGroups:
    """The batch's tokens grouped by row, on the device."""
    batch = ctx.batch
    return grouping.group_tokens(
        batch.weight, batch.indices, batch.offsets, batch.per_sample_weights, ctx.argmax,
        batch.padding_idx, batch.mode,
    )  # fmt: skip


def embedding_bag_bwd(grad_output, ctx, per_sample_weights_grad, deterministic):
    grad_output = check_grad_output(grad_output, ctx)
    _validate.check_weights_grad_request(per_sample_weights_grad, ctx)
    grad = _weight_grad(grad_output, ctx, deterministic)
    if not per_sample_weights_grad:
        return grad
    batch = ctx.batch
    weights_grad = arrays.full(batch.per_sample_weights.shape[0], 0, batch.weight.dtype)
    if batch.num_bags:
        grid, block = launch.linear(batch.num_bags)
        backward.per_sample_weights_grad[grid, block](
            batch.weight, batch.indices, batch.offsets, batch.per_sample_weights,
            ctx.output_for(grad_output), grad_output, batch.padding_idx, int(batch.mode),
            weights_grad,
        )  # fmt: skip
    return grad, weights_grad.reshape(ctx.indices_shape)


def _weight_grad(grad_output, ctx: BagContext, deterministic: bool) -> RowSparseGrad:
    """The row-sparse gradient on the device: rows (U,) and values (U, D)."""
    groups = group_tokens(ctx)
    num_rows, dim = ctx.weight_shape
    values = arrays.empty((groups.num_contributing, dim), ctx.batch.weight.dtype)
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
    return array.copy_to_host()


def copy_into(target, source: np.ndarray) -> None:
    target.copy_to_device(np.ascontiguousarray(source, dtype=target.dtype))


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
    """``grad`` with device arrays (copied over from the host if need be, in the
    weight's dtype, as the CPU casts), of the weight's dtype."""
    if not arrays.is_device(grad.values):
        values = grad.values.astype(weight.dtype, copy=False)
        grad = RowSparseGrad._trusted(
            arrays.to_device(grad.rows), arrays.to_device(values), grad.shape
        )
    else:
        checks.check_device_gradient(grad.rows, grad.values, grad.shape)
    if grad.values.dtype != weight.dtype:  # cast, as on the CPU
        values = arrays.cast(grad.values, weight.dtype)
        grad = RowSparseGrad._trusted(grad.rows, values, grad.shape)
    return grad


def apply_gradient(step, weight, grad: RowSparseGrad, state, t: int) -> None:
    num_rows, dim = grad.values.shape
    if num_rows == 0 or dim == 0:
        return
    grid, block = launch.grouped(num_rows, dim)
    optim.apply_row_gradients[grid, block](step, weight, grad.rows, grad.values, *state, t)


def apply_fused(step, weight, grad_output, ctx: BagContext, state, t: int) -> None:
    groups = group_tokens(ctx)
    num_rows, dim = groups.rows.shape[0], weight.shape[1]
    if num_rows == 0 or dim == 0:
        return
    grid, block = launch.grouped_resident(num_rows, dim)
    scratch = arrays.empty((grid * block[1], dim), weight.dtype)
    optim.apply_fused[grid, block](
        step, weight, grad_output, groups, ctx.batch.options.scale_grad_by_freq, *state,
        t, scratch,
    )  # fmt: skip


def check_rows(indices, num_rows: int):
    """1-D device indices in [0, num_rows), from device or host ``indices``."""
    if arrays.is_device(indices):
        indices = checks.check_device_indices(indices, num_rows)
        return indices.reshape(indices.size)
    indices = _validate.check_indices(indices)
    checks.check_host_ids(indices, num_rows)
    return arrays.to_device(np.ascontiguousarray(indices.reshape(-1)))


def catch_up(step, weight, rows, state, target_step: int) -> None:
    if rows.shape[0] == 0:
        return
    grid, block = launch.linear(rows.shape[0])
    optim.catch_up_rows[grid, block](step, weight, rows, *state, target_step)


def catch_up_all(step, weight, state, target_step: int) -> None:
    if weight.shape[0] == 0:
        return
    grid, block = launch.linear(weight.shape[0])
    optim.catch_up_all_rows[grid, block](step, weight, *state, target_step)
