"""``save_compressed``: a model's compression state -> ``.dsz`` bytes (format: docs/format.md).

Each weight is stored in the form its state calls for, through the kind registry (:mod:`deepshrink.core.kinds`):

* a value transform's export (``codebook``, ``fixedpoint``, ``ternary``, ...): its integer symbols as an
  entropy-coded stream, its small arrays and JSON fields verbatim; sparse (relative index) when the weight
  also carries a mask, dense otherwise;
* mask only (``sparse``): the relative index plus the kept fp32 values;
* neither (``dense``): fp32 or fp16.

Every other tensor of the ``state_dict`` (biases, BatchNorm statistics, int buffers) is stored raw. Version 2 files
(the default) store a float32 array whose values are all exactly bfloat16 or float16 in 2 bytes per value, and
entropy-code the context-modelled mask's row and column levels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.atomic import atomic_write_bytes
from ..core.edits import recorded_edits
from ..core.errors import ConfigError, DeepShrinkError, FormatError
from ..core.kinds import KINDS, StoredWeight, kind_of
from ..core.select import SUPPORTED_LAYERS, layer_kind
from ..core.state import get_mask, get_value_transform, iter_states, latent_weight
from ..core.version import __version__
from ..models.registry import arch_of
from .bits import unpack_nibbles, width_for
from .container import VERSION, VERSIONS, SectionWriter
from .maskctx import encode_mask_ctx
from .sparse import MAX_INDEX_BITS, encode_positions
from .stream import CODINGS, EncodedStream, encode_stream

__all__ = ["DEFAULT_INDEX_BITS", "DTYPES", "NARROW", "CompressionReport", "index_bytes", "narrow_float32",
           "save_compressed"]

DEFAULT_INDEX_BITS: dict[str, int | str] = {"conv": 8, "fc": 5}
AUTO_INDEX_BITS = tuple(range(2, 13))
DTYPES = {name: np.dtype(name) for name in
          ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}
"""The dtypes a raw array may have in a file."""
NARROW = ("bfloat16", "float16")
"""The 2-byte forms a float32 array may be stored in (version 2: ``"as"``), when every value is exact in it."""
MAX_ALPHABET = 1 << 32


@dataclass
class CompressionReport:
    """Bytes written: per tensor (all its sections) and in total; ``file_bytes`` is the file size."""

    path: str
    tensors: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0
    header_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(self.tensors.values())

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "tensors": dict(self.tensors), "total_bytes": self.total_bytes,
                "header_bytes": self.header_bytes, "file_bytes": self.file_bytes}


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def json_field(value: Any, where: str) -> Any:
    """``value`` checked to be JSON-serialisable (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} is not JSON-serialisable ({exc}); exports may hold arrays and JSON values") from exc
    return value


def narrow_float32(array: np.ndarray) -> tuple[str, bytes] | None:
    """``(form, bytes)`` of a float32 array in the first of :data:`NARROW` that holds every value bit for bit
    (bfloat16: the upper half of each value; float16), or None."""
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4").reshape(-1)
    if bits.size == 0:
        return None
    if not np.any(bits & 0xFFFF):
        return "bfloat16", (bits >> 16).astype("<u2").tobytes()
    half = array.reshape(-1).astype("<f2")
    if np.array_equal(half.astype("<f4").view("<u4"), bits):
        return "float16", half.tobytes()
    return None


def _raw_array(writer: SectionWriter, array: np.ndarray, where: str, narrow: bool = False) -> dict[str, Any]:
    array = np.asarray(array, order="C")  # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    if array.dtype.name not in DTYPES:
        raise ConfigError(f"{where}: dtype {array.dtype} cannot be stored (supported: {', '.join(DTYPES)})")
    entry: dict[str, Any] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    small = narrow_float32(array) if narrow and array.dtype == np.float32 else None
    if small is not None:
        entry["as"] = small[0]
        entry["section"] = writer.add(small[1])
    else:
        entry["section"] = writer.add(array.tobytes())
    return entry


def _stream(writer: SectionWriter, coded: EncodedStream, **extra: Any) -> dict[str, Any]:
    return {"coding": coded.coding, "count": coded.count, "alphabet": coded.alphabet, "raw_bits": coded.raw_bits,
            "table": writer.add(coded.table) if coded.table else None, "data": writer.add(coded.data), **extra}


