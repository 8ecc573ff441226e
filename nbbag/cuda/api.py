"""The GPU front: what :mod:`nbbag.functional` and :mod:`nbbag.optim` call when the
weight is a device array.  Inputs are validated (:mod:`nbbag.cuda.checks`), outputs
are allocated once here, and the kernels do the rest on the device."""

from __future__ import annotations

import numpy as np

from nbbag import functional
from nbbag._validate import (
    BagBatch,
    BagContext,
    check_context,
    check_grad_output_like,
    check_index_range,
    check_indices,
    check_weights_grad_request,
)
from nbbag.cuda import arrays, backward, checks, forward, launch, optim
from nbbag.modes import Mode
from nbbag.sparse import RowSparseGrad

_UNWEIGHTED_KERNELS, _WEIGHTED_KERNELS = functional.kernels_by_mode(forward)

validate_forward = checks.validate_forward


def run_forward(batch: BagBatch, record_argmax: bool = False):
    """The forward kernels on a validated device batch: (out, argmax or None)."""
    weight = batch.weight
    if batch.max_norm is not None:
        # the unique rows, from the backward's sort
        rows = backward.unique_rows(batch.indices, weight.shape[0])
        if rows.shape[0]:
            grid, block = launch.linear(rows.shape[0])
            forward.renorm_rows[grid, block](weight, rows, batch.max_norm, batch.norm_type)
    num_bags, dim = batch.num_bags, weight.shape[1]
    out = arrays.empty((num_bags, dim), weight.dtype)
    argmax = arrays.empty((num_bags, dim), "int64") if record_argmax else None
    if num_bags == 0 or dim == 0:
        return out, argmax
    grid, block = launch.grouped(num_bags, dim)
    args = (weight, batch.indices, batch.offsets)
    if record_argmax:
        forward.bag_max_argmax[grid, block](*args, out, argmax, batch.padding_idx)
    elif batch.per_sample_weights is None:
        kernel = _UNWEIGHTED_KERNELS[batch.mode]
        kernel[grid, block](*args, out, batch.padding_idx)
    else:
        kernel = _WEIGHTED_KERNELS[batch.mode]
        kernel[grid, block](*args, batch.per_sample_weights, out, batch.padding_idx)
    return out, argmax


def embedding_bag(weight, indices, offsets=None, **options):
    batch = validate_forward(weight, indices, offsets, **options)
    return run_forward(batch)[0]


def forward_with_context(batch: BagBatch):
    out, argmax = run_forward(batch, record_argmax=batch.mode == Mode.MAX)
    keep_out = batch.per_sample_weights is not None and batch.mode != Mode.SUM
    return out, BagContext(batch, out if keep_out else None, argmax)


def embedding_bag_fwd(weight, indices, offsets=None, **options):
    return forward_with_context(validate_forward(weight, indices, offsets, **options))


# nbbag.functional.TokenGroups, every array on the device
TokenGroups = functional.TokenGroups


def check_grad_output(grad_output, ctx):
    """:func:`nbbag._validate.check_grad_output` for the GPU: a device array (a host
    array is copied over) of the forward output's shape and the weight's dtype."""
    check_context(ctx)
    if arrays.is_device(grad_output):
        grad_output = arrays.as_device(grad_output)
    elif isinstance(grad_output, np.ndarray):
        grad_output = arrays.to_device(grad_output)
    else:
        raise TypeError(
            f"grad_output must be a device or NumPy array, got {type(grad_output).__name__}"
        )
    check_grad_output_like(grad_output, ctx)
    if not grad_output.is_c_contiguous():
        raise ValueError("grad_output must be C-contiguous")
    return grad_output


