"""nbbag's kernels, for people composing their own pipelines.

These are the Numba-compiled CPU kernels behind :func:`nbbag.embedding_bag`.  They
write into an output the caller allocates, and they trust their inputs: no bounds
checks (Numba does none), so validate first, use the front door, or, while composing,
:mod:`nbbag.kernels.checked`: the bag kernels from Python with every argument checked
(``checked.bag_sum(weight, indices, offsets, out)`` raises where ``bag_sum`` would write
past ``out`` or read past the table).  Each kernel is callable from Python and from
your own ``@njit`` functions.

Stability: the bag kernels, the per-bag functions and ``renorm_rows`` (the first two
lists below) are the stable set: their signatures change only with a migration note in
the README.  The backward and optimizer kernels are provisional: exported for people
composing training loops, but their arguments follow the host layer's records
(:mod:`nbbag.base.records`, :mod:`nbbag.rules`) and may change between 0.x releases.
:mod:`nbbag.kernels.cuda` has the GPU kernels, with the same names and arguments
where they share a name (the CPU's trailing ``lanes`` is a CPU-only option).

Conventions (argument order is the same in every kernel)::

    weight              (V, D) float32/float64, C-contiguous; or a float16/bfloat16
                        table as its int16/uint16 view (kernel_table(weight)): read
                        widened to float32, updates rounded back (CPU kernels only;
                        not per_sample_weights_grad, which takes a float table: the
                        front passes it the batch's rows widened)
    indices             (N,)   int32/int64, every value in [0, V)
    offsets             (B+1,) int32/int64, 0 = offsets[0] <= ... <= offsets[B] <= N;
                        bag b is indices[offsets[b]:offsets[b+1]]
    per_sample_weights  (N,)   weight's dtype, float32 for a half table (weighted
                        kernels only)
    out                 (B, D) weight's dtype, float32 for a half table; every
                        element is written
    padding_idx         a row in [0, V) left out of every bag, or -1 (the default)
    mode                nbbag.Mode (or its int value)

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
    count = max_rows(weight, indices, start, end, padding_idx, out_row, argmax_row=None)
        # argmax_row: (D,) int64 to record the winners, or None not to
    scale_row(out_row, denominator)            # divide, or zero when denominator == 0

Backward kernels (see nbbag.cpu.backward for the pipeline)::

    token_coefficients(indices, offsets, padding_idx, mode, bag_of, coefficients)
    weighted_token_coefficients(indices, offsets, per_sample_weights, padding_idx, mode,
                                bag_of, coefficients)
    max_token_coefficients(indices, offsets, argmax, padding_idx, bag_of, coefficients)
    rows, row_ptr, positions = group_positions_by_row(indices, bag_of, num_rows,
                                                      num_chunks=1,  # the threads
                                                      sort_type=np.int64)  # or int32
    contributing_rows(coefficients, positions, row_ptr, contributes)
    groups = group_tokens(weight, indices, offsets, per_sample_weights, argmax,
                          padding_idx, mode, num_chunks=1, sort_type=np.int64,
                          features=1)
        # all of the above in one call: a TokenGroups record (nbbag.base.records);
        # per_sample_weights and argmax None where absent; features F > 1: the bags
        # are a collection stack's, feature-major (feature f's bag b' is bag
        # f * B / F + b'), and bag_of holds each token's row of the bag-major
        # gradient, b' * F + f, where argmax is read too
    accumulate_rows(grad_output, groups, scale_grad_by_freq, values, lanes=None)
        # values (groups.num_contributing, D); lanes = lanes_for(D), as for the forward
    row_gradient(grad_output, groups, start, end, scale_grad_by_freq, out_row,
                 lanes=None)                               # one row's gradient
    per_sample_weights_grad(weight, indices, offsets, per_sample_weights, out,
                            grad_output, padding_idx, mode, weights_grad)

Optimizer kernels (see nbbag.cpu.optim).  ``step`` is a rule's step record
(nbbag.rules: ``AdagradStep(lr, eps)`` ..., its numbers in the weight's dtype),
``element_state`` / ``row_state`` the tuples of the rule's (V, D) and (V,) state
arrays that the record's ``reads`` names, ``t`` the step number from 1::

    update_row(step, row, grad_row, weight, element_state, row_state, t, rounding=None)
    apply_row_gradients(step, weight, rows, values, element_state, row_state, t,
                        rounding=None)
    apply_fused(step, weight, grad_output, groups, scale_grad_by_freq, element_state,
                row_state, t, scratch, rounding=None, lanes=None)
        # scratch (chunks, FUSED_BLOCK, >= D)
    catch_up_rows(step, weight, indices, element_state, row_state, target_step,
                  rounding=None)
    catch_up_all_rows(step, weight, element_state, row_state, target_step,
                      rounding=None)
    rows, last = rows_behind(indices, last_step, target_step)
    advance_rows(step, weight, rows, last, target_step, element_state,
                 rounding=None)  # SGD's catch-up
        # rounding: how a half table's updates are rounded: None, to nearest (ties to
        # even), or an int, the key of stochastic rounding (nbbag.cpu.elements); not
        # read for float32/float64 tables (the GPU kernels take it and get 0)

Collection kernel (see nbbag.cpu.collection)::

    combine_features(ids, token_starts, bag_starts, row_base, num_rows, padding,
                     pad_row, out_ids, out_offsets, status)
        # F features' bags (their ids one after another, bag_starts (F, B) in torch's
        # B form) as the bags of one stacked table, feature-major (bag f * B + b),
        # each id shifted by its table's row_base, a padding id to pad_row; status (1,)
        # set to OK (-1) first, lowered to BAD_OFFSETS (-2) or BAD_ID (-3)

Quantized tables (see nbbag.cpu.quantized for the rows' layout)::

    quantized_bags(data, params, bits, indices, offsets, per_sample_weights, out,
                   padding_idx, mode, lanes=None)
        # data (V, P) uint8, params the same bytes as float32 (V, P / 4); out float32

Example, from a user's own ``@njit`` function::

    from numba import njit
    from nbbag.kernels import bag_sum

    @njit
    def pooled_twice(weight, indices, offsets, out):
        bag_sum(weight, indices, offsets, out)
        return out * 2
"""

