"""The ``.dsz`` container: magic, version, a CRC-protected JSON header, and CRC-protected sections.

Layout (all integers little-endian; see docs/format.md)::

    0   8 bytes   magic  89 44 53 5A 0D 0A 1A 0A  (deepshrink.core.version.DSZ_MAGIC)
    8   u32       format version (2; 1 is read too)
    12  u32       flags: bit 0 = header is zlib-deflated; other bits must be 0
    16  u32       stored header length H
    20  u32       header length after inflating (= H when not deflated), at most 64 MiB
    24  u32       CRC-32 of the H stored header bytes (version 1), of everything after the prefix (version 2)
    28  H bytes   header, UTF-8 JSON. Version 1: its "sections" list holds [offset, length, crc32] per section,
                  offsets relative to the end of the header. Version 2: the compact header (short keys, defaults
                  left out, :func:`compact_header`) whose "s" list holds each section's length
    28+H          the sections, back to back, in order, nothing after the last

The reader checks every length against the file size before it allocates anything and verifies the CRC-32s
(version 1: each section's when it is read; version 2: the whole file's when it is opened). A version 2 header
is expanded to the version 1 layout (:func:`expand_header`), so everything after the container reads one form.
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
from .bits import width_for

__all__ = ["FORMAT", "VERSION", "VERSIONS", "Container", "SectionWriter", "compact_header", "expand_header", "expect"]

FORMAT = "deepshrink-dsz"
VERSION = 2
"""The version written by default."""
VERSIONS = (1, 2)
"""The versions read."""
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

    def to_bytes(self, header: dict[str, Any], version: int = VERSION) -> bytes:
        """The file: ``header`` (the version 1 layout, without ``format``/``version``/``sections``) written as
        ``version`` (2: compact header, one CRC over everything after the prefix)."""
        if version not in VERSIONS:
            raise ValueError(f"unknown .dsz version {version}")
        body = b"".join(self.sections)
        if version == 1:
            table, offset = [], 0
            for data in self.sections:
                table.append([offset, len(data), zlib.crc32(data)])
                offset += len(data)
            full: dict[str, Any] = {"format": FORMAT, "version": 1, **header, "sections": table}
        else:
            full = {**compact_header(header), "s": [len(data) for data in self.sections]}
        text = json.dumps(full, separators=(",", ":")).encode("utf-8")
        packed = zlib.compress(text, 9)
        flags, blob = (FLAG_DEFLATE, packed) if len(packed) < len(text) else (0, text)
        crc = zlib.crc32(blob) if version == 1 else zlib.crc32(body, zlib.crc32(blob))
        prefix = _PREFIX.pack(DSZ_MAGIC, version, flags, len(blob), len(text), crc)
        return prefix + blob + body


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
        if version not in VERSIONS:
            raise FormatError(
                f"{name}: .dsz format version {version} is not supported (this deepshrink reads versions "
                f"{', '.join(map(str, VERSIONS))}); upgrade deepshrink or re-export the model"
            )
        if flags & ~FLAG_DEFLATE:
            raise FormatError(f"{name}: unknown header flags {flags:#x} (written by a newer deepshrink?)")
        if header_len > len(data) - _PREFIX.size:
            raise FormatError(f"{name}: truncated .dsz file (header of {header_len} bytes, file has {len(data)})")
        blob = data[_PREFIX.size : _PREFIX.size + header_len]
        self.version = version
        if version == 1 and zlib.crc32(blob) != header_crc:
            raise FormatError(f"{name}: header checksum mismatch (file corrupted)")
        if version == 2 and zlib.crc32(memoryview(data)[_PREFIX.size:]) != header_crc:
            # a file one byte too long or short is named as such where its header still reads; else the checksum
            try:
                self._parse(data, version, flags, header_len, text_len, blob)
            except FormatError as exc:
                if "truncated" in str(exc) or "trailing data" in str(exc):
                    raise
            raise FormatError(f"{name}: checksum mismatch (file corrupted)")
        self._parse(data, version, flags, header_len, text_len, blob)

    def _parse(self, data: bytes, version: int, flags: int, header_len: int, text_len: int, blob: bytes) -> None:
        name = self.name
        text = self._inflate(blob, flags, text_len)
        try:
            header = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FormatError(f"{name}: header is not valid JSON ({exc})") from exc
        if version == 2:
            if not isinstance(header, dict):
                raise FormatError(f"{name}: header does not describe a {FORMAT} file")
            header = expand_header(header)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise FormatError(f"{name}: header does not describe a {FORMAT} file")
        if header.get("version") != version:
            raise FormatError(f"{name}: header version {header.get('version')!r} does not match the prefix ({version})")
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
        if self.version == 1 and zlib.crc32(data) != crc:  # version 2: the whole file was checked when opened
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


# ---------------------------------------------------------------- the compact (version 2) header

_TOP = {"arch": "arch", "kwargs": "kw", "edits": "ed", "meta": "meta", "entropy": "E", "weights": "w",
        "tensors": "t"}
_ENTRY = {"shape": "sh", "layer": "l", "kind": "k", "index": "i", "mask": "m", "values": "v", "arrays": "a",
          "fields": "f", "dtype": "dt", "section": "S", "as": "x"}
_STREAM = {"coding": "c", "count": "n", "alphabet": "A", "raw_bits": "r", "table": "T", "data": "d", "offset": "o",
           "bits": "b"}
_MASK = {"coding": "c", "rows": "r", "pbar": "p", "model": "M", "levels": "L", "data": "d"}
_ARRAY = {"dtype": "dt", "shape": "sh", "section": "S", "as": "x"}
_DROPPED = ("format", "version", "library", "index_bits", "dense_dtype")
"""Version 1 keys a version 2 header leaves out (the prefix has the version; the rest were the writer's options)."""


def _rename(obj: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    return {keys.get(k, k): v for k, v in obj.items()}


def _restore(obj: Any, keys: dict[str, str]) -> Any:
    if not isinstance(obj, dict):
        return obj
    back = {v: k for k, v in keys.items()}
    return {back.get(k, k): v for k, v in obj.items()}


def _family(shape: Any) -> str:
    """The layer family a weight of ``shape`` has unless its entry says otherwise (``fc`` for 2-D, else ``conv``)."""
    return "fc" if isinstance(shape, list) and len(shape) <= 2 else "conv"


def _compact_stream(stream: dict[str, Any], index: bool) -> dict[str, Any]:
    out = dict(stream)
    if index and out.get("alphabet") == 1 << int(out.get("bits", 0)):
        del out["alphabet"]
    default_bits = out.get("bits") if index else width_for(int(out.get("alphabet", 1)))
    if out.get("raw_bits") == default_bits:
        del out["raw_bits"]
    if out.get("table", 0) is None:
        del out["table"]
    if out.get("offset", 1) == 0:
        del out["offset"]
    return _rename(out, _STREAM)


def _compact_array(array: dict[str, Any]) -> dict[str, Any]:
    out = dict(array)
    if out.get("dtype") == "float32":
        del out["dtype"]
    return _rename(out, _ARRAY)


def _compact_entry(entry: dict[str, Any]) -> dict[str, Any]:
    out = dict(entry)
    if out.get("layer") == _family(out.get("shape")):
        del out["layer"]
    if out.get("fields") == {}:
        del out["fields"]
    if out.get("arrays") == {}:
        del out["arrays"]
    if "index" in out:
        out["index"] = _compact_stream(out["index"], index=True)
    if "mask" in out:
        mask = dict(out["mask"])
        if "levels" in mask:
            mask["levels"] = _compact_stream(mask["levels"], index=False)
        out["mask"] = _rename(mask, _MASK)
    if "values" in out:
        stream = "coding" in out["values"]
        out["values"] = _compact_stream(out["values"], index=False) if stream else _compact_array(out["values"])
    if "arrays" in out:
        out["arrays"] = {k: _compact_array(v) for k, v in out["arrays"].items()}
    if out.get("dtype") == "float32":
        del out["dtype"]
    return _rename(out, _ENTRY)


def compact_header(header: dict[str, Any]) -> dict[str, Any]:
    """The version 2 form of a version 1 header (without its section table): short keys, defaults left out."""
    out: dict[str, Any] = {}
    for key, value in header.items():
        if key in _DROPPED or key == "sections":
            continue
        if key == "weights":
            value = {name: _compact_entry(entry) for name, entry in value.items()}
        elif key == "tensors":
            value = {name: _compact_array(entry) for name, entry in value.items()}
        out[_TOP.get(key, key)] = value
    return out


def _expand_stream(stream: Any, index: bool) -> Any:
    out = _restore(stream, _STREAM)
    if not isinstance(out, dict):
        return out
    bits = out.get("bits")
    if index and "alphabet" not in out and isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 32:
        out["alphabet"] = 1 << bits
    alphabet = out.get("alphabet")
    if "raw_bits" not in out:
        if index:
            out["raw_bits"] = bits
        elif isinstance(alphabet, int) and not isinstance(alphabet, bool) and 1 <= alphabet <= 1 << 32:
            out["raw_bits"] = width_for(alphabet)
    out.setdefault("table", None)
    if not index:
        out.setdefault("offset", 0)
    return out


def _expand_array(array: Any) -> Any:
    out = _restore(array, _ARRAY)
    if isinstance(out, dict):
        out.setdefault("dtype", "float32")
    return out


def _expand_entry(entry: Any) -> Any:
    out = _restore(entry, _ENTRY)
    if not isinstance(out, dict):
        return out
    out.setdefault("layer", _family(out.get("shape")))
    if "index" in out:
        out["index"] = _expand_stream(out["index"], index=True)
    if "mask" in out:
        mask = _restore(out["mask"], _MASK)
        if isinstance(mask, dict) and "levels" in mask:
            mask["levels"] = _expand_stream(mask["levels"], index=False)
        out["mask"] = mask
    values = out.get("values")
    if isinstance(values, dict):
        stream = "c" in values or "coding" in values
        out["values"] = _expand_stream(values, index=False) if stream else _expand_array(values)
    if isinstance(out.get("arrays"), dict):
        out["arrays"] = {k: _expand_array(v) for k, v in out["arrays"].items()}
    if out.get("kind") != "dense" and out.get("kind") != "sparse":
        out.setdefault("arrays", {})
        out.setdefault("fields", {})
    if "section" in out:
        out.setdefault("dtype", "float32")
    return out


def expand_header(compact: dict[str, Any]) -> dict[str, Any]:
    """The version 1 layout of a version 2 header (untrusted: wrong types pass through for the reader's checks).

    Sections get ``[offset, length, 0]`` (their CRC is the whole file's, checked by the container)."""
    back = {v: k for k, v in _TOP.items()}
    out: dict[str, Any] = {"format": FORMAT, "version": 2}
    for key, value in compact.items():
        name = back.get(key, key)
        if name in ("format", "version", "sections"):
            continue
        if name == "weights" and isinstance(value, dict):
            value = {k: _expand_entry(v) for k, v in value.items()}
        elif name == "tensors" and isinstance(value, dict):
            value = {k: _expand_array(v) for k, v in value.items()}
        out[name] = value
    lengths = compact.get("s")
    if isinstance(lengths, list):
        table, offset = [], 0
        for length in lengths:
            table.append([offset, length, 0])
            offset += length if isinstance(length, int) and not isinstance(length, bool) else 0
        out["sections"] = table
    else:
        out["sections"] = lengths
    out.setdefault("meta", {})
    out.setdefault("kwargs", {})
    out.setdefault("edits", [])
    return out
