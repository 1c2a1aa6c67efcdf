"""Asymmetric numeral systems (constriction's ``AnsCoder``) with a categorical model built from stored counts.

ANS spends fractional bits per symbol, so it gets within a fraction of a percent of the empirical entropy
where Huffman loses up to one bit per symbol on skewed distributions (e.g. a dominant index difference).
The model is fully determined by the stored counts, so encoder and decoder build the identical model.
Counts are scaled so the largest is at most a limit (at most :data:`COUNT_LIMIT`): coarser counts make a
smaller table at a small cost in the data, so the encoder tries :data:`COUNT_LIMITS` and keeps the smallest.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from ..core.errors import FormatError
from .bits import read_varints, varint_bytes

__all__ = ["COUNT_LIMIT", "AnsTable", "ans_decode", "ans_encode"]

COUNT_LIMIT = 4095
COUNT_LIMITS = (15, 127, 4095)
MAX_ALPHABET = 1 << 16


@dataclass(frozen=True)
class AnsTable:
    """Symbol frequencies over ``[0, len(counts))``, serialised as varints (dense or sparse, the smaller)."""

    counts: np.ndarray

    @classmethod
    def from_counts(cls, counts: np.ndarray, limit: int = COUNT_LIMIT) -> AnsTable:
        if not 1 <= limit <= COUNT_LIMIT:
            raise ValueError(f"count limit must be 1..{COUNT_LIMIT}")
        counts = np.asarray(counts, dtype=np.int64)
        top = int(counts.max()) if counts.size else 0
        if top > limit:
            scaled = np.rint(counts * (limit / top)).astype(np.int64)
            counts = np.where(counts > 0, np.maximum(scaled, 1), 0)
        return cls(counts)

    @property
    def alphabet(self) -> int:
        return int(self.counts.size)

    def model(self) -> constriction.stream.model.Categorical:
        probs = self.counts.astype(np.float64)
        if probs.size < 2:  # constriction needs two symbols; the padding one has zero count and never occurs
            probs = np.concatenate([probs, np.zeros(2 - probs.size)])
        return constriction.stream.model.Categorical(probs, perfect=False)

    def to_bytes(self) -> bytes:
        dense = b"\x00" + varint_bytes(self.counts)
        present = np.flatnonzero(self.counts > 0)
        gaps = np.diff(np.concatenate([[-1], present])) - 1
        sparse = b"\x01" + varint_bytes([present.size]) + varint_bytes(gaps) + varint_bytes(self.counts[present])
        return dense if len(dense) <= len(sparse) else sparse

    @classmethod
    def from_bytes(cls, data: bytes, alphabet: int) -> AnsTable:
        if not 1 <= alphabet <= MAX_ALPHABET:
            raise FormatError(f"ANS alphabet of {alphabet} symbols is outside 1..{MAX_ALPHABET}")
        if not data:
            raise FormatError("empty ANS table")
        counts = np.zeros(alphabet, dtype=np.int64)
        if data[0] == 0:
            values, pos = read_varints(data, alphabet, 1, "ANS table")
            counts[:] = values
        elif data[0] == 1:
            (count,), pos = read_varints(data, 1, 1, "ANS table")
            if not 1 <= count <= alphabet:
                raise FormatError(f"sparse ANS table lists {count} symbols for an alphabet of {alphabet}")
            gaps, pos = read_varints(data, count, pos, "ANS table")
            symbols = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
            if symbols[-1] >= alphabet:
                raise FormatError(f"ANS table names symbol {symbols[-1]} beyond the alphabet ({alphabet})")
            values, pos = read_varints(data, count, pos, "ANS table")
            counts[symbols] = values
        else:
            raise FormatError(f"unknown ANS table mode {data[0]}")
        if pos != len(data):
            raise FormatError("ANS table has trailing bytes")
        if counts.max() > COUNT_LIMIT or counts.sum() == 0:
            raise FormatError("ANS table counts are out of range")
        return cls(counts)


def ans_encode(symbols: np.ndarray, table: AnsTable) -> bytes:
    """Compressed words (little-endian uint32) of ``symbols`` under the table's model."""
    symbols = np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1)
    if symbols.size == 0:
        return b""
    if symbols.min() < 0 or symbols.max() >= table.alphabet or not np.all(table.counts[symbols] > 0):
        raise ValueError("symbol with zero count in the ANS table")
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, table.model())
    return coder.get_compressed().astype("<u4").tobytes()


def ans_decode(data: bytes, count: int, table: AnsTable) -> np.ndarray:
    """Decode ``count`` symbols (int64); FormatError on malformed or not fully consumed data."""
    if count == 0:
        if data:
            raise FormatError("ANS stream of 0 symbols holds data")
        return np.zeros(0, dtype=np.int64)
    if len(data) % 4:
        raise FormatError(f"ANS stream length {len(data)} is not a multiple of 4 bytes")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        out = np.asarray(coder.decode(table.model(), count), dtype=np.int64)
        empty = coder.is_empty()
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise FormatError(f"ANS stream is malformed: {exc}") from exc
    if not empty:
        raise FormatError("ANS stream holds more data than its symbols")
    if out.size and (out.min() < 0 or out.max() >= table.alphabet or not np.all(table.counts[out] > 0)):
        raise FormatError("ANS stream decodes to a symbol outside its table")
    return out
