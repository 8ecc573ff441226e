"""The one place the CPU chooses a kernel variant: which kernel runs a call, and the
compile-time arguments it is specialised with.

What varies, and where it is decided:

* the mode: a table from :class:`nbbag.Mode` to the kernel (one a mode; whether the
  forward records max's winners for the backward comes from the same table);
* weighted or not, max's winners or not: the arrays are passed, or None (Numba compiles
  a specialisation for each);
* D: ``lanes`` (:func:`nbbag.cpu.rows.lanes_for`), where the sum kernels and the
  row gradients are compiled for that width;
* the work: a forward whose work (ids x D) is below SERIAL_WORK runs a serial twin of
  its kernel (the same source compiled without ``parallel``): starting the thread
  pool's parallel region costs ~1.7 us here, more than a tiny batch's whole work; and a
  batch of fewer than SERIAL_SORT_TOKENS tokens is grouped by row serially (the sort's
  parallel kernel costs ~2.5 s more to compile, which the batches of a typical training
  run never win back: 56 us a step at 11k tokens; at 53k tokens, a collection's batch,
  it saves 0.6 of 1.4 ms); a collection's batch of fewer than SERIAL_COMBINE_TOKENS is
  combined serially.  The optimizers' updates always run
  in parallel: a parallel loop tells LLVM that the kernel's arrays do not alias, and
  their element loops vectorise only then (a serial Adagrad update was 6x slower);
* the dtype of the sort keys (int32 where V and N fit: half the bytes of int64);
* the table's dtype: a half table comes as its integer view (int16 float16, uint16
  bfloat16: :mod:`nbbag.base.dtypes`), whose type Numba specialises on like any other
  (the host's :func:`~nbbag.base.dtypes.kernel_table` makes it), and ``rounding``:
  None (to nearest) or a stochastic-rounding key, for its updates.

The host pipeline (:mod:`nbbag.cpu.api`) asks for a variant and calls it; it never sees
``lanes`` or a mode.
"""

from __future__ import annotations

import types

import numba
import numpy as np
from numba import njit

from nbbag.cpu import backward, collection, forward, optim, quantized
from nbbag.cpu.rows import lanes_for
from nbbag.modes import Mode

# Work (ids x D) below which the forward runs serially: at D = 64, 20 ids a bag, 32 bags
# ran in 4.4 us serially and 5.4 us in parallel, 64 bags in 9.2 and 7.9 us.
SERIAL_WORK = 65_536
# Tokens below which a batch is grouped by row serially (see above).
SERIAL_SORT_TOKENS = 32_768
# Tokens below which a collection's features are combined serially: 3,328 tokens (26
# features of 128 bags of one id) took 7.7 us serially and 13.8 in parallel; 33,280
# took 43 and 31.
SERIAL_COMBINE_TOKENS = 8192
_INT32_LIMIT = np.iinfo(np.int32).max


def _renamed(source, suffix: str, replacements: dict | None = None):
    """A copy of the Python function ``source`` named ``<name>_<suffix>`` (so that
    Numba's disk cache keeps it apart), its globals updated with ``replacements``."""
    names = (
        source.__globals__ if not replacements else {**source.__globals__, **replacements}
    )
    twin = types.FunctionType(
        source.__code__,
        names,
        f"{source.__name__}_{suffix}",
        source.__defaults__,
        source.__closure__,
    )
    twin.__qualname__ = f"{source.__qualname__}_{suffix}"
    twin.__module__ = source.__module__
    return twin


def serial_twin(kernel, replacements: dict | None = None):
    """``kernel`` (a ``parallel=True`` dispatcher) compiled without ``parallel``: its
    ``prange`` loops run as plain loops on the calling thread; the functions it names
    in ``replacements`` swapped for others.  A function of its own name, so that
    Numba's disk cache keeps the two apart."""
    twin = _renamed(kernel.py_func, "serial", replacements)
    twin.__doc__ = f"{kernel.py_func.__name__}, run serially (see serial_twin)."
    options = {
        key: value
        for key, value in kernel.targetoptions.items()
        if key not in ("parallel", "nopython")
    }
    return njit(cache=True, **options)(twin)  # caching is not a target option


# The parallel forward kernels inline the per-bag reductions (a call per bag costs two
# atomic reference counts on the output every thread writes: 2x slower on bags of one
# id); their serial twins, the small batches' (one thread: uncontended), call them, so
# that one compiled reduction serves every mode's twin (inlined, each twin compiled its
# own: ~3 s a kernel, the test suite 11:01 against 9:02).
_CALLED_REDUCTIONS = {
    name: njit(cache=True)(_renamed(getattr(forward, name).py_func, "called"))
    for name in ("_reduce_sums", "_reduce_max")
}


def _pair(kernel, replacements: dict | None = None):
    """(parallel, serial) versions of ``kernel``."""
    return kernel, serial_twin(kernel, replacements)


