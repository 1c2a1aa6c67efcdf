"""Small byte-level helpers shared by the codecs: fixed-width bit packing and LEB128 varints.

Fixed-width packing is the "P+Q" storage of the paper (every symbol in ``bits`` bits): numba loops over a
64-bit buffer (no per-symbol Python loop); it is also the fallback when an entropy code would not be smaller.
"""

from __future__ import annotations

import numba
import numpy as np

from ..core.errors import FormatError

__all__ = ["pack_fixed", "pack_nibbles", "read_varints", "unpack_fixed", "unpack_nibbles", "varint_bytes", "width_for"]


def width_for(alphabet: int) -> int:
    """Bits per symbol of a fixed-width code for ``alphabet`` symbols (at least 1)."""
    return max(1, int(alphabet - 1).bit_length())


@numba.njit(cache=True, nogil=True)
def _pack_kernel(values, bits, out):
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    width = np.uint64(bits)
    for i in range(values.size):
        acc = (acc << width) | values[i]
        nbits += bits
        while nbits >= 8:
            nbits -= 8
            out[pos] = np.uint8((acc >> np.uint64(nbits)) & np.uint64(0xFF))
            pos += 1
        acc &= (np.uint64(1) << np.uint64(nbits)) - np.uint64(1)
    if nbits > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nbits)) & np.uint64(0xFF))


@numba.njit(cache=True, nogil=True)
def _unpack_kernel(data, bits, out):
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(out.size):
        while nbits < bits:
            acc = ((acc << np.uint64(8)) | np.uint64(data[pos])) & np.uint64(0xFFFFFFFFFFFF)
            pos += 1
            nbits += 8
        nbits -= bits
        out[i] = np.int64((acc >> np.uint64(nbits)) & mask)


def pack_fixed(symbols: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``< 2**bits`` MSB-first into ``ceil(n * bits / 8)`` bytes."""
    if not 1 <= bits <= 32:
        raise ValueError(f"fixed width must be 1..32 bits, got {bits}")
    values = np.ascontiguousarray(symbols, dtype=np.uint64).reshape(-1)
    out = np.zeros((values.size * bits + 7) // 8, dtype=np.uint8)
    if values.size:
        _pack_kernel(values, bits, out)
    return out.tobytes()


def unpack_fixed(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`: ``count`` symbols as int64 (FormatError when ``data`` is too short)."""
    if not 1 <= bits <= 32:
        raise FormatError(f"fixed width must be 1..32 bits, got {bits}")
    need = (count * bits + 7) // 8
    if len(data) != need:
        raise FormatError(f"fixed-width stream holds {len(data)} bytes, {count} x {bits} bits needs {need}")
    out = np.zeros(count, dtype=np.int64)
    if count:
        _unpack_kernel(np.frombuffer(data, dtype=np.uint8), bits, out)
    return out


def varint_bytes(values: np.ndarray | list[int]) -> bytes:
    """Unsigned LEB128 encoding of small tables (alphabet sizes, counts); not used per data symbol."""
    out = bytearray()
    for value in np.asarray(values, dtype=np.int64).reshape(-1).tolist():
        if value < 0:
            raise ValueError("varints are unsigned")
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def read_varints(data: bytes, count: int, start: int = 0, what: str = "table") -> tuple[list[int], int]:
    """Read ``count`` varints from ``data[start:]``; returns ``(values, next_offset)``."""
    values: list[int] = []
    pos = start
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= len(data):
                raise FormatError(f"{what} ends inside a varint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 63:
                raise FormatError(f"{what} holds a varint longer than 64 bits")
        values.append(value)
    return values, pos


def pack_nibbles(values: np.ndarray) -> bytes:
    """Values in 0..15, two per byte (high nibble first; an odd count is padded with a zero nibble)."""
    v = np.asarray(values, dtype=np.uint8)
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, dtype=np.uint8)])
    return ((v[0::2] << 4) | v[1::2]).astype(np.uint8).tobytes()


def unpack_nibbles(data: bytes, count: int) -> np.ndarray:
    """The first ``count`` nibbles of ``data`` (inverse of :func:`pack_nibbles`)."""
    b = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(b.size * 2, dtype=np.int64)
    out[0::2] = b >> 4
    out[1::2] = b & 0x0F
    return out[:count]
