"""The ``.dsz`` container: magic, version, a CRC-protected JSON header, and CRC-protected sections.

Layout (all integers little-endian; see docs/format.md)::

    0   8 bytes   magic  89 44 53 5A 0D 0A 1A 0A  (deepshrink.core.version.DSZ_MAGIC)
    8   u32       format version (1)
    12  u32       flags: bit 0 = header is zlib-deflated; other bits must be 0
    16  u32       stored header length H
    20  u32       header length after inflating (= H when not deflated), at most 64 MiB
    24  u32       CRC-32 of the H stored header bytes
    28  H bytes   header, UTF-8 JSON; its "sections" list holds [offset, length, crc32] per section,
                  offsets relative to the end of the header; the last section ends the file
    28+H          the sections, back to back, in order, nothing after the last

The reader checks every length against the file size before it allocates anything and verifies each
section's CRC-32 when the section is read.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from ..core.errors import FormatError
from ..core.version import DSZ_MAGIC

__all__ = ["FORMAT", "VERSION", "Container", "SectionWriter", "expect"]

FORMAT = "deepshrink-dsz"
VERSION = 1
_PREFIX = struct.Struct("<8sIIIII")
FLAG_DEFLATE = 1
MAX_HEADER = 64 << 20


class SectionWriter:
    """Collects sections and writes the finished file bytes."""

    def __init__(self) -> None:
        self.sections: list[bytes] = []

    def add(self, data: bytes) -> int:
        """Append a section; returns its id (index in the header's ``sections`` list)."""
        self.sections.append(bytes(data))
        return len(self.sections) - 1

    def size(self, section: int | None) -> int:
        return 0 if section is None else len(self.sections[section])

    def to_bytes(self, header: dict[str, Any]) -> bytes:
        table, offset = [], 0
        for data in self.sections:
            table.append([offset, len(data), zlib.crc32(data)])
            offset += len(data)
        header = {"format": FORMAT, "version": VERSION, **header, "sections": table}
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        packed = zlib.compress(text, 9)
        flags, blob = (FLAG_DEFLATE, packed) if len(packed) < len(text) else (0, text)
        prefix = _PREFIX.pack(DSZ_MAGIC, VERSION, flags, len(blob), len(text), zlib.crc32(blob))
        return prefix + blob + b"".join(self.sections)


class Container:
    """A parsed, length-checked ``.dsz`` file held in memory; sections are CRC-checked on access."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.name = name
        self.size = len(data)
        if len(data) < _PREFIX.size:
            if not DSZ_MAGIC.startswith(data[: len(DSZ_MAGIC)]):
                raise FormatError(f"{name}: not a .dsz file (bad magic)")
            raise FormatError(f"{name}: truncated .dsz file ({len(data)} bytes, the fixed prefix alone is {_PREFIX.size})")
        magic, version, flags, header_len, text_len, header_crc = _PREFIX.unpack_from(data)
        if magic != DSZ_MAGIC:
            raise FormatError(f"{name}: not a .dsz file (bad magic {magic!r})")
        if version != VERSION:
            raise FormatError(
                f"{name}: .dsz format version {version} is not supported (this deepshrink reads version {VERSION}); "
                "upgrade deepshrink or re-export the model"
            )
        if flags & ~FLAG_DEFLATE:
            raise FormatError(f"{name}: unknown header flags {flags:#x} (written by a newer deepshrink?)")
        if header_len > len(data) - _PREFIX.size:
            raise FormatError(f"{name}: truncated .dsz file (header of {header_len} bytes, file has {len(data)})")
        blob = data[_PREFIX.size : _PREFIX.size + header_len]
        if zlib.crc32(blob) != header_crc:
            raise FormatError(f"{name}: header checksum mismatch (file corrupted)")
        text = self._inflate(blob, flags, text_len)
        try:
            header = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FormatError(f"{name}: header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise FormatError(f"{name}: header does not describe a {FORMAT} file")
        if header.get("version") != VERSION:
            raise FormatError(f"{name}: header version {header.get('version')!r} does not match the prefix ({VERSION})")
        self.header = header
        self._data = memoryview(data)
        self._base = _PREFIX.size + header_len
        self._sections = self._check_sections(expect(header, "sections", list, name))

    def _inflate(self, blob: bytes, flags: int, text_len: int) -> bytes:
        if not flags & FLAG_DEFLATE:
            if text_len != len(blob):
                raise FormatError(f"{self.name}: header lengths disagree ({len(blob)} stored, {text_len} stated)")
            return blob
        if text_len > MAX_HEADER:
            raise FormatError(f"{self.name}: header states {text_len} bytes, more than {MAX_HEADER}")
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(blob, text_len)  # never more than the stated length
        except zlib.error as exc:
            raise FormatError(f"{self.name}: header does not inflate ({exc})") from exc
        if len(text) != text_len or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise FormatError(f"{self.name}: header inflates to other than its stated {text_len} bytes")
        return text

    def _check_sections(self, raw: list[Any]) -> list[tuple[int, int, int]]:
        sections: list[tuple[int, int, int]] = []
        offset = 0
        for i, entry in enumerate(raw):
            if (not isinstance(entry, list) or len(entry) != 3
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry)):
                raise FormatError(f"{self.name}: section {i} is not [offset, length, crc32]")
            start, length, crc = entry
            if start != offset:
                raise FormatError(f"{self.name}: section {i} starts at {start}, expected {offset}")
            offset += length
            sections.append((start, length, crc))
        if self._base + offset != self.size:
            state = "truncated" if self._base + offset > self.size else "has trailing data"
            raise FormatError(
                f"{self.name}: .dsz file {state}: its sections span {offset} bytes but {self.size - self._base} "
                "follow the header"
            )
        return sections

    def section_length(self, section: Any, what: str) -> int:
        """Length of section ``section`` (checked to exist) without reading it."""
        return self._sections[self._section_id(section, what)][1]

    def _section_id(self, section: Any, what: str) -> int:
        if not isinstance(section, int) or isinstance(section, bool) or not 0 <= section < len(self._sections):
            raise FormatError(f"{self.name}: {what} names section {section!r}, which does not exist")
        return section

    def read(self, section: Any, what: str) -> bytes:
        """The bytes of a section, after its CRC-32 is verified."""
        start, length, crc = self._sections[self._section_id(section, what)]
        data = bytes(self._data[self._base + start : self._base + start + length])
        if zlib.crc32(data) != crc:
            raise FormatError(f"{self.name}: checksum mismatch in section {section} ({what}); the file is corrupted")
        return data

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Container:
        path = Path(path)
        if not path.is_file():
            raise FormatError(f"compressed model file not found: {path}")
        return cls(path.read_bytes(), str(path))


def expect(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]`` checked to be of ``kind`` (bools are not ints); FormatError naming the key otherwise."""
    if not isinstance(obj, dict) or key not in obj:
        raise FormatError(f"{where}: header entry {key!r} is missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise FormatError(f"{where}: header entry {key!r} has type bool")
    if not isinstance(value, kinds):
        raise FormatError(f"{where}: header entry {key!r} has type {type(value).__name__}")
    return value
