"""Reader for the IDX format of (Fashion-)MNIST, gzip-compressed or raw, with every length checked."""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import DataError, FormatError

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_IDX_BYTES = 1 << 31
"""Refuse headers that promise more than 2 GiB: a corrupt header must not trigger a giant allocation."""


def _header(data: bytes, source: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """``(dtype, shape, header length)`` from the first bytes of an IDX file (at most 20 are read)."""
    if len(data) < 4:
        raise FormatError(f"{source}: truncated IDX file ({len(data)} bytes, no header)")
    zero1, zero2, dtype_code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or dtype_code not in _DTYPES or not 1 <= ndim <= 4:
        raise FormatError(f"{source}: not an IDX file (magic {data[:4].hex()})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise FormatError(f"{source}: truncated IDX header ({len(data)} of {header_len} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _DTYPES[dtype_code]
    claimed = int(np.prod([d for d in shape if d], dtype=np.float64)) * dtype.itemsize  # zero dims aside
    if claimed > MAX_IDX_BYTES:
        raise FormatError(f"{source}: IDX header shape {shape} claims {claimed:,} bytes (zero dimensions aside), "
                          "more than allowed")
    return dtype, shape, header_len


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a numpy array, checking magic, dtype, rank and the payload length."""
    dtype, shape, header_len = _header(data, source)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_len
    if payload < expected:
        raise FormatError(f"{source}: truncated IDX file: header shape {shape} needs {expected:,} bytes, found {payload:,}")
    if payload > expected:
        raise FormatError(f"{source}: IDX file has {payload - expected:,} trailing bytes after shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header_len)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _gunzip(raw: bytes, source: str) -> bytes:
    """Inflate a gzipped IDX file reading no more than its header states (plus one byte to see trailing data), so
    a small file that inflates to gigabytes is refused without inflating it."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            head = stream.read(20)  # the longest header (rank 4)
            dtype, shape, header_len = _header(head, source)
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            return head + stream.read(max(0, header_len + expected + 1 - len(head)))
    except FormatError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise FormatError(f"{source}: corrupt or truncated gzip stream ({exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file; ``.gz`` files are decompressed (a corrupt gzip stream is a FormatError)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, str(path))
    return parse_idx(raw, str(path))
