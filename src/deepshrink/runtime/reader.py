"""Read a ``.dsz`` file straight into the runtime's compact form: positions + codes, never weight-shaped arrays.

:func:`deepshrink.codec.read_compressed` returns export dicts whose integer arrays have the weight's full
shape (``index`` with -1 at pruned positions, 8 bytes per weight); at LeNet sizes that transient is larger
than the dense fp32 model. For sparse ``codebook`` and ``sparse`` weights this reader decodes the relative
index (or the context-modelled mask, through a 1-byte-per-weight boolean grid) into the kept positions and the
value stream into one symbol per kept weight, and hands those on as
``{"kind": ..., "shape", "positions", "codes" | "values", ...}``. Every other entry is decoded by the codec's
own reader, with all of its size checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codec import SectionReader
from ..codec.container import Container, expect
from ..codec.sparse import MAX_INDEX_BITS, decode_positions
from ..core.errors import FormatError


@dataclass
class CompactFile:
    """What the runtime needs from a ``.dsz`` file: header, per-weight entries, raw tensors."""

    path: str
    header: dict[str, Any]
    weights: dict[str, dict[str, Any]]
    tensors: dict[str, np.ndarray]

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.header.get("meta", {}))


def _compact_weight(reader: SectionReader, fqn: str, entry: Any) -> dict[str, Any] | None:
    """The compact form of a sparse codebook / sparse-float entry, or None to let the codec decode it."""
    if not isinstance(entry, dict) or entry.get("kind") not in ("codebook", "sparse") or not (
            "index" in entry or "mask" in entry):
        return None
    where = f"weight {fqn!r}"
    shape = reader.shape(entry, where)
    numel = int(np.prod(shape, dtype=np.int64))
    if "index" in entry:
        index = entry["index"]
        bits = expect(index, "bits", int, f"{reader.name}: {where} index")
        if not 1 <= bits <= MAX_INDEX_BITS:
            raise FormatError(f"{reader.name}: {where} has index width {bits} (1..{MAX_INDEX_BITS} allowed)")
        try:
            positions = decode_positions(reader.stream(index, f"{where} index", fqn, "index", numel), bits, numel)
        except FormatError as exc:
            raise FormatError(f"{reader.name}: {where}: {exc}") from exc
    else:  # context-modelled mask: a boolean grid (1 byte per weight, transient), then the kept positions
        positions = np.flatnonzero(reader.ctx_mask(entry["mask"], where, fqn, shape))
    if entry["kind"] == "sparse":
        values = reader.raw(expect(entry, "values", dict, where), f"{where} values", fqn, "values")
        if values.dtype != np.float32 or values.shape != positions.shape:
            raise FormatError(f"{reader.name}: {where} holds {values.shape} values for {positions.size} kept weights")
        return {"kind": "sparse", "shape": shape, "positions": positions, "values": values}
    values_entry = expect(entry, "values", dict, f"{reader.name}: {where}")
    offset = expect(values_entry, "offset", int, f"{reader.name}: {where} values")
    symbols = reader.stream(values_entry, f"{where} values", fqn, "values", numel)
    if symbols.size != positions.size:
        raise FormatError(f"{reader.name}: {where} holds {symbols.size} values for {positions.size} weights")
    arrays = expect(entry, "arrays", dict, f"{reader.name}: {where}")
    if "centroids" not in arrays:
        raise FormatError(f"{reader.name}: {where} has no codebook centroids")
    centroids = reader.raw(arrays["centroids"], f"{where} centroids", fqn, "arrays")
    codes = symbols.astype(np.int64) + offset
    live = codes >= 0  # -1 marks a pruned weight inside the kept set (never written, but legal)
    if not live.all():
        positions, codes = positions[live], codes[live]
    return {"kind": "codebook", "shape": shape, "positions": positions, "codes": codes, "centroids": centroids}


def read_compact(path: str | os.PathLike[str]) -> CompactFile:
    """Decode ``path`` for the runtime (FormatError on anything malformed)."""
    container = Container.open(path)
    header = container.header
    reader = SectionReader(container)
    weights: dict[str, dict[str, Any]] = {}
    for fqn, entry in expect(header, "weights", dict, container.name).items():
        compact = _compact_weight(reader, fqn, entry)
        weights[fqn] = compact if compact is not None else reader.weight(fqn, entry)
    tensors = {fqn: reader.raw(entry, f"tensor {fqn!r}", fqn, "values")
               for fqn, entry in expect(header, "tensors", dict, container.name).items()}
    for key, kind in (("meta", dict), ("kwargs", dict), ("edits", list)):
        expect(header, key, kind, container.name)
    if header.get("arch") is not None and not isinstance(header["arch"], str):
        raise FormatError(f"{container.name}: header entry 'arch' is not a string")
    return CompactFile(str(path), header, weights, tensors)
