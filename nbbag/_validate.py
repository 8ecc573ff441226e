"""The one place that checks and normalises the inputs of the public functions.

Numba does no bounds checks, so an index that slipped through would be memory
corruption: everything a kernel trusts is checked before it reads it (here, or, for the
ids and offsets of a read-only forward, inside the kernel that reads them, with these
messages raised after it), and nothing is modified on the way (an error leaves the
weight as it was).  Each error names the argument and the offending value.

Backend-neutral: the scalar options and the shapes and dtypes of arrays of either
backend are checked here, the contents of host arrays with NumPy; the backends check
the contents of their own arrays with their kernels and raise the errors built here.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from nbbag.base.constants import INDEX_DTYPES, NO_PADDING
from nbbag.base.dtypes import (
    MAX_HALF_DIM,
    TABLE_DTYPE_NAMES,
    TABLE_DTYPES,
    compute_dtype,
    is_half,
)
from nbbag.base.records import BagContext, ForwardOptions
from nbbag.modes import Mode


# -- scalars -----------------------------------------------------------------------------
# The exact builtin types first: an ABC isinstance runs Python code (~5 us a call on
# the forward's path, when the interpreter's data is out of cache after a kernel).
def is_integer(value) -> bool:
    if type(value) is int:
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    if type(value) is float or type(value) is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_real(
    value, name: str, low: float = 0.0, high: float = math.inf, high_open: bool = False
) -> float:
    """``value`` as a float, after checking it is a finite real in [low, high] (or
    [low, high) with ``high_open``)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    inside = low <= value < high if high_open else low <= value <= high
    if not (inside and math.isfinite(value)):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value}")
    return float(value)


