"""Context-modelled mask coding: the pruning mask as bits under a rank-1 (row rate x column rate) model, ANS-coded.

Magnitude pruning leaves rows and columns of very different densities (an MNIST fc1 keeps central pixels,
drops border pixels), which the relative index's single gap distribution cannot see. Here position
``(i, j)`` of the weight viewed as ``(shape[0], -1)`` is kept with probability ``p_ij = r_i * c_j / p``,
where ``r_i`` / ``c_j`` are the row / column densities rounded to 16 log-spaced levels (one nibble each; level
0 = empty row or column, whose positions then cost nothing) and ``p`` is the overall density. All model
arithmetic is integer (16-bit fixed point), so encoder and decoder build identical probabilities; the bits
are coded with constriction's ``AnsCoder`` and a ``Bernoulli`` model per position.

This is an optional alternative to the relative index (``save_compressed(index_coding="auto")`` keeps
whichever is smaller per layer); on the pruned LeNet-300 it saves 7-11% of the index bytes of fc1/fc2.
"""

from __future__ import annotations

import constriction
import numpy as np

from ..core.errors import FormatError
from .bits import pack_nibbles, unpack_nibbles

__all__ = ["LEVELS", "MAX_POSITIONS_PER_BYTE", "decode_mask_ctx", "decode_mask_ctx_positions", "encode_mask_ctx"]

LEVELS = np.array([0] + [round(65536 * 2 ** (-(15 - q) / 2)) for q in range(1, 15)] + [65535], dtype=np.int64)
"""Row / column density per level, in units of 2**-16: 0, then 2**-7 ... 1 in steps of sqrt(2)."""
DECODE_CHUNK = 1 << 16
"""Positions whose probabilities the decoder builds at once (a few rows): decoding a layer never holds float64
probabilities for the whole weight (8 bytes per position would exceed the dense fp32 weight itself)."""
MAX_POSITIONS_PER_BYTE = 256
"""Coded positions per data byte at most (>= 1/32 bit each), so a reader bounds its work by the file."""


def _quantize(rate: np.ndarray) -> np.ndarray:
    q = np.zeros(rate.size, dtype=np.int64)
    live = rate > 0
    grid = np.log2(LEVELS[1:] / 65536.0)
    q[live] = 1 + np.abs(np.log2(rate[live])[:, None] - grid[None, :]).argmin(axis=1)
    return q


def _probabilities(qr: np.ndarray, qc: np.ndarray, pbar: int) -> np.ndarray:
    """P(kept) of the live rows x live columns, as float64 multiples of 2**-16 (exact, integer-derived)."""
    p = (LEVELS[qr[qr > 0]][:, None] * LEVELS[qc[qc > 0]][None, :]) // pbar
    return (np.clip(p, 1, 65535).astype(np.float64) / 65536.0).reshape(-1)


def _model() -> constriction.stream.model.Bernoulli:
    return constriction.stream.model.Bernoulli(perfect=False)


def encode_mask_ctx(mask: np.ndarray) -> tuple[bytes, bytes, int, int] | None:
    """``(model, data, rows, pbar)`` for ``mask``, or None when the bound per byte would not hold."""
    flat = np.asarray(mask, dtype=bool)
    rows = flat.shape[0] if flat.ndim else 1
    grid = flat.reshape(rows, -1)
    if grid.size == 0 or not grid.any():
        return None
    qr, qc = _quantize(grid.mean(axis=1)), _quantize(grid.mean(axis=0))
    pbar = max(1, round(float(grid.mean()) * 65536))
    symbols = grid[qr > 0][:, qc > 0].reshape(-1).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, _model(), _probabilities(qr, qc, pbar))
    data = coder.get_compressed().astype("<u4").tobytes()
    if symbols.size > MAX_POSITIONS_PER_BYTE * len(data):
        return None
    return pack_nibbles(np.concatenate([qr, qc])), data, rows, pbar


def decode_mask_ctx_positions(model: bytes | np.ndarray, data: bytes, shape: tuple[int, ...], rows: int,
                              pbar: int) -> np.ndarray:
    """The kept flat positions (int64, increasing) of the mask of ``shape``; FormatError on anything inconsistent
    (checked before allocating). Memory is bounded by the coded positions (at most 256 per data byte), never by
    the stated shape: rows and columns of level 0 cost nothing, not even a zero byte each. ``model``: the
    packed nibbles, or (version 2's entropy-coded levels, decoded) the ``rows + columns`` levels themselves."""
    numel = int(np.prod(shape, dtype=np.int64))
    if rows < 1 or numel % rows or (shape and rows != shape[0]) or not 1 <= pbar <= 65536:
        raise FormatError(f"context mask model has rows={rows}, pbar={pbar} for shape {list(shape)}")
    cols = numel // rows
    if isinstance(model, np.ndarray):
        if model.size != rows + cols or (model.size and (model.min() < 0 or model.max() >= LEVELS.size)):
            raise FormatError(f"context mask levels: {model.size} levels in 0..{LEVELS.size - 1} needed for {rows} "
                              f"rows and {cols} columns")
        levels = model.astype(np.int64)
    elif len(model) != (rows + cols + 1) // 2:
        raise FormatError(f"context mask model holds {len(model)} bytes for {rows} rows and {cols} columns")
    else:
        levels = unpack_nibbles(model, rows + cols)
    qr, qc = levels[:rows], levels[rows:]
    live = int(np.count_nonzero(qr)) * int(np.count_nonzero(qc))
    if len(data) % 4 or live > MAX_POSITIONS_PER_BYTE * len(data) or (live and not data):
        raise FormatError(f"context mask data of {len(data)} bytes cannot code {live} positions")
    if not live:
        if data:
            raise FormatError("context mask of an empty model holds data")
        return np.zeros(0, dtype=np.int64)
    live_rows, live_cols = np.flatnonzero(qr), np.flatnonzero(qc)
    chunk = max(1, DECODE_CHUNK // live_cols.size)  # live rows decoded per step
    found: list[np.ndarray] = []
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        for start in range(0, live_rows.size, chunk):
            part = live_rows[start:start + chunk]  # the probabilities of a few rows at a time, not the whole grid
            bits = np.asarray(coder.decode(_model(), _probabilities(qr[part], qc, pbar)), dtype=bool)
            r, c = np.nonzero(bits.reshape(part.size, live_cols.size))
            found.append(part[r].astype(np.int64) * cols + live_cols[c])
        empty = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise FormatError(f"context mask data is malformed: {exc}") from exc
    if not empty:
        raise FormatError("context mask data holds more than its positions")
    return np.concatenate(found)


def decode_mask_ctx(model: bytes, data: bytes, shape: tuple[int, ...], rows: int, pbar: int) -> np.ndarray:
    """The boolean mask of ``shape`` (see :func:`decode_mask_ctx_positions`)."""
    positions = decode_mask_ctx_positions(model, data, shape, rows, pbar)
    mask = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
    mask[positions] = True
    return mask.reshape(shape)
