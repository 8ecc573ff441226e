"""A half table's elements, for every target: widened to float32, rounded back.

A float16 or bfloat16 table reaches the kernels as an integer view of its bits
(:mod:`nbbag.base.dtypes`: int16 holds float16 bits, uint16 bfloat16 bits).  Here is
how one element is read and written, for the CPU and the GPU alike:

- LLVM intrinsics for the conversions (:func:`widen_code`, :func:`float16_nearest`,
  :func:`float32_bits`).  They are plain LLVM IR, which NVVM compiles as the CPU's LLVM
  does: a float16 conversion is ``vcvtph2ps`` / ``vcvtps2ph`` on x86 and ``cvt.f32.f16``
  / ``cvt.rn.f16.f32`` on a GPU, the same bits either way.
- ``@njit`` scalar functions built on them (:func:`widen`, :func:`rounded`, the
  rounding rules; :func:`nbbag.base.shared.scalar`).  A CPU kernel compiles them in,
  numba-cuda compiles their Python source into a GPU kernel, and under Numba's CUDA
  simulator the simulated device code calls their CPU machine code on its scalars.  So
  every target computes each element with the same code, and a GPU writes the bits the
  CPU writes.

Rounding (``rounding``): None, or any negative int (a GPU launch cannot take None),
rounds to nearest, ties to even; an int >= 0 is the key of stochastic rounding, the
direction of each element drawn from a hash of (key, step, row, column): reproducible,
and the same whatever the thread count or the target.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from nbbag.base.shared import scalar


# -- the conversions, as LLVM intrinsics -------------------------------------------------
def code_format(code_type) -> str | None:
    """ "float16", "bfloat16" or None: the format of bits held in ``code_type``."""
    if code_type == types.int16:
        return "float16"
    if code_type == types.uint16:
        return "bfloat16"
    return None


def widen_bits(builder, bits, format_: str):
    """float32 (a scalar or a vector) of 16-bit ``bits`` (i16 or <n x i16>) in
    ``format_``: float16 bits as half, extended (vcvtph2ps on x86 with F16C);
    bfloat16 bits as the high half of a float32."""
    vector = isinstance(bits.type, ir.VectorType)
    count = bits.type.count if vector else 0

    def of(element):
        return ir.VectorType(element, count) if vector else element

    if format_ == "float16":
        return builder.fpext(builder.bitcast(bits, of(ir.HalfType())), of(ir.FloatType()))
    wide = builder.zext(bits, of(ir.IntType(32)))
    sixteen = ir.Constant(of(ir.IntType(32)), 16 if not vector else [16] * count)
    return builder.bitcast(builder.shl(wide, sixteen), of(ir.FloatType()))


@intrinsic
def widen_code(typingctx, code):
    """The float32 value of a half table's element ``code`` (int16: float16 bits;
    uint16: bfloat16 bits).  Exact: every float16 and bfloat16 value is a float32."""
    format_ = code_format(code)
    if format_ is None:
        return None

    def codegen(context, builder, signature, args):
        return widen_bits(builder, args[0], format_)

    return types.float32(code), codegen


@intrinsic
def float16_nearest(typingctx, value):
    """The float16 bits (int16) nearest float32 ``value``, ties to even (LLVM's
    fptrunc); beyond float16's range, inf; NaN stays NaN."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return types.int16(value), codegen


@intrinsic
def float32_bits(typingctx, value):
    """The bits of float32 ``value`` as a uint32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(value), codegen


# -- reading -------------------------------------------------------------------------------
def _widened(value):
    raise NotImplementedError("a Numba overload: call widen")


@overload(_widened)
def _widened_overload(value):
    if code_format(value) is not None:
        return lambda value: widen_code(value)
    return lambda value: value


@scalar(inline="always")
def widen(value):
    """A table element as a number: itself (float tables), or the float32 value of a
    half table's bits."""
    return _widened(value)


# -- rounding float32 to 16 bits -----------------------------------------------------------
NEAREST = -1  # ``rounding`` of a GPU launch that rounds to nearest
_SIGN = np.int64(0x8000)


