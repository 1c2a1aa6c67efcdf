"""``read_compressed``: ``.dsz`` bytes -> :class:`CompressedFile` (header, :class:`StoredWeight` per weight, raw tensors).

The one parser of the format: :mod:`deepshrink.codec.load` builds a trainable model from it and the runtime an
inference model. Weights stay in their stored form (kept positions + one symbol or value each), never weight-shaped
integer arrays, so reading costs about what the file holds. Every stated size is checked against the file before
anything is allocated; anything malformed is a :class:`FormatError` naming the file and the part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import FormatError
from ..core.kinds import StoredWeight, kind_of
from .container import Container, expect
from .encode import DTYPES, MAX_ALPHABET, NARROW
from .maskctx import decode_mask_ctx_positions
from .sparse import MAX_INDEX_BITS, decode_positions
from .stream import decode_stream

__all__ = ["MAX_ELEMENTS", "CompressedFile", "SectionReader", "read_compressed", "read_compressed_bytes"]

MAX_ELEMENTS = 1 << 31
"""Largest tensor a file may declare (a guard against absurd shapes before allocation)."""


@dataclass
class CompressedFile:
    """A read ``.dsz`` file, decoded but not turned into a model.

    ``weights`` maps a tensor name (``"fc1.weight"``) to its :class:`~deepshrink.core.kinds.StoredWeight`;
    ``tensors`` holds every other tensor as a numpy array; ``section_bytes`` the bytes per tensor and part.
    """

    path: str
    header: dict[str, Any]
    weights: dict[str, StoredWeight]
    tensors: dict[str, np.ndarray]
    section_bytes: dict[str, dict[str, int]]
    file_size: int

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.header.get("meta", {}))


class SectionReader:
    """Decodes one file's entries, checking every stated size before allocating."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.name = container.name
        self.bytes: dict[str, dict[str, int]] = {}

    def _count(self, tensor: str, part: str, n: int) -> None:
        parts = self.bytes.setdefault(tensor, {})
        parts[part] = parts.get(part, 0) + n

    def shape(self, entry: Any, where: str) -> tuple[int, ...]:
        shape = expect(entry, "shape", list, where)
        if len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FormatError(f"{self.name}: {where} has an invalid shape {shape!r}")
        if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
            raise FormatError(f"{self.name}: {where} declares {shape!r}, more than {MAX_ELEMENTS} elements")
        return tuple(shape)

    def raw(self, entry: Any, where: str, tensor: str, part: str) -> np.ndarray:
        dtype_name = expect(entry, "dtype", str, f"{self.name}: {where}")
        if dtype_name not in DTYPES:
            raise FormatError(f"{self.name}: {where} has unsupported dtype {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        stored = entry.get("as")
        if stored is not None and (stored not in NARROW or dtype_name != "float32"):
            raise FormatError(f"{self.name}: {where} is stored as {stored!r}; only float32 arrays are stored narrower "
                              f"({', '.join(NARROW)})")
        shape = self.shape(entry, where)
        need = int(np.prod(shape, dtype=np.int64)) * (2 if stored is not None else dtype.itemsize)
        section = entry.get("section")
        have = self.c.section_length(section, where)
        if have != need:
            raise FormatError(f"{self.name}: {where} needs {need} bytes for {shape} {stored or dtype_name}, "
                              f"section has {have}")
        data = self.c.read(section, where)
        self._count(tensor, part, have)
        if stored == "bfloat16":  # the upper halves of float32 values
            return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if stored == "float16":
            return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)
        array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        if dtype == np.bool_ and array.view(np.uint8).max(initial=0) > 1:
            raise FormatError(f"{self.name}: {where} holds bool bytes other than 0/1")
        return array

    def stream(self, entry: Any, where: str, tensor: str, part: str, limit: int,
               table_part: str | None = None) -> np.ndarray:
        w = f"{self.name}: {where}"
        if not isinstance(entry, dict):
            raise FormatError(f"{w} is not a stream description")
        coding = expect(entry, "coding", str, w)
        count = expect(entry, "count", int, w)
        alphabet = expect(entry, "alphabet", int, w)
        raw_bits = expect(entry, "raw_bits", int, w)
        if not 0 <= count <= limit:
            raise FormatError(f"{w} states {count} symbols, at most {limit} fit its tensor")
        if not 1 <= alphabet <= MAX_ALPHABET or not 1 <= raw_bits <= 32 or alphabet > 1 << raw_bits:
            raise FormatError(f"{w} has an invalid alphabet {alphabet} / width {raw_bits}")
        table_id = entry.get("table")
        table = b"" if table_id is None else self.c.read(table_id, f"{where} table")
        data = self.c.read(entry.get("data"), f"{where} data")
        self._count(tensor, table_part or f"{part}_table", len(table))
        self._count(tensor, part, len(data))
        try:
            return decode_stream(coding, count, alphabet, raw_bits, table, data)
        except FormatError as exc:
            raise FormatError(f"{w}: {exc}") from exc

    def ctx_positions(self, entry: Any, where: str, fqn: str, shape: tuple[int, ...]) -> np.ndarray:
        w = f"{self.name}: {where} mask"
        if expect(entry, "coding", str, w) != "ctx":
            raise FormatError(f"{w} has unknown coding {entry['coding']!r} (known: ctx)")
        rows, pbar = expect(entry, "rows", int, w), expect(entry, "pbar", int, w)
        model: bytes | np.ndarray
        if "levels" in entry:  # version 2: the row and column levels as an entropy-coded stream
            lines = shape[0] + int(np.prod(shape[1:], dtype=np.int64)) if shape else 2
            model = self.stream(entry["levels"], f"{where} mask levels", fqn, "index_table", lines, "index_table")
        else:
            model = self.c.read(entry.get("model"), f"{where} mask model")
            self._count(fqn, "index_table", len(model))
        data = self.c.read(entry.get("data"), f"{where} mask data")
        self._count(fqn, "index", len(data))
        try:
            return decode_mask_ctx_positions(model, data, shape, rows, pbar)
        except FormatError as exc:
            raise FormatError(f"{w}: {exc}") from exc

    def positions(self, fqn: str, entry: dict[str, Any], shape: tuple[int, ...], where: str) -> np.ndarray | None:
        """Kept flat positions from the relative index or the context-coded mask; None when the weight has neither."""
        numel = int(np.prod(shape, dtype=np.int64))
        if "index" in entry:
            index = entry["index"]
            bits = expect(index, "bits", int, f"{self.name}: {where} index")
            if not 1 <= bits <= MAX_INDEX_BITS:
                raise FormatError(f"{self.name}: {where} has index width {bits} (1..{MAX_INDEX_BITS} allowed)")
            codes = self.stream(index, f"{where} index", fqn, "index", numel)
            try:
                return decode_positions(codes, bits, numel)
            except FormatError as exc:
                raise FormatError(f"{self.name}: {where}: {exc}") from exc
        if "mask" in entry:
            return self.ctx_positions(entry["mask"], where, fqn, shape)
        return None

    def weight(self, fqn: str, entry: Any) -> StoredWeight:
        """One weight entry of the header, decoded to its stored form and checked by its kind."""
        where = f"weight {fqn!r}"
        name = expect(entry, "kind", str, f"{self.name}: {where}")
        try:
            kind = kind_of(name)
        except FormatError as exc:
            raise FormatError(f"{self.name}: {where}: {exc}") from exc
        shape = self.shape(entry, where)
        numel = int(np.prod(shape, dtype=np.int64))
        positions = self.positions(fqn, entry, shape, where)
        kept = numel if positions is None else int(positions.size)
        params: dict[str, Any] = {}
        if kind.symbol_key is None:  # float kinds: the values raw, one per kept position
            raw = self.raw(entry, where, fqn, "values") if positions is None else self.raw(
                expect(entry, "values", dict, where), f"{where} values", fqn, "values")
            if positions is not None and raw.dtype != np.float32:
                raise FormatError(f"{self.name}: {where} values must be float32, got {raw.dtype}")
            data = raw.astype(np.float32).reshape(-1)
        else:
            values_entry = expect(entry, "values", dict, f"{self.name}: {where}")
            offset = expect(values_entry, "offset", int, f"{self.name}: {where} values")
            data = self.stream(values_entry, f"{where} values", fqn, "values", numel) + offset
            params.update(expect(entry, "fields", dict, f"{self.name}: {where}"))
            for key, value in expect(entry, "arrays", dict, f"{self.name}: {where}").items():
                params[key] = self.raw(value, f"{where} {key}", fqn, "arrays")
        if data.size != kept:
            raise FormatError(f"{self.name}: {where} holds {data.size} values for {kept} weights")
        stored = StoredWeight(name, shape, data, positions, params)
        try:
            kind.check(stored)
            kind.values(stored)
        except FormatError as exc:
            raise FormatError(f"{self.name}: {where}: {exc}") from exc
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise FormatError(f"{self.name}: {where} cannot be dequantized ({type(exc).__name__}: {exc})") from exc
        return stored


def read_compressed(path: str | os.PathLike[str]) -> CompressedFile:
    """Parse and decode a ``.dsz`` file (FormatError on anything malformed); no model is built."""
    return _decode(Container.open(path), str(path))


def read_compressed_bytes(data: bytes, name: str = "<bytes>") -> CompressedFile:
    """:func:`read_compressed` of a file's bytes already in memory."""
    return _decode(Container(data, name), name)


def _decode(container: Container, path: str) -> CompressedFile:
    header = container.header
    reader = SectionReader(container)
    name = container.name
    weights = {fqn: reader.weight(fqn, entry) for fqn, entry in expect(header, "weights", dict, name).items()}
    tensors = {fqn: reader.raw(entry, f"tensor {fqn!r}", fqn, "values")
               for fqn, entry in expect(header, "tensors", dict, name).items()}
    for key, kind in (("meta", dict), ("kwargs", dict), ("edits", list)):
        expect(header, key, kind, name)
    if header.get("arch") is not None and not isinstance(header["arch"], str):
        raise FormatError(f"{name}: header entry 'arch' is not a string")
    return CompressedFile(path, header, weights, tensors, reader.bytes, container.size)
