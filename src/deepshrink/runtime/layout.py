"""The execution layout: a weight as CSR rows of narrow column indices and small codebook codes.

Decoded once at load time from whatever the file or the export dict holds (the entropy-coded storage
layout is the codec's business). Per non-zero the codebook form costs 3 bytes (uint16 column + uint8
code) instead of 4 for an fp32 value, and no dense matrix is ever formed: rows come straight from the
positions of the non-zeros.

For the batch-1 Linear kernel a codebook layout is additionally *row-grouped* (:func:`group_rows`): every row
is padded to a multiple of :data:`ROW_GROUP` (8) entries with explicit zeros (column = the row's last column,
code = an extra centroid 0.0 appended to the table), so the kernel can read 4 columns per 64-bit load and 8
codes per 64-bit load instead of one load each; the padding costs about 0.4% more entries on AlexNet FC6-8.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import FormatError
from ..core.kinds import StoredWeight

_EMPTY_CODES = np.zeros(0, dtype=np.uint8)

ROW_GROUP = 8
"""Entries per row are a multiple of this in a row-grouped layout (two uint64 column words, one code word)."""


def _narrow_uint(limit: int) -> type[np.unsignedinteger[Any]] | type[np.signedinteger[Any]]:
    """The smallest index dtype holding values ``0 .. limit - 1`` (uint8/uint16, else int32)."""
    if limit <= 1 << 8:
        return np.uint8
    if limit <= 1 << 16:
        return np.uint16
    return np.int32


@dataclass(frozen=True)
class SparseRows:
    """A (rows, cols) weight in CSR form; values are ``table[codes]`` (codebook) or ``table`` (direct).

    ``indptr`` int64 (rows + 1); ``indices`` uint16/int32 columns, sorted within a row; ``codes`` uint8/uint16
    (empty when direct); ``table`` float32: the centroids, or one value per non-zero when direct.
    ``group`` > 1: a row-grouped layout (:func:`group_rows`) whose rows hold a multiple of ``group`` entries,
    ``n_pad`` of them padding zeros coded ``len(table) - 1`` (a 0.0 centroid) that repeat a row's last column.
    """

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    codes: np.ndarray
    table: np.ndarray
    direct: bool
    group: int = 1
    n_pad: int = 0

    @property
    def nnz(self) -> int:
        """Non-zeros of the weight (padding entries of a row-grouped layout excluded)."""
        return int(self.indices.shape[0]) - self.n_pad

    @property
    def density(self) -> float:
        rows, cols = self.shape
        return self.nnz / max(rows * cols, 1)

    @property
    def nbytes(self) -> int:
        """Bytes the layout holds in memory (what the runtime keeps resident for this weight)."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.codes.nbytes + self.table.nbytes)

    def validate(self, name: str) -> None:
        """Check every invariant the unchecked kernels rely on; a FormatError names the weight."""
        rows, cols = self.shape
        entries = int(self.indices.shape[0])
        if self.indptr.shape != (rows + 1,) or self.indptr[0] != 0 or self.indptr[-1] != entries:
            raise FormatError(f"{name}: row pointer does not describe {entries} entries in {rows} rows")
        if self.group > 1 and (self.direct or np.any(self.indptr % self.group) or self.table[-1] != 0):
            raise FormatError(f"{name}: row-grouped layout without whole groups per row or a trailing 0.0 centroid")
        if self.nnz and np.any(np.diff(self.indptr) < 0):
            raise FormatError(f"{name}: row pointer is not monotone")
        if entries and int(self.indices.max()) >= cols:
            raise FormatError(f"{name}: column index {int(self.indices.max())} out of range for {cols} columns")
        if self.direct:
            if self.table.shape != (self.nnz,):
                raise FormatError(f"{name}: {self.table.shape[0]} values for {self.nnz} non-zeros")
        elif entries:
            if self.codes.shape != (entries,):
                raise FormatError(f"{name}: {self.codes.shape[0]} codes for {entries} entries")
            if int(self.codes.max()) >= self.table.shape[0]:
                raise FormatError(
                    f"{name}: codebook index {int(self.codes.max())} out of range for {self.table.shape[0]} centroids"
                )

    def to_dense(self) -> np.ndarray:
        """The dense float32 matrix (for tests and references only; the runtime never calls this)."""
        out = np.zeros(self.shape, dtype=np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        values = self.table if self.direct else self.table[self.codes]
        np.add.at(out, (rows, self.indices.astype(np.int64)), values)  # padding repeats a position with 0.0
        return out


def group_rows(layout: SparseRows, name: str = "weight") -> SparseRows:
    """The row-grouped copy of a codebook layout for the batch-1 Linear kernel, or ``layout`` itself when that
    kernel cannot read it (pruned-only values, int32 columns, more than 255 centroids, big-endian host).
    uint8 columns (at most 256 inputs) are widened to uint16, the kernel's one column width.

    Why: the plain kernel spends four loads per non-zero (column, code, centroid, input); with whole groups of
    8 entries per row it loads 8 columns and 8 codes with three 64-bit loads, i.e. 2.4 loads per non-zero.
    """
    if (layout.direct or layout.group > 1 or layout.indices.dtype == np.int32 or layout.codes.dtype != np.uint8
            or layout.table.shape[0] > 255 or sys.byteorder != "little"):
        return layout
    counts = np.diff(layout.indptr)
    padded = -(-counts // ROW_GROUP) * ROW_GROUP
    indptr = np.zeros_like(layout.indptr)
    np.cumsum(padded, out=indptr[1:])
    rows = np.repeat(np.arange(layout.shape[0]), padded)
    slot = np.arange(indptr[-1]) - indptr[rows]
    real = slot < counts[rows]
    # padding repeats the row's last column (an empty row stays empty); its code is the appended 0.0 centroid
    source = layout.indptr[rows] + np.minimum(slot, counts[rows] - 1)
    indices = layout.indices[source].astype(np.uint16)
    codes = np.full(indptr[-1], layout.table.shape[0], dtype=np.uint8)
    codes[real] = layout.codes[source[real]]
    table = np.concatenate([layout.table, np.zeros(1, dtype=np.float32)])
    grouped = SparseRows(layout.shape, indptr, indices, codes, table, False, ROW_GROUP, int(indptr[-1]) - layout.nnz)
    grouped.validate(name)
    return grouped


def _indptr(rows: np.ndarray, n_rows: int) -> np.ndarray:
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr


def from_coo(
    shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, codes: np.ndarray | None, table: np.ndarray,
    name: str = "weight",
) -> SparseRows:
    """Build the layout from row-major ordered coordinates (``codes`` None: ``table`` holds one value each)."""
    n_rows, n_cols = int(shape[0]), int(shape[1])
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n_cols):
        raise FormatError(f"{name}: a non-zero position lies outside the {n_rows}x{n_cols} weight")
    order = np.lexsort((cols, rows)) if rows.size and np.any(np.diff(rows * n_cols + cols) < 0) else None
    if order is not None:
        rows, cols = rows[order], cols[order]
    table = np.ascontiguousarray(table, dtype=np.float32).reshape(-1)
    if codes is None:
        values = table[order] if order is not None else table
        layout = SparseRows((n_rows, n_cols), _indptr(rows, n_rows), cols.astype(_narrow_uint(n_cols)),
                            _EMPTY_CODES, np.ascontiguousarray(values), True)
    else:
        codes = np.asarray(codes).reshape(-1)
        if order is not None:
            codes = codes[order]
        if codes.size and (codes.min() < 0 or codes.max() >= table.size):
            raise FormatError(f"{name}: codebook index out of range for {table.size} centroids")
        layout = SparseRows((n_rows, n_cols), _indptr(rows, n_rows), cols.astype(_narrow_uint(n_cols)),
                            codes.astype(_narrow_uint(max(table.size, 1))), table, False)
    layout.validate(name)
    return layout


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows = output units, columns = everything else (Linear: in; Conv: in/groups * kh * kw)."""
    if len(shape) < 2:
        raise FormatError(f"a weight needs at least 2 dimensions, got shape {shape}")
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


def sparse_rows(weight: StoredWeight, name: str = "weight") -> SparseRows:
    """The CSR layout of a stored weight: its kept positions with their palette codes (lookup kinds, one flat
    table for all channel groups) or their float values (float kinds). No weight-shaped array is formed; entries
    whose value is exactly zero by their code (-1) are left out."""
    n_rows, n_cols = _matrix_shape(weight.shape)
    positions = weight.flat_positions()
    palette = weight.palette()
    if palette is None:
        values = weight.values()
        rows, cols = np.divmod(positions, max(n_cols, 1))
        return from_coo((n_rows, n_cols), rows, cols, None, values, name)
    codes, table = palette.flat(weight)
    live = codes >= 0
    if not live.all():
        positions, codes = positions[live], codes[live]
    rows, cols = np.divmod(positions, max(n_cols, 1))
    return from_coo((n_rows, n_cols), rows, cols, codes, table, name)
