"""LLVM intrinsics that Numba does not expose."""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


@intrinsic
def prefetch_row(typingctx, table, row):
    """Hint the CPU to start loading ``table[row, :]`` into cache.

    The forward is latency-bound: each bag reads rows at random places in a table far
    larger than the cache (~200 ns a miss here).  Issuing the loads of rows a few tokens
    ahead overlaps those misses; it is what FBGEMM's JIT kernels do.  Every cache line of
    the row is requested, so wide rows arrive whole.  A hint never faults, but ``row``
    must still be a valid row: the address is computed from it.
    """
    if not (isinstance(table, types.Array) and table.ndim == 2):
        return None
    sig = types.void(table, row)

    def codegen(context, builder, signature, args):
        table_type = signature.args[0]
        array = context.make_array(table_type)(context, builder, args[0])
        row_value = context.cast(builder, args[1], signature.args[1], types.intp)
        row_stride = builder.extract_value(array.strides, 0)
        row_bytes = builder.mul(
            builder.extract_value(array.shape, 1),
            context.get_constant(
                types.intp, context.get_abi_sizeof(context.get_data_type(table_type.dtype))
            ),
        )
        base = builder.ptrtoint(array.data, cgutils.intp_t)
        start = builder.add(base, builder.mul(row_value, row_stride))
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        line = context.get_constant(types.intp, 64)
        with cgutils.for_range_slice(
            builder, context.get_constant(types.intp, 0), row_bytes, line, inc=True
        ) as (offset, _):
            address = builder.inttoptr(builder.add(start, offset), i8p)
            # read access (0), high temporal locality (3), data cache (1)
            builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
