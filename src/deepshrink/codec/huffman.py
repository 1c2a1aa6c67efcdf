"""Canonical, length-limited Huffman coding of integer symbol streams (weight indices, index differences).

* Code lengths come from a textbook Huffman tree over the symbol counts, limited to :data:`MAX_CODE_LEN`
  bits (lengths above the limit are clamped and the Kraft sum repaired by lengthening the rarest codes).
* Codes are canonical, so the table stores only one 4-bit length per symbol ("compact canonical code table"):
  dense (one nibble per alphabet symbol) or sparse (varint symbol gaps + nibbles), whichever is smaller.
* Encode and decode are numba loops over a 64-bit bit buffer; decode uses a ``2**max_len`` lookup table.
  The only Python loops run over the alphabet, never over the data.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numba
import numpy as np

from ..core.errors import FormatError
from .bits import pack_nibbles, read_varints, unpack_nibbles, varint_bytes

__all__ = ["MAX_ALPHABET", "MAX_CODE_LEN", "HuffmanTable", "huffman_decode", "huffman_encode", "huffman_lengths"]

MAX_CODE_LEN = 15
"""Longest code (fits a nibble; the decode table has at most 32768 entries)."""

FAST_CODE_LEN = 12
"""Preferred code-length limit: a 4096-entry decode table, about 1.6x faster to decode than 15 bits."""

MAX_ALPHABET = 1 << 16
"""Largest alphabet a table may describe (larger alphabets are stored fixed-width)."""


def huffman_lengths(counts: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Code length per symbol (0 for absent symbols) of a Huffman code limited to ``max_len`` bits.

    A single present symbol gets a 1-bit code so every coded symbol costs at least one bit.
    """
    counts = np.asarray(counts, dtype=np.int64)
    present = np.flatnonzero(counts > 0)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if present.size == 0:
        return lengths
    if present.size > (1 << max_len):
        raise ValueError(f"{present.size} distinct symbols need codes longer than {max_len} bits")
    if present.size == 1:
        lengths[present[0]] = 1
        return lengths
    # Huffman tree: heap of (weight, tiebreak, node); children recorded to compute depths afterwards.
    heap: list[tuple[int, int]] = [(int(counts[s]), i) for i, s in enumerate(present)]
    heapq.heapify(heap)
    parent = [-1] * (2 * present.size - 1)
    nxt = present.size
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (w1 + w2, nxt))
        nxt += 1
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):  # parents always have larger ids than children
        depth[node] = depth[parent[node]] + 1
    lengths[present] = depth[: present.size]
    if lengths.max() > max_len:
        lengths[present] = _limit_lengths(counts[present], lengths[present], max_len)
    return lengths


