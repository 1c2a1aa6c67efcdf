"""``save_compressed`` / ``read_compressed`` / ``load_compressed``: a model's compression state <-> ``.dsz`` bytes.

Each weight is stored in the form its compression state calls for (see docs/format.md):

* value transform (codebook / fixedpoint / ternary): its exported integers as an entropy-coded symbol
  stream, plus its small arrays (e.g. centroids) and JSON fields verbatim; sparse (relative index) when the
  weight also carries a mask, dense otherwise;
* mask only (pruned): the relative index plus the kept fp32 values;
* neither (linear / conv weights): dense fp32 or fp16.

Every other tensor of the ``state_dict`` (biases, BatchNorm statistics, int buffers) is stored raw.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.atomic import atomic_write_bytes
from ..core.edits import recorded_edits, replay_edits
from ..core.errors import ConfigError, DeepShrinkError, FormatError
from ..core.quantized import KINDS, dequantize
from ..core.select import SUPPORTED_LAYERS, layer_kind
from ..core.state import (
    get_mask,
    get_value_transform,
    iter_states,
    latent_weight,
    set_mask,
    value_transform_for_kind,
)
from .bits import width_for
from .container import Container, SectionWriter, expect
from .maskctx import decode_mask_ctx, encode_mask_ctx
from .sparse import MAX_INDEX_BITS, decode_positions, encode_positions, mask_from_positions
from .stream import CODINGS, EncodedStream, decode_stream, encode_stream

__all__ = [
    "CompressedFile",
    "CompressionReport",
    "load_compressed",
    "load_compressed_with_meta",
    "read_compressed",
    "read_compressed_bytes",
    "save_compressed",
]

DEFAULT_INDEX_BITS: dict[str, int | str] = {"conv": 8, "fc": 5}
AUTO_INDEX_BITS = tuple(range(2, 13))
SYMBOL_KEY = {"codebook": "index", "fixedpoint": "int", "ternary": "code"}
"""The export key holding each kind's integer array (the entropy-coded symbols)."""
TECHNIQUE_PACKAGES = {"codebook": "deepshrink.share", "fixedpoint": "deepshrink.fixedpoint", "ternary": "deepshrink.ternary"}
"""Allow-list: the only packages the loader imports to find a value transform class for a kind."""
DTYPES = {name: np.dtype(name) for name in
          ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}
MAX_ELEMENTS = 1 << 31
"""Largest tensor a file may declare (a guard against absurd shapes before allocation)."""
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


@dataclass
class CompressedFile:
    """A read ``.dsz`` file, decoded but not turned into a model.

    ``weights`` maps a tensor name (``"fc1.weight"``) to one of

    * an export dict: ``{"kind": "codebook"|"fixedpoint"|"ternary", <its arrays as numpy>, <fields kept>}``,
      plus ``"mask"`` (bool array) when the weight was stored sparse;
    * ``{"kind": "sparse", "mask": bool array, "values": float32 kept values in C order}``;
    * ``{"kind": "dense", "array": float32 array}`` (fp16-stored weights are widened exactly).

    ``tensors`` holds every other tensor as a numpy array; ``section_bytes`` the bytes per tensor and part.
    """

    path: str
    header: dict[str, Any]
    weights: dict[str, dict[str, Any]]
    tensors: dict[str, np.ndarray]
    section_bytes: dict[str, dict[str, int]]
    file_size: int

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.header.get("meta", {}))


# ----------------------------------------------------------------------------------------------- save


def _numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def _json_field(value: Any, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} is not JSON-serialisable ({exc}); exports may hold arrays and JSON values") from exc
    return value


def _raw_array(writer: SectionWriter, array: np.ndarray, where: str) -> dict[str, Any]:
    array = np.asarray(array, order="C")  # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    if array.dtype.name not in DTYPES:
        raise ConfigError(f"{where}: dtype {array.dtype} cannot be stored (supported: {', '.join(DTYPES)})")
    return {"dtype": array.dtype.name, "shape": list(array.shape), "section": writer.add(array.tobytes())}


def _stream(writer: SectionWriter, coded: EncodedStream, **extra: Any) -> dict[str, Any]:
    return {"coding": coded.coding, "count": coded.count, "alphabet": coded.alphabet, "raw_bits": coded.raw_bits,
            "table": writer.add(coded.table) if coded.table else None, "data": writer.add(coded.data), **extra}