from nbbag.base.constants import NO_PADDING
from nbbag.base.dtypes import kernel_table
from nbbag.cpu._intrinsics import LANE
from nbbag.cpu.backward import (
    accumulate_rows,
    contributing_rows,
    group_positions_by_row,
    group_tokens,
    max_token_coefficients,
    per_sample_weights_grad,
    row_gradient,
    token_coefficients,
    weighted_token_coefficients,
)
from nbbag.cpu.checks import index_range
from nbbag.cpu.collection import combine_features
from nbbag.cpu.forward import (
    bag_max,
    bag_max_argmax,
    bag_mean,
    bag_sqrtn,
    bag_sum,
    bag_weighted_mean,
    bag_weighted_sqrtn,
    bag_weighted_sum,
    max_rows,
    renorm_rows,
    row_norm,
    scale_row,
    sum_rows,
    weighted_sum_rows,
)
from nbbag.cpu.optim import (
    FUSED_BLOCK,
    advance_rows,
    apply_fused,
    apply_row_gradients,
    catch_up_all_rows,
    catch_up_rows,
    rows_behind,
    update_row,
)
from nbbag.cpu.quantized import quantized_bags
from nbbag.cpu.rows import MAX_LANES, lanes_for

__all__ = [
    "FUSED_BLOCK",
    "LANE",
    "MAX_LANES",
    "NO_PADDING",
    "accumulate_rows",
    "advance_rows",
    "apply_fused",
    "apply_row_gradients",
    "bag_max",
    "bag_max_argmax",
    "bag_mean",
    "bag_sqrtn",
    "bag_sum",
    "bag_weighted_mean",
    "bag_weighted_sqrtn",
    "bag_weighted_sum",
    "catch_up_all_rows",
    "catch_up_rows",
    "combine_features",
    "contributing_rows",
    "group_positions_by_row",
    "group_tokens",
    "index_range",
    "kernel_table",
    "lanes_for",
    "max_rows",
    "max_token_coefficients",
    "per_sample_weights_grad",
    "quantized_bags",
    "renorm_rows",
    "row_gradient",
    "row_norm",
    "rows_behind",
    "scale_row",
    "sum_rows",
    "token_coefficients",
    "update_row",
    "weighted_sum_rows",
    "weighted_token_coefficients",
]
