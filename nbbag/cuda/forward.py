"""CUDA forward kernels: one thread group per bag, lanes along the embedding dimension.

The CPU kernels' shapes (:mod:`nbbag.cpu.forward`), on the GPU: per-dimension device
functions (``sum_dim_dev``, ``weighted_sum_dim_dev``, ``max_dim_dev``) reduce one
dimension of one bag and return what the mode needs to finish; the bag kernels
(``bag_sum``, ``bag_mean``, ...) take the CPU kernels' arguments in the same order.

Launch: ``grid, block = nbbag.cuda.launch.grouped(num_bags, D)``; ``threadIdx.y`` picks
the bag within the block, the group's lanes (``threadIdx.x``, one warp on a real chip)
take dimensions lane, lane + group, ...: consecutive lanes read consecutive floats of a
row (coalesced), and every lane reads the same index at the same time (one broadcast
load for the whole group).  Accumulation is in float64; tokens are summed in bag order,
as on the CPU.  A half table comes as its int16/uint16 view, each element widened to
float32 as it is read (:func:`nbbag.base.halves.widen`; a float table's as it is).
"""

import math

from numba import cuda

from nbbag.base.halves import NEAREST, rounded, widen
from nbbag.modes import Mode


@cuda.jit(device=True, inline=True)
def group_item():
    """The bag (or row) the calling thread's group owns."""
    return cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y


@cuda.jit(device=True, inline=True)
def in_table(row, weight):
    """Whether ``row`` is a row of ``weight``.  The reductions skip any other id, so
    that a forward launched before its ids' checks are read back
    (:func:`nbbag.cuda.api.embedding_bag`) never reads outside the table."""
    return 0 <= row < weight.shape[0]


@cuda.jit(device=True)
def sum_dim_dev(weight, indices, start, end, padding_idx, d):
    """(sum over tokens start:end of weight[indices[p], d], token count), padding left
    out.  Writes nothing."""
    total = 0.0
    count = 0
    for position in range(start, end):
        row = indices[position]
        if row != padding_idx and in_table(row, weight):
            total += widen(weight[row, d])
            count += 1
    return total, count


@cuda.jit(device=True)
def weighted_sum_dim_dev(weight, indices, per_sample_weights, start, end, padding_idx, d):
    """(sum_p w_p weight[indices[p], d], sum_p w_p, sum_p w_p**2) over start:end,
    padding left out.  Writes nothing."""
    total = 0.0
    weight_sum = 0.0
    weight_square_sum = 0.0
    for position in range(start, end):
        row = indices[position]
        if row != padding_idx and in_table(row, weight):
            w = per_sample_weights[position]
            total += w * widen(weight[row, d])
            weight_sum += w
            weight_square_sum += w * w
    return total, weight_sum, weight_square_sum


@cuda.jit(device=True)
def max_dim_dev(weight, indices, start, end, padding_idx, d):
    """(max over start:end of weight[indices[p], d] or 0 if none, the position of the
    first winner or -1).  Writes nothing."""
    best = 0.0
    winner = -1
    for position in range(start, end):
        row = indices[position]
        if row != padding_idx and in_table(row, weight):
            value = widen(weight[row, d])
            if winner < 0 or value > best:  # strict '>': the first occurrence wins ties
                best = value
                winner = position
    return best, winner


@cuda.jit(device=True, inline=True)
def scale_dev(total, denominator):
    """total / denominator, or 0 where the denominator is 0 (TensorFlow's div_no_nan)."""
    return 0.0 if denominator == 0 else total * (1.0 / denominator)


@cuda.jit(device=True, inline=True)
def finish_dev(total, weight_sum, weight_square_sum, mode):
    """What a bag's dimension becomes from its reduction: the sum, sum / sum_i w_i
    (mean) or sum / sqrt(sum_i w_i**2) (sqrtn); w_i = 1 without weights."""
    if mode == Mode.MEAN:
        return scale_dev(total, weight_sum)
    if mode == Mode.SQRTN:
        return scale_dev(total, math.sqrt(weight_square_sum))
    return total


@cuda.jit(device=True, inline=True)
def bag_bounds_dev(offsets, b, num_indices):
    """Bag b's tokens [start, end) from the caller's offsets: B + 1 of them (CSR,
    torch's include_last_offset) or B (the last bag ends at ``num_indices``),
    clamped to [0, num_indices] so that no offset, checked or not, makes a read
    outside the indices."""
    start = min(max(offsets[b], 0), num_indices)
    end = offsets[b + 1] if b + 1 < offsets.shape[0] else num_indices
    return start, min(max(end, start), num_indices)


