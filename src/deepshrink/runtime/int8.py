"""int8 x int8 -> int32 products on the CPU's dot-product instructions (AVX-512 VNNI ``vpdpbusd``), exact.

``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds each group of four products to one of 16
int32 lanes. Inputs are signed, so they enter as ``x + 128`` (unsigned) and every output subtracts
``128 * sum_k w[n, k]`` afterwards; all sums are taken modulo 2**32, so the result is exact whenever the true sum
fits int32 (the integer engine only picks int32 accumulation when it provably does).

Layouts (built once per layer, :class:`Int8Weight`): the weight ``(N, K)`` is padded to ``K4`` (a multiple of 4)
and ``N64`` (a multiple of 64) and packed so that the 16 channels x 4 inputs one instruction needs are one
64-byte vector: ``packed[block, quad, lane]`` = the int32 holding ``w[16 block + lane, 4 quad : 4 quad + 4]``.
The input rows are ``(M, K4)`` bytes read four at a time (one broadcast each).

A tile (:func:`_vnni_tile`) holds 4 rows x 64 channels (16 accumulators) in registers over the whole ``K``; a
single row (batch-1 Linear) holds 64 channels in two accumulator sets taken by quad parity, so 8 independent
chains hide the instruction latency. Hosts without AVX-512 VNNI (or where the self-check fails, or with
``DEEPSHRINK_RUNTIME_SIMD=0``) run the portable kernel: the same sums as plain numba loops over signed bytes,
which LLVM vectorises for the host; both give identical integers.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels import parallel_build
from .tiles import as_i64, splat

LANES = 16
CHANNELS = 64
"""Output channels per tile (four 16-lane vectors)."""
ROWS = 4
"""Input rows per tile when there are at least four."""

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16I = ir.VectorType(_I32, LANES)
_OPTS: dict[str, Any] = {"cache": True, "nogil": True, "boundscheck": False}


def _c_int32(t: Any) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == types.int32


def _vnni_tile_typer(typingctx: Any, c: Any, c_at: Any, c_ld: Any, n_rows: Any, a: Any, a_at: Any, a_ld: Any,
                     b: Any, b_at: Any, quads: Any) -> Any:
    """``c[c_at + r * c_ld + 16 v + lane] = sum_q dot4(a[a_at + r * a_ld + q], b[b_at + (v * quads + q) * 16 + lane])``
    for ``r < n_rows`` (literal 1 or 4), ``v < 4``: bytes of ``a`` unsigned, of ``b`` signed; int32 arrays."""
    if not (isinstance(n_rows, types.IntegerLiteral) and n_rows.literal_value in (1, ROWS)):
        return None
    if not all(_c_int32(t) for t in (c, a, b)):
        return None
    rows = int(n_rows.literal_value)
    sets = 2 if rows == 1 else 1
    vectors = CHANNELS // LANES
    signature = types.void(c, c_at, c_ld, n_rows, a, a_at, a_ld, b, b_at, quads)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        c_v, c_at_v, c_ld_v, _, a_v, a_at_v, a_ld_v, b_v, b_at_v, quads_v = args
        c_t, c_at_t, c_ld_t, _, a_t, a_at_t, a_ld_t, b_t, b_at_t, quads_t = sig.args
        c_p = context.make_array(c_t)(context, builder, c_v).data
        a_p = context.make_array(a_t)(context, builder, a_v).data
        b_p = context.make_array(b_t)(context, builder, b_v).data
        c_at, c_ld = as_i64(builder, c_at_v, c_at_t.signed), as_i64(builder, c_ld_v, c_ld_t.signed)
        a_at, a_ld = as_i64(builder, a_at_v, a_at_t.signed), as_i64(builder, a_ld_v, a_ld_t.signed)
        b_at, n_quads = as_i64(builder, b_at_v, b_at_t.signed), as_i64(builder, quads_v, quads_t.signed)
        dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16I, [_V16I, _V16I, _V16I]),
                                             "llvm.x86.avx512.vpdpbusd.512")

        def vector_at(data: Any, offset: Any) -> Any:
            return builder.bitcast(builder.gep(data, [offset]), _V16I.as_pointer())

        zero = ir.Constant(_V16I, None)
        accs = [[[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(rows)]
                for _ in range(sets)]

        def step(q: Any, acc: list[list[Any]]) -> None:
            weights = [builder.load(vector_at(b_p, builder.add(b_at, builder.mul(
                builder.add(builder.mul(ir.Constant(_I64, v), n_quads), q), ir.Constant(_I64, LANES)))), align=4)
                for v in range(vectors)]
            for r in range(rows):
                offset = builder.add(builder.add(a_at, builder.mul(a_ld, ir.Constant(_I64, r))), q)
                inputs = splat(builder, builder.load(builder.gep(a_p, [offset])), _V16I)
                for v in range(vectors):
                    builder.store(builder.call(dot, [builder.load(acc[r][v]), inputs, weights[v]]), acc[r][v])

        if sets == 2:
            with cgutils.for_range(builder, builder.udiv(n_quads, ir.Constant(_I64, 2))) as loop:
                q = builder.mul(loop.index, ir.Constant(_I64, 2))
                step(q, accs[0])
                step(builder.add(q, ir.Constant(_I64, 1)), accs[1])
            odd = builder.icmp_unsigned("!=", builder.urem(n_quads, ir.Constant(_I64, 2)), ir.Constant(_I64, 0))
            with builder.if_then(odd):
                step(builder.sub(n_quads, ir.Constant(_I64, 1)), accs[0])
        else:
            with cgutils.for_range(builder, n_quads) as loop:
                step(loop.index, accs[0])
        for r in range(rows):
            for v in range(vectors):
                total = builder.load(accs[0][r][v])
                if sets == 2:
                    total = builder.add(total, builder.load(accs[1][r][v]))
                offset = builder.add(builder.add(c_at, builder.mul(c_ld, ir.Constant(_I64, r))),
                                     ir.Constant(_I64, LANES * v))
                builder.store(total, vector_at(c_p, offset), align=4)
        return context.get_dummy_value()

    return signature, codegen


_vnni_tile: Any = intrinsic(prefer_literal=True)(_vnni_tile_typer)


def _gemm_vnni(a, rows, quads, b, blocks, c):
    """``c (rows, 64 blocks) = a (rows, quads) . b`` (int32 views of the byte layouts); channel blocks outermost,
    so one block's packed weight stays in L1 while every row passes."""
    ld = blocks * CHANNELS
    full = rows - rows % ROWS if rows >= ROWS else 0
    for nb in prange(blocks):
        b_at = nb * (CHANNELS // LANES) * quads * LANES
        for m in range(0, full, ROWS):
            _vnni_tile(c, m * ld + nb * CHANNELS, ld, ROWS, a, m * quads, quads, b, b_at, quads)
        for m in range(full, rows):
            _vnni_tile(c, m * ld + nb * CHANNELS, ld, 1, a, m * quads, quads, b, b_at, quads)


gemm_vnni_serial = numba.njit(**_OPTS)(_gemm_vnni)
gemm_vnni_parallel = parallel_build(_gemm_vnni, _OPTS)


def _gemm_portable(a, w, c):
    """``c[m, n] = sum_k a[m, k] * w[n, k]`` over signed bytes in int32 (LLVM vectorises the inner loop)."""
    rows, width = a.shape
    for n in prange(w.shape[0]):
        wn = w[n]
        for m in range(rows):
            am = a[m]
            total = np.int32(0)
            for k in range(width):
                total += np.int32(am[k]) * np.int32(wn[k])
            c[m, n] = total


gemm_portable_serial = numba.njit(**_OPTS)(_gemm_portable)
gemm_portable_parallel = parallel_build(_gemm_portable, _OPTS)


@dataclass(frozen=True)
class Int8Weight:
    """An (N, K) int8 weight as the kernels read it: ``packed`` (VNNI, with ``colsum``) or ``plain`` (portable)."""

    n_out: int
    n_in: int
    quads: int
    blocks: int
    packed: np.ndarray | None
    colsum: np.ndarray
    plain: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.packed, self.colsum, self.plain) if a is not None)