def _encode_weight(writer: SectionWriter, module: nn.Module, tname: str, fqn: str, entropy: str,
                   index_bits: dict[str, int | str], dense_dtype: str, index_coding: str) -> dict[str, Any]:
    effective = getattr(module, tname).detach().cpu().to(torch.float32).numpy()
    mask_t = get_mask(module, tname)
    transform = get_value_transform(module, tname)
    family = layer_kind(module)
    entry: dict[str, Any] = {"shape": list(effective.shape), "layer": family}
    mask = None if mask_t is None else mask_t.detach().cpu().numpy().astype(bool)
    if mask is not None:
        width = index_bits[family]
        widths = AUTO_INDEX_BITS if width == "auto" else (int(width),)
        best: tuple[EncodedStream, int] | None = None
        for bits in widths:  # "auto": the width whose coded index is smallest
            coded_index = encode_stream(encode_positions(mask, bits), 1 << bits, bits, entropy)
            if best is None or coded_index.nbytes < best[0].nbytes:
                best = (coded_index, bits)
        assert best is not None
        ctx = encode_mask_ctx(mask) if index_coding == "auto" and entropy != "raw" else None
        if ctx is not None and len(ctx[0]) + len(ctx[1]) < best[0].nbytes:
            model_bytes, data, rows, pbar = ctx
            entry["mask"] = {"coding": "ctx", "rows": rows, "pbar": pbar, "model": writer.add(model_bytes),
                             "data": writer.add(data)}
        else:
            entry["index"] = _stream(writer, best[0], bits=best[1])
    if transform is None:
        if mask is None:
            dtype = np.float16 if dense_dtype == "fp16" else np.float32
            entry.update(kind="dense", **_raw_array(writer, effective.astype(dtype), fqn))
        else:
            entry.update(kind="sparse", values=_raw_array(writer, effective.reshape(-1)[mask.reshape(-1)], fqn))
        return entry
    with torch.no_grad():
        latent = latent_weight(module, tname).detach()
        masked = latent * mask_t.to(latent.dtype) if mask_t is not None else latent
        exported = {k: _numpy(v) for k, v in transform.export(masked).items()}
    kind = exported.get("kind")
    if kind not in SYMBOL_KEY:
        raise ConfigError(f"{fqn}: {type(transform).__name__}.export() returned kind {kind!r} (known: {', '.join(KINDS)})")
    if not np.array_equal(dequantize(exported), effective):
        raise DeepShrinkError(f"{fqn}: {type(transform).__name__}.export() does not reproduce the weight the model "
                              "computes; the file would not load bit-exactly (fix the transform's export)")
    ints = np.asarray(exported[SYMBOL_KEY[kind]])
    if ints.shape != effective.shape or not np.issubdtype(ints.dtype, np.integer):
        raise ConfigError(f"{fqn}: exported {SYMBOL_KEY[kind]!r} must be an integer array of shape {effective.shape}")
    stored = ints.reshape(-1)[mask.reshape(-1)] if mask is not None else ints.reshape(-1)
    low = int(stored.min()) if stored.size else 0
    alphabet = (int(stored.max()) - low + 1) if stored.size else 1
    if alphabet > MAX_ALPHABET:
        raise ConfigError(f"{fqn}: exported integers span {alphabet} values; at most 2**32 can be stored")
    coded = encode_stream(stored.astype(np.int64) - low, alphabet, width_for(alphabet), entropy)
    entry.update(kind=kind, values=_stream(writer, coded, offset=low), arrays={}, fields={})
    for key, value in exported.items():
        if key in ("kind", SYMBOL_KEY[kind]):
            continue
        if isinstance(value, np.ndarray):
            entry["arrays"][key] = _raw_array(writer, value, f"{fqn} export {key!r}")
        else:
            entry["fields"][key] = _json_field(value, f"{fqn} export {key!r}")
    return entry


