"""The GPU front: what :mod:`nbbag.functional` and :mod:`nbbag.optim` call when the
weight is a device array.  Inputs are validated (:mod:`nbbag.cuda.checks`), outputs
are allocated once here, and the kernels do the rest on the device."""

from __future__ import annotations

from nbbag._validate import BagBatch, BagContext
from nbbag.cuda import arrays, checks, forward, launch
from nbbag.modes import Mode

_UNWEIGHTED_KERNELS = {
    Mode.SUM: forward.bag_sum,
    Mode.MEAN: forward.bag_mean,
    Mode.SQRTN: forward.bag_sqrtn,
    Mode.MAX: forward.bag_max,
}
_WEIGHTED_KERNELS = {
    Mode.SUM: forward.bag_weighted_sum,
    Mode.MEAN: forward.bag_weighted_mean,
    Mode.SQRTN: forward.bag_weighted_sqrtn,
}

validate_forward = checks.validate_forward


def run_forward(batch: BagBatch, record_argmax: bool = False):
    """The forward kernels on a validated device batch: (out, argmax or None)."""
    weight = batch.weight
    if batch.max_norm is not None:
        from nbbag.cuda import backward  # the unique rows come from the backward's sort

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