def _index_entry(writer: SectionWriter, mask: np.ndarray, width: int | str, entropy: str,
                 index_coding: str, version: int = VERSION) -> dict[str, Any]:
    """The kept positions as the smallest relative index (or, with ``index_coding="auto"``, context-coded mask)."""
    widths = AUTO_INDEX_BITS if width == "auto" else (int(width),)
    best: tuple[EncodedStream, int] | None = None
    for bits in widths:  # "auto": the width whose coded index is smallest
        coded_index = encode_stream(encode_positions(mask, bits), 1 << bits, bits, entropy)
        if best is None or coded_index.nbytes < best[0].nbytes:
            best = (coded_index, bits)
    assert best is not None
    ctx = encode_mask_ctx(mask) if index_coding == "auto" and entropy != "raw" else None
    if ctx is not None:
        model_bytes, data, rows, pbar = ctx
        levels = unpack_nibbles(model_bytes, 2 * len(model_bytes))[: mask.size // rows + rows]
        # version 2: the row and column levels entropy-coded where that is smaller than their nibbles
        coded_levels = encode_stream(levels, int(levels.max()) + 1, width_for(int(levels.max()) + 1), entropy)
        small = version >= 2 and coded_levels.nbytes < len(model_bytes)
        if (coded_levels.nbytes if small else len(model_bytes)) + len(data) < best[0].nbytes:
            head: dict[str, Any] = {"coding": "ctx", "rows": rows, "pbar": pbar}
            if small:
                head["levels"] = _stream(writer, coded_levels)
            else:
                head["model"] = writer.add(model_bytes)
            return {"mask": {**head, "data": writer.add(data)}}
    return {"index": _stream(writer, best[0], bits=best[1])}


def _stored_value(module: nn.Module, tname: str, fqn: str, mask: np.ndarray | None,
                  effective: np.ndarray) -> StoredWeight:
    """The value transform's export as a :class:`StoredWeight`, checked to reproduce the effective weight."""
    transform = get_value_transform(module, tname)
    assert transform is not None
    mask_t = get_mask(module, tname)
    with torch.no_grad():
        latent = latent_weight(module, tname).detach()
        masked = latent * mask_t.to(latent.dtype) if mask_t is not None else latent
        exported = {k: _numpy(v) for k, v in transform.export(masked).items()}
    name = exported.get("kind")
    if name not in KINDS or kind_of(name).symbol_key is None:
        known = ", ".join(k for k, v in KINDS.items() if v.symbol_key is not None)
        raise ConfigError(f"{fqn}: {type(transform).__name__}.export() returned kind {name!r} (known: {known})")
    kind = kind_of(name)
    symbols = np.asarray(exported.get(kind.symbol_key or ""))
    if symbols.shape != effective.shape or not np.issubdtype(symbols.dtype, np.integer):
        raise ConfigError(f"{fqn}: exported {kind.symbol_key!r} must be an integer array of shape {effective.shape}")
    try:
        stored = kind.from_export(exported, mask)
        kind.check(stored)
        exact = np.array_equal(stored.dense(), effective)
    except FormatError as exc:
        raise ConfigError(f"{fqn}: {type(transform).__name__}.export() is not a valid {name!r} export: {exc}") from exc
    if not exact:
        raise DeepShrinkError(f"{fqn}: {type(transform).__name__}.export() does not reproduce the weight the model "
                              "computes; the file would not load bit-exactly (fix the transform's export)")
    return stored


def index_bytes(mask: np.ndarray, entropy: str = "ans", index_bits: int | str = "auto",
                index_coding: str = "auto") -> int:
    """The bytes a file (the current version) spends on the kept positions of ``mask`` (sections only, no header),
    coded as ``save_compressed`` would with these options."""
    writer = SectionWriter()
    _index_entry(writer, np.asarray(mask, dtype=bool), index_bits, entropy, index_coding)
    return sum(len(section) for section in writer.sections)


def _encode_weight(writer: SectionWriter, module: nn.Module, tname: str, fqn: str, entropy: str,
                   index_bits: dict[str, int | str], dense_dtype: str, index_coding: str,
                   version: int = VERSION) -> dict[str, Any]:
    effective = getattr(module, tname).detach().cpu().to(torch.float32).numpy()
    mask_t = get_mask(module, tname)
    family = layer_kind(module)
    entry: dict[str, Any] = {"shape": list(effective.shape), "layer": family}
    mask = None if mask_t is None else mask_t.detach().cpu().numpy().astype(bool)
    if mask is not None:
        entry.update(_index_entry(writer, mask, index_bits[family], entropy, index_coding, version))
    narrow = version >= 2
    if get_value_transform(module, tname) is None:
        if mask is None:
            dtype = np.float16 if dense_dtype == "fp16" else np.float32
            entry.update(kind="dense", **_raw_array(writer, effective.astype(dtype), fqn, narrow))
        else:
            entry.update(kind="sparse", values=_raw_array(writer, effective.reshape(-1)[mask.reshape(-1)], fqn,
                                                          narrow))
        return entry
    stored = _stored_value(module, tname, fqn, mask, effective)
    symbols = stored.data
    low = int(symbols.min()) if symbols.size else 0
    alphabet = (int(symbols.max()) - low + 1) if symbols.size else 1
    if alphabet > MAX_ALPHABET:
        raise ConfigError(f"{fqn}: exported integers span {alphabet} values; at most 2**32 can be stored")
    coded = encode_stream(symbols - low, alphabet, width_for(alphabet), entropy)
    entry.update(kind=stored.kind, values=_stream(writer, coded, offset=low), arrays={}, fields={})
    for key, value in stored.params.items():
        if isinstance(value, np.ndarray):
            entry["arrays"][key] = _raw_array(writer, value, f"{fqn} export {key!r}", narrow)
        else:
            entry["fields"][key] = json_field(value, f"{fqn} export {key!r}")
    return entry


def _index_bits(index_bits: dict[str, int | str] | str | None) -> dict[str, int | str]:
    bits: dict[str, int | str] = dict(DEFAULT_INDEX_BITS)
    given = {"conv": "auto", "fc": "auto"} if index_bits == "auto" else index_bits or {}
    if not isinstance(given, dict):
        raise ConfigError(f"index_bits={index_bits!r}: give a dict like {{'conv': 8, 'fc': 5}} or 'auto'")
    for key, value in given.items():
        valid = value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                                    and 1 <= value <= MAX_INDEX_BITS)
        if key not in bits or not valid:
            raise ConfigError(f"index_bits[{key!r}]={value!r}: keys are conv/fc, values 1..{MAX_INDEX_BITS} or 'auto'")
        bits[key] = value
    return bits


