"""AVX-512 batch-1 kernel: sliced windows, where the inputs and the codebook sit in registers.

Scalar sparse kernels spend ~0.5 ns per non-zero on two dependent lookups (input, centroid). Here the weight is
cut into slices of 16 rows (one output per SIMD lane) and windows of 32 columns. For one (slice, window) block
the non-zeros are stored as *layers* of 16 lanes: layer ``l`` holds, for every row of the slice, its ``l``-th
non-zero inside the window as one uint16 ``col_in_window | code << 5 | 1 << 10`` (bit 10 = a real entry; 0 =
padding). A layer costs one 32-byte load, two in-register permutes (``vpermi2ps``: the input from the window's 32
values held in two registers, the weight from the 32 centroids held in two registers) and one fused multiply-add
for 16 lanes: no memory lookups per non-zero. The layers of a block are as many as its fullest row needs, so rows
with fewer non-zeros leave padded lanes; the rows are therefore placed in slices by decreasing non-zero count
(``rows[slot]`` = the row in that lane), which halved the padding of trained LeNet layers (4.1x -> 2.0x entries
per non-zero on LeNet-5 fc1; random AlexNet-shaped layers: about 2x at 9% density, 1.6x at 25%).

Codebooks of at most 32 centroids (the paper's 5 bits for fc layers); the kernel is built from LLVM intrinsics
through numba and only on hosts with AVX-512 (:func:`available` compiles and checks it once, else everything
here is unused and the scalar kernels run).
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
from .layout import SparseRows

LANES = 16
WINDOW = 32
MAX_CENTROIDS = 32
UNROLL = 4
_REAL = 1 << 10

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16F = ir.VectorType(_F32, LANES)
_V16I = ir.VectorType(_I32, LANES)
_V16S = ir.VectorType(ir.IntType(16), LANES)


def _splat(value: int) -> ir.Constant:
    return ir.Constant(_V16I, [value] * LANES)


def _i64(builder: Any, value: Any) -> Any:
    return value if value.type == _I64 else builder.sext(value, _I64)


@intrinsic
def _slice_dot(typingctx: Any, y: Any, slice_index: Any, counts: Any, n_windows: Any, entries: Any, first_layer: Any,
               x: Any, table: Any) -> Any:
    """``y[16 s : 16 s + 16] = sum over windows w, layers l of x[window] * table`` for slice ``s`` (no bias).

    Typed only for C-contiguous arrays of the layout's dtypes: the code reads them through raw vector loads."""
    def c_array(t: Any, dtype: Any) -> bool:
        return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == dtype

    if not (all(c_array(t, types.float32) for t in (y, x, table)) and c_array(counts, types.uint8)
            and c_array(entries, types.uint16)):
        return None
    signature = types.void(y, slice_index, counts, n_windows, entries, first_layer, x, table)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        y_v, s_v, counts_v, nw_v, entries_v, first_v, x_v, table_v = args
        y_t, _, counts_t, _, entries_t, _, x_t, table_t = sig.args
        y_p = context.make_array(y_t)(context, builder, y_v).data
        counts_p = context.make_array(counts_t)(context, builder, counts_v).data
        entries_p = context.make_array(entries_t)(context, builder, entries_v).data
        x_p = context.make_array(x_t)(context, builder, x_v).data
        table_p = context.make_array(table_t)(context, builder, table_v).data
        permute2 = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16F, [_V16F, _V16I, _V16F]), "llvm.x86.avx512.vpermi2var.ps.512")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]),
                                             "llvm.fma.v16f32")

        def load16(pointer: Any, offset: Any) -> Any:
            return builder.load(builder.bitcast(builder.gep(pointer, [offset]), _V16F.as_pointer()), align=4)

        # four accumulators taken in turn: one would chain every fused multiply-add on the previous one's
        # 4-cycle latency, which measured as the bottleneck (not memory) on AlexNet FC shapes
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V16F, None)) for _ in range(UNROLL)]
        layer_p = cgutils.alloca_once_value(builder, _i64(builder, first_v))
        table_lo = load16(table_p, ir.Constant(_I64, 0))
        table_hi = load16(table_p, ir.Constant(_I64, LANES))
        n_windows = _i64(builder, nw_v)
        count_base = builder.mul(_i64(builder, s_v), n_windows)

        def accumulate(acc_p: Any, layer: Any, x_lo: Any, x_hi: Any) -> None:
            offset = builder.mul(layer, ir.Constant(_I64, LANES))
            packed = builder.load(builder.bitcast(builder.gep(entries_p, [offset]), _V16S.as_pointer()), align=2)
            lanes = builder.zext(packed, _V16I)
            column = builder.and_(lanes, _splat(WINDOW - 1))
            code = builder.and_(builder.lshr(lanes, _splat(5)), _splat(MAX_CENTROIDS - 1))
            real = builder.icmp_unsigned("!=", builder.and_(lanes, _splat(_REAL)), _splat(0))
            inputs = builder.call(permute2, [x_lo, column, x_hi])
            weights = builder.select(real, builder.call(permute2, [table_lo, code, table_hi]),
                                     ir.Constant(_V16F, None))
            builder.store(builder.call(fma, [inputs, weights, builder.load(acc_p)]), acc_p)

        with cgutils.for_range(builder, n_windows) as window:
            x_base = builder.mul(window.index, ir.Constant(_I64, WINDOW))
            x_lo = load16(x_p, x_base)
            x_hi = load16(x_p, builder.add(x_base, ir.Constant(_I64, LANES)))
            n_layers = builder.zext(builder.load(builder.gep(counts_p, [builder.add(count_base, window.index)])), _I64)
            with cgutils.for_range(builder, builder.udiv(n_layers, ir.Constant(_I64, UNROLL))):
                layer = builder.load(layer_p)
                for k, acc_p in enumerate(accs):
                    accumulate(acc_p, builder.add(layer, ir.Constant(_I64, k)), x_lo, x_hi)
                builder.store(builder.add(layer, ir.Constant(_I64, UNROLL)), layer_p)
            with cgutils.for_range(builder, builder.urem(n_layers, ir.Constant(_I64, UNROLL))):
                layer = builder.load(layer_p)
                accumulate(accs[0], layer, x_lo, x_hi)
                builder.store(builder.add(layer, ir.Constant(_I64, 1)), layer_p)
        total = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                             builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
        out = builder.gep(y_p, [builder.mul(_i64(builder, s_v), ir.Constant(_I64, LANES))])
        builder.store(total, builder.bitcast(out, _V16F.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen


def _sliced(counts, first_layer, entries, xpad, table, ypad, n_windows, rows, bias, out):
    """Every slice's 16 sums into ``ypad``, then ``out[rows[slot]] = ypad[slot] + bias[...]`` for its real lanes."""
    n_rows = rows.shape[0]
    for s in prange(first_layer.shape[0] - 1):
        _slice_dot(ypad, s, counts, n_windows, entries, first_layer[s], xpad, table)  # type: ignore[call-arg]
        for slot in range(s * LANES, min(n_rows, (s + 1) * LANES)):
            r = rows[slot]
            out[r] = ypad[slot] + bias[r]


_OPTS: dict[str, Any] = {"cache": True, "nogil": True, "boundscheck": False}
sliced_serial = numba.njit(**_OPTS)(_sliced)
sliced_parallel = parallel_build(_sliced, _OPTS)


@dataclass(frozen=True)
class SlicedWindows:
    """A (rows, cols) codebook weight as 16-row slices x 32-column windows of 16-lane layers (module docstring)."""

    shape: tuple[int, int]
    rows: np.ndarray
    counts: np.ndarray
    first_layer: np.ndarray
    entries: np.ndarray
    table: np.ndarray
    n_real: int

    @property
    def n_slices(self) -> int:
        return int(self.first_layer.shape[0]) - 1

    @property
    def n_windows(self) -> int:
        return -(-self.shape[1] // WINDOW)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.counts.nbytes + self.first_layer.nbytes + self.entries.nbytes
                   + self.table.nbytes)

    def forward(self, x: np.ndarray, bias: np.ndarray, parallel: bool) -> np.ndarray:
        """``W x + bias`` for one float32 input vector (C-contiguous); returns (1, rows)."""
        if x.shape[0] == self.n_windows * WINDOW and x.dtype == np.float32 and x.flags.c_contiguous:
            xpad = x  # whole windows: the kernel reads x in place
        else:
            xpad = np.zeros(self.n_windows * WINDOW, dtype=np.float32)
            xpad[: x.shape[0]] = x
        ypad = np.empty(self.n_slices * LANES, dtype=np.float32)
        out = np.empty((1, self.shape[0]), dtype=np.float32)
        kernel = sliced_parallel if parallel else sliced_serial
        kernel(self.counts, self.first_layer, self.entries, xpad, self.table, ypad, self.n_windows, self.rows, bias,
               out[0])
        return out

    def to_dense(self) -> np.ndarray:
        """The dense float32 matrix (tests and references only)."""
        n_slices, n_windows = self.n_slices, self.n_windows
        out = np.zeros((n_slices * LANES, n_windows * WINDOW), dtype=np.float32)
        layers = np.repeat(np.arange(n_slices * n_windows), self.counts.astype(np.int64))
        block_s, block_w = np.divmod(layers, n_windows)
        lanes = self.entries.reshape(-1, LANES).astype(np.int64)
        real = (lanes & _REAL) != 0
        slots = (block_s[:, None] * LANES + np.arange(LANES)[None, :])[real]
        cols = (block_w[:, None] * WINDOW + (lanes & (WINDOW - 1)))[real]
        out[self.rows[slots], cols] = self.table[(lanes >> 5) & (MAX_CENTROIDS - 1)][real]
        return out[: self.shape[0], : self.shape[1]]


def sliced_windows(layout: SparseRows) -> SlicedWindows | None:
    """The sliced-window copy of a codebook layout, or None where it cannot run (no AVX-512, pruned-only values,
    more than 32 centroids, an empty shape, a block needing 256 layers or more)."""
    if (layout.direct or layout.n_pad or layout.table.shape[0] > MAX_CENTROIDS or 0 in layout.shape
            or not available()):
        return None
    return _build_unchecked(layout)


def _build_unchecked(layout: SparseRows) -> SlicedWindows | None:
    n_rows, n_cols = layout.shape
    n_slices, n_windows = -(-n_rows // LANES), -(-n_cols // WINDOW)
    rows = np.argsort(-np.diff(layout.indptr), kind="stable").astype(np.int32)  # fullest rows first
    counts = np.zeros(n_slices * n_windows, dtype=np.int64)
    if not _count_layers(layout.indptr, layout.indices, rows, n_windows, counts) or (counts.size and counts.max() > 255):
        return None  # columns not increasing within a row, or a block needing 256 layers or more
    cumulative = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=cumulative[1:])
    entries = np.zeros(int(cumulative[-1]) * LANES, dtype=np.uint16)
    _fill_layers(layout.indptr, layout.indices, layout.codes, rows, n_windows, cumulative, entries)
    table = np.zeros(MAX_CENTROIDS, dtype=np.float32)
    table[: layout.table.shape[0]] = layout.table
    return SlicedWindows(layout.shape, rows, counts.astype(np.uint8), cumulative[::n_windows].copy(), entries, table,
                         layout.nnz)


@numba.njit(cache=True, nogil=True)
def _count_layers(indptr, indices, rows, n_windows, counts):
    """counts[s * n_windows + w] = the most non-zeros any row of slice s (rows[16 s : 16 s + 16]) has in window
    w; False when a row's columns are not increasing (the layout promises they are)."""
    for slot in range(rows.shape[0]):
        r = rows[slot]
        base = (slot // LANES) * n_windows
        k, end, previous = indptr[r], indptr[r + 1], np.int64(-1)
        while k < end:
            window = np.int64(indices[k]) // WINDOW
            run = 0
            while k < end and np.int64(indices[k]) // WINDOW == window:
                if np.int64(indices[k]) <= previous:
                    return False
                previous = np.int64(indices[k])
                run += 1
                k += 1
            counts[base + window] = max(counts[base + window], run)
    return True


@numba.njit(cache=True, nogil=True)
def _fill_layers(indptr, indices, codes, rows, n_windows, first, entries):
    """Each row's non-zeros of window w go to its lane in the block's consecutive layers (no temporaries)."""
    for slot in range(rows.shape[0]):
        r = rows[slot]
        base, lane = (slot // LANES) * n_windows, slot % LANES
        k, end = indptr[r], indptr[r + 1]
        while k < end:
            window = np.int64(indices[k]) // WINDOW
            layer = first[base + window]
            while k < end and np.int64(indices[k]) // WINDOW == window:
                entries[layer * LANES + lane] = (np.int64(indices[k]) % WINDOW) | (np.int64(codes[k]) << 5) | _REAL
                layer += 1
                k += 1


@functools.cache
def available() -> bool:
    """Whether this host runs the AVX-512 kernel: the CPU reports AVX-512F and a tiny product compiles and
    matches its dense reference (any failure, e.g. an LLVM without these intrinsics, means no).
    ``DEEPSHRINK_RUNTIME_SIMD=0`` in the environment turns it off (the scalar kernels run, as on other CPUs)."""
    if sys.byteorder != "little" or os.environ.get("DEEPSHRINK_RUNTIME_SIMD", "1") == "0":
        return False
    try:
        import llvmlite.binding as llvm

        if not llvm.get_host_cpu_features().get("avx512f", False):
            return False
        rng = np.random.default_rng(0)
        dense = np.where(rng.random((20, 70)) < 0.3, rng.integers(0, 5, (20, 70)), -1)
        rows, cols = np.nonzero(dense >= 0)
        table = np.linspace(-1, 1, 5, dtype=np.float32)
        layout = SparseRows((20, 70), np.r_[0, np.cumsum(np.bincount(rows, minlength=20))].astype(np.int64),
                            cols.astype(np.uint16), dense[rows, cols].astype(np.uint8), table, False)
        probe = _build_unchecked(layout)
        if probe is None:
            return False
        x = rng.standard_normal(70).astype(np.float32)
        want = np.where(dense >= 0, table[dense], 0).astype(np.float64) @ x
        got = probe.forward(x, np.zeros(20, dtype=np.float32), parallel=False)[0]
        return bool(np.allclose(got, want, rtol=1e-5, atol=1e-5))
    except Exception:  # any failure to build or run the kernel means "not available"
        return False
