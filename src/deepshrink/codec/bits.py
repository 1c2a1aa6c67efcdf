"""Small byte-level helpers shared by the codecs: fixed-width bit packing and LEB128 varints.

Fixed-width packing is the "P+Q" storage of the paper (every symbol in ``bits`` bits); it is vectorised with
numpy (no per-symbol Python loop) and is also the fallback when an entropy code would not be smaller.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import FormatError

__all__ = ["pack_fixed", "read_varints", "unpack_fixed", "varint_bytes", "width_for"]


def width_for(alphabet: int) -> int:
    """Bits per symbol of a fixed-width code for ``alphabet`` symbols (at least 1)."""
    return max(1, int(alphabet - 1).bit_length())


def pack_fixed(symbols: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``< 2**bits`` MSB-first into ``ceil(n * bits / 8)`` bytes."""
    if not 1 <= bits <= 32:
        raise ValueError(f"fixed width must be 1..32 bits, got {bits}")
    values = np.asarray(symbols, dtype=np.uint64).reshape(-1)
    if values.size == 0:
        return b""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bitmat = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1)).tobytes()


def unpack_fixed(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`: ``count`` symbols as int64 (FormatError when ``data`` is too short)."""
    if not 1 <= bits <= 32:
        raise FormatError(f"fixed width must be 1..32 bits, got {bits}")
    need = (count * bits + 7) // 8
    if len(data) != need:
        raise FormatError(f"fixed-width stream holds {len(data)} bytes, {count} x {bits} bits needs {need}")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits)
    weights = (np.uint64(1) << np.arange(bits - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    return (flat.reshape(count, bits).astype(np.uint64) @ weights).astype(np.int64)


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