@scalar(cache=True)
def bfloat16_nearest(value):
    """The bfloat16 bits (uint16) nearest float32 ``value``, ties to even; NaN stays
    NaN (quieted), as ``ml_dtypes`` rounds."""
    bits = np.int64(float32_bits(value))
    nearest = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    quiet_nan = (bits >> 16) | 0x40  # NaN stays NaN, whatever its payload
    # a select, not a branch: the loops that store a row vectorise
    return np.uint16(quiet_nan if bits & 0x7FFFFFFF > 0x7F800000 else nearest)


@scalar(cache=True)
def _mix(z):
    """SplitMix64's finaliser: 64 well-mixed bits of ``z`` (uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@scalar(cache=True)
def random_bits(key, t, row, col):
    """64 random bits for element (row, col) at step ``t`` of rounding key ``key``."""
    z = _mix(np.uint64(key) + np.uint64(t) * np.uint64(0x9E3779B97F4A7C15))
    return _mix(z + np.uint64(row) * np.uint64(0xD1B54A32D192ED03) + np.uint64(col))


@scalar(cache=True)
def bfloat16_stochastic(value, bits):
    """``value`` (float32) rounded to one of the two bfloat16 values around it, the
    upper (in magnitude) with probability proportional to the distance from the lower:
    16 random ``bits`` added below the kept ones, then cut (FBGEMM's way).  inf and
    NaN round to nearest."""
    word = np.int64(float32_bits(value))
    if word & 0x7F800000 == 0x7F800000:
        return bfloat16_nearest(value)
    return np.uint16((word + np.int64(bits & np.uint64(0xFFFF))) >> 16)


@scalar(cache=True)
def float16_stochastic(value, bits):
    """``value`` (float32) rounded to one of the two float16 values around it, the one
    farther from zero with probability (|value| - lower) / (upper - lower) (lower and
    upper the float16 magnitudes around |value|): unbiased.  Past float16's largest
    finite value rounds to nearest (inf); NaN stays NaN."""
    code = np.int64(float16_nearest(value))
    nearest = widen_code(np.int16(code))
    if nearest == value or not math.isfinite(nearest):
        return np.int16(code)
    sign = code & _SIGN
    magnitude = code & 0x7FFF  # the codes of non-negative float16 values are in order
    size = abs(value)
    if abs(nearest) > size:  # nearest is the upper one
        lower, upper = magnitude - 1, magnitude
    else:
        lower, upper = magnitude, magnitude + 1
    low = widen_code(np.int16(lower))
    high = widen_code(np.int16(upper))  # inf past the largest: chosen with chance 0
    uniform = np.float32(bits >> np.uint64(40)) * np.float32(2.0**-24)
    chosen = upper if uniform * (high - low) < size - low else lower
    return np.int16(chosen | sign)


def _rounded_as(like, value, rounding, t, row, col):
    raise NotImplementedError("a Numba overload: call rounded")


@overload(_rounded_as)
def _rounded_as_overload(like, value, rounding, t, row, col):
    format_ = code_format(like)
    if format_ is None:
        return lambda like, value, rounding, t, row, col: value
    if format_ == "float16":
        nearest, randomly = float16_nearest, float16_stochastic
    else:
        nearest, randomly = bfloat16_nearest, bfloat16_stochastic
    if isinstance(rounding, (types.NoneType, types.Omitted)):
        return lambda like, value, rounding, t, row, col: nearest(np.float32(value))

    def either(like, value, rounding, t, row, col):
        if rounding < 0:
            return nearest(np.float32(value))
        return randomly(np.float32(value), random_bits(rounding, t, row, col))

    return either


@scalar(inline="always")
def rounded(like, value, rounding, t, row, col):
    """``value`` as an element of a table whose elements are of ``like``'s type: as it
    is for a float table; for a half table, ``value`` as float32 rounded to the
    table's format, to nearest or stochastically (``rounding``; ``t`` the step, ``row``
    and ``col`` the element's place: see the module's docstring)."""
    return _rounded_as(like, value, rounding, t, row, col)