def _limit_lengths(counts: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Clamp lengths to ``max_len`` and restore Kraft's inequality, lengthening the rarest symbols first."""
    lengths = np.minimum(lengths, max_len)
    order = np.argsort(counts, kind="stable")  # rarest first
    kraft = int(np.sum(1 << (max_len - lengths)))
    budget = 1 << max_len
    while kraft > budget:
        for i in order:
            if lengths[i] < max_len:
                kraft -= 1 << (max_len - lengths[i] - 1)
                lengths[i] += 1
                break
    # Spend leftover slack on the most frequent symbols (shorten where the Kraft sum allows).
    for i in order[::-1]:
        while lengths[i] > 1 and kraft + (1 << (max_len - lengths[i])) <= budget:
            kraft += 1 << (max_len - lengths[i])
            lengths[i] -= 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values for ``lengths`` (symbols sorted by length, then value)."""
    codes = np.zeros(lengths.size, dtype=np.uint64)
    present = np.flatnonzero(lengths > 0)
    order = present[np.lexsort((present, lengths[present]))]
    code = 0
    prev_len = 0
    for rank, sym in enumerate(order.tolist()):
        length = int(lengths[sym])
        if rank:
            code = (code + 1) << (length - prev_len)
        prev_len = length
        codes[sym] = code
    return codes


@dataclass(frozen=True)
class HuffmanTable:
    """Code lengths over the alphabet ``[0, len(lengths))``; serialises to a compact canonical table."""

    lengths: np.ndarray

    @classmethod
    def from_counts(cls, counts: np.ndarray, max_len: int | None = None) -> HuffmanTable:
        """Huffman code for ``counts``; by default limited to :data:`FAST_CODE_LEN` bits (a decode table that
        stays in L1 cache) unless that costs more than 0.1% over :data:`MAX_CODE_LEN`."""
        if max_len is not None:
            return cls(huffman_lengths(counts, max_len))
        counts = np.asarray(counts, dtype=np.int64)
        full = huffman_lengths(counts, MAX_CODE_LEN)
        if np.count_nonzero(counts) > 1 << FAST_CODE_LEN or full.max() <= FAST_CODE_LEN:
            return cls(full)
        fast = huffman_lengths(counts, FAST_CODE_LEN)
        return cls(fast if (fast * counts).sum() <= 1.001 * (full * counts).sum() else full)

    @property
    def alphabet(self) -> int:
        return int(self.lengths.size)

    def to_bytes(self) -> bytes:
        """Mode byte, then dense nibbles or (varint count, varint symbol gaps, nibbles): the smaller one."""
        dense = b"\x00" + pack_nibbles(self.lengths)
        present = np.flatnonzero(self.lengths > 0)
        gaps = np.diff(np.concatenate([[-1], present])) - 1
        sparse = b"\x01" + varint_bytes([present.size]) + varint_bytes(gaps) + pack_nibbles(self.lengths[present])
        return dense if len(dense) <= len(sparse) else sparse

    @classmethod
    def from_bytes(cls, data: bytes, alphabet: int) -> HuffmanTable:
        """Parse and validate a table (FormatError on malformed or over-subscribed codes)."""
        if not 1 <= alphabet <= MAX_ALPHABET:
            raise FormatError(f"Huffman alphabet of {alphabet} symbols is outside 1..{MAX_ALPHABET}")
        if not data:
            raise FormatError("empty Huffman table")
        lengths = np.zeros(alphabet, dtype=np.int64)
        if data[0] == 0:
            if len(data) != 1 + (alphabet + 1) // 2:
                raise FormatError(f"dense Huffman table has {len(data)} bytes for {alphabet} symbols")
            lengths[:] = unpack_nibbles(data[1:], alphabet)
        elif data[0] == 1:
            (count,), pos = read_varints(data, 1, 1, "Huffman table")
            if not 1 <= count <= alphabet:
                raise FormatError(f"sparse Huffman table lists {count} symbols for an alphabet of {alphabet}")
            gaps, pos = read_varints(data, count, pos, "Huffman table")
            symbols = np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1
            if symbols[-1] >= alphabet:
                raise FormatError(f"Huffman table names symbol {symbols[-1]} beyond the alphabet ({alphabet})")
            if len(data) - pos != (count + 1) // 2:
                raise FormatError("sparse Huffman table has the wrong number of length bytes")
            lengths[symbols] = unpack_nibbles(data[pos:], count)
        else:
            raise FormatError(f"unknown Huffman table mode {data[0]}")
        if not lengths.any():
            raise FormatError("Huffman table assigns no codes")
        kraft = int(np.sum((1 << (MAX_CODE_LEN - lengths[lengths > 0])).astype(np.int64)))
        if kraft > 1 << MAX_CODE_LEN:
            raise FormatError("Huffman table is over-subscribed (Kraft sum > 1)")
        return cls(lengths)

    def decode_table(self) -> tuple[np.ndarray, np.ndarray, int]:
        """``(symbol, length)`` lookup tables indexed by the next ``max_len`` bits, and ``max_len``."""
        max_len = int(self.lengths.max())
        codes = canonical_codes(self.lengths)
        present = np.flatnonzero(self.lengths > 0)
        spans = (1 << (max_len - self.lengths[present])).astype(np.int64)
        starts = codes[present].astype(np.int64) << (max_len - self.lengths[present])
        size = 1 << max_len
        lut_sym = np.zeros(size, dtype=np.uint16)  # small tables stay in cache
        lut_len = np.zeros(size, dtype=np.uint8)
        idx = np.repeat(starts, spans) + (np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans))
        lut_sym[idx] = np.repeat(present, spans)
        lut_len[idx] = np.repeat(self.lengths[present], spans)
        return lut_sym, lut_len, max_len


@numba.njit(cache=True, nogil=True)
def _encode_kernel(symbols, codes, lengths, out):
    """Append each code to a 64-bit buffer, flushing 32 bits at a time; returns the bytes written."""
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    for i in range(symbols.size):
        s = symbols[i]
        length = lengths[s]
        acc = (acc << np.uint64(length)) | codes[s]
        nbits += length
        if nbits >= 32:
            nbits -= 32
            word = acc >> np.uint64(nbits)
            out[pos] = np.uint8((word >> np.uint64(24)) & np.uint64(0xFF))
            out[pos + 1] = np.uint8((word >> np.uint64(16)) & np.uint64(0xFF))
            out[pos + 2] = np.uint8((word >> np.uint64(8)) & np.uint64(0xFF))
            out[pos + 3] = np.uint8(word & np.uint64(0xFF))
            pos += 4
            acc &= (np.uint64(1) << np.uint64(nbits)) - np.uint64(1)
    while nbits >= 8:
        nbits -= 8
        out[pos] = np.uint8((acc >> np.uint64(nbits)) & np.uint64(0xFF))
        pos += 1
    if nbits > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nbits)) & np.uint64(0xFF))
        pos += 1
    return pos


@numba.njit(cache=True, nogil=True)
def _decode_kernel(data, count, max_len, lut_sym, lut_len, out):
    """Returns bits consumed, or -1 on an invalid code; reading past the end yields zero bits (checked after)."""
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    nbytes = data.size
    mask = (np.uint64(1) << np.uint64(max_len)) - np.uint64(1)
    for i in range(count):
        if nbits < max_len:
            while nbits <= 56:  # refill up to 64 bits at once
                byte = np.uint64(data[pos]) if pos < nbytes else np.uint64(0)
                pos += 1
                acc = (acc << np.uint64(8)) | byte
                nbits += 8
        idx = (acc >> np.uint64(nbits - max_len)) & mask
        length = lut_len[idx]
        if length == 0:
            return -1
        out[i] = lut_sym[idx]
        nbits -= length
    return pos * 8 - nbits


@numba.njit(cache=True, nogil=True)
def _total_bits(symbols, lengths):
    """Sum of code lengths, or -1 when a symbol is outside the table or has no code."""
    total = 0
    for i in range(symbols.size):
        s = symbols[i]
        if s < 0 or s >= lengths.size or lengths[s] == 0:
            return -1
        total += lengths[s]
    return total


def huffman_encode(symbols: np.ndarray, table: HuffmanTable) -> bytes:
    """Bit stream of ``symbols`` (ints in ``[0, alphabet)`` with a code each), MSB-first, zero-padded."""
    symbols = np.ascontiguousarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size == 0:
        return b""
    lengths = table.lengths.astype(np.int64)
    total_bits = int(_total_bits(symbols, lengths))
    if total_bits < 0:
        raise ValueError("symbol without a Huffman code")
    codes = canonical_codes(table.lengths)
    out = np.zeros((total_bits + 7) // 8 + 8, dtype=np.uint8)
    written = _encode_kernel(symbols, codes, lengths, out)
    return out[:written].tobytes()


def huffman_decode(data: bytes, count: int, table: HuffmanTable) -> np.ndarray:
    """Decode ``count`` symbols (int64); FormatError on invalid codes, truncation or trailing bytes."""
    if count == 0:
        if data:
            raise FormatError("Huffman stream of 0 symbols holds data")
        return np.zeros(0, dtype=np.int64)
    if count > 8 * len(data):
        raise FormatError(f"Huffman stream of {len(data)} bytes cannot hold {count} symbols")
    lut_sym, lut_len, max_len = table.decode_table()
    out = np.empty(count, dtype=np.int64)
    used = _decode_kernel(np.frombuffer(data, dtype=np.uint8), count, max_len, lut_sym, lut_len, out)
    if used < 0:
        raise FormatError("Huffman stream holds a bit pattern that is no code")
    if used > 8 * len(data):
        raise FormatError("Huffman stream is truncated")
    if (used + 7) // 8 != len(data):
        raise FormatError("Huffman stream has trailing bytes")
    return out
