"""One integer symbol stream coded three ways: fixed width ("raw", the paper's P+Q), Huffman or ANS.

``encode_stream`` falls back to fixed width when the entropy code (table included) would not be smaller,
or when the alphabet is too large for a compact table; asked for ANS, it keeps Huffman where that is
smaller (short streams, where ANS's 8-byte final state dominates). The choice is recorded per stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import FormatError
from .ans import COUNT_LIMITS, AnsTable, ans_decode, ans_encode
from .ans import MAX_ALPHABET as ANS_MAX_ALPHABET
from .bits import pack_fixed, unpack_fixed
from .huffman import MAX_ALPHABET as HUFFMAN_MAX_ALPHABET
from .huffman import MAX_CODE_LEN, HuffmanTable, huffman_decode, huffman_encode

__all__ = ["CODINGS", "EncodedStream", "decode_stream", "encode_stream"]

CODINGS = ("raw", "huffman", "ans")
ANS_MAX_SYMBOLS_PER_BYTE = 256
"""An ANS stream holds at most this many symbols per byte (>= 1/32 bit each), so a reader can bound a
stream's size by its bytes; a stream that would beat it is near-constant and is Huffman-coded instead."""


@dataclass(frozen=True)
class EncodedStream:
    """A coded stream: ``table`` (empty for raw) and ``data`` bytes, plus what a reader needs to decode."""

    coding: str
    count: int
    alphabet: int
    raw_bits: int
    table: bytes
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.table) + len(self.data)


def encode_stream(symbols: np.ndarray, alphabet: int, raw_bits: int, entropy: str) -> EncodedStream:
    """Code ``symbols`` (ints in ``[0, alphabet)``) with ``entropy`` or fixed width, whichever is smaller."""
    if entropy not in CODINGS:
        raise ValueError(f"unknown coding {entropy!r}")
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet or alphabet > 1 << raw_bits):
        raise ValueError("symbols do not fit the alphabet / fixed width")
    raw = EncodedStream("raw", symbols.size, alphabet, raw_bits, b"", pack_fixed(symbols, raw_bits))
    if entropy == "raw" or symbols.size == 0:
        return raw
    limit = HUFFMAN_MAX_ALPHABET if entropy == "huffman" else ANS_MAX_ALPHABET
    if alphabet > limit:
        return raw
    counts = np.bincount(symbols, minlength=alphabet)
    if entropy == "huffman":
        if np.count_nonzero(counts) > 1 << MAX_CODE_LEN:
            return raw
        htable = HuffmanTable.from_counts(counts)
        coded = EncodedStream("huffman", symbols.size, alphabet, raw_bits, htable.to_bytes(),
                              huffman_encode(symbols, htable))
    else:
        candidates = []
        for limit in COUNT_LIMITS:  # coarser counts: smaller table, slightly longer data; keep the best
            atable = AnsTable.from_counts(counts, limit)
            candidates.append(EncodedStream("ans", symbols.size, alphabet, raw_bits, atable.to_bytes(),
                                            ans_encode(symbols, atable)))
        coded = min(candidates, key=lambda c: c.nbytes)
        huffman = encode_stream(symbols, alphabet, raw_bits, "huffman")
        # Short streams: ANS's final state (8 bytes) can outweigh its fractional bits; keep what is smaller.
        if symbols.size > ANS_MAX_SYMBOLS_PER_BYTE * len(coded.data) or huffman.nbytes <= coded.nbytes:
            return huffman
    return coded if coded.nbytes < raw.nbytes else raw


def decode_stream(coding: str, count: int, alphabet: int, raw_bits: int, table: bytes, data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_stream` (int64 symbols); FormatError on anything malformed."""
    if coding == "raw":
        if table:
            raise FormatError("fixed-width stream carries a table")
        out = unpack_fixed(data, count, raw_bits)
    elif coding == "huffman":
        out = huffman_decode(data, count, HuffmanTable.from_bytes(table, alphabet))
    elif coding == "ans":
        if count > ANS_MAX_SYMBOLS_PER_BYTE * len(data):
            raise FormatError(f"ANS stream of {len(data)} bytes cannot hold {count} symbols")
        out = ans_decode(data, count, AnsTable.from_bytes(table, alphabet))
    else:
        raise FormatError(f"unknown stream coding {coding!r} (known: {', '.join(CODINGS)})")
    if out.size and out.max() >= alphabet:
        raise FormatError(f"stream decodes to symbol {int(out.max())} outside its alphabet of {alphabet}")
    return out
