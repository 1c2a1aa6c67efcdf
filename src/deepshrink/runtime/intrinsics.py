"""LLVM intrinsics numba does not expose: a software prefetch for the sparse kernels.

The column kernel (:func:`deepshrink.runtime.columns._spmv_columns_serial`) knows which weight runs it reads
next (the columns of the next non-zero inputs) long before it reads them, while the hardware prefetchers see
only an irregular, ascending sweep; when the weight comes from DRAM (as in a real network, where the other
layers' weights have evicted it) a prefetch a few columns ahead hides most of the memory latency.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx: Any, array: Any, index: Any) -> Any:
    """``prefetch(array, i)``: hint the CPU to load the cache line holding ``array[i]`` (read, keep in all
    cache levels). A hint only: no fault, no effect on results, out-of-range indices are harmless."""
    if not isinstance(array, types.Array) or array.ndim != 1 or not isinstance(index, types.Integer):
        return None
    signature = types.void(array, index)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array_type = sig.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]], wraparound=False,
                                           boundscheck=False)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn_type = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [byte_pointer], fn_type)
        # read (0), high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0), ir.Constant(i32, 3),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return signature, codegen
