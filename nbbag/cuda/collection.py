"""CUDA kernels of the collection: :mod:`nbbag.cpu.collection`'s ``combine_features``
(the same arguments; see that module for the stacks and their feature-major bags), and
:func:`move_features`, which puts a stack's bags in the collection's columns (the CPU
forward writes them there itself) and takes a stack's gradient out of them.

Launch: ``combine_features[launch.linear(max(F * B, N))]``: one thread per (feature,
bag) and per id, grid-stride; ``move_features[launch.grouped(F * B, D)]``: one thread
group per bag of the stack, lanes along D.
"""

from numba import cuda

from nbbag.base.constants import BAD_ID, BAD_OFFSETS
from nbbag.base.features import stack_row, start_is_valid
from nbbag.cuda.forward import group_item


@cuda.jit(device=True)
def feature_of(token_starts, i):
    """The feature whose ids hold position i: the last f with token_starts[f] <= i
    (a binary search over the F + 1 starts)."""
    low, high = 0, token_starts.shape[0] - 1
    while high - low > 1:
        middle = (low + high) // 2
        if token_starts[middle] <= i:
            low = middle
        else:
            high = middle
    return low


@cuda.jit
def combine_features(
    ids, token_starts, bag_starts, row_base, num_rows, padding, pad_row, out_ids,
    out_offsets, status,
):  # fmt: skip
    """Write the features' bags as the stack's bags, each id shifted to its table's rows
    in the stack, a padding id to ``pad_row``.  ``status[0]`` is lowered (atomic.min)
    to BAD_OFFSETS for a bad offset, to BAD_ID for an id outside its table (both may
    come: BAD_ID is then what stays); the outputs are then to be discarded.

    Ownership: thread k writes ``out_offsets[k]`` for each k = f * B + b of its
    grid-stride walk, and ``out_ids[i]`` for each of its ids i; thread 0, the last
    offset; threads only atomic.min into ``status``.
    """
    num_features, num_bags = bag_starts.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start, num_features * num_bags, stride):
        f, b = k // num_bags, k % num_bags
        count = token_starts[f + 1] - token_starts[f]
        previous = bag_starts[f, b - 1] if b > 0 else 0
        if not start_is_valid(b, bag_starts[f, b], previous, count):
            cuda.atomic.min(status, 0, BAD_OFFSETS)
        out_offsets[k] = token_starts[f] + bag_starts[f, b]
    if start == 0:  # with no bags every token is in none: the CSR form of none is [0]
        last = token_starts[num_features] if num_bags else 0
        out_offsets[num_features * num_bags] = last
    for i in range(start, ids.shape[0], stride):
        f = feature_of(token_starts, i)
        row, inside = stack_row(ids[i], row_base[f], num_rows[f], padding[f], pad_row)
        if not inside:
            cuda.atomic.min(status, 0, BAD_ID)
        out_ids[i] = row


@cuda.jit
def move_features(stack_rows, column_starts, wide, to_wide):
    """Between a stack's (F * B, D) rows, feature-major, and the collection's (B, W)
    array: ``wide[b, column_starts[f] + d]`` is ``stack_rows[f * B + b, d]``; copied
    into ``wide`` if ``to_wide`` (the forward's output), else out of it (the gradient).

    Ownership: group k (= f * B + b) writes ``wide[b]``'s columns of feature f, or
    ``stack_rows[k]``; lane l of it, dimensions l, l + group, ...
    """
    k = group_item()
    num_bags = wide.shape[0]
    if k < stack_rows.shape[0]:
        b, column = k % num_bags, column_starts[k // num_bags]
        for d in range(cuda.threadIdx.x, stack_rows.shape[1], cuda.blockDim.x):
            if to_wide:
                wide[b, column + d] = stack_rows[k, d]
            else:
                stack_rows[k, d] = wide[b, column + d]
