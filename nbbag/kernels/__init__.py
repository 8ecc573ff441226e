"""nbbag's kernels, for people composing their own pipelines.

These are the Numba-compiled CPU kernels behind :func:`nbbag.embedding_bag`, with stable
signatures.  They write into an output the caller allocates, and they trust their
inputs: no bounds checks (Numba does none), so validate first or use the front door.
Each is callable from Python and from your own ``@njit`` functions.

Conventions (argument order is the same in every kernel)::

    weight              (V, D) float32/float64, C-contiguous
    indices             (N,)   int32/int64, every value in [0, V)
    offsets             (B+1,) int32/int64, 0 = offsets[0] <= ... <= offsets[B] <= N;
                        bag b is indices[offsets[b]:offsets[b+1]]
    per_sample_weights  (N,)   weight's dtype (weighted kernels only)
    out                 (B, D) weight's dtype; every element is written
    padding_idx         a row in [0, V) left out of every bag, or -1 (the default)

Bag kernels (one bag per parallel iteration)::

    bag_sum(weight, indices, offsets, out, padding_idx=-1, lanes=None)
    bag_mean(weight, indices, offsets, out, padding_idx=-1, lanes=None)
    bag_sqrtn(weight, indices, offsets, out, padding_idx=-1, lanes=None)
    bag_max(weight, indices, offsets, out, padding_idx=-1)
    bag_max_argmax(weight, indices, offsets, out, argmax, padding_idx=-1)
        # argmax (B, D) int64: position of each dimension's winner, -1 for empty bags
    bag_weighted_sum(weight, indices, offsets, per_sample_weights, out, padding_idx=-1,
                     lanes=None)   # and bag_weighted_mean, bag_weighted_sqrtn
    renorm_rows(weight, rows, max_norm, norm_type)   # rows unique; in place

    lanes = lanes_for(D)   # optional, for the sum family: a tuple of D // LANE entries
        # when LANE divides D (up to LANE * MAX_LANES), else None.  With it the kernel
        # is compiled for that D (once per D, cached) and keeps each bag's sum in
        # registers, added in vectors (1.3-2.6x the generic kernel at D = 16 and 256,
        # V = 1M); the result is bit for bit the generic kernel's.

Per-bag functions (serial; reduce tokens start:end into one row, for your own loops)::

    count = sum_rows(weight, indices, start, end, padding_idx, out_row, lanes=None)
    weight_sum, weight_square_sum = weighted_sum_rows(weight, indices, per_sample_weights,
                                                      start, end, padding_idx, out_row,
                                                      lanes=None)
    count = max_rows(weight, indices, start, end, padding_idx, out_row, argmax_row)
        # argmax_row: (D,) int64 to record the winners, or an empty array not to
    scale_row(out_row, denominator)            # divide, or zero when denominator == 0

Backward kernels (see nbbag.cpu.backward for the pipeline; mode is nbbag.Mode's value)::

    token_coefficients(indices, offsets, per_sample_weights, padding_idx, mode,
                       bag_of, coefficients)       # per_sample_weights empty: unweighted
    max_token_coefficients(indices, offsets, argmax, padding_idx, bag_of, coefficients)
    rows, row_ptr, positions = group_positions_by_row(indices, bag_of, num_rows,
                                                     num_chunks,  # any >= 1
                                                     sort_type=np.int64)  # or np.int32
    contributing_rows(coefficients, positions, row_ptr, contributes)
    accumulate_rows(grad_output, bag_of, coefficients, argmax, positions, row_ptr,
                    value_index, scale_grad_by_freq, values, lanes=None)
        # argmax (0, 0) but for max; lanes = lanes_for(D), as for the forward
    row_gradient(grad_output, bag_of, coefficients, argmax, positions, start, end,
                 scale_grad_by_freq, out_row, lanes=None)    # one row's gradient
    per_sample_weights_grad(weight, indices, offsets, per_sample_weights, out,
                            grad_output, padding_idx, mode, weights_grad)

Optimizer kernels (see nbbag.cpu.optim; kind: SGD, ADAGRAD, ROW_WISE_ADAGRAD, ADAM;
hyper: a float64 array indexed by LR, MOMENTUM, WEIGHT_DECAY, EPS, BETA1, BETA2; state
arrays an optimizer does not use are passed empty)::

    step_hyper(hyper, step, weight)  # hyper for update_row: weight's dtype + ADAM_STEP_SIZE
    update_row(kind, row, grad_row, weight, state, second_state, row_state, last_step,
               step_hyper(hyper, step, weight), step)   # one row, step counted from 1
    apply_row_gradients(kind, weight, rows, values, state, second_state, row_state,
                        last_step, hyper, step)
    apply_fused(kind, weight, grad_output, bag_of, coefficients, argmax, positions,
                row_ptr, rows, value_index, scale_grad_by_freq, state, second_state,
                row_state, last_step, hyper, step, scratch, lanes=None)
    rows, behind = rows_behind(indices, last_step, target_step)
    advance_rows(weight, rows, behind, momentum_buffer, hyper)   # SGD's exact catch-up

Example, from a user's own ``@njit`` function::

    from numba import njit
    from nbbag.kernels import bag_sum

    @njit
    def pooled_twice(weight, indices, offsets, out):
        bag_sum(weight, indices, offsets, out)
        return out * 2
"""

from nbbag.cpu.backward import (
    accumulate_rows,
    contributing_rows,
    group_positions_by_row,
    max_token_coefficients,
    per_sample_weights_grad,
    row_gradient,
    token_coefficients,
)
from nbbag.cpu.checks import index_range
from nbbag.cpu.forward import (
    LANE,
    MAX_LANES,
    NO_PADDING,
    bag_max,
    bag_max_argmax,
    bag_mean,
    bag_sqrtn,
    bag_sum,
    bag_weighted_mean,
    bag_weighted_sqrtn,
    bag_weighted_sum,
    lanes_for,
    max_rows,
    renorm_rows,
    row_norm,
    scale_row,
    sum_rows,
    weighted_sum_rows,
)
from nbbag.cpu.optim import (
    ADAGRAD,
    ADAM,
    ADAM_STEP_SIZE,
    BETA1,
    BETA2,
    EPS,
    LR,
    MOMENTUM,
    ROW_WISE_ADAGRAD,
    SGD,
    WEIGHT_DECAY,
    advance_rows,
    apply_fused,
    apply_row_gradients,
    rows_behind,
    step_hyper,
    update_row,
)

__all__ = [
    "ADAGRAD",
    "ADAM",
    "ADAM_STEP_SIZE",
    "BETA1",
    "BETA2",
    "EPS",
    "LANE",
    "LR",
    "MAX_LANES",
    "MOMENTUM",
    "NO_PADDING",
    "ROW_WISE_ADAGRAD",
    "SGD",
    "WEIGHT_DECAY",
    "advance_rows",
    "apply_fused",
    "apply_row_gradients",
    "accumulate_rows",
    "bag_max",
    "bag_max_argmax",
    "bag_mean",
    "bag_sqrtn",
    "bag_sum",
    "bag_weighted_mean",
    "bag_weighted_sqrtn",
    "bag_weighted_sum",
    "contributing_rows",
    "group_positions_by_row",
    "index_range",
    "lanes_for",
    "max_token_coefficients",
    "max_rows",
    "per_sample_weights_grad",
    "renorm_rows",
    "row_gradient",
    "row_norm",
    "rows_behind",
    "scale_row",
    "step_hyper",
    "sum_rows",
    "token_coefficients",
    "update_row",
    "weighted_sum_rows",
]