def check_flag(value, name: str) -> bool:
    if type(value) is bool:
        return value
    if not isinstance(value, np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_padding_idx(padding_idx, num_rows: int) -> int:
    """Return ``padding_idx`` as a row in [0, V) (negative counts from the end),
    or NO_PADDING for None."""
    if padding_idx is None:
        return NO_PADDING
    if not is_integer(padding_idx):
        raise TypeError(f"padding_idx must be an int or None, got {padding_idx!r}")
    if not -num_rows <= padding_idx < num_rows:
        raise ValueError(
            f"padding_idx must be in [-{num_rows}, {num_rows}) for a weight with "
            f"{num_rows} rows, got {padding_idx}"
        )
    return int(padding_idx) % num_rows


def check_norm_options(max_norm, norm_type) -> tuple[float | None, float]:
    """Check ``max_norm`` (None or > 0) and ``norm_type`` (> 0, inf allowed)."""
    if not is_real(norm_type):
        raise TypeError(f"norm_type must be a real number, got {norm_type!r}")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    if max_norm is None:
        return None, float(norm_type)
    if not is_real(max_norm):
        raise TypeError(f"max_norm must be a real number or None, got {max_norm!r}")
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    return float(max_norm), float(norm_type)


# The last options checked, with the very objects they were given as: a forward called
# again with the same arguments (the usual case) skips the checks (~1 us, a quarter of a
# tiny batch's forward).  Identity, not equality: True == 1, but 1 is not a flag.
_last_options: tuple = (object(),) * 7 + (None,)


def forward_options(
    mode, padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq,
    num_rows: int,
) -> ForwardOptions:  # fmt: skip
    """The forward's options, checked, for a table of ``num_rows`` rows."""
    global _last_options
    last = _last_options
    if (
        mode is last[0]
        and padding_idx is last[1]
        and include_last_offset is last[2]
        and max_norm is last[3]
        and norm_type is last[4]
        and scale_grad_by_freq is last[5]
        and num_rows == last[6]
    ):
        return last[7]
    options = _check_forward_options(
        mode, padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq,
        num_rows,
    )  # fmt: skip
    _last_options = (
        mode, padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq,
        num_rows, options,
    )  # fmt: skip
    return options


def _check_forward_options(
    mode, padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq,
    num_rows: int,
) -> ForwardOptions:  # fmt: skip
    mode = Mode.parse(mode)
    include_last_offset = check_flag(include_last_offset, "include_last_offset")
    scale_grad_by_freq = check_flag(scale_grad_by_freq, "scale_grad_by_freq")
    max_norm, norm_type = check_norm_options(max_norm, norm_type)
    padding_idx = check_padding_idx(padding_idx, num_rows)
    return ForwardOptions(
        mode, padding_idx, include_last_offset, max_norm, norm_type, scale_grad_by_freq
    )


# -- the table ---------------------------------------------------------------------------
def check_table_layout(weight, c_contiguous: bool, copy_hint: str) -> None:
    """The checks of a table (either backend): float32/float64/float16/bfloat16, 2-D,
    C-contiguous; ``copy_hint`` ends the message of the last."""
    if weight.dtype not in TABLE_DTYPES:
        raise TypeError(f"weight must be {TABLE_DTYPE_NAMES}, got dtype {weight.dtype}")
    if weight.ndim != 2:
        raise ValueError(
            f"weight must be 2-D (num_embeddings, dim), got shape {weight.shape}"
        )
    if not c_contiguous:
        raise ValueError(
            f"weight must be C-contiguous (it is read, and renormed, in place); {copy_hint}"
        )


def check_trainable(weight) -> None:
    """Refuse a table that is for inference only (a quantized one), with a message
    saying so (either backend)."""
    if getattr(weight, "inference_only", False):
        raise TypeError(
            f"a {type(weight).__name__} is for inference only: nbbag.embedding_bag(q, "
            "...) reads it; gradients, optimizers and layers need a float table "
            "(q.dequantize() makes one)"
        )


def check_updatable_width(weight) -> None:
    """An optimizer's table: a float16/bfloat16 one's rows at most MAX_HALF_DIM wide
    (each is updated in float32 in a fixed buffer; either backend)."""
    if is_half(weight.dtype) and weight.shape[1] > MAX_HALF_DIM:
        raise ValueError(
            f"weight: an optimizer updates {weight.dtype} rows of at most "
            f"{MAX_HALF_DIM} elements, got D = {weight.shape[1]} (use float32)"
        )


def check_weight(weight) -> np.ndarray:
    """Check that ``weight`` is a C-contiguous (V, D) NumPy array of a table dtype."""
    check_trainable(weight)
    if type(weight) is not np.ndarray and not isinstance(weight, np.ndarray):
        raise TypeError(f"weight must be a NumPy array, got {type(weight).__name__}")
    check_table_layout(
        weight, weight.flags.c_contiguous, "pass np.ascontiguousarray(weight)"
    )
    return weight


def check_writeable(writeable: bool, why: str, name: str = "weight") -> None:
    if not writeable:
        raise ValueError(f"{name} must be writeable: {why}")


def checked_state_array(key: str, value, like) -> np.ndarray:
    """``state[key]`` (a checkpoint's array) as a NumPy array of ``like``'s shape and a
    dtype that casts to ``like``'s (an array of either backend)."""
    array = np.asarray(value)
    if array.shape != tuple(like.shape):
        raise ValueError(
            f"state[{key!r}] has shape {array.shape}, expected {tuple(like.shape)}"
        )
    if not np.can_cast(array.dtype, like.dtype, casting="same_kind"):
        raise TypeError(f"state[{key!r}] has dtype {array.dtype}, expected {like.dtype}")
    return array


def check_out_like(out, shape: tuple, dtype, c_contiguous: bool) -> None:
    """An ``out=`` array's shape, dtype (the compute dtype of a table of ``dtype``:
    float32 for a half table) and layout (either backend)."""
    expected = compute_dtype(dtype)
    if out.dtype != expected:
        if expected == dtype:
            raise TypeError(f"out must have the weight's dtype {dtype}, got {out.dtype}")
        raise TypeError(f"out must be float32 for a {dtype} weight, got {out.dtype}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape (B, D) = {shape}, got {tuple(out.shape)}")
    if not c_contiguous:
        raise ValueError("out must be C-contiguous")


def check_out(out, shape: tuple, weight: np.ndarray) -> None:
    """``out=`` of the CPU forward: a writeable NumPy array apart from ``weight``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    check_out_like(out, shape, weight.dtype, out.flags.c_contiguous)
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if np.may_share_memory(out, weight):
        raise ValueError("out must not overlap weight (the forward reads it)")


# -- ids, offsets, weights -----------------------------------------------------------
def as_array(value, name: str) -> np.ndarray:
    if type(value) is np.ndarray:
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} could not be made into an array: {error}") from None


INDEX_DTYPE_SET = frozenset(INDEX_DTYPES)


def _as_index_array(value, name: str) -> np.ndarray:
    """``value`` as an int32/int64 array; an empty Python sequence (untyped) is int64."""
    if type(value) is np.ndarray and value.dtype in INDEX_DTYPE_SET:
        return value
    array = as_array(value, name)
    if array.size == 0 and not isinstance(value, np.ndarray):
        array = array.astype(np.int64)
    if array.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got dtype {array.dtype}")
    return array


def check_indices(indices) -> np.ndarray:
    """Check the dtype and rank of ``indices``; return them as an array (1-D or 2-D)."""
    indices = _as_index_array(indices, "indices")
    if indices.ndim not in (1, 2):
        raise ValueError(f"indices must be 1-D or 2-D, got shape {indices.shape}")
    return indices


def flat_contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` as a 1-D C-contiguous array: itself when it is one (no NumPy call)."""
    if array.ndim == 1 and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array.reshape(-1))


