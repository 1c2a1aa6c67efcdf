"""Numba kernels that compute straight from a sparse weight: CSR rows of (column, code) pairs.

A weight row ``r`` holds the non-zeros ``indptr[r]:indptr[r+1]``; each has a column (``indices``, uint16 when
the row is at most 65,536 long, else int32) and a value that is either ``table[codes[j]]`` (codebook: uint8
codes into a handful of float32 centroids, the EIE layout) or ``table[j]`` (``direct``: pruned-only float
weights). Dense fp32 weights are never formed. Every kernel exists twice: compiled with ``parallel=True``
(rows split over numba's threads) and serial, since a parallel launch costs microseconds that tiny layers
do not repay; :func:`pick` chooses by work size.

All kernels are compiled with ``cache=True`` (compiled code lands in ``__pycache__``), ``fastmath`` (the
sums may be reassociated, so results equal a dense reference to fp32 rounding, not bit for bit) and no
bounds checks: the callers in :mod:`deepshrink.runtime.layout` validate every array once at load time.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import prange

_OPTS: dict[str, Any] = {"cache": True, "fastmath": True, "nogil": True, "boundscheck": False, "error_model": "numpy"}

PARALLEL_MIN_WORK = 60_000
"""Multiply-adds below which the serial kernel wins (a numba parallel launch costs a few microseconds)."""

def _spmv(indptr, indices, codes, table, direct, x, bias, y):
    """y[r] = bias[r] + sum_j value_j * x[indices[j]] for one input vector (batch 1).

    Each row is walked through zero-based slices (so no negative-index wraparound test per access) with four
    independent accumulators to hide the add latency. Compiled without fastmath on purpose: the vectorizer
    would turn the two lookups into AVX-512 gathers, which are slower than scalar loads on the CPUs tried.
    """
    for r in prange(indptr.shape[0] - 1):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        start = indptr[r]
        n = indptr[r + 1] - start
        cols = indices[start:start + n]
        vals = table[start:start + n] if direct else table
        cc = codes[0:0] if direct else codes[start:start + n]
        m = n - n % 4
        if direct:
            for t in range(0, m, 4):
                a0 += vals[t] * x[cols[t]]
                a1 += vals[t + 1] * x[cols[t + 1]]
                a2 += vals[t + 2] * x[cols[t + 2]]
                a3 += vals[t + 3] * x[cols[t + 3]]
            for t in range(m, n):
                a0 += vals[t] * x[cols[t]]
        else:
            for t in range(0, m, 4):
                a0 += vals[cc[t]] * x[cols[t]]
                a1 += vals[cc[t + 1]] * x[cols[t + 1]]
                a2 += vals[cc[t + 2]] * x[cols[t + 2]]
                a3 += vals[cc[t + 3]] * x[cols[t + 3]]
            for t in range(m, n):
                a0 += vals[cc[t]] * x[cols[t]]
        y[r] = ((a0 + a1) + (a2 + a3)) + bias[r]


def _spmv_grouped(indptr, cols64, codes64, table, x, bias, y):
    """The batch-1 kernel on a row-grouped layout (:func:`deepshrink.runtime.layout.group_rows`).

    Every row holds whole groups of 8 entries, so ``cols64`` (the uint16 columns viewed as uint64, 4 per word)
    and ``codes64`` (the uint8 codes viewed as uint64, 8 per word) are read one word at a time and the fields
    are taken apart with shifts: 3 loads per 8 columns + codes instead of 16, plus the centroid and input
    loads. Entry ``t`` of a row goes to accumulator ``t % 4`` as in :func:`_spmv` (results are bit-identical
    when a row's length is a multiple of 4, else equal to fp32 rounding: :func:`_spmv` adds its tail to the
    first accumulator). Padding entries add ``0.0 * x[col]`` (a non-finite ``x[col]`` at a padding column
    turns that row into NaN, as a dense product would). No fastmath: see :func:`_spmv`.
    """
    for r in prange(indptr.shape[0] - 1):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for g in range(indptr[r] >> 3, indptr[r + 1] >> 3):
            w = cols64[2 * g]
            u = cols64[2 * g + 1]
            k = codes64[g]
            a0 += table[k & 0xFF] * x[w & 0xFFFF]
            a1 += table[(k >> 8) & 0xFF] * x[(w >> 16) & 0xFFFF]
            a2 += table[(k >> 16) & 0xFF] * x[(w >> 32) & 0xFFFF]
            a3 += table[(k >> 24) & 0xFF] * x[w >> 48]
            a0 += table[(k >> 32) & 0xFF] * x[u & 0xFFFF]
            a1 += table[(k >> 40) & 0xFF] * x[(u >> 16) & 0xFFFF]
            a2 += table[(k >> 48) & 0xFF] * x[(u >> 32) & 0xFFFF]
            a3 += table[k >> 56] * x[u >> 48]
        y[r] = ((a0 + a1) + (a2 + a3)) + bias[r]


COLUMN_TILE = 512
"""Columns per tile in the matrix-matrix kernel: a tile's output row (2 KiB) stays in L1 and its input rows
in L2 while all non-zeros of a row pass over it, instead of streaming whole rows from memory per non-zero."""


def _spmm(indptr, indices, codes, table, direct, xt, bias, yt):
    """yt[r, :] = bias[r] + sum_j value_j * xt[indices[j], :]; ``xt`` is (in, columns), C-contiguous.

    Tasks are (column tile, row) pairs so the innermost loop is a contiguous axpy the compiler vectorizes,
    and a tile stays cache-resident across the non-zeros of a row.
    """
    n_rows = indptr.shape[0] - 1
    n_cols = xt.shape[1]
    n_tiles = (n_cols + COLUMN_TILE - 1) // COLUMN_TILE
    for task in prange(n_tiles * n_rows):
        r = task % n_rows
        c0 = (task // n_rows) * COLUMN_TILE
        c1 = min(c0 + COLUMN_TILE, n_cols)
        out = yt[r, c0:c1]
        width = c1 - c0
        b0 = bias[r]
        for b in range(width):
            out[b] = b0
        for j in range(indptr[r], indptr[r + 1]):
            v = table[j] if direct else table[codes[j]]
            src = xt[indices[j], c0:c1]
            for b in range(width):
                out[b] += v * src[b]


def _conv2d(indptr, indices, codes, table, direct, xpad, bias, y, kh, kw, sh, sw, dh, dw, groups):
    """Direct sparse convolution on a zero-padded input ``xpad`` (N, C, Hp, Wp) into ``y`` (N, O, OH, OW).

    Row ``o`` of the CSR weight is output channel ``o``; its columns index the flattened (C/groups, kh, kw)
    filter. Each non-zero adds ``value * shifted input plane`` to the output plane: no im2col buffer.
    """
    n_batch, n_out, oh_n, ow_n = y.shape
    cin_g = xpad.shape[1] // groups
    out_g = n_out // groups
    khw = kh * kw
    for task in prange(n_batch * n_out):
        n = task // n_out
        o = task % n_out
        c0 = (o // out_g) * cin_g
        plane = y[n, o]
        b0 = bias[o]
        for i in range(oh_n):
            for k in range(ow_n):
                plane[i, k] = b0
        for j in range(indptr[o], indptr[o + 1]):
            col = np.int64(indices[j])
            c = col // khw
            rem = col - c * khw
            ki = rem // kw
            kj = rem - ki * kw
            v = table[j] if direct else table[codes[j]]
            src = xpad[n, c0 + c]
            for i in range(oh_n):
                row = src[i * sh + ki * dh]
                dst = plane[i]
                base = kj * dw
                if sw == 1:
                    for k in range(ow_n):
                        dst[k] += v * row[base + k]
                else:
                    for k in range(ow_n):
                        dst[k] += v * row[base + k * sw]


SCALAR_OPTS: dict[str, Any] = {**_OPTS, "fastmath": False}
"""Options of the batch-1 kernels: no fastmath, whose vectorizer would turn their lookups into slower gathers."""


def _im2col(xpad, kh, kw, sh, sw, dh, dw, oh, ow, out):
    """Patches of a padded (N, C, Hp, Wp) input as ``out`` (C*kh*kw, N*oh*ow): row (c, ki, kj), column
    (n, i, j), the layout the matrix-matrix kernel wants (no permute copy afterwards)."""
    n_batch = xpad.shape[0]
    plane = oh * ow
    for k in prange(out.shape[0]):
        c = k // (kh * kw)
        ki = (k // kw) % kh
        kj = k % kw
        dst = out[k]
        for n in range(n_batch):
            src = xpad[n, c]
            for i in range(oh):
                row = src[i * sh + ki * dh]
                base = n * plane + i * ow
                for j in range(ow):
                    dst[base + j] = row[kj * dw + j * sw]


def _gather_rows(indptr, indices, codes, table, direct, ids, out):
    """out[i] = row ``ids[i]`` of the sparse weight (an embedding lookup straight from the compressed rows)."""
    for i in prange(ids.shape[0]):
        row = ids[i]
        dst = out[i]
        dst[:] = 0.0
        for j in range(indptr[row], indptr[row + 1]):
            dst[indices[j]] = table[j] if direct else table[codes[j]]


def cache_safe_copy(fn: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    """A copy of ``fn`` under the name ``fn.__name__ + suffix``.

    numba's on-disk cache files a compiled function under its qualified name and first line, and its index key
    holds the signature and the bytecode but not the compile flags: the parallel and the serial build of one
    function would share one cache entry, so whichever compiled first would silently serve both (a "parallel"
    kernel running on one thread). Each build therefore compiles its own named copy.
    """
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    return copy


def parallel_build(fn: Callable[..., Any], opts: dict[str, Any]) -> Callable[..., Any]:
    """``fn`` compiled with ``parallel=True`` under its own cache name (:func:`cache_safe_copy`)."""
    return numba.njit(parallel=True, **opts)(cache_safe_copy(fn, "_parallel"))


spmv_parallel = parallel_build(_spmv, SCALAR_OPTS)
spmv_serial = numba.njit(**SCALAR_OPTS)(_spmv)
spmv_grouped_parallel = parallel_build(_spmv_grouped, SCALAR_OPTS)
spmv_grouped_serial = numba.njit(**SCALAR_OPTS)(_spmv_grouped)
spmm_parallel = parallel_build(_spmm, _OPTS)
spmm_serial = numba.njit(**_OPTS)(_spmm)
conv2d_parallel = parallel_build(_conv2d, _OPTS)
conv2d_serial = numba.njit(**_OPTS)(_conv2d)
im2col_parallel = parallel_build(_im2col, _OPTS)
im2col_serial = numba.njit(**_OPTS)(_im2col)
gather_rows_parallel = parallel_build(_gather_rows, _OPTS)
gather_rows_serial = numba.njit(**_OPTS)(_gather_rows)


def pick(parallel: Callable[..., Any], serial: Callable[..., Any], work: int) -> Callable[..., Any]:
    """The parallel kernel when there is more than one thread and ``work`` multiply-adds repay the launch."""
    if work >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1:
        return parallel
    return serial


def linear_forward(
    indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, direct: bool,
    x: np.ndarray, bias: np.ndarray, group: int = 1,
) -> np.ndarray:
    """``x @ W.T + bias`` for a CSR weight ``W`` (out, in); ``x`` is float32 (batch, in), C-contiguous.

    ``group`` 8: the layout is row-grouped (uint16 columns, uint8 codes, whole groups of 8 per row) and batch 1
    runs :func:`_spmv_grouped`. Returns (batch, out); for batch > 1 that is a transposed view of a contiguous
    (out, batch) array.
    """
    n_out = indptr.shape[0] - 1
    batch = x.shape[0]
    work = indices.shape[0] * batch
    if batch == 1 and group == 8:
        y = np.empty((1, n_out), dtype=np.float32)
        fn = spmv_grouped_serial if work < PARALLEL_MIN_WORK else pick(spmv_grouped_parallel, spmv_grouped_serial, work)
        fn(indptr, indices.view(np.uint64), codes.view(np.uint64), table, x[0], bias, y[0])
        return y
    if batch == 1:
        y = np.empty((1, n_out), dtype=np.float32)
        kernel = spmv_serial if work < PARALLEL_MIN_WORK else pick(spmv_parallel, spmv_serial, work)
        kernel(indptr, indices, codes, table, direct, x[0], bias, y[0])
        return y
    return columns_forward(indptr, indices, codes, table, direct, np.ascontiguousarray(x.T), bias).T


def columns_forward(
    indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, direct: bool,
    xt: np.ndarray, bias: np.ndarray,
) -> np.ndarray:
    """``W @ xt + bias[:, None]`` for a CSR ``W`` (out, in) and a C-contiguous float32 ``xt`` (in, columns).

    The matrix-matrix product behind batched Linear (columns = samples) and im2col Conv2d (columns = output
    positions of all samples): one contiguous axpy per non-zero.
    """
    yt = np.empty((indptr.shape[0] - 1, xt.shape[1]), dtype=np.float32)
    work = indices.shape[0] * xt.shape[1]
    kernel = spmm_serial if work < PARALLEL_MIN_WORK else pick(spmm_parallel, spmm_serial, work)
    kernel(indptr, indices, codes, table, direct, xt, bias, yt)
    return yt


def conv2d_forward(
    indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, direct: bool,
    xpad: np.ndarray, bias: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
    dilation: tuple[int, int], groups: int, out_hw: tuple[int, int],
) -> np.ndarray:
    """Direct sparse Conv2d on an already padded float32 input (N, C, Hp, Wp); returns (N, O, OH, OW)."""
    n_out = indptr.shape[0] - 1
    y = np.empty((xpad.shape[0], n_out, out_hw[0], out_hw[1]), dtype=np.float32)
    work = int(indices.shape[0]) * xpad.shape[0] * out_hw[0] * out_hw[1]
    kernel_fn = pick(conv2d_parallel, conv2d_serial, work)
    kernel_fn(indptr, indices, codes, table, direct, xpad, bias, y, kernel[0], kernel[1], stride[0], stride[1],
              dilation[0], dilation[1], groups)
    return y


def im2col(xpad: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
           out_hw: tuple[int, int]) -> np.ndarray:
    """(C*kh*kw, N*OH*OW) float32 patches of a padded, C-contiguous float32 input (N, C, Hp, Wp)."""
    rows = xpad.shape[1] * kernel[0] * kernel[1]
    out = np.empty((rows, xpad.shape[0] * out_hw[0] * out_hw[1]), dtype=np.float32)
    fn = pick(im2col_parallel, im2col_serial, out.size)
    fn(xpad, kernel[0], kernel[1], stride[0], stride[1], dilation[0], dilation[1], out_hw[0], out_hw[1], out)
    return out


def gather_rows(indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, direct: bool,
                ids: np.ndarray, width: int) -> np.ndarray:
    """(len(ids), width) float32: the rows ``ids`` (int64, already range-checked) of a CSR weight."""
    out = np.empty((ids.shape[0], width), dtype=np.float32)
    fn = pick(gather_rows_parallel, gather_rows_serial, ids.shape[0] * width)
    fn(indptr, indices, codes, table, direct, ids, out)
    return out
