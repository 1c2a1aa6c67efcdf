"""The register tile every batched sparse kernel is built from: one weight row times up to 64 input columns.

``row_tile`` computes ``y[out_at : out_at + 16 n] = start + sum_j w_j * x[offsets[j] * ld + x_at : ... + 16 n]``
for the non-zeros ``j`` in ``[first, last)`` of one weight row, with its ``n`` (1..4) sixteen-lane sums held in
vector registers for the whole run (two accumulator sets taken by non-zero parity: twice the loads in flight and
half the FMA chain). A non-zero costs one weight broadcast (the codebook gather ``table[codes[j]]``, done once
per non-zero per tile, or ``table[j]`` for per-non-zero values), ``n`` vector loads and ``n`` fused
multiply-adds, and no output traffic. ``start`` is the row's bias broadcast or, to continue a row over a second
chunk of its columns, what ``y`` already holds.

The addressing is deliberately generic, so one intrinsic serves every layout: a sparse x dense product (``x`` the
transposed input, ``offsets`` the column indices, ``ld`` its row length, ``x_at`` the first column of the tile) and
a direct convolution (``offsets`` the flat input offset of each filter tap, ``ld`` 1, ``x_at`` the image base plus
the first output position). The vector code is generic LLVM IR (``<16 x float>``, ``llvm.fma``): AVX-512 hosts
run it as zmm instructions, other hosts as their own vector width (LLVM splits the vectors).
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16
MAX_VECTORS = 4
"""Sixteen-lane accumulators a tile may hold (64 columns)."""

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_V16F = ir.VectorType(_F32, LANES)


def as_i64(builder: Any, value: Any, signed: bool = True) -> Any:
    """``value`` widened to i64 (sign- or zero-extended)."""
    if value.type == _I64:
        return value
    return builder.sext(value, _I64) if signed else builder.zext(value, _I64)


def splat(builder: Any, value: Any, vector: ir.VectorType = _V16F) -> Any:
    """A vector with every lane ``value``."""
    lanes = vector.count
    vec = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(vec, ir.Constant(vector, ir.Undefined), zeros)


def _c_array(t: Any, ndim: int = 1) -> bool:
    return isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C"


def _row_tile(typingctx: Any, y: Any, out_at: Any, n_vectors: Any, first: Any, last: Any, init: Any, direct: Any,
             offsets: Any, codes: Any, table: Any, x: Any, x_at: Any, ld: Any, bias: Any) -> Any:
    """See the module docstring. ``n_vectors`` (1..4), ``init`` (1: start from ``bias``, 0: from ``y``) and
    ``direct`` (1: the weight of non-zero ``j`` is ``table[j]``, 0: ``table[codes[j]]``) must be literals; ``y``,
    ``x`` and ``table`` are 1-D C-contiguous float32 arrays, ``offsets`` and ``codes`` 1-D integer arrays."""
    literals = (n_vectors, init, direct)
    if not all(isinstance(t, types.IntegerLiteral) for t in literals):
        return None
    width = int(n_vectors.literal_value)
    if not 1 <= width <= MAX_VECTORS:
        return None
    if not (all(_c_array(t) and t.dtype == types.float32 for t in (y, x, table))
            and all(_c_array(t) and isinstance(t.dtype, types.Integer) for t in (offsets, codes))
            and isinstance(bias, types.Float)):
        return None
    from_bias = bool(init.literal_value)
    per_value = bool(direct.literal_value)
    signature = types.void(y, out_at, n_vectors, first, last, init, direct, offsets, codes, table, x, x_at, ld, bias)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        y_v, out_v, _, first_v, last_v, _, _, offsets_v, codes_v, table_v, x_v, x_at_v, ld_v, bias_v = args
        y_t, out_t, _, first_t, last_t, _, _, offsets_t, codes_t, table_t, x_t, x_at_t, ld_t, bias_t = sig.args
        y_p = context.make_array(y_t)(context, builder, y_v).data
        x_p = context.make_array(x_t)(context, builder, x_v).data
        offsets_p = context.make_array(offsets_t)(context, builder, offsets_v).data
        codes_p = context.make_array(codes_t)(context, builder, codes_v).data
        table_p = context.make_array(table_t)(context, builder, table_v).data
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]),
                                             "llvm.fma.v16f32")
        out = as_i64(builder, out_v, out_t.signed)
        x_at = as_i64(builder, x_at_v, x_at_t.signed)
        ld = as_i64(builder, ld_v, ld_t.signed)

        def vector_at(data: Any, offset: Any) -> Any:
            return builder.bitcast(builder.gep(data, [offset]), _V16F.as_pointer())

        def lane(k: int) -> Any:
            return ir.Constant(_I64, LANES * k)

        if from_bias:
            value = bias_v if bias_t == types.float32 else builder.fptrunc(bias_v, _F32)
            starts = [splat(builder, value)] * width
        else:
            starts = [builder.load(vector_at(y_p, builder.add(out, lane(k))), align=4) for k in range(width)]
        zero = ir.Constant(_V16F, None)
        sets = [[cgutils.alloca_once_value(builder, starts[k] if s == 0 else zero) for k in range(width)]
                for s in range(2)]
        first_j = as_i64(builder, first_v, first_t.signed)
        last_j = as_i64(builder, last_v, last_t.signed)

        def accumulate(j: Any, accs: list[Any]) -> None:
            if per_value:
                weight = splat(builder, builder.load(builder.gep(table_p, [j])))
            else:
                code = as_i64(builder, builder.load(builder.gep(codes_p, [j])), codes_t.dtype.signed)
                weight = splat(builder, builder.load(builder.gep(table_p, [code])))
            offset = as_i64(builder, builder.load(builder.gep(offsets_p, [j])), offsets_t.dtype.signed)
            base = builder.add(builder.mul(offset, ld), x_at)
            for k, acc in enumerate(accs):
                inputs = builder.load(vector_at(x_p, builder.add(base, lane(k))), align=4)
                builder.store(builder.call(fma, [weight, inputs, builder.load(acc)]), acc)

        count = builder.sub(last_j, first_j)
        positive = builder.icmp_signed(">", count, ir.Constant(_I64, 0))
        count = builder.select(positive, count, ir.Constant(_I64, 0))
        with cgutils.for_range(builder, builder.udiv(count, ir.Constant(_I64, 2))) as pair:
            j = builder.add(first_j, builder.mul(pair.index, ir.Constant(_I64, 2)))
            accumulate(j, sets[0])
            accumulate(builder.add(j, ir.Constant(_I64, 1)), sets[1])
        odd = builder.icmp_unsigned("!=", builder.urem(count, ir.Constant(_I64, 2)), ir.Constant(_I64, 0))
        with builder.if_then(odd):
            accumulate(builder.sub(last_j, ir.Constant(_I64, 1)), sets[0])
        for k in range(width):
            total = builder.fadd(builder.load(sets[0][k]), builder.load(sets[1][k]))
            builder.store(total, vector_at(y_p, builder.add(out, lane(k))), align=4)
        return context.get_dummy_value()

    return signature, codegen


row_tile: Any = intrinsic(prefer_literal=True)(_row_tile)  # Any: mypy cannot see the intrinsic's call signature


def _transpose_masks(distance: int) -> tuple[list[int], list[int]]:
    """shufflevector masks of one butterfly stage: rows ``i`` and ``i + distance`` swap their off-diagonal
    ``distance``-lane blocks (indices into the concatenation ``a ++ b``)."""
    low = [lane if lane & distance == 0 else LANES + lane - distance for lane in range(LANES)]
    high = [lane + distance if lane & distance == 0 else LANES + lane for lane in range(LANES)]
    return low, high


def _transpose16(typingctx: Any, src: Any, src_at: Any, src_ld: Any, dst: Any, dst_at: Any, dst_ld: Any) -> Any:
    """``dst[dst_at + j * dst_ld + i] = src[src_at + i * src_ld + j]`` for ``i, j < 16``: sixteen vector loads,
    four butterfly stages of shuffles in registers, sixteen vector stores (1-D C-contiguous float32 arrays)."""
    if not (_c_array(src) and _c_array(dst) and src.dtype == dst.dtype == types.float32):
        return None
    signature = types.void(src, src_at, src_ld, dst, dst_at, dst_ld)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        src_v, src_at_v, src_ld_v, dst_v, dst_at_v, dst_ld_v = args
        src_t, src_at_t, src_ld_t, dst_t, dst_at_t, dst_ld_t = sig.args
        src_p = context.make_array(src_t)(context, builder, src_v).data
        dst_p = context.make_array(dst_t)(context, builder, dst_v).data
        s_at, s_ld = as_i64(builder, src_at_v, src_at_t.signed), as_i64(builder, src_ld_v, src_ld_t.signed)
        d_at, d_ld = as_i64(builder, dst_at_v, dst_at_t.signed), as_i64(builder, dst_ld_v, dst_ld_t.signed)

        def at(data: Any, base: Any, ld: Any, row: int) -> Any:
            offset = builder.add(base, builder.mul(ld, ir.Constant(_I64, row)))
            return builder.bitcast(builder.gep(data, [offset]), _V16F.as_pointer())

        rows = [builder.load(at(src_p, s_at, s_ld, i), align=4) for i in range(LANES)]
        distance = LANES // 2
        while distance:
            low, high = _transpose_masks(distance)
            low_c = ir.Constant(ir.VectorType(ir.IntType(32), LANES), low)
            high_c = ir.Constant(ir.VectorType(ir.IntType(32), LANES), high)
            for i in range(LANES):
                if i & distance == 0:
                    a, b = rows[i], rows[i + distance]
                    rows[i], rows[i + distance] = builder.shuffle_vector(a, b, low_c), builder.shuffle_vector(a, b, high_c)
            distance //= 2
        for j in range(LANES):
            builder.store(rows[j], at(dst_p, d_at, d_ld, j), align=4)
        return context.get_dummy_value()

    return signature, codegen


transpose16: Any = intrinsic(_transpose16)


CHANNEL_TILE = 4
"""Output channels of a :func:`channel_tile`."""


def _channel_tile(typingctx: Any, y: Any, y_at: Any, y_ld: Any, n_vectors: Any, first: Any, last: Any, offsets: Any,
                  weights: Any, x: Any, x_at: Any, bias: Any, bias_at: Any) -> Any:
    """Four output channels at once: ``y[y_at + c * y_ld : ... + 16 n] = bias[bias_at + c] + sum_j weights[4 j + c]
    * x[offsets[j] + x_at : ... + 16 n]`` for ``c < 4`` over the taps ``j`` in ``[first, last)``.

    The register blocking over output channels of the direct convolution: one tap's ``n`` input vectors serve
    the four channels (``4 n`` FMAs per ``n`` loads and four weight broadcasts), so a block whose four filters
    share most taps runs at the FMA units' rate instead of the load units'; a channel without the tap has weight 0.
    """
    if not (isinstance(n_vectors, types.IntegerLiteral) and 1 <= n_vectors.literal_value <= MAX_VECTORS):
        return None
    if not (all(_c_array(t) and t.dtype == types.float32 for t in (y, x, weights, bias))
            and _c_array(offsets) and isinstance(offsets.dtype, types.Integer)):
        return None
    width = int(n_vectors.literal_value)
    signature = types.void(y, y_at, y_ld, n_vectors, first, last, offsets, weights, x, x_at, bias, bias_at)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        y_v, y_at_v, y_ld_v, _, first_v, last_v, offsets_v, weights_v, x_v, x_at_v, bias_v, bias_at_v = args
        y_t, y_at_t, y_ld_t, _, first_t, last_t, offsets_t, weights_t, x_t, x_at_t, bias_t, bias_at_t = sig.args
        y_p = context.make_array(y_t)(context, builder, y_v).data
        x_p = context.make_array(x_t)(context, builder, x_v).data
        offsets_p = context.make_array(offsets_t)(context, builder, offsets_v).data
        weights_p = context.make_array(weights_t)(context, builder, weights_v).data
        bias_p = context.make_array(bias_t)(context, builder, bias_v).data
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]),
                                             "llvm.fma.v16f32")
        y_at, y_ld = as_i64(builder, y_at_v, y_at_t.signed), as_i64(builder, y_ld_v, y_ld_t.signed)
        x_at = as_i64(builder, x_at_v, x_at_t.signed)
        bias_at = as_i64(builder, bias_at_v, bias_at_t.signed)
        four = ir.Constant(_I64, CHANNEL_TILE)

        def vector_at(data: Any, offset: Any) -> Any:
            return builder.bitcast(builder.gep(data, [offset]), _V16F.as_pointer())

        accs = [[cgutils.alloca_once_value(builder, splat(builder, builder.load(builder.gep(
            bias_p, [builder.add(bias_at, ir.Constant(_I64, c))])))) for _ in range(width)]
            for c in range(CHANNEL_TILE)]
        first_j = as_i64(builder, first_v, first_t.signed)
        last_j = as_i64(builder, last_v, last_t.signed)
        count = builder.sub(last_j, first_j)
        count = builder.select(builder.icmp_signed(">", count, ir.Constant(_I64, 0)), count, ir.Constant(_I64, 0))
        with cgutils.for_range(builder, count) as loop:
            j = builder.add(first_j, loop.index)
            base = builder.add(as_i64(builder, builder.load(builder.gep(offsets_p, [j])), offsets_t.dtype.signed),
                               x_at)
            inputs = [builder.load(vector_at(x_p, builder.add(base, ir.Constant(_I64, LANES * k))), align=4)
                      for k in range(width)]
            for c in range(CHANNEL_TILE):
                w = splat(builder, builder.load(builder.gep(weights_p, [
                    builder.add(builder.mul(j, four), ir.Constant(_I64, c))])))
                for k in range(width):
                    builder.store(builder.call(fma, [w, inputs[k], builder.load(accs[c][k])]), accs[c][k])
        for c in range(CHANNEL_TILE):
            row = builder.add(y_at, builder.mul(y_ld, ir.Constant(_I64, c)))
            for k in range(width):
                builder.store(builder.load(accs[c][k]), vector_at(y_p, builder.add(row, ir.Constant(_I64, LANES * k))),
                              align=4)
        return context.get_dummy_value()

    return signature, codegen


channel_tile: Any = intrinsic(prefer_literal=True)(_channel_tile)


__all__ = ["CHANNEL_TILE", "LANES", "MAX_VECTORS", "as_i64", "channel_tile", "row_tile", "splat", "transpose16"]