def index_error(shape: tuple, position: int, value, num_rows: int) -> IndexError:
    """The error for index ``value`` at flat ``position`` of indices of ``shape``."""
    unravelled = np.unravel_index(position, shape)
    where = unravelled[0] if len(unravelled) == 1 else tuple(int(i) for i in unravelled)
    return IndexError(
        f"indices[{where}] = {value} is outside [0, {num_rows}): weight has {num_rows} rows"
    )


def first_outside(flat: np.ndarray, num_rows: int) -> int:
    """The first position of ``flat`` outside [0, num_rows), or -1 (NumPy)."""
    outside = np.flatnonzero((flat < 0) | (flat >= num_rows))
    return int(outside[0]) if outside.size else -1


def check_offsets_shape(offsets, include_last_offset: bool) -> None:
    """1-D, and not empty with ``include_last_offset`` (either backend)."""
    if offsets.ndim != 1:
        raise ValueError(f"offsets must be 1-D, got shape {offsets.shape}")
    if include_last_offset and offsets.shape[0] == 0:
        raise ValueError(
            "offsets must hold at least one entry with include_last_offset=True, got none"
        )


def bag_offsets(offsets, indices: np.ndarray, include_last_offset: bool):
    """The bags' boundaries as the kernels take them, their contents not yet checked:
    ``(offsets, append_end, num_bags)``, where the CSR form is ``offsets`` with N
    appended when ``append_end``.  2-D indices give their own (B + 1) offsets."""
    if indices.ndim == 2:
        if offsets is not None:
            raise ValueError(
                f"offsets must be None when indices is 2-D (shape {indices.shape}): "
                "each row is a bag"
            )
        num_bags, length = indices.shape
        return np.arange(num_bags + 1, dtype=np.int64) * length, False, num_bags
    if offsets is None:
        raise ValueError("offsets is required when indices is 1-D")
    offsets = _as_index_array(offsets, "offsets")
    check_offsets_shape(offsets, include_last_offset)
    if offsets.shape[0] == 0:  # no bags: every token is in none
        return np.zeros(1, dtype=np.int64), False, 0
    if include_last_offset:
        return offsets, False, offsets.shape[0] - 1
    return offsets, True, offsets.shape[0]


def check_offsets_found(first, decrease: int, past_end: int, read, num_indices: int):
    """Raise for what a scan of non-empty offsets found (either backend): ``first`` =
    offsets[0]; ``decrease`` = the first i with offsets[i + 1] < offsets[i];
    ``past_end`` = the first i with offsets[i] > num_indices (-1: none); ``read(i, j)``
    gives offsets[i:j] on the host, for the message."""
    if first != 0:
        raise ValueError(f"offsets[0] must be 0, got {first}")
    if decrease >= 0:
        pair = read(decrease, decrease + 2)
        raise ValueError(
            f"offsets must be non-decreasing, got offsets[{decrease}] = {pair[0]} > "
            f"offsets[{decrease + 1}] = {pair[1]}"
        )
    if past_end >= 0:
        value = read(past_end, past_end + 1)[0]
        raise ValueError(
            f"offsets[{past_end}] = {value} is past the end of indices "
            f"(length {num_indices})"
        )


def check_offsets_values(offsets: np.ndarray, num_indices: int) -> None:
    """Raise the error for the first fault of host ``offsets`` (NumPy), if any."""
    if offsets.shape[0] == 0:
        return

    def first(mask) -> int:
        found = np.flatnonzero(mask)
        return int(found[0]) if found.size else -1

    check_offsets_found(
        offsets[0],
        first(offsets[1:] < offsets[:-1]),
        first(offsets > num_indices),
        lambda i, j: offsets[i:j],
        num_indices,
    )


