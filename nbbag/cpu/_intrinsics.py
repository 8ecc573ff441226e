"""LLVM intrinsics that Numba does not expose.

Numba's on-disk cache is keyed on the source file of each cached kernel, not on the
files it calls into: after editing this file, delete the caches
(``find nbbag -name '*.nb[ic]' -delete``) or the kernels keep the old code.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from nbbag.base.halves import code_format, widen_bits

LINE_BYTES = 64
LINES_PER_BLOCK = 4  # one 256-byte block: a whole row of 64 float32s
LANE = 16  # elements per lane of a stack_row: one cache line of float32


def _emit_prefetches(context, builder, row_start, offsets):
    """Prefetch (read, keep in all cache levels) ``row_start + offset`` for each of
    ``offsets`` (LLVM values of type intp)."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    prefetch = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    for offset in offsets:
        address = builder.inttoptr(builder.add(row_start, offset), i8p)
        # read access (0), high temporal locality (3), data cache (1)
        builder.call(prefetch, [address, i32(0), i32(3), i32(1)])


def _row_start(context, builder, table_type, table, row, row_type):
    """The address of ``table[row, 0]`` as an intp."""
    array = context.make_array(table_type)(context, builder, table)
    intp = context.get_value_type(types.intp)
    row_index = context.cast(builder, row, row_type, types.intp)
    base = builder.ptrtoint(array.data, intp)
    return array, builder.add(
        base, builder.mul(row_index, builder.extract_value(array.strides, 0))
    )


