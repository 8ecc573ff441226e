"""nbbag's ``@cuda.jit`` kernels and device functions, for people composing their own.

The GPU twins of :mod:`nbbag.kernels`: the same argument order as the CPU kernels,
outputs allocated by the caller, inputs trusted (validate first, or use the front
door).  Needs numba-cuda (``pip install nbbag[cuda]``); importing this module without
it raises an ImportError that says so.  Launch configurations come from
:mod:`nbbag.cuda.launch`::

    from nbbag.cuda import launch
    from nbbag.kernels import cuda as k

    grid, block = launch.grouped(num_bags, D)          # one thread group per bag
    k.bag_sum[grid, block](weight, indices, offsets, out, padding_idx)  # -1: none

Device functions (call them from your own ``@cuda.jit`` kernels; each reduces one
dimension ``d`` of the tokens ``start:end`` and writes nothing)::

    total, count = sum_dim_dev(weight, indices, start, end, padding_idx, d)
    total, weight_sum, weight_square_sum = weighted_sum_dim_dev(
        weight, indices, per_sample_weights, start, end, padding_idx, d)
    best, winner = max_dim_dev(weight, indices, start, end, padding_idx, d)
    value = scale_dev(total, denominator)       # 0 where denominator == 0
    value = row_gradient_dim_dev(grad_output, groups, start, end, scale_grad_by_freq, d)
    row_gradient_dev(grad_output, groups, start, end, scale_grad_by_freq, out_row)
        # the calling group writes out_row

The collection's (see :mod:`nbbag.cuda.collection`): ``combine_features``, as the CPU's,
and ``move_features(stack_rows, column_starts, wide, to_wide)``, a stack's (F * B, D)
rows to or from their columns of the collection's (B, W) output or gradient.

Backward (see :mod:`nbbag.cuda.backward`) and optimizer kernels (see
:mod:`nbbag.cuda.optim`) take the CPU kernels' names and arguments (where the CPU
takes None for an absent array, the GPU has a kernel of its own: a kernel launch
cannot take None; ``groups.argmax`` is then an empty (0, 0) array).  The per-bag and
per-element math (:mod:`nbbag.base.bags`, :mod:`nbbag.rules`) is shared with the CPU
kernels, compiled for either target from one source.

A float16 or bfloat16 device table goes to the kernels as ``kernel_table(weight)``, its
int16/uint16 view, as on the CPU; outputs, gradients and optimizer state are then
float32.  The optimizer kernels' ``rounding`` is ``NEAREST`` (-1) or the key (>= 0) of
stochastic rounding (:mod:`nbbag.base.halves`).
"""

from nbbag._device import cuda_backend

cuda_backend()  # ImportError naming the 'cuda' extra without numba-cuda

from nbbag.base.halves import NEAREST  # noqa: E402
from nbbag.cuda.arrays import kernel_table  # noqa: E402
from nbbag.cuda.backward import (  # noqa: E402
    accumulate_rows,
    accumulate_rows_atomic,
    contributing_rows,
    max_token_coefficients,
    per_sample_weights_grad,
    row_gradient_dev,
    row_gradient_dim_dev,
    token_coefficients,
    weighted_token_coefficients,
)
from nbbag.cuda.collection import combine_features, move_features  # noqa: E402
from nbbag.cuda.forward import (  # noqa: E402
    bag_max,
    bag_max_argmax,
    bag_mean,
    bag_sqrtn,
    bag_sum,
    bag_weighted_mean,
    bag_weighted_sqrtn,
    bag_weighted_sum,
    max_dim_dev,
    renorm_rows,
    scale_dev,
    sum_dim_dev,
    weighted_sum_dim_dev,
)
from nbbag.cuda.grouping import group_positions_by_row, group_tokens  # noqa: E402
from nbbag.cuda.optim import (  # noqa: E402
    apply_fused,
    apply_row_gradients,
    catch_up_all_rows,
    catch_up_rows,
)
from nbbag.cuda.quantized import quantized_bags  # noqa: E402

__all__ = [
    "NEAREST",
    "accumulate_rows",
    "accumulate_rows_atomic",
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
    "kernel_table",
    "max_dim_dev",
    "max_token_coefficients",
    "move_features",
    "per_sample_weights_grad",
    "quantized_bags",
    "renorm_rows",
    "row_gradient_dev",
    "row_gradient_dim_dev",
    "scale_dev",
    "sum_dim_dev",
    "token_coefficients",
    "weighted_sum_dim_dev",
    "weighted_token_coefficients",
]