def save_compressed(model: nn.Module, path: str | os.PathLike[str], *, entropy: str = "huffman",
                    index_bits: dict[str, int | str] | str | None = None, dense_dtype: str = "fp32",
                    meta: dict[str, Any] | None = None, index_coding: str = "relative") -> CompressionReport:
    """Write ``model`` with its compression state to ``path`` (a ``.dsz`` file), atomically.

    ``entropy`` codes the integer streams ("huffman", "ans" or "raw" fixed width; a stream falls back to
    fixed width when that is smaller). ``index_bits`` sets the relative-index width per layer family
    (``{"conv": 8, "fc": 5}`` by default, as in the paper); ``"auto"`` (for all, or as a family's value) picks
    per layer the width in 2..12 whose coded index is smallest. ``index_coding="auto"`` also tries the
    context-modelled mask (:mod:`.maskctx`) per layer and keeps it where it is smaller than the relative
    index (default ``"relative"``: the paper's index everywhere).
    """
    if index_coding not in ("relative", "auto"):
        raise ConfigError(f"index_coding={index_coding!r} is not one of relative, auto")
    if entropy not in CODINGS:
        raise ConfigError(f"entropy={entropy!r} is not one of {', '.join(CODINGS)}")
    if dense_dtype not in ("fp32", "fp16"):
        raise ConfigError(f"dense_dtype={dense_dtype!r} is not one of fp32, fp16")
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
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    from ..models.registry import arch_of

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
        weights[full] = _encode_weight(writer, mod, name, full, entropy, bits, dense_dtype, index_coding)
        report.tensors[full] = sum(len(s) for s in writer.sections) - before
    tensors: dict[str, dict[str, Any]] = {}
    for key, value in module.state_dict().items():
        if "parametrizations" in key.split(".") or key in weights:
            continue
        before = sum(len(s) for s in writer.sections)
        tensors[key] = _raw_array(writer, value.detach().cpu().numpy(), key)
        report.tensors[key] = sum(len(s) for s in writer.sections) - before
    from .. import __version__

    header = {
        "library": f"deepshrink {__version__}",
        "arch": arch[0] if arch else None,
        "kwargs": arch[1] if arch else {},
        "edits": recorded_edits(module),
        "meta": _json_field(dict(meta or {}), "meta"),
        "entropy": entropy,
        "index_bits": bits,
        "dense_dtype": dense_dtype,
        "weights": weights,
        "tensors": tensors,
    }
    blob = writer.to_bytes(header)
    atomic_write_bytes(path, blob)
    report.file_bytes = len(blob)
    report.header_bytes = len(blob) - sum(len(s) for s in writer.sections)
    return report