def save_compressed(model: nn.Module, path: str | os.PathLike[str], *, entropy: str = "huffman",
                    index_bits: dict[str, int | str] | str | None = None, dense_dtype: str = "fp32",
                    meta: dict[str, Any] | None = None, index_coding: str = "relative",
                    version: int = VERSION) -> CompressionReport:
    """Write ``model`` with its compression state to ``path`` (a ``.dsz`` file), atomically.

    ``entropy`` codes the integer streams ("huffman", "ans" or "raw" fixed width; a stream falls back to
    fixed width when that is smaller). ``index_bits`` sets the relative-index width per layer family
    (``{"conv": 8, "fc": 5}`` by default, as in the paper); ``"auto"`` (for all, or as a family's value) picks
    per layer the width in 2..12 whose coded index is smallest. ``index_coding="auto"`` also tries the
    context-modelled mask (:mod:`.maskctx`) per layer and keeps it where it is smaller than the relative
    index (default ``"relative"``: the paper's index everywhere). ``version``: the format version written (2, the
    compact header with 2-byte float arrays where exact; 1 for readers older than deepshrink 0.1's version 2).
    """
    if version not in VERSIONS:
        raise ConfigError(f"version={version!r} is not one of {', '.join(map(str, VERSIONS))}")
    if index_coding not in ("relative", "auto"):
        raise ConfigError(f"index_coding={index_coding!r} is not one of relative, auto")
    if entropy not in CODINGS:
        raise ConfigError(f"entropy={entropy!r} is not one of {', '.join(CODINGS)}")
    if dense_dtype not in ("fp32", "fp16"):
        raise ConfigError(f"dense_dtype={dense_dtype!r} is not one of fp32, fp16")
    bits = _index_bits(index_bits)
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    arch = arch_of(module)
    writer = SectionWriter()
    weights: dict[str, dict[str, Any]] = {}
    targets: list[tuple[str, nn.Module, str]] = [
        (f"{fqn}.{name}" if fqn else name, mod, name) for fqn, mod, name, _ in iter_states(module)]
    stated = {t[0] for t in targets}
    for fqn, mod in module.named_modules():
        full = f"{fqn}.weight" if fqn else "weight"
        if isinstance(mod, SUPPORTED_LAYERS) and full not in stated and isinstance(mod.weight, torch.Tensor):
            targets.append((full, mod, "weight"))
    report = CompressionReport(str(path))
    for full, mod, name in targets:
        before = sum(len(s) for s in writer.sections)
        weights[full] = _encode_weight(writer, mod, name, full, entropy, bits, dense_dtype, index_coding, version)
        report.tensors[full] = sum(len(s) for s in writer.sections) - before
    tensors: dict[str, dict[str, Any]] = {}
    for key, value in module.state_dict().items():
        if "parametrizations" in key.split(".") or key in weights:
            continue
        before = sum(len(s) for s in writer.sections)
        tensors[key] = _raw_array(writer, value.detach().cpu().numpy(), key, version >= 2)
        report.tensors[key] = sum(len(s) for s in writer.sections) - before
    header = {
        "library": f"deepshrink {__version__}",
        "arch": arch[0] if arch else None,
        "kwargs": arch[1] if arch else {},
        "edits": recorded_edits(module),
        "meta": json_field(dict(meta or {}), "meta"),
        "entropy": entropy,
        "index_bits": bits,
        "dense_dtype": dense_dtype,
        "weights": weights,
        "tensors": tensors,
    }
    blob = writer.to_bytes(header, version)
    atomic_write_bytes(path, blob)
    report.file_bytes = len(blob)
    report.header_bytes = len(blob) - sum(len(s) for s in writer.sections)
    return report
