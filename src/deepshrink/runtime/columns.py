"""Column blocks: a codebook weight stored by input column, so batch-1 products can skip zero inputs.

After a ReLU most of a layer's inputs are zero (EIE, Han et al. 2016, measured 35-38% non-zero activations on
AlexNet's FC layers). A row-wise (CSR) kernel still visits every non-zero weight; a column-wise one visits
only the columns of non-zero inputs, i.e. ``density(W) * density(x)`` of the matrix. This is EIE's
activation-sparsity half; the weight-sparsity half is the CSR layout in :mod:`deepshrink.runtime.layout`.

Layout: the rows are cut into ``n_blocks`` blocks of ``block_rows`` rows (each block is one parallel task and
owns its slice of the output, so no two threads write the same row). Within block ``b`` the entries of
column ``j`` are the run ``k = j * n_blocks + b``: ``entries[runptr[k]:runptr[k + 1]]``, each one uint16
``(row - b * block_rows) << code_bits | code``: 2 bytes per non-zero. Every (block, column) run is padded to
a multiple of 4 entries (the kernel reads four per 64-bit load) with the code of an appended 0.0 centroid
on the run's last row, so padding adds ``0.0 * x[j]`` to a row that column already touches. ``code_bits``
is what the codebook plus that 0.0 needs; a block holds at most ``2 ** (16 - code_bits)`` rows.

Runs are ordered column-major (all blocks of column 0, then of column 1, ...), so the columns of the non-zero
inputs are read in one ascending sweep over memory, which the hardware prefetchers follow when the weight
comes from DRAM (a block-major order made four interleaved streams and ran ~2x slower from a cold cache).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numba
import numpy as np
from numba import prange

from ..core.errors import FormatError
from . import kernels
from .intrinsics import prefetch
from .layout import SparseRows

RUN = 4
"""Entries per (block, column) run are a multiple of this (one 64-bit load)."""

MIN_BLOCK_ROWS = 128
"""Rows below which a layer is not split further for parallelism (a block's per-column overhead)."""


MAX_CODE_BITS = 9
"""Codebooks up to 511 centroids (+ the padding 0.0): blocks of at least 128 rows."""


@dataclass(frozen=True)
class ColumnBlocks:
    """A (rows, cols) codebook weight by column within row blocks; see the module docstring."""

    shape: tuple[int, int]
    block_rows: int
    code_bits: int
    n_blocks: int
    runptr: np.ndarray
    entries: np.ndarray
    table: np.ndarray
    n_pad: int

    @property
    def nnz(self) -> int:
        return int(self.entries.shape[0]) - self.n_pad

    @property
    def nbytes(self) -> int:
        return int(self.runptr.nbytes + self.entries.nbytes + self.table.nbytes)

    def validate(self, name: str) -> None:
        """Check what the unchecked kernel relies on; a FormatError names the weight."""
        rows, cols = self.shape
        n_entries = int(self.entries.shape[0])
        if self.block_rows < 1 or self.n_blocks != -(-rows // self.block_rows) or self.runptr.shape != (
                cols * self.n_blocks + 1,):
            raise FormatError(f"{name}: {self.runptr.shape[0]} run pointers for {rows}x{cols} in blocks of "
                              f"{self.block_rows} rows")
        if self.block_rows > 1 << (16 - self.code_bits) or self.table.shape[0] > 1 << self.code_bits:
            raise FormatError(f"{name}: {self.block_rows} rows x {self.table.shape[0]} codes do not fit 16 bits")
        if (n_entries % RUN or np.any(self.runptr % RUN) or self.runptr[0] != 0 or self.runptr[-1] != n_entries
                or np.any(np.diff(self.runptr) < 0)):
            raise FormatError(f"{name}: run pointer does not describe {n_entries} entries in runs of {RUN}")
        if n_entries:
            block = np.repeat(np.arange(cols * self.n_blocks) % self.n_blocks, np.diff(self.runptr))
            codes = self.entries & ((1 << self.code_bits) - 1)
            if (np.any(block * self.block_rows + (self.entries >> self.code_bits) >= rows)
                    or int(codes.max()) >= self.table.shape[0]):
                raise FormatError(f"{name}: a column entry points outside the weight or its codebook")

    def to_dense(self) -> np.ndarray:
        """The dense float32 matrix (tests and references only)."""
        out = np.zeros(self.shape, dtype=np.float32)
        col, block = np.divmod(np.repeat(np.arange(self.runptr.shape[0] - 1), np.diff(self.runptr)), self.n_blocks)
        row = block * self.block_rows + (self.entries >> self.code_bits)
        np.add.at(out, (row, col), self.table[self.entries & ((1 << self.code_bits) - 1)])
        return out


@numba.njit(cache=True, nogil=True)
def _count_runs(indptr, indices, block_rows, n_blocks, counts):
    """counts[j * n_blocks + b] = entries of column j in row block b."""
    for r in range(indptr.shape[0] - 1):
        b = r // block_rows
        for k in range(indptr[r], indptr[r + 1]):
            counts[np.int64(indices[k]) * n_blocks + b] += 1


@numba.njit(cache=True, nogil=True)
def _fill_runs(indptr, indices, codes, block_rows, code_bits, n_blocks, starts, pad_code, entries):
    """A stable counting sort of the CSR entries into their runs (rows stay increasing within a run), then
    each run's padding: the 0.0 centroid's code on the run's last row. Only the output is allocated, so
    building the layout costs no weight-sized temporaries."""
    n_runs = starts.shape[0] - 1
    cursor = starts[:-1].copy()
    for r in range(indptr.shape[0] - 1):
        b = r // block_rows
        local = (r - b * block_rows) << code_bits
        for k in range(indptr[r], indptr[r + 1]):
            run = np.int64(indices[k]) * n_blocks + b
            entries[cursor[run]] = local | codes[k]
            cursor[run] += 1
    for run in range(n_runs):
        if cursor[run] > starts[run]:
            last = (entries[cursor[run] - 1] >> code_bits) << code_bits
            for pos in range(cursor[run], starts[run + 1]):
                entries[pos] = last | pad_code


def column_blocks(layout: SparseRows, threads: int | None = None) -> ColumnBlocks | None:
    """The column-blocked copy of a codebook layout, or None where the kernel cannot read it (pruned-only
    values, more than 511 centroids, more than 2**31 entries, a big-endian host).

    Rows are cut into as many blocks as the 16-bit entries need, and at least ``threads`` (default: numba's
    current thread count) when every block keeps :data:`MIN_BLOCK_ROWS` rows: on one thread fewer blocks mean
    longer runs per column (fewer loop exits), on several each thread gets its own rows."""
    if layout.direct or layout.n_pad or sys.byteorder != "little":
        return None
    n_rows, n_cols = layout.shape
    table = np.concatenate([layout.table, np.zeros(1, dtype=np.float32)]).astype(np.float32)
    code_bits = max(int(table.shape[0] - 1).bit_length(), 1)
    if code_bits > MAX_CODE_BITS:
        return None
    threads = numba.get_num_threads() if threads is None else threads
    n_blocks = max(-(-n_rows // (1 << (16 - code_bits))), min(threads, n_rows // MIN_BLOCK_ROWS), 1)
    block_rows = max(-(-n_rows // n_blocks), 1)
    n_blocks = -(-n_rows // block_rows)
    counts = np.zeros(n_cols * n_blocks, dtype=np.int64)
    _count_runs(layout.indptr, layout.indices, block_rows, n_blocks, counts)
    starts = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(-(-counts // RUN) * RUN, out=starts[1:])
    if starts[-1] >= 1 << 31:
        return None
    entries = np.empty(int(starts[-1]), dtype=np.uint16)
    _fill_runs(layout.indptr, layout.indices, layout.codes, block_rows, code_bits, n_blocks, starts,
               table.shape[0] - 1, entries)
    blocks = ColumnBlocks((n_rows, n_cols), block_rows, code_bits, n_blocks, starts.astype(np.int32), entries, table,
                          int(entries.shape[0]) - layout.nnz)
    # built from a validated layout by the code above (tests check ``validate`` on it); validating here would
    # allocate several weight-sized temporaries at every load
    return blocks


COLUMN_PARALLEL_MIN_WORK = 150_000
"""Entries the column kernel visits below which its serial build wins (measured on the 2-core VM: the two
threads sweep interleaved runs of each column, so small layers gain nothing from the second one)."""


PREFETCH_COLUMNS = 4
"""Non-zero input columns the column kernels prefetch ahead (2-8 measured alike on AlexNet FC shapes)."""


@numba.njit(inline="always", **kernels.SCALAR_OPTS)
def _scatter_run(out, entries64, g0, g1, v, table, code_bits):
    """``out[row] += v * table[code]`` for the entries of one run, four per 64-bit word ``g0 .. g1 - 1``."""
    mask = (1 << code_bits) - 1
    for g in range(g0, g1):
        w = entries64[g]
        e0 = w & 0xFFFF
        e1 = (w >> 16) & 0xFFFF
        e2 = (w >> 32) & 0xFFFF
        e3 = w >> 48
        out[e0 >> code_bits] += v * table[e0 & mask]
        out[e1 >> code_bits] += v * table[e1 & mask]
        out[e2 >> code_bits] += v * table[e2 & mask]
        out[e3 >> code_bits] += v * table[e3 & mask]


def _spmv_columns(runptr, n_blocks, entries64, table, x, bias, y, block_rows, code_bits, nonzero, n):
    """Batch-1 ``y = W x + bias`` from column blocks (:mod:`deepshrink.runtime.columns`), visiting only the
    ``n`` columns listed in ``nonzero`` (the non-zero inputs: EIE's activation sparsity).

    Each row block (one task; it owns its rows of ``y``) scatters ``x[j] * table[code]`` of every entry of those
    columns into its rows, four entries per 64-bit load, prefetching the run :data:`PREFETCH_COLUMNS` columns
    ahead. A NaN input must be listed as non-zero so that it propagates like in a dense product.
    """
    n_rows = y.shape[0]
    for b in prange(n_blocks):
        r0 = b * block_rows
        r1 = min(n_rows, r0 + block_rows)
        out = y[r0:r1]
        for r in range(r1 - r0):
            out[r] = bias[r0 + r]
        for t in range(n):
            if t + PREFETCH_COLUMNS < n:
                ahead = nonzero[t + PREFETCH_COLUMNS] * n_blocks + b
                for q in range(runptr[ahead] >> 2, runptr[ahead + 1] >> 2, 8):
                    prefetch(entries64, q)  # type: ignore[call-arg]
            j = nonzero[t]
            v = x[j]
            k = j * n_blocks + b
            _scatter_run(out, entries64, runptr[k] >> 2, runptr[k + 1] >> 2, v, table, code_bits)


def _spmv_columns_serial(runptr, n_blocks, entries64, table, x, bias, y, block_rows, code_bits, nonzero, n):
    """:func:`_spmv_columns` on one thread: column by column, all blocks of a column in turn, i.e. one
    ascending sweep over the entries (the runs are stored column-major), prefetched a few columns ahead."""
    for r in range(y.shape[0]):
        y[r] = bias[r]
    for t in range(n):
        if t + PREFETCH_COLUMNS < n:
            ahead = nonzero[t + PREFETCH_COLUMNS] * n_blocks
            for q in range(runptr[ahead] >> 2, runptr[ahead + n_blocks] >> 2, 8):
                prefetch(entries64, q)  # type: ignore[call-arg]
        j = nonzero[t]
        v = x[j]
        for b in range(n_blocks):
            out = y[b * block_rows:]
            k = j * n_blocks + b
            _scatter_run(out, entries64, runptr[k] >> 2, runptr[k + 1] >> 2, v, table, code_bits)


def _batch1(x, bias, y, nonzero, max_nonzero, min_parallel_rows, min_parallel_columns, indptr, cols64, codes64, row_table, runptr,
            n_blocks, entries64, col_table, block_rows, code_bits):
    """One compiled entry for batch-1 Linear holding both layouts: list the non-zero inputs, then run the
    column kernel when there are at most ``max_nonzero`` of them, else the row-grouped kernel; each in its
    parallel build when the entries it will visit reach ``min_parallel_columns`` / ``min_parallel_rows``
    (:data:`COLUMN_PARALLEL_MIN_WORK` / :data:`PARALLEL_MIN_WORK`; a huge value on one thread). One numba call per layer (not several numpy and Python steps) keeps the per-call overhead small,
    which matters when a forward pass has evicted the interpreter's state from the caches."""
    n = 0
    for j in range(x.shape[0]):
        nonzero[n] = j
        n += x[j] != 0
    if n <= max_nonzero:
        visited = entries64.shape[0] * 4 * n // max(x.shape[0], 1)
        if visited >= min_parallel_columns:
            spmv_columns_parallel(runptr, n_blocks, entries64, col_table, x, bias, y, block_rows, code_bits, nonzero, n)
        else:
            spmv_columns_serial(runptr, n_blocks, entries64, col_table, x, bias, y, block_rows, code_bits, nonzero, n)
    elif cols64.shape[0] * 4 >= min_parallel_rows:
        kernels.spmv_grouped_parallel(indptr, cols64, codes64, row_table, x, bias, y)
    else:
        kernels.spmv_grouped_serial(indptr, cols64, codes64, row_table, x, bias, y)


spmv_columns_parallel = kernels.parallel_build(_spmv_columns, kernels.SCALAR_OPTS)
spmv_columns_serial = numba.njit(**kernels.SCALAR_OPTS)(_spmv_columns_serial)
batch1 = numba.njit(**kernels.SCALAR_OPTS)(_batch1)