# ----------------------------------------------------------------------------------------------- read


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
        shape = self.shape(entry, where)
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        section = entry.get("section")
        have = self.c.section_length(section, where)
        if have != need:
            raise FormatError(f"{self.name}: {where} needs {need} bytes for {shape} {dtype_name}, section has {have}")
        data = self.c.read(section, where)
        self._count(tensor, part, have)
        array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        if dtype == np.bool_ and array.view(np.uint8).max(initial=0) > 1:
            raise FormatError(f"{self.name}: {where} holds bool bytes other than 0/1")
        return array

    def stream(self, entry: Any, where: str, tensor: str, part: str, limit: int) -> np.ndarray:
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
        self._count(tensor, f"{part}_table", len(table))
        self._count(tensor, part, len(data))
        try:
            return decode_stream(coding, count, alphabet, raw_bits, table, data)
        except FormatError as exc:
            raise FormatError(f"{w}: {exc}") from exc

    def ctx_mask(self, entry: Any, where: str, fqn: str, shape: tuple[int, ...]) -> np.ndarray:
        w = f"{self.name}: {where} mask"
        if expect(entry, "coding", str, w) != "ctx":
            raise FormatError(f"{w} has unknown coding {entry['coding']!r} (known: ctx)")
        rows, pbar = expect(entry, "rows", int, w), expect(entry, "pbar", int, w)
        model = self.c.read(entry.get("model"), f"{where} mask model")
        data = self.c.read(entry.get("data"), f"{where} mask data")
        self._count(fqn, "index_table", len(model))
        self._count(fqn, "index", len(data))
        try:
            return decode_mask_ctx(model, data, shape, rows, pbar)
        except FormatError as exc:
            raise FormatError(f"{w}: {exc}") from exc

    def weight(self, fqn: str, entry: Any) -> dict[str, Any]:
        where = f"weight {fqn!r}"
        kind = expect(entry, "kind", str, f"{self.name}: {where}")
        shape = self.shape(entry, where)
        numel = int(np.prod(shape, dtype=np.int64))
        if kind == "dense":
            return {"kind": "dense", "array": self.raw(entry, where, fqn, "values").astype(np.float32)}
        mask = None
        if "index" in entry:
            index = entry["index"]
            bits = expect(index, "bits", int, f"{self.name}: {where} index")
            if not 1 <= bits <= MAX_INDEX_BITS:
                raise FormatError(f"{self.name}: {where} has index width {bits} (1..{MAX_INDEX_BITS} allowed)")
            codes = self.stream(index, f"{where} index", fqn, "index", numel)
            try:
                mask = mask_from_positions(decode_positions(codes, bits, numel), shape)
            except FormatError as exc:
                raise FormatError(f"{self.name}: {where}: {exc}") from exc
        elif "mask" in entry:
            mask = self.ctx_mask(entry["mask"], where, fqn, shape)
        if kind == "sparse":
            if mask is None:
                raise FormatError(f"{self.name}: {where} is sparse but has no index")
            values = self.raw(expect(entry, "values", dict, where), f"{where} values", fqn, "values")
            if values.dtype != np.float32 or values.shape != (int(mask.sum()),):
                raise FormatError(f"{self.name}: {where} holds {values.shape} values for {int(mask.sum())} kept weights")
            return {"kind": "sparse", "mask": mask, "values": values}
        if kind not in SYMBOL_KEY:
            raise FormatError(f"{self.name}: {where} has unknown kind {kind!r} (known: dense, sparse, {', '.join(KINDS)})")
        kept = numel if mask is None else int(mask.sum())
        values_entry = expect(entry, "values", dict, f"{self.name}: {where}")
        offset = expect(values_entry, "offset", int, f"{self.name}: {where} values")
        symbols = self.stream(values_entry, f"{where} values", fqn, "values", numel)
        if symbols.size != kept:
            raise FormatError(f"{self.name}: {where} holds {symbols.size} values for {kept} weights")
        ints = np.full(numel, -1 if kind == "codebook" else 0, dtype=np.int64)
        if mask is None:
            ints[:] = symbols + offset
        else:
            ints[mask.reshape(-1)] = symbols + offset
        exported: dict[str, Any] = {"kind": kind}
        for key, value in expect(entry, "fields", dict, f"{self.name}: {where}").items():
            exported[key] = value
        for key, value in expect(entry, "arrays", dict, f"{self.name}: {where}").items():
            exported[key] = self.raw(value, f"{where} {key}", fqn, "arrays")
        dtype = np.int8 if kind == "ternary" else np.int64
        exported[SYMBOL_KEY[kind]] = ints.reshape(shape).astype(dtype)
        if mask is not None:
            exported["mask"] = mask
        try:
            dequantize(_without_mask(exported))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FormatError(f"{self.name}: {where} cannot be dequantized ({type(exc).__name__}: {exc})") from exc
        return exported


def _without_mask(exported: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in exported.items() if k != "mask"}


def effective_weight(entry: dict[str, Any]) -> np.ndarray:
    """The float32 weight a :class:`CompressedFile` weight entry stands for."""
    kind = entry["kind"]
    if kind == "dense":
        return np.asarray(entry["array"], dtype=np.float32)
    if kind == "sparse":
        out = np.zeros(entry["mask"].shape, dtype=np.float32)
        out[entry["mask"]] = entry["values"]
        return out
    return dequantize(_without_mask(entry))


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
    weights = {}
    for fqn, entry in expect(header, "weights", dict, name).items():
        weights[fqn] = reader.weight(fqn, entry)
    tensors = {}
    for fqn, entry in expect(header, "tensors", dict, name).items():
        tensors[fqn] = reader.raw(entry, f"tensor {fqn!r}", fqn, "values")
    for key, kind in (("meta", dict), ("kwargs", dict), ("edits", list)):
        expect(header, key, kind, name)
    if header.get("arch") is not None and not isinstance(header["arch"], str):
        raise FormatError(f"{name}: header entry 'arch' is not a string")
    return CompressedFile(path, header, weights, tensors, reader.bytes, container.size)