def pack(weight: np.ndarray, vnni: bool | None = None) -> Int8Weight:
    """The kernel layout of an (N, K) integer weight with values in [-128, 127]."""
    n_out, n_in = weight.shape
    quads = -(-n_in // 4)
    blocks = -(-n_out // CHANNELS)
    padded = np.zeros((blocks * CHANNELS, quads * 4), dtype=np.int8)
    padded[:n_out, :n_in] = weight
    colsum = padded.astype(np.int64).sum(1).astype(np.int32)
    if vnni if vnni is not None else vnni_available():
        # (blocks, 4 vectors, 16 lanes, quads, 4) -> (blocks, 4 vectors, quads, 16 lanes, 4): one vector per quad
        tiles = padded.reshape(blocks, CHANNELS // LANES, LANES, quads, 4).transpose(0, 1, 3, 2, 4)
        packed = np.ascontiguousarray(tiles).reshape(-1).view(np.int32)
        return Int8Weight(n_out, n_in, quads, blocks, packed, colsum, None)
    return Int8Weight(n_out, n_in, quads, blocks, None, colsum, padded)


def int8_matmul(weight: Int8Weight, rows: np.ndarray, parallel: bool = False) -> np.ndarray:
    """``(M, 64 blocks)`` int32: ``rows (M, 4 quads)`` times the weight's transpose. ``rows`` holds ``x + 128`` as
    uint8 on the VNNI path (the caller subtracts ``128 * colsum``), else ``x`` as int8."""
    m = rows.shape[0]
    out = np.empty((m, weight.blocks * CHANNELS), dtype=np.int32)
    if weight.packed is not None:
        kernel = gemm_vnni_parallel if parallel else gemm_vnni_serial
        kernel(rows.reshape(-1).view(np.int32), m, weight.quads, weight.packed, weight.blocks, out.reshape(-1))
    else:
        assert weight.plain is not None
        kernel = gemm_portable_parallel if parallel else gemm_portable_serial
        kernel(rows.view(np.int8), weight.plain, out)
    return out


@functools.cache
def vnni_available() -> bool:
    """Whether this host runs the VNNI kernel: the CPU reports AVX-512 VNNI and a small product (with odd sizes)
    equals numpy's. ``DEEPSHRINK_RUNTIME_SIMD=0`` turns it off."""
    if sys.byteorder != "little" or os.environ.get("DEEPSHRINK_RUNTIME_SIMD", "1") == "0":
        return False
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
        if not (features.get("avx512f", False) and features.get("avx512vnni", False)):
            return False
        rng = np.random.default_rng(0)
        w = rng.integers(-128, 128, (70, 37)).astype(np.int8)
        x = rng.integers(-128, 128, (6, 37)).astype(np.int8)
        weight = pack(w, vnni=True)
        rows = np.full((6, weight.quads * 4), 128, dtype=np.uint8)
        rows[:, :37] = (x.astype(np.int16) + 128).astype(np.uint8)
        got = int8_matmul(weight, rows)[:, :70].astype(np.int64) - 128 * weight.colsum[:70].astype(np.int64)
        return bool(np.array_equal(got, x.astype(np.int64) @ w.astype(np.int64).T))
    except Exception:  # any failure to build or run the kernel means "not available"
        return False


__all__ = ["CHANNELS", "Int8Weight", "int8_matmul", "pack", "vnni_available"]
