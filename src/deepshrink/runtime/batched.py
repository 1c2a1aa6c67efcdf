"""Register-blocked sparse x dense product for batch > 1 and im2col convolutions.

``yt = W @ xt + bias`` with ``W`` in CSR (codebook) form and ``xt`` (inputs, columns) dense. A task owns one
output row and a block of 64 columns; its 64 sums live in four 16-wide vector registers for the whole row, so a
non-zero costs one broadcast of its centroid and four loads + four fused multiply-adds of the matching input row,
with no load or store of the output per non-zero (the plain numba kernel in :mod:`.kernels` re-reads and re-writes
its output tile for every non-zero and ran at ~1/8 of this speed). Narrower remainders use one register per 16
columns.

The vector code is generic LLVM IR (``<16 x float>`` and ``llvm.fma``) emitted through a numba ``@intrinsic``: on
AVX-512 it becomes zmm instructions, elsewhere LLVM splits it into the host's vector width. Columns are padded
to a multiple of 16 by the caller.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels import parallel_build, pick

LANES = 16
BLOCK = 4
"""Vector registers (of 16 columns) a task accumulates: 64 columns."""

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_V16F = ir.VectorType(_F32, LANES)


def _as_i64(builder: Any, value: Any, signed: bool) -> Any:
    if value.type == _I64:
        return value
    return builder.sext(value, _I64) if signed else builder.zext(value, _I64)


@intrinsic(prefer_literal=True)
def _row_block(typingctx: Any, yt: Any, row: Any, col0: Any, n_vectors: Any, indptr: Any, indices: Any, codes: Any,
               table: Any, xt: Any, bias: Any) -> Any:
    """``yt[row, col0 : col0 + 16 * n_vectors] = bias[row] + sum_j table[codes[j]] * xt[indices[j], ...]``.

    ``n_vectors`` must be a compile-time literal (1..4): that many accumulators stay in registers."""
    def c_array(t: Any, ndim: int) -> bool:
        return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C"

    if not (isinstance(n_vectors, types.IntegerLiteral) and 1 <= n_vectors.literal_value <= BLOCK):
        return None
    if not (c_array(yt, 2) and c_array(xt, 2) and yt.dtype == xt.dtype == types.float32 and c_array(table, 1)
            and table.dtype == types.float32 and c_array(bias, 1) and bias.dtype == types.float32
            and all(c_array(t, 1) and isinstance(t.dtype, types.Integer) for t in (indptr, indices, codes))):
        return None
    width = int(n_vectors.literal_value)
    signature = types.void(yt, row, col0, n_vectors, indptr, indices, codes, table, xt, bias)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        yt_v, row_v, col_v, _, indptr_v, indices_v, codes_v, table_v, xt_v, bias_v = args
        yt_t, _, _, _, indptr_t, indices_t, codes_t, table_t, xt_t, bias_t = sig.args
        yt_a = context.make_array(yt_t)(context, builder, yt_v)
        xt_a = context.make_array(xt_t)(context, builder, xt_v)
        indptr_p = context.make_array(indptr_t)(context, builder, indptr_v).data
        indices_p = context.make_array(indices_t)(context, builder, indices_v).data
        codes_p = context.make_array(codes_t)(context, builder, codes_v).data
        table_p = context.make_array(table_t)(context, builder, table_v).data
        bias_p = context.make_array(bias_t)(context, builder, bias_v).data
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]),
                                             "llvm.fma.v16f32")
        yt_ld = cgutils.unpack_tuple(builder, yt_a.shape, 2)[1]
        xt_ld = cgutils.unpack_tuple(builder, xt_a.shape, 2)[1]
        r = _as_i64(builder, row_v, True)
        c0 = _as_i64(builder, col_v, True)

        def splat(value: Any) -> Any:
            vec = builder.insert_element(ir.Constant(_V16F, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
            zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
            return builder.shuffle_vector(vec, ir.Constant(_V16F, ir.Undefined), zeros)

        def vector_at(data: Any, offset: Any) -> Any:
            return builder.bitcast(builder.gep(data, [offset]), _V16F.as_pointer())

        start_bias = splat(builder.load(builder.gep(bias_p, [r])))
        zero = ir.Constant(_V16F, None)
        # two accumulator sets taken by non-zero parity: twice the loads in flight and half the FMA chain length
        sets = [[cgutils.alloca_once_value(builder, start_bias if s == 0 else zero) for _ in range(width)]
                for s in range(2)]
        first = _as_i64(builder, builder.load(builder.gep(indptr_p, [r])), indptr_t.dtype.signed)
        last = _as_i64(builder, builder.load(builder.gep(indptr_p, [builder.add(r, ir.Constant(_I64, 1))])),
                       indptr_t.dtype.signed)

        def accumulate(j: Any, accs: list[Any]) -> None:
            col = _as_i64(builder, builder.load(builder.gep(indices_p, [j])), indices_t.dtype.signed)
            code = _as_i64(builder, builder.load(builder.gep(codes_p, [j])), codes_t.dtype.signed)
            weight = splat(builder.load(builder.gep(table_p, [code])))
            base = builder.add(builder.mul(col, xt_ld), c0)
            for k, acc in enumerate(accs):
                inputs = builder.load(vector_at(xt_a.data, builder.add(base, ir.Constant(_I64, LANES * k))), align=4)
                builder.store(builder.call(fma, [weight, inputs, builder.load(acc)]), acc)

        count = builder.sub(last, first)
        with cgutils.for_range(builder, builder.udiv(count, ir.Constant(_I64, 2))) as pair:
            j = builder.add(first, builder.mul(pair.index, ir.Constant(_I64, 2)))
            accumulate(j, sets[0])
            accumulate(builder.add(j, ir.Constant(_I64, 1)), sets[1])
        odd = builder.icmp_unsigned("!=", builder.urem(count, ir.Constant(_I64, 2)), ir.Constant(_I64, 0))
        with builder.if_then(odd):
            accumulate(builder.sub(last, ir.Constant(_I64, 1)), sets[0])
        accs = [cgutils.alloca_once_value(builder, builder.fadd(builder.load(a), builder.load(b)))
                for a, b in zip(sets[0], sets[1], strict=True)]
        out = builder.add(builder.mul(r, yt_ld), c0)
        for k, acc in enumerate(accs):
            builder.store(builder.load(acc), vector_at(yt_a.data, builder.add(out, ir.Constant(_I64, LANES * k))),
                          align=4)
        return context.get_dummy_value()

    return signature, codegen


def _spmm_blocked(indptr, indices, codes, table, xt, bias, yt):
    """All (64-column block, row) tasks, block-major so one block of ``xt`` serves every row in turn; the last
    block may be 16, 32 or 48 columns wide."""
    n_rows = indptr.shape[0] - 1
    n_cols = xt.shape[1]
    n_blocks = (n_cols + LANES * BLOCK - 1) // (LANES * BLOCK)
    for task in prange(n_blocks * n_rows):
        r = task % n_rows
        c0 = (task // n_rows) * LANES * BLOCK
        left = (n_cols - c0) // LANES
        if left >= 4:
            _row_block(yt, r, c0, 4, indptr, indices, codes, table, xt, bias)  # type: ignore[call-arg]
        elif left == 3:
            _row_block(yt, r, c0, 3, indptr, indices, codes, table, xt, bias)  # type: ignore[call-arg]
        elif left == 2:
            _row_block(yt, r, c0, 2, indptr, indices, codes, table, xt, bias)  # type: ignore[call-arg]
        else:
            _row_block(yt, r, c0, 1, indptr, indices, codes, table, xt, bias)  # type: ignore[call-arg]


_OPTS: dict[str, Any] = {"cache": True, "nogil": True, "boundscheck": False}
spmm_blocked_serial = numba.njit(**_OPTS)(_spmm_blocked)
spmm_blocked_parallel = parallel_build(_spmm_blocked, _OPTS)


def padded_width(columns: int) -> int:
    return -(-columns // LANES) * LANES


def blocked_forward(indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, xt: np.ndarray,
                    bias: np.ndarray) -> np.ndarray:
    """``W @ xt + bias[:, None]`` for a codebook CSR ``W``; ``xt`` (in, columns) float32, C-contiguous, its width
    a multiple of 16 (:func:`padded_width`; pad with zeros). Returns (out, width) float32."""
    yt = np.empty((indptr.shape[0] - 1, xt.shape[1]), dtype=np.float32)
    work = indices.shape[0] * xt.shape[1]
    kernel = pick(spmm_blocked_parallel, spmm_blocked_serial, work)
    kernel(indptr, indices, codes, table, xt, bias, yt)
    return yt


def columns_product(indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, xt: np.ndarray,
                    bias: np.ndarray) -> np.ndarray:
    """:func:`blocked_forward` for any width: zero-pads ``xt`` to whole 16-column vectors when needed and returns
    the C-contiguous (out, columns) result."""
    columns = xt.shape[1]
    width = padded_width(columns)
    if width == columns:
        return blocked_forward(indptr, indices, codes, table, xt, bias)
    padded = np.zeros((xt.shape[0], width), dtype=np.float32)
    padded[:, :columns] = xt
    return np.ascontiguousarray(blocked_forward(indptr, indices, codes, table, padded, bias)[:, :columns])


__all__ = ["BLOCK", "LANES", "blocked_forward", "columns_product", "padded_width"]