def _prefetch_signature(table, row, lanes, whole: bool):
    """Typing and code of a prefetch of ``table[row, :]``: every cache line of the row
    (``whole``) or its leading half (rounded up).  With ``lanes`` a tuple (the row is
    ``len(lanes) * LANE`` elements, known at compile time) the lines are requested in
    straight-line code.  With ``lanes`` None the row's length is read from the table:
    four lines at a time in straight-line code (8-10% faster than a loop of one line
    per iteration), the offsets clamped to the last byte requested, so a short row asks
    for its own line twice rather than for a neighbour's."""
    if not (isinstance(table, types.Array) and table.ndim == 2):
        return None
    fixed = isinstance(lanes, types.UniTuple)
    if not (fixed or isinstance(lanes, (types.NoneType, types.Omitted))):
        return None
    sig = types.void(table, row, lanes)
    item_bytes_of = lambda context: context.get_abi_sizeof(  # noqa: E731
        context.get_data_type(table.dtype)
    )

    def codegen_fixed(context, builder, signature, args):
        _, row_start = _row_start(context, builder, table, args[0], args[1], row)
        intp = context.get_value_type(types.intp)
        lines = -(-lanes.count * LANE * item_bytes_of(context) // LINE_BYTES)
        requested = lines if whole else -(-lines // 2)
        offsets = [intp(line * LINE_BYTES) for line in range(requested)]
        _emit_prefetches(context, builder, row_start, offsets)
        return context.get_dummy_value()

    def codegen_runtime(context, builder, signature, args):
        array, row_start = _row_start(context, builder, table, args[0], args[1], row)
        intp = context.get_value_type(types.intp)
        row_bytes = builder.mul(
            builder.extract_value(array.shape, 1), intp(item_bytes_of(context))
        )
        end = row_bytes
        if not whole:  # ceil(ceil(row_bytes / 64) / 2) = ceil(row_bytes / 128) lines
            pair = 2 * LINE_BYTES
            half_lines = builder.sdiv(builder.add(row_bytes, intp(pair - 1)), intp(pair))
            end = builder.mul(half_lines, intp(LINE_BYTES))
        short_row = builder.icmp_signed("<", row_bytes, end)  # a row under one line
        last_byte = builder.sub(builder.select(short_row, row_bytes, end), intp(1))
        block_bytes = intp(LINE_BYTES * LINES_PER_BLOCK)
        with cgutils.for_range_slice(builder, intp(0), end, block_bytes) as (block, _):
            offsets = []
            for line in range(LINES_PER_BLOCK):
                offset = builder.add(block, intp(line * LINE_BYTES))
                is_past = builder.icmp_signed(">", offset, last_byte)
                offsets.append(builder.select(is_past, last_byte, offset))
            _emit_prefetches(context, builder, row_start, offsets)
        return context.get_dummy_value()

    return sig, codegen_fixed if fixed else codegen_runtime


@intrinsic
def prefetch_row(typingctx, table, row, lanes):
    """Hint the CPU to start loading every cache line of ``table[row, :]``.

    For rows that are about to be read and written whole (the optimizers' updates):
    there, requesting only the leading half (:func:`prefetch_row_head`) made an SGD
    step over 117k rows of 64 float32s 20% slower.  ``lanes``: see
    :func:`_prefetch_signature`.  A hint never faults, but ``row`` must still be a valid
    row: the address is computed from it.
    """
    return _prefetch_signature(table, row, lanes, whole=True)


@intrinsic
def prefetch_row_head(typingctx, table, row, lanes):
    """Hint the CPU to start loading the leading half of ``table[row, :]``'s cache
    lines (rounded up).

    The forward is latency-bound: each bag reads rows at random places in a table far
    larger than the cache (~200 ns a miss here).  Issuing the loads of rows a few tokens
    ahead overlaps those misses; it is what FBGEMM's JIT kernels do.  Half the lines is
    enough: the CPU's own L2 prefetchers fetch the rest, and the hints hold fewer of the
    L1's fill buffers.  On this project's Xeon, requesting every line made the sum 6-13%
    slower at D = 64 and 14-18% slower at D = 256 (V = 1M, uniform and Zipf ids); on
    November's EPYC, one line of a four-line row was 2x slower.  ``lanes``: see
    :func:`_prefetch_signature`.  A hint never faults, but ``row`` must still be a valid
    row: the address is computed from it.
    """
    return _prefetch_signature(table, row, lanes, whole=False)


@intrinsic
def prefetch_item(typingctx, array, index):
    """Hint the CPU to start loading the cache line of ``array[index]`` (a 1-D array):
    a row's scalar state, such as row-wise Adagrad's accumulator, read and written
    beside the row.  ``index`` must be valid: the address is computed from it."""
    if not (isinstance(array, types.Array) and array.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(array)(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        index_value = context.cast(builder, args[1], signature.args[1], types.intp)
        address = builder.add(
            builder.ptrtoint(data.data, intp),
            builder.mul(index_value, builder.extract_value(data.strides, 0)),
        )
        _emit_prefetches(context, builder, address, [intp(0)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@intrinsic
def stack_row(typingctx, like, lanes):
    """A scratch row of ``len(lanes) * LANE`` elements of ``like``'s dtype, on the
    calling function's stack (uninitialised).

    The length is a compile-time constant (a tuple's length is part of its type), and
    the memory provably aliases nothing else: LLVM keeps a bag's running sum in
    registers instead of storing and reloading ``out[b]`` after every token.  With
    :func:`add_row_lanes` doing the adds, the kernel is 1.3-2.6x faster than the
    generic one (D = 256 and 16, V = 1M, Zipf ids).  Only valid while the calling
    function runs: never return it or store it.
    """
    if not (isinstance(like, types.Array) and isinstance(lanes, types.UniTuple)):
        return None
    length = lanes.count * LANE
    row_type = types.Array(like.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        item_type = context.get_data_type(like.dtype)
        data = cgutils.alloca_once(builder, item_type, size=length)
        item_bytes = context.get_abi_sizeof(item_type)
        intp = context.get_value_type(types.intp)
        row = context.make_array(row_type)(context, builder)
        context.populate_array(
            row,
            data=data,
            shape=[intp(length)],
            strides=[intp(item_bytes)],
            itemsize=intp(item_bytes),
            meminfo=None,
        )
        return row._getvalue()

    return row_type(like, lanes), codegen


@intrinsic
def add_row_lanes(typingctx, total, table, row, scale, lanes):
    """``total += table[row]``, or ``total += scale * table[row]`` with a ``scale``,
    as ``len(lanes)`` vector operations of ``LANE`` elements each.  A half table's
    row (its int16/uint16 view) is widened to float32 as it is loaded (``total``
    float32): LANE elements a vector, as exact as the scalar :func:`widen_code`.

    ``total`` holds ``len(lanes) * LANE`` elements (a :func:`stack_row`).  Written as
    scalar loops, the adds of a sum kept in registers were left as 16 scalar adds per
    row: LLVM's SLP vectoriser does not pack a loop-carried sum.  These are the same
    operations element by element (a multiply, then an add: no fused multiply-add), so
    the result is bit-identical to the scalar loops.
    """
    if not (
        isinstance(total, types.Array)
        and isinstance(table, types.Array)
        and (total.ndim, table.ndim) == (1, 2)
        and total.layout == table.layout == "C"  # whole vectors of adjacent elements
        and isinstance(lanes, types.UniTuple)
    ):
        return None
    format_ = code_format(table.dtype)
    if total.dtype != (table.dtype if format_ is None else types.float32):
        return None
    scaled = isinstance(scale, types.Float)
    if not (scaled or isinstance(scale, (types.NoneType, types.Omitted))):
        return None

    def codegen(context, builder, signature, args):
        total_value, table_value, row_value, scale_value, _ = args
        _, row_start = _row_start(context, builder, table, table_value, row_value, row)
        item_type = context.get_data_type(table.dtype)
        item_bytes = context.get_abi_sizeof(item_type)
        sum_type = context.get_data_type(total.dtype)
        sum_bytes = context.get_abi_sizeof(sum_type)
        vector_type = ir.VectorType(sum_type, LANE)
        row_pointer_type = ir.VectorType(item_type, LANE).as_pointer()
        total_data = context.make_array(total)(context, builder, total_value).data
        if scaled:
            factor = context.cast(builder, scale_value, scale, total.dtype)
            splat = cgutils.get_null_value(vector_type)
            for i in range(LANE):
                splat = builder.insert_element(splat, factor, ir.IntType(32)(i))
        intp = context.get_value_type(types.intp)
        for lane in range(lanes.count):
            total_pointer = builder.bitcast(
                builder.gep(total_data, [intp(lane * LANE)]), vector_type.as_pointer()
            )
            row_address = builder.add(row_start, intp(lane * LANE * item_bytes))
            row_pointer = builder.inttoptr(row_address, row_pointer_type)
            addend = builder.load(row_pointer, align=item_bytes)
            if format_ is not None:
                addend = widen_bits(builder, addend, format_)
            if scaled:
                addend = builder.fmul(splat, addend)
            sum_ = builder.fadd(builder.load(total_pointer, align=sum_bytes), addend)
            builder.store(sum_, total_pointer, align=sum_bytes)
        return context.get_dummy_value()

    return types.void(total, table, row, scale, lanes), codegen


@intrinsic
def store_row_lanes(typingctx, total, out_row, lanes):
    """``out_row[:] = total`` (a :func:`stack_row` of ``len(lanes) * LANE`` elements)
    as ``len(lanes)`` vector loads and stores of ``LANE`` elements each.  Written as a
    loop, the copy became a call of the C library's memcpy: one a bag in the forward
    and one a row in the backward (77,000 calls in a training step of 26 tables of
    2,048 bags of one id)."""
    if not (
        isinstance(total, types.Array)
        and isinstance(out_row, types.Array)
        and total.ndim == out_row.ndim == 1
        and total.layout == out_row.layout == "C"
        and total.dtype == out_row.dtype
        and isinstance(lanes, types.UniTuple)
    ):
        return None

    def codegen(context, builder, signature, args):
        total_value, out_value, _ = args
        item_type = context.get_data_type(total.dtype)
        item_bytes = context.get_abi_sizeof(item_type)
        vector_pointer = ir.VectorType(item_type, LANE).as_pointer()
        source = context.make_array(total)(context, builder, total_value).data
        target = context.make_array(out_row)(context, builder, out_value).data
        intp = context.get_value_type(types.intp)
        for lane in range(lanes.count):
            offset = [intp(lane * LANE)]
            value = builder.load(
                builder.bitcast(builder.gep(source, offset), vector_pointer),
                align=item_bytes,
            )
            builder.store(
                value,
                builder.bitcast(builder.gep(target, offset), vector_pointer),
                align=item_bytes,
            )
        return context.get_dummy_value()

    return types.void(total, out_row, lanes), codegen


@intrinsic
def add_nibble_lanes(typingctx, total, table, row, scale, lanes):
    """``total += scale * codes`` for a 4-bit quantized row: byte k of ``table[row]``
    holds column k in its low nibble and column k + D / 2 in its high one (D =
    ``len(lanes) * LANE``, ``len(lanes)`` even).  Each vector of LANE bytes gives two
    vectors of LANE columns, one per nibble, widened to float32 (``total`` float32): the
    scalar loop's operations (a multiply, then an add), element by element.  Written as
    a loop over bytes, LLVM left the two interleaved halves scalar: 1.6x slower."""
    if not (
        isinstance(total, types.Array)
        and isinstance(table, types.Array)
        and (total.ndim, table.ndim) == (1, 2)
        and total.layout == table.layout == "C"
        and total.dtype == types.float32
        and table.dtype == types.uint8
        and isinstance(scale, types.Float)
        and isinstance(lanes, types.UniTuple)
        and lanes.count % 2 == 0
    ):
        return None

    def codegen(context, builder, signature, args):
        total_value, table_value, row_value, scale_value, _ = args
        _, row_start = _row_start(context, builder, table, table_value, row_value, row)
        byte_vector = ir.VectorType(ir.IntType(8), LANE)
        vector_type = ir.VectorType(ir.FloatType(), LANE)
        total_data = context.make_array(total)(context, builder, total_value).data
        factor = context.cast(builder, scale_value, scale, types.float32)
        splat = cgutils.get_null_value(vector_type)
        for i in range(LANE):
            splat = builder.insert_element(splat, factor, ir.IntType(32)(i))
        intp = context.get_value_type(types.intp)
        fifteen = ir.Constant(byte_vector, [15] * LANE)
        four = ir.Constant(byte_vector, [4] * LANE)
        half = lanes.count // 2
        for lane in range(half):
            address = builder.add(row_start, intp(lane * LANE))
            pointer = builder.inttoptr(address, byte_vector.as_pointer())
            codes = builder.load(pointer, align=1)
            nibbles = (builder.and_(codes, fifteen), builder.lshr(codes, four))
            for which, nibble in enumerate(nibbles):
                column = (which * half + lane) * LANE
                total_pointer = builder.bitcast(
                    builder.gep(total_data, [intp(column)]), vector_type.as_pointer()
                )
                addend = builder.fmul(splat, builder.uitofp(nibble, vector_type))
                sum_ = builder.fadd(builder.load(total_pointer, align=4), addend)
                builder.store(sum_, total_pointer, align=4)
        return context.get_dummy_value()

    return types.void(total, table, row, scale, lanes), codegen
