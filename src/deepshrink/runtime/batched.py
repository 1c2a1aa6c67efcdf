"""Sparse x dense product for batches: ``y = x @ W.T + b`` with ``W`` in CSR (codebook) form.

The input is transposed once (``xt``: one row of ``width`` samples per input feature, zero-padded to whole
16-lane vectors); a task then walks its output rows, and for each row and each block of 64 samples runs
:func:`~deepshrink.runtime.tiles.row_tile`: the 64 sums stay in four vector registers while the row's non-zeros
pass, each costing one centroid broadcast, four loads and four FMAs (the codebook gather once per non-zero per
tile). That is the register blocking over input columns; it leaves the kernel bound by the vector loads of
``xt`` rows, so the rest is about where those rows come from:

* **Column chunks** (cache blocking). A row's non-zeros are split at every :data:`CHUNK_COLUMNS` input features
  (:func:`row_chunks`, per-row pointers computed at load time); all rows of a task run chunk by chunk, so the
  chunk's ``xt`` rows (64 KiB per 16 samples) stay in L2 while every row of the task reads them, instead of
  streaming the whole ``xt`` from L3 once per row. The partial sums go back to ``y`` between chunks (a row's
  tile is loaded and stored once per chunk, against ~90 non-zeros per chunk at 9% density).
* **Threads** own contiguous row ranges of equal non-zero counts (:func:`task_rows`): no two threads write
  the same output, and each streams its own part of the weight once.
* **Transposes**: an input that is already the transpose of a C-contiguous array (the output of a previous
  batched layer) is read in place; otherwise a blocked numba transpose builds ``xt``.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from .intrinsics import prefetch
from .kernels import PARALLEL_MIN_WORK, parallel_build
from .tiles import LANES, MAX_VECTORS, row_tile, transpose16

BLOCK = MAX_VECTORS
"""Sixteen-lane vectors a tile accumulates: 64 samples."""

CHUNK_COLUMNS = 1024
"""Input features per column chunk: 1024 rows of ``xt`` are 256 KiB at 64 samples, a quarter of Zen 4's L2
(measured on AlexNet FC6, 9216 inputs, batch 64, 1 thread: 1024 6.6 ms, 512 8.5 ms, 2048 7.0 ms, unchunked
8.2 ms)."""

AHEAD = 2
"""Rows ahead whose chunk segment of the weight a task prefetches."""

_OPTS: dict[str, Any] = {"cache": True, "nogil": True, "boundscheck": False}


def _spmm(pointers, indices, codes, table, xt, width, bias, y, task_rows):
    """``y[r * width + c] = bias[r] + sum_j table[codes[j]] * xt[indices[j] * width + c]`` over the entries
    ``pointers[r, 0] .. pointers[r, -1]`` of row ``r``, chunk by chunk (``pointers[r, k]`` starts chunk ``k``);
    task ``t`` owns rows ``task_rows[t] .. task_rows[t + 1]``. ``width`` is a multiple of 16."""
    n_chunks = pointers.shape[1] - 1
    for t in prange(task_rows.shape[0] - 1):
        r0 = task_rows[t]
        r1 = task_rows[t + 1]
        for c0 in range(0, width, LANES * BLOCK):
            left = (width - c0) // LANES
            for ch in range(n_chunks):
                for r in range(r0, r1):
                    a = pointers[r, ch]
                    b = pointers[r, ch + 1]
                    out = r * width + c0
                    if r + AHEAD < r1:  # the weight segments of rows ahead: scattered, not followed by the hardware
                        ahead = pointers[r + AHEAD, ch]
                        end = pointers[r + AHEAD, ch + 1]
                        for q in range(ahead, end, 32):
                            prefetch(indices, q)  # type: ignore[call-arg]
                            prefetch(codes, q)
                    if ch == 0:
                        if left >= 4:
                            row_tile(y, out, 4, a, b, 1, 0, indices, codes, table, xt, c0, width, bias[r])
                        elif left == 3:
                            row_tile(y, out, 3, a, b, 1, 0, indices, codes, table, xt, c0, width, bias[r])
                        elif left == 2:
                            row_tile(y, out, 2, a, b, 1, 0, indices, codes, table, xt, c0, width, bias[r])
                        else:
                            row_tile(y, out, 1, a, b, 1, 0, indices, codes, table, xt, c0, width, bias[r])
                    elif b > a:
                        if left >= 4:
                            row_tile(y, out, 4, a, b, 0, 0, indices, codes, table, xt, c0, width, bias[r])
                        elif left == 3:
                            row_tile(y, out, 3, a, b, 0, 0, indices, codes, table, xt, c0, width, bias[r])
                        elif left == 2:
                            row_tile(y, out, 2, a, b, 0, 0, indices, codes, table, xt, c0, width, bias[r])
                        else:
                            row_tile(y, out, 1, a, b, 0, 0, indices, codes, table, xt, c0, width, bias[r])


spmm_serial = numba.njit(**_OPTS)(_spmm)
spmm_parallel = parallel_build(_spmm, _OPTS)


def _transpose(x, batch, n_in, xt, width):
    """``xt[k * width + b] = x[b * n_in + k]`` (0 for ``b >= batch``): 16 x 16 blocks transposed in registers
    (:func:`~deepshrink.runtime.tiles.transpose16`), scalar copies at the edges; tasks are 64-feature strips."""
    full_b = batch - batch % LANES
    for kb in prange((n_in + 63) // 64):
        k0 = kb * 64
        k1 = min(k0 + 64, n_in)
        full_k = k0 + (k1 - k0) // LANES * LANES
        for b0 in range(0, full_b, LANES):
            for k in range(k0, full_k, LANES):
                transpose16(x, b0 * n_in + k, n_in, xt, k * width + b0, width)
            for k in range(full_k, k1):
                for b in range(b0, b0 + LANES):
                    xt[k * width + b] = x[b * n_in + k]
        for k in range(k0, k1):
            row = k * width
            for b in range(full_b, batch):
                xt[row + b] = x[b * n_in + k]
            for b in range(batch, width):
                xt[row + b] = 0.0


transpose_serial = numba.njit(**_OPTS)(_transpose)
transpose_parallel = parallel_build(_transpose, _OPTS)


@numba.njit(**_OPTS)
def _chunk_pointers(indptr, indices, chunk, n_chunks, out):
    for r in range(indptr.shape[0] - 1):
        j = indptr[r]
        end = indptr[r + 1]
        out[r, 0] = j
        for ch in range(1, n_chunks):
            limit = ch * chunk
            while j < end and np.int64(indices[j]) < limit:
                j += 1
            out[r, ch] = j
        out[r, n_chunks] = end


def row_chunks(indptr: np.ndarray, indices: np.ndarray, n_cols: int, chunk: int = CHUNK_COLUMNS) -> np.ndarray:
    """``(rows, n_chunks + 1)`` int64: where each row's entries reach column ``k * chunk`` (columns sorted within
    a row). Layers of at most two chunks' columns get one chunk."""
    n_chunks = 1 if n_cols <= 2 * chunk else -(-n_cols // chunk)
    out = np.empty((indptr.shape[0] - 1, n_chunks + 1), dtype=np.int64)
    _chunk_pointers(indptr, indices, chunk, n_chunks, out)
    return out


def task_rows(indptr: np.ndarray, tasks: int) -> np.ndarray:
    """Row boundaries of ``tasks`` contiguous row ranges holding about equal numbers of entries."""
    rows = indptr.shape[0] - 1
    if tasks <= 1 or rows <= 1:
        return np.array([0, rows], dtype=np.int64)
    targets = np.linspace(0, indptr[-1], tasks + 1)[1:-1]
    cuts = np.searchsorted(indptr, targets).clip(0, rows)
    return np.concatenate([[0], cuts, [rows]]).astype(np.int64)


def padded_width(columns: int) -> int:
    return -(-columns // LANES) * LANES


def transposed(x: np.ndarray, threads: int) -> tuple[np.ndarray, int]:
    """``(xt flat, width)``: the (in, width) transpose of a (batch, in) float32 input, zero-padded to whole
    vectors; read in place when ``x`` is already the transpose of a C-contiguous array of whole vectors."""
    batch, n_in = x.shape
    width = padded_width(batch)
    if width == batch and x.flags.f_contiguous and x.dtype == np.float32:
        return x.T.reshape(-1), width
    xt = np.empty(n_in * width, dtype=np.float32)
    kernel = transpose_parallel if threads > 1 and xt.size >= 1 << 16 else transpose_serial
    kernel(np.ascontiguousarray(x, dtype=np.float32).reshape(-1), batch, n_in, xt, width)
    return xt, width


def product(pointers: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, x: np.ndarray,
            bias: np.ndarray) -> np.ndarray:
    """``x @ W.T + bias`` for a (batch, in) float32 ``x``; returns (batch, out) float32, a transposed view of a
    C-contiguous (out, width) array (which the next batched layer reads in place)."""
    threads = numba.get_num_threads()
    n_out = pointers.shape[0]
    work = int(indices.shape[0]) * x.shape[0]
    parallel = threads > 1 and work >= PARALLEL_MIN_WORK
    xt, width = transposed(x, threads if parallel else 1)
    y = np.empty(n_out * width, dtype=np.float32)
    if parallel:
        indptr = np.append(pointers[:, 0], pointers[-1, -1] if n_out else 0)
        spmm_parallel(pointers, indices, codes, table, xt, width, bias, y, task_rows(indptr, threads))
    else:
        spmm_serial(pointers, indices, codes, table, xt, width, bias, y, np.array([0, n_out], dtype=np.int64))
    return y.reshape(n_out, width)[:, : x.shape[0]].T


def columns_product(indptr: np.ndarray, indices: np.ndarray, codes: np.ndarray, table: np.ndarray, xt: np.ndarray,
                    bias: np.ndarray) -> np.ndarray:
    """``W @ xt + bias[:, None]`` for a (in, columns) float32 ``xt``; returns the C-contiguous (out, columns)
    result (one chunk; for callers that hold the transposed input already)."""
    pointers = np.stack([indptr[:-1], indptr[1:]], axis=1)
    return np.ascontiguousarray(product(pointers, indices, codes, table, np.ascontiguousarray(xt.T), bias).T)


__all__ = ["BLOCK", "CHUNK_COLUMNS", "LANES", "columns_product", "padded_width", "product", "row_chunks",
           "task_rows", "transposed"]