def check_bag_contents(indices: np.ndarray, offsets: np.ndarray, num_rows: int) -> None:
    """Raise the error for the first fault of host ``offsets``, then of ``indices``
    (any shape), if any: a backend's kernels found one and discarded their output."""
    check_offsets_values(offsets, indices.size)
    flat = indices.reshape(-1)
    position = first_outside(flat, num_rows)
    if position >= 0:
        raise index_error(indices.shape, position, flat[position], num_rows)


def check_per_sample_weights(
    per_sample_weights, indices: np.ndarray, mode: Mode, dtype: np.dtype
) -> np.ndarray | None:
    """Return ``per_sample_weights`` flattened, C-contiguous, in ``dtype``, or None."""
    if per_sample_weights is None:
        return None
    check_weights_mode(mode)
    weights = as_array(per_sample_weights, "per_sample_weights")
    check_weights_like(weights, indices.shape)
    return np.ascontiguousarray(weights.reshape(-1), dtype=dtype)


def check_weights_mode(mode: Mode) -> None:
    if not mode.takes_weights:
        raise ValueError(
            "per_sample_weights is not supported with mode 'max' "
            "(use 'sum', 'mean' or 'sqrtn')"
        )


def check_weights_like(weights, indices_shape: tuple) -> None:
    """Floating point, of the shape of indices (an array of either backend)."""
    if not np.issubdtype(weights.dtype, np.floating):
        raise TypeError(
            f"per_sample_weights must be a floating-point array, got dtype {weights.dtype}"
        )
    if tuple(weights.shape) != tuple(indices_shape):
        raise ValueError(
            f"per_sample_weights must have the shape of indices {tuple(indices_shape)}, "
            f"got {tuple(weights.shape)}"
        )


# -- the backward ------------------------------------------------------------------------
def check_context(ctx):
    """Check that ``ctx`` is a :class:`BagContext` whose weight still has the forward's
    shape; return that weight (either backend)."""
    if not isinstance(ctx, BagContext):
        raise TypeError(
            f"ctx must be the BagContext from embedding_bag_fwd, got {type(ctx).__name__}"
        )
    weight = ctx.batch.weight
    if tuple(weight.shape) != tuple(ctx.weight_shape):
        raise ValueError(
            f"weight's shape changed from {ctx.weight_shape} at the forward to "
            f"{tuple(weight.shape)}: ctx belongs to another table; run the forward again"
        )
    return weight


def check_grad_output_like(grad_output, ctx) -> None:
    """Check that ``grad_output`` (an array of either backend) has the forward output's
    shape and a floating dtype: like ``per_sample_weights``, it is then cast to the
    weight's compute dtype (one rule for the floating inputs: NumPy code makes float64
    easily)."""
    check_grad_like(
        grad_output, (ctx.batch.num_bags, ctx.weight_shape[1]), ctx.batch.weight.dtype
    )


def check_grad_like(grad_output, expected: tuple, dtype) -> None:
    """``grad_output`` of the forward output's shape ``expected`` and a floating dtype
    (to be cast to the table's ``dtype``): a layer's, a collection's."""
    if tuple(grad_output.shape) != expected:
        raise ValueError(
            f"grad_output must have the forward output's shape {expected}, "
            f"got {tuple(grad_output.shape)}"
        )
    if not np.issubdtype(grad_output.dtype, np.floating):
        raise TypeError(
            f"grad_output must be a floating-point array (cast to the weight's compute "
            f"dtype {compute_dtype(dtype)}), got dtype {grad_output.dtype}"
        )


def check_grad_output(grad_output, ctx) -> np.ndarray:
    """Check ``grad_output`` against the forward in ``ctx``; return it C-contiguous."""
    check_context(ctx)
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(
            f"grad_output must be a NumPy array, got {type(grad_output).__name__}"
        )
    check_grad_output_like(grad_output, ctx)
    return np.ascontiguousarray(grad_output, dtype=compute_dtype(ctx.batch.weight.dtype))


def check_weights_grad_request(per_sample_weights_grad, ctx: BagContext) -> None:
    """``per_sample_weights_grad=True`` needs weights in the forward."""
    if per_sample_weights_grad and ctx.batch.per_sample_weights is None:
        raise ValueError(
            "per_sample_weights_grad=True needs per_sample_weights in the forward"
        )