# mode: ((parallel, serial) kernel, whether the backward needs max's winners)
_FORWARD = {
    Mode.SUM: (_pair(forward.sum_bags_checked, _CALLED_REDUCTIONS), False),
    Mode.MEAN: (_pair(forward.mean_bags_checked, _CALLED_REDUCTIONS), False),
    Mode.SQRTN: (_pair(forward.sqrtn_bags_checked, _CALLED_REDUCTIONS), False),
    Mode.MAX: (_pair(forward.max_bags_checked, _CALLED_REDUCTIONS), True),
}
SORT_BY_ROW = _pair(backward.sort_by_row)
_GROUP_TOKENS = _pair(backward.group_tokens, {"sort_by_row": SORT_BY_ROW[1]})
_COMBINE_STACK_IDS = _pair(collection.combine_stack_ids)
_COMBINE_OFFSETS = _pair(collection.combine_offsets)


class Forward:
    """The forward of one (mode, D, size) class of call: ``run`` checks the offsets and
    ids as it reads them and returns (status, max's winners or None)."""

    __slots__ = ("kernel", "lanes", "records_winners")

    def __init__(self, mode: Mode, dim: int, serial: bool, keep_context: bool):
        kernels, winners = _FORWARD[mode]
        self.kernel = kernels[serial]
        self.lanes = lanes_for(dim)
        self.records_winners = winners and keep_context

    def run(
        self,
        weight,
        indices,
        offsets,
        append_end,
        csr,
        per_sample_weights,
        out,
        padding_idx,
        stack=None,
    ):
        argmax = None
        if self.records_winners:  # each bag's winners where its output row is
            argmax = np.empty(out.shape, dtype=np.int64)
        status = self.kernel(
            weight, indices, offsets, append_end, csr, per_sample_weights, out, argmax,
            padding_idx, self.lanes, stack,
        )  # fmt: skip
        return status, argmax


_FORWARDS: dict[tuple, Forward] = {}


def forward_variant(mode: Mode, dim: int, num_tokens: int, keep_context: bool) -> Forward:
    """The forward kernel for this call (memoised)."""
    key = (mode, dim, num_tokens * dim < SERIAL_WORK, keep_context)
    variant = _FORWARDS.get(key)
    if variant is None:
        variant = _FORWARDS[key] = Forward(mode, dim, key[2], keep_context)
    return variant


def group_tokens(
    weight, indices, offsets, per_sample_weights, argmax, padding_idx, mode, features
):  # fmt: skip
    """:func:`nbbag.cpu.backward.group_tokens`, serial for small batches, sorting in
    int32 where V and N fit."""
    num_tokens = indices.shape[0]
    num_rows = weight.shape[0]
    sort_type = np.int32 if max(num_rows, num_tokens) < _INT32_LIMIT else np.int64
    kernel = _GROUP_TOKENS[num_tokens < SERIAL_SORT_TOKENS]
    return kernel(
        weight, indices, offsets, per_sample_weights, argmax, padding_idx, int(mode),
        numba.get_num_threads(), sort_type, features,
    )  # fmt: skip


def combine_stack_ids(stack, out_ids, status) -> None:
    """:func:`nbbag.cpu.collection.combine_stack_ids` of a stack's tuple (its features'
    ids, token starts, row bases, rows, paddings and spare row), serial for small
    batches."""
    kernel = _COMBINE_STACK_IDS[stack[0].shape[0] < SERIAL_COMBINE_TOKENS]
    kernel(*stack, out_ids, status)


def combine_offsets(token_starts, bag_starts, out_offsets, status) -> None:
    """:func:`nbbag.cpu.collection.combine_offsets`, serial for small batches."""
    kernel = _COMBINE_OFFSETS[bag_starts.size < SERIAL_COMBINE_TOKENS]
    kernel(token_starts, bag_starts, out_offsets, status)


def accumulate_rows(grad_output, groups, scale_grad_by_freq, values) -> None:
    """:func:`nbbag.cpu.backward.accumulate_rows`, specialised for D."""
    backward.accumulate_rows(
        grad_output, groups, scale_grad_by_freq, values, lanes_for(values.shape[1])
    )


def apply_fused(
    step, weight, grad_output, groups, scale_grad_by_freq, state, t, scratch, rounding
):  # fmt: skip
    """:func:`nbbag.cpu.optim.apply_fused`, specialised for D."""
    optim.apply_fused(
        step, weight, grad_output, groups, scale_grad_by_freq, *state, t, scratch,
        rounding, lanes_for(weight.shape[1]),
    )  # fmt: skip


def apply_row_gradients(step, weight, rows, values, state, t, rounding) -> None:
    """:func:`nbbag.cpu.optim.apply_row_gradients`."""
    element_state, row_state = state
    optim.apply_row_gradients(
        step, weight, rows, values, element_state, row_state, t, rounding
    )


def quantized_forward(
    data, params, bits, indices, offsets, weights, out, padding_idx, mode
):
    """A quantized table's forward (:func:`nbbag.cpu.quantized.quantized_bags`), its
    sums in registers where D has ``lanes``.  One specialisation a width: the ids as
    int64 and the weights always an array (ones where there are none; the kernel
    multiplies by a token's weight either way), so that the kernel compiles once per
    ``lanes`` instead of four times."""
    if weights is None:
        weights = np.ones(indices.shape[0], dtype=np.float32)
    quantized.quantized_bags(
        data, params, bits, indices.astype(np.int64, copy=False), offsets, weights,
        out, padding_idx, int(mode), lanes_for(out.shape[1]),
    )  # fmt: skip