def group_tokens(ctx: BagContext) -> TokenGroups:
    """Each token's bag and coefficient, and the tokens grouped by row, on the device."""
    batch = ctx.batch
    num_tokens = batch.indices.shape[0]
    bag_of = arrays.full(num_tokens, -1, np.int64)  # tokens in no bag stay -1 / 0
    coefficients = arrays.full(num_tokens, 0, batch.weight.dtype)
    weights = batch.per_sample_weights
    num_bags = batch.num_bags
    if num_bags:
        grid, block = launch.linear(num_bags)
        kernel, args = functional.coefficients_kernel(
            backward, ctx, arrays.empty(0, batch.weight.dtype), bag_of, coefficients
        )
        kernel[grid, block](*args)
    rows, row_ptr, positions = backward.group_positions_by_row(
        batch.indices, bag_of, batch.weight.shape[0]
    )
    num_unique = rows.shape[0]
    value_index = arrays.empty(num_unique, np.int64)
    if batch.mode == Mode.MAX or weights is not None:
        # A max loser, a weight of 0 or weights summing to 0 contribute nothing.
        contributes = arrays.empty(num_unique, np.int64)
        num_contributing = 0
        if num_unique:
            grid, block = launch.linear(num_unique)
            backward.contributing_rows[grid, block](
                coefficients, positions, row_ptr, contributes
            )
            prefix, num_contributing = backward.exclusive_scan(contributes)
            backward.value_slots[grid, block](contributes, prefix, value_index)
    else:
        num_contributing = num_unique
        arrays.arange(value_index)
    argmax = ctx.argmax if batch.mode == Mode.MAX else arrays.empty((0, 0), np.int64)
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


def weight_grad(grad_output, ctx: BagContext, deterministic: bool = True) -> RowSparseGrad:
    """The row-sparse gradient on the device: rows (U,) and values (U, D)."""
    groups = group_tokens(ctx)
    num_rows, dim = ctx.weight_shape
    dtype = ctx.batch.weight.dtype
    values = arrays.empty((groups.num_contributing, dim), dtype)
    num_unique = groups.rows.shape[0]
    if groups.num_contributing and dim:
        kernel = backward.accumulate_rows
        if not deterministic:
            arrays.fill(values, 0)
            kernel = backward.accumulate_rows_atomic
        grid, block = launch.grouped(num_unique, dim)
        kernel[grid, block](
            grad_output,
            *groups.token_args(),
            groups.value_index,
            ctx.batch.scale_grad_by_freq,
            values,
        )
    rows = groups.rows
    if groups.num_contributing < num_unique:
        rows = arrays.empty(groups.num_contributing, np.int64)
        grid, block = launch.linear(num_unique)
        backward.compact_rows[grid, block](groups.rows, groups.value_index, rows)
    return RowSparseGrad._trusted(rows, values, (num_rows, dim))


def embedding_bag_bwd(
    grad_output, ctx, *, per_sample_weights_grad=False, deterministic=True
):
    grad_output = check_grad_output(grad_output, ctx)
    batch = ctx.batch
    check_weights_grad_request(per_sample_weights_grad, batch)
    grad = weight_grad(grad_output, ctx, deterministic)
    if not per_sample_weights_grad:
        return grad
    weights_grad = arrays.full(batch.per_sample_weights.shape[0], 0, batch.weight.dtype)
    if batch.num_bags:
        grid, block = launch.linear(batch.num_bags)
        backward.per_sample_weights_grad[grid, block](
            *functional.weights_grad_args(grad_output, ctx), weights_grad
        )
    return grad, weights_grad.reshape(ctx.indices_shape)


# -- optimizers ------------------------------------------------------------------------
def check_optimizer_weight(weight):
    return checks.check_weight(weight)


def state_full(shape, value, dtype):
    return arrays.full(shape, value, dtype)


def state_to_host(array) -> np.ndarray:
    return array.copy_to_host()


def state_from_host(target, source: np.ndarray) -> None:
    target.copy_to_device(np.ascontiguousarray(source, dtype=target.dtype))


def fill(array, value) -> None:
    arrays.fill(array, value)


