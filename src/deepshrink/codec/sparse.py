"""Relative (difference) index of a sparse tensor, as in Deep Compression's Figure 2.

The positions of the kept weights (C order of the flattened tensor) are stored as differences from the
previous entry, each in ``bits`` bits. With ``M = 2**bits - 1``:

* a code ``c`` in ``[0, M - 1]`` places the next kept weight ``c + 1`` positions after the previous entry
  (so the largest representable difference is ``M``);
* the code ``M`` is a *filler*: a zero weight ``M`` positions further on, inserted when a gap exceeds ``M``.

Fillers also run on to the end of the tensor, so the last entry lies less than ``M`` positions from the
end: a reader can then bound a tensor's size by its index length before allocating anything.

Fillers are recognised from the index alone, so the value stream holds only the kept weights (a filler's
zero costs no weight bits) and the mask round-trips exactly, even where a kept weight is itself zero.
Encode and decode are vectorised numpy (cumsum / repeat), with no per-element Python loop.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import FormatError

__all__ = ["MAX_INDEX_BITS", "decode_positions", "encode_positions", "filler_code", "mask_from_positions", "max_numel"]

MAX_INDEX_BITS = 16


def filler_code(bits: int) -> int:
    """The filler code, equal to the largest difference a kept weight can have (``2**bits - 1``)."""
    return (1 << bits) - 1


def encode_positions(mask: np.ndarray, bits: int) -> np.ndarray:
    """Index codes (int64 in ``[0, 2**bits - 1]``) for the kept positions of ``mask`` (any shape)."""
    if not 1 <= bits <= MAX_INDEX_BITS:
        raise ValueError(f"index bits must be 1..{MAX_INDEX_BITS}, got {bits}")
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    positions = np.flatnonzero(flat)
    step = filler_code(bits)
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // step
    rest = gaps - fillers * step  # in [1, step]
    entries = fillers + 1
    last = int(positions[-1]) if positions.size else -1
    tail = (flat.size - 1 - last) // step  # trailing fillers: the index then covers the whole tensor
    codes = np.full(int(entries.sum()) + tail, step, dtype=np.int64)
    codes[np.cumsum(entries) - 1] = rest - 1
    return codes


def max_numel(entries: int, bits: int) -> int:
    """The largest tensor an index of ``entries`` codes can describe (checked before allocating)."""
    step = filler_code(bits)
    return (entries + 1) * step - 1


def decode_positions(codes: np.ndarray, bits: int, numel: int) -> np.ndarray:
    """Flat kept positions (int64, increasing) from index codes; FormatError if one lies beyond ``numel``."""
    if not 1 <= bits <= MAX_INDEX_BITS:
        raise FormatError(f"index bits must be 1..{MAX_INDEX_BITS}, got {bits}")
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    step = filler_code(bits)
    if numel > max_numel(codes.size, bits):
        raise FormatError(f"relative index of {codes.size} entries cannot cover a {numel}-element tensor")
    if codes.size and (codes.min() < 0 or codes.max() > step):
        raise FormatError(f"relative index code outside 0..{step}")
    advance = np.where(codes == step, step, codes + 1)
    positions = np.cumsum(advance) - 1
    last = int(positions[-1]) if positions.size else -1
    if last >= numel:
        raise FormatError(f"relative index reaches position {last} of a {numel}-element tensor")
    if numel - 1 - last >= step:
        raise FormatError(f"relative index ends at position {last}, {numel - 1 - last} short of the tensor's end")
    return positions[codes != step]


def mask_from_positions(positions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of ``shape`` with ``positions`` set."""
    mask = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
    mask[positions] = True
    return mask.reshape(shape)
