"""Per-bag and per-token math of the backward, shared by the CPU and GPU kernels.

Each function works on one bag (tokens ``start:end`` of ``indices``) or one row, writes
only what the caller owns, and is compiled into the calling kernel of either target
(:mod:`nbbag.base.shared`).  ``mode`` is a :class:`nbbag.Mode` (or its int value);
``per_sample_weights`` is None for an unweighted batch; ``padding_idx`` is a row, or
NO_PADDING.
"""

import math

from nbbag.base.halves import widen
from nbbag.base.shared import shared
from nbbag.modes import Mode


@shared
def bag_bounds(offsets, b):
    """The tokens ``start:end`` of bag b, from offsets in the B + 1 (CSR) form."""
    return offsets[b], offsets[b + 1]


@shared
def bag_denominator(indices, per_sample_weights, start, end, padding_idx, mode):
    """What bag ``start:end``'s sum is divided by: 1 (sum, max), sum_i w_i (mean) or
    sqrt(sum_i w_i**2) (sqrtn), with w_i = 1 without weights; padding left out."""
    if mode != Mode.MEAN and mode != Mode.SQRTN:
        return 1.0
    total = 0.0
    for position in range(start, end):
        if indices[position] == padding_idx:
            continue
        w = 1.0 if per_sample_weights is None else per_sample_weights[position]
        total += w if mode == Mode.MEAN else w * w
    return total if mode == Mode.MEAN else math.sqrt(total)


@shared
def bag_token_coefficients(
    indices, per_sample_weights, start, end, padding_idx, b, scale, bag_of, coefficients
):
    """Bag b's tokens ``start:end``: ``bag_of[p]`` = b (-1 for padding) and
    ``coefficients[p]`` = w_p * ``scale`` (0 for padding), w_p = 1 without weights.

    Ownership: the caller owns positions start:end of bag_of and coefficients.
    """
    for position in range(start, end):
        if indices[position] == padding_idx:
            bag_of[position] = -1
            coefficients[position] = 0.0
        else:
            bag_of[position] = b
            w = 1.0 if per_sample_weights is None else per_sample_weights[position]
            coefficients[position] = w * scale


@shared
def bag_max_coefficients(indices, argmax, start, end, padding_idx, b, bag_of, coefficients):
    """Bag b's tokens ``start:end`` for max: ``bag_of[p]`` = b (-1 for padding) and
    ``coefficients[p]`` = 1 if token p won a dimension of the bag (``argmax[b]``), else 0.

    Ownership: the caller owns positions start:end (every winner of bag b lies there).
    """
    for position in range(start, end):
        bag_of[position] = -1 if indices[position] == padding_idx else b
        coefficients[position] = 0.0
    for d in range(argmax.shape[1]):
        if argmax[b, d] >= 0:
            coefficients[argmax[b, d]] = 1.0


@shared
def stack_grad_row(b, bags_per_feature, features):
    """The row of a collection stack's bag-major gradient (and winners) that its bag b
    writes: b = f * B' + b' (feature-major, B' = ``bags_per_feature``) is row
    b' * F + f.  With ``features`` 1 (any batch but a stack's), b itself."""
    return (b % bags_per_feature) * features + b // bags_per_feature


@shared
def bag_coefficients(
    indices, per_sample_weights, argmax, start, end, padding_idx, mode, b, bag_of,
    coefficients,
):  # fmt: skip
    """Bag b's tokens: their bag and coefficient.  For max (``argmax`` given, the
    forward's winners) ``bag_max_coefficients``; else (``argmax`` None) w_p / the bag's
    denominator, 0 where that is 0 (as the forward's zeros).

    Ownership: the caller owns positions start:end of bag_of and coefficients.
    """
    if argmax is not None:
        bag_max_coefficients(
            indices, argmax, start, end, padding_idx, b, bag_of, coefficients
        )
        return
    denominator = bag_denominator(
        indices, per_sample_weights, start, end, padding_idx, mode
    )
    bag_token_coefficients(
        indices, per_sample_weights, start, end, padding_idx, b,
        0.0 if denominator == 0 else 1.0 / denominator, bag_of, coefficients,
    )  # fmt: skip


@shared
def row_contributes(coefficients, positions, start, end):
    """Whether any of the tokens ``positions[start:end]`` has a non-zero coefficient.
    Writes nothing."""
    for i in range(start, end):
        if coefficients[positions[i]] != 0:
            return True
    return False


@shared
def bag_weights_grad(
    weight, indices, per_sample_weights, out, grad_output, start, end, padding_idx,
    mode, b, weights_grad,
):  # fmt: skip
    """``weights_grad`` at bag b's tokens ``start:end``: the gradient of
    sum(grad_output * out) with respect to each per-sample weight.  sum: g.x_p; mean:
    (g.x_p - g.out_b) / sum w; sqrtn: (g.x_p - g.out_b w_p / S) / S with
    S = sqrt(sum w**2); 0 for padding and where the denominator is 0.  ``out`` (the
    forward's output) is read for mean and sqrtn only.

    Ownership: the caller owns positions start:end of weights_grad.
    """
    denominator = bag_denominator(
        indices, per_sample_weights, start, end, padding_idx, mode
    )
    dim = grad_output.shape[1]
    gradient_dot_out = 0.0
    if mode != Mode.SUM:
        for d in range(dim):
            gradient_dot_out += float(grad_output[b, d]) * out[b, d]
    for position in range(start, end):
        row = indices[position]
        if row == padding_idx or denominator == 0:
            weights_grad[position] = 0.0
            continue
        gradient_dot_row = 0.0
        for d in range(dim):
            gradient_dot_row += float(grad_output[b, d]) * widen(weight[row, d])
        if mode == Mode.SUM:
            weights_grad[position] = gradient_dot_row
        elif mode == Mode.MEAN:
            weights_grad[position] = (gradient_dot_row - gradient_dot_out) / denominator
        else:
            w = per_sample_weights[position]
            weights_grad[position] = (
                gradient_dot_row - gradient_dot_out * w / denominator
            ) / denominator