def _device_hyper(optimizer):
    return arrays.to_device(
        optim.step_hyper(optimizer._hyper, optimizer.step_count, optimizer.weight.dtype)
    )


def as_device_grad(grad: RowSparseGrad) -> RowSparseGrad:
    """A RowSparseGrad with device arrays (copied over from the host if need be)."""
    if arrays.is_device(grad.values):
        return grad
    return RowSparseGrad._trusted(
        arrays.to_device(grad.rows), arrays.to_device(grad.values), grad.shape
    )


def optimizer_step(optimizer, grad: RowSparseGrad) -> None:
    """One step of ``optimizer`` (holding device state) with a row-sparse gradient."""
    grad = as_device_grad(grad)
    if grad.values.dtype != optimizer.weight.dtype:
        raise ValueError(
            f"grad must have the weight's dtype {optimizer.weight.dtype}, "
            f"got {grad.values.dtype}"
        )
    optimizer.step_count += 1
    num_rows, dim = grad.values.shape
    if num_rows == 0 or dim == 0:
        return
    grid, block = launch.grouped(num_rows, dim)
    optim.apply_row_gradients[grid, block](
        optimizer.kind,
        optimizer.weight,
        grad.rows,
        grad.values,
        *optimizer._kernel_state(),
        _device_hyper(optimizer),
        optimizer.step_count,
    )


def optimizer_step_fused(optimizer, grad_output, ctx: BagContext) -> None:
    """``optimizer_step(embedding_bag_bwd(grad_output, ctx))`` in one kernel over the
    batch's rows, each group's gradient row in a scratch row of its own."""
    grad_output = check_grad_output(grad_output, ctx)
    if not arrays.same_array(ctx.batch.weight, optimizer.weight):
        raise ValueError("ctx's forward read another array than this optimizer's weight")
    groups = group_tokens(ctx)
    optimizer.step_count += 1
    num_rows, dim = groups.rows.shape[0], optimizer.weight.shape[1]
    if num_rows == 0 or dim == 0:
        return
    grid, block = launch.grouped_resident(num_rows, dim)
    scratch = arrays.empty((grid * block[1], dim), optimizer.weight.dtype)
    optim.apply_fused[grid, block](
        optimizer.kind,
        optimizer.weight,
        grad_output,
        *groups.token_args(),
        groups.rows,
        groups.value_index,
        ctx.batch.scale_grad_by_freq,
        *optimizer._kernel_state(),
        _device_hyper(optimizer),
        optimizer.step_count,
        scratch,
    )


def check_catch_up_indices(indices, num_rows: int):
    """1-D device indices in [0, num_rows), from device or host ``indices``."""
    if arrays.is_device(indices):
        indices = checks.check_device_indices(indices, num_rows)
        return indices.reshape(indices.size)
    indices = check_indices(indices)
    check_index_range(indices, num_rows)
    return arrays.to_device(indices.reshape(-1))


def sgd_catch_up(optimizer, indices) -> None:
    """SGD's exact catch-up of the rows in (checked, device) ``indices``."""
    if indices.shape[0] == 0:
        return
    grid, block = launch.linear(indices.shape[0])
    optim.advance_rows[grid, block](
        optimizer.weight,
        indices,
        optimizer.momentum_buffer,
        optimizer.last_step,
        optimizer.step_count,
        arrays.to_device(optimizer._hyper),  # float64, as the CPU's catch-up
    )


def sgd_flush(optimizer) -> None:
    """SGD's exact catch-up of every row."""
    if optimizer.weight.shape[0] == 0:
        return
    grid, block = launch.linear(optimizer.weight.shape[0])
    optim.advance_all_rows[grid, block](
        optimizer.weight,
        optimizer.momentum_buffer,
        optimizer.last_step,
        optimizer.step_count,
        arrays.to_device(optimizer._hyper),  # float64, as the CPU's catch-up
    )