@cuda.jit(device=True)
def bag_unweighted_dev(weight, indices, offsets, out, padding_idx, mode):
    """The shape of the unweighted sum-like kernels: the calling group's bag b, lane l
    reducing dimensions l, l + group, ... with ``sum_dim_dev``, finished by ``mode``.

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    b = group_item()
    if b < out.shape[0]:
        start, end = bag_bounds_dev(offsets, b, indices.shape[0])
        for d in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
            total, count = sum_dim_dev(weight, indices, start, end, padding_idx, d)
            out[b, d] = finish_dev(total, count, count, mode)


@cuda.jit(device=True)
def bag_weighted_dev(weight, indices, offsets, per_sample_weights, out, padding_idx, mode):
    """The shape of the weighted kernels: ``bag_unweighted_dev`` with
    ``weighted_sum_dim_dev``.

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    b = group_item()
    if b < out.shape[0]:
        start, end = bag_bounds_dev(offsets, b, indices.shape[0])
        for d in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
            total, weight_sum, weight_square_sum = weighted_sum_dim_dev(
                weight, indices, per_sample_weights, start, end, padding_idx, d
            )
            out[b, d] = finish_dev(total, weight_sum, weight_square_sum, mode)


@cuda.jit
def bag_sum(weight, indices, offsets, out, padding_idx):
    """out[b] = sum of the rows of bag b.

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    bag_unweighted_dev(weight, indices, offsets, out, padding_idx, Mode.SUM)


@cuda.jit
def bag_mean(weight, indices, offsets, out, padding_idx):
    """out[b] = mean of the rows of bag b (padding not counted).

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    bag_unweighted_dev(weight, indices, offsets, out, padding_idx, Mode.MEAN)


@cuda.jit
def bag_sqrtn(weight, indices, offsets, out, padding_idx):
    """out[b] = sum of the rows of bag b / sqrt(number of rows).

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    bag_unweighted_dev(weight, indices, offsets, out, padding_idx, Mode.SQRTN)


@cuda.jit
def bag_max(weight, indices, offsets, out, padding_idx):
    """out[b] = elementwise max of the rows of bag b (zeros for an empty bag).

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    b = group_item()
    if b < out.shape[0]:
        start, end = bag_bounds_dev(offsets, b, indices.shape[0])
        for d in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
            best, _ = max_dim_dev(weight, indices, start, end, padding_idx, d)
            out[b, d] = best


@cuda.jit
def bag_max_argmax(weight, indices, offsets, out, argmax, padding_idx):
    """out[b] = elementwise max of bag b; argmax[b, d] = the position of the winner of
    dimension d (first on ties), -1 for an empty bag.

    Ownership: group b writes out[b] and argmax[b]; lane l, dimensions l, l + group, ...
    """
    b = group_item()
    if b < out.shape[0]:
        start, end = bag_bounds_dev(offsets, b, indices.shape[0])
        for d in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
            best, winner = max_dim_dev(weight, indices, start, end, padding_idx, d)
            out[b, d] = best
            argmax[b, d] = winner


@cuda.jit
def bag_weighted_sum(weight, indices, offsets, per_sample_weights, out, padding_idx):
    """out[b] = sum_i w_i x_i over bag b.

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    bag_weighted_dev(
        weight, indices, offsets, per_sample_weights, out, padding_idx, Mode.SUM
    )


@cuda.jit
def bag_weighted_mean(weight, indices, offsets, per_sample_weights, out, padding_idx):
    """out[b] = sum_i w_i x_i / sum_i w_i over bag b (zeros where sum_i w_i is 0).

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    bag_weighted_dev(
        weight, indices, offsets, per_sample_weights, out, padding_idx, Mode.MEAN
    )


@cuda.jit
def bag_weighted_sqrtn(weight, indices, offsets, per_sample_weights, out, padding_idx):
    """out[b] = sum_i w_i x_i / sqrt(sum_i w_i**2) over bag b (zeros where all w_i
    are 0).

    Ownership: group b writes out[b]; lane l of it writes dimensions l, l + group, ...
    """
    bag_weighted_dev(
        weight, indices, offsets, per_sample_weights, out, padding_idx, Mode.SQRTN
    )


@cuda.jit
def renorm_rows(weight, rows, max_norm, norm_type):
    """Scale each weight[rows[k]] whose norm_type-norm exceeds max_norm by
    max_norm / (norm + 1e-7), as torch's embedding_renorm_; ``rows`` unique.  A half
    table's row is scaled in float32 and rounded to nearest, as on the CPU.

    Ownership: thread k reads and writes weight[rows[k]] only (grid-stride).
    """
    for k in range(cuda.grid(1), rows.shape[0], cuda.gridsize(1)):
        row = rows[k]
        norm = 0.0
        if norm_type == math.inf:
            for d in range(weight.shape[1]):
                norm = max(norm, abs(widen(weight[row, d])))
        else:
            for d in range(weight.shape[1]):
                norm += abs(float(widen(weight[row, d]))) ** norm_type
            norm = norm ** (1.0 / norm_type)
        if norm > max_norm:
            scale = max_norm / (norm + 1e-7)
            for d in range(weight.shape[1]):
                scaled = widen(weight[row, d]) * scale
                weight[row, d] = rounded(weight[row, d], scaled, NEAREST, 0, row, d)