# ----------------------------------------------------------------------------------------------- load


def _transform_class(kind: str) -> type | None:
    cls = value_transform_for_kind(kind)
    if cls is None and kind in TECHNIQUE_PACKAGES:
        try:
            importlib.import_module(TECHNIQUE_PACKAGES[kind])
        except ImportError:
            return None
        cls = value_transform_for_kind(kind)
    return cls


def _stated_shapes(cf: CompressedFile) -> dict[str, tuple[int, ...]]:
    shapes = {name: tuple(cf.header["weights"][name]["shape"]) for name in cf.weights}
    shapes.update({name: tuple(array.shape) for name, array in cf.tensors.items()})
    return shapes


def _rebuild(cf: CompressedFile, path: str) -> nn.Module:
    """Build ``arch(**kwargs)`` and replay the edits, after a dry run on the meta device has shown that the
    model's tensors have exactly the file's shapes (so a crafted header cannot make us allocate a huge model)."""
    from ..models.registry import build_model

    arch, kwargs, edits = cf.header["arch"], cf.header.get("kwargs", {}), cf.header["edits"]
    try:
        with torch.device("meta"):
            probe = build_model(arch, **kwargs)
            replay_edits(probe, edits)
    except (ConfigError, FormatError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: cannot rebuild {arch!r} with {kwargs}: {exc}") from exc
    except Exception:  # a constructor that cannot run on the meta device: load_state_dict checks shapes later
        probe = None
    if probe is not None:
        expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
        stated = _stated_shapes(cf)
        if expected != stated:
            wrong = sorted(k for k in expected.keys() | stated.keys() if expected.get(k) != stated.get(k))
            raise FormatError(f"{path}: {arch}({kwargs}) does not match the stored tensors (differs at {wrong[:5]})")
    try:
        model = build_model(arch, **kwargs)
    except (ConfigError, TypeError, ValueError, RuntimeError) as exc:
        raise FormatError(f"{path}: cannot rebuild {arch!r} with {kwargs}: {exc}") from exc
    replay_edits(model, edits)
    return model


def load_compressed_with_meta(path: str | os.PathLike[str], model: nn.Module | None = None
                              ) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` from a ``.dsz`` file; the model is rebuilt from the recorded arch unless one is given.

    Masks and value transforms are restored, so the model can be fine-tuned further; its effective weights
    equal the saved model's bit for bit.
    """
    cf = read_compressed(path)
    header = cf.header
    if model is None:
        if not header.get("arch"):
            raise ConfigError(f"{path}: the file records no arch; pass the model to load into")
        model = _rebuild(cf, str(path))
    else:
        replay_edits(model, header["edits"])
    if any(True for _ in iter_states(model)):
        raise FormatError(f"{path}: the model already carries compression state; load into a fresh model")
    effective = {fqn: effective_weight(entry) for fqn, entry in cf.weights.items()}
    state = {k: torch.from_numpy(v) for k, v in cf.tensors.items()}
    state.update({k: torch.from_numpy(v) for k, v in effective.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FormatError(f"{path}: the stored tensors do not fit {type(model).__name__}: {exc}") from exc
    for fqn, entry in cf.weights.items():
        module_fqn, _, tname = fqn.rpartition(".")
        module = model.get_submodule(module_fqn)
        if "mask" in entry:
            set_mask(module, torch.from_numpy(entry["mask"]), tname)
        if entry["kind"] in SYMBOL_KEY:
            cls = _transform_class(entry["kind"])
            if cls is not None:
                cls.attach(module, _without_mask(entry), tname)  # type: ignore[attr-defined]
        got = getattr(module, tname).detach().cpu().to(torch.float32).numpy()
        if not np.array_equal(got, effective[fqn]):
            raise DeepShrinkError(f"{path}: restoring {fqn!r} ({entry['kind']}) does not reproduce the stored weights; "
                                  "the value transform's attach()/from_export() is inconsistent with its export()")
    meta = cf.meta
    meta["arch"] = header.get("arch")
    meta["kwargs"] = header.get("kwargs", {})
    return model, meta


def load_compressed(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """The model stored in ``path`` (see :func:`load_compressed_with_meta`)."""
    return load_compressed_with_meta(Path(path), model)[0]
