"""A small fuzzing engine for deepshrink's readers, shared by ``test_fuzz.py`` (a bounded-time run in ``make test``)
and ``benchmarks/fuzz.py`` (the long run, coverage-guided with atheris when it is installed).

Targets read untrusted bytes the way a user's command would: ``read_compressed``, ``load_compressed`` and
``runtime.load`` (``.dsz``), the IDX reader (raw and gzip), ``load_checkpoint`` and ``load_weights`` (``torch.save``
zip archives). Inputs are valid seed files mutated blindly (bit flips, overwrites, truncation, junk appended, huge
length fields, chunk swaps, inserts and deletes) or with knowledge of the format (a ``.dsz`` header re-written with
lying lengths, shapes, bit widths, codebook sizes, section ids, index streams that run outside the tensor and symbol
streams outside the codebook, all re-checksummed; zip members mutated and re-archived with valid CRCs; checkpoint
payloads with wrong types and shapes re-saved; IDX headers with lying dimensions, gzip-wrapped or not).

The only acceptable outcomes are a result or a :class:`deepshrink.core.errors.DeepShrinkError`; anything else
(another exception, or a single input running past the time limit) is a finding, saved with its bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import signal
import struct
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.core.errors import DeepShrinkError

PREFIX = struct.Struct("<8sIIIII")
MAGIC = b"\x89DSZ\r\n\x1a\n"
HUGE = [0, 1, 2, 3, 7, 8, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**53, 2**63 - 1,
        -1, -(2**31), -(2**63)]
LEAVES: list[Any] = [-1, 0, 1, 2, 3, 5, 16, 17, 33, 255, 4096, 2**31, 2**40, -(2**40), 1.5, float("nan"), "x",
                     "huffman", "ans", "raw", "ctx", "dense", "sparse", "codebook", "fixedpoint", "ternary", "float64",
                     "bool", "uint8", None, True, [], {}, [1, 2], [0, 3, 1], [2**31, 2**31], {"coding": "raw"}]


class Hang(Exception):
    """One input ran past the per-input time limit."""


# ---------------------------------------------------------------- blind mutations


def mutate_bytes(data: bytes, rng: Random) -> bytes:
    """One blind mutation of ``data``."""
    buf = bytearray(data)
    if not buf:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    op = rng.randrange(9)
    n = len(buf)
    if op == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 1:  # overwrite a run with junk or with a repeated byte
        start, size = rng.randrange(n), rng.randint(1, 16)
        fill = bytes(rng.randrange(256) for _ in range(size)) if rng.random() < 0.5 else bytes([rng.choice([0, 255])]) * size
        buf[start:start + size] = fill
        del buf[n:]
    elif op == 2:  # truncate
        del buf[rng.randrange(n):]
    elif op == 3:  # junk appended
        buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 4:  # a huge (or tiny) length field at a 4-byte boundary or anywhere
        at = rng.randrange(0, max(n - 8, 1))
        if rng.random() < 0.5:
            at -= at % 4
        value = rng.choice(HUGE) % 2**64
        width = rng.choice([4, 8])
        buf[at:at + width] = (value % 2**(8 * width)).to_bytes(width, rng.choice(["little", "big"]))
        del buf[n:]
    elif op == 5:  # swap two chunks of the same size
        size = rng.randint(1, max(1, n // 4))
        a, b = rng.randrange(max(n - size, 1)), rng.randrange(max(n - size, 1))
        chunk_a, chunk_b = bytes(buf[a:a + size]), bytes(buf[b:b + size])
        buf[a:a + size], buf[b:b + size] = chunk_b, chunk_a
        del buf[n:]
    elif op == 6:  # duplicate a chunk elsewhere
        size = rng.randint(1, max(1, n // 8))
        a = rng.randrange(n)
        chunk = bytes(buf[a:a + size])
        at = rng.randrange(n + 1)
        buf[at:at] = chunk
    elif op == 7:  # delete a chunk
        a = rng.randrange(n)
        del buf[a:a + rng.randint(1, 32)]
    else:  # insert junk
        at = rng.randrange(n + 1)
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    return bytes(buf)


def mutate_json(node: Any, rng: Random) -> Any:
    """Replace, delete or nudge one value somewhere inside a JSON-like tree."""
    if isinstance(node, dict) and node and rng.random() < 0.85:
        key = rng.choice(list(node))
        out = dict(node)
        if rng.random() < 0.08:
            del out[key]
        else:
            out[key] = mutate_json(node[key], rng)
        return out
    if isinstance(node, list) and node and rng.random() < 0.85:
        i = rng.randrange(len(node))
        out_list = list(node)
        out_list[i] = mutate_json(node[i], rng)
        return out_list
    if isinstance(node, int) and not isinstance(node, bool) and rng.random() < 0.5:
        return node + rng.randint(-3, 3) if rng.random() < 0.7 else node * rng.choice([2, 1000, 2**20])
    return rng.choice(LEAVES)


# ---------------------------------------------------------------- .dsz structure


def split_dsz(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The header (version 1 layout, also of a version 2 file) and the section bytes of a valid ``.dsz`` file."""
    _, _, flags, stored, _, _ = PREFIX.unpack_from(data)
    blob = data[PREFIX.size:PREFIX.size + stored]
    header = json.loads(zlib.decompress(blob) if flags & 1 else blob)
    base = PREFIX.size + stored
    if PREFIX.unpack_from(data)[1] == 2:  # the compact header, as version 1 (what join_dsz writes)
        from deepshrink.codec.container import expand_header

        header = {**expand_header(header), "version": 1}
    return header, [data[base + o:base + o + n] for o, n, _ in header["sections"]]


def join_dsz(header: Any, sections: list[bytes], fix_table: bool = True, deflate: bool = True) -> bytes:
    """A file whose checksums are valid around (possibly lying) header values and section bytes."""
    if fix_table and isinstance(header, dict):
        table, offset = [], 0
        for section in sections:
            table.append([offset, len(section), zlib.crc32(section)])
            offset += len(section)
        header = {**header, "sections": table}
    text = json.dumps(header).encode()
    blob = zlib.compress(text) if deflate else text
    return PREFIX.pack(MAGIC, 1, int(deflate), len(blob), len(text), zlib.crc32(blob)) + blob + b"".join(sections)


def _streams(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for key in ("values", "index") if isinstance(s := entry.get(key), dict) and "coding" in s]


def _new_stream(sections: list[bytes], symbols: np.ndarray, rng: Random, **extra: Any) -> dict[str, Any]:
    """A validly coded stream of ``symbols`` (any values the format allows) appended as new sections."""
    from deepshrink.codec import encode_stream
    from deepshrink.codec.bits import width_for

    alphabet = int(symbols.max()) + 1 if symbols.size else 1
    coded = encode_stream(symbols, alphabet, width_for(alphabet), rng.choice(["raw", "huffman", "ans"]))
    table = None
    if coded.table:
        sections.append(coded.table)
        table = len(sections) - 1
    sections.append(coded.data)
    return {"coding": coded.coding, "count": coded.count, "alphabet": coded.alphabet, "raw_bits": coded.raw_bits,
            "table": table, "data": len(sections) - 1, **extra}


def _lie(header: dict[str, Any], sections: list[bytes], rng: Random) -> None:
    """Make one weight or tensor entry lie about itself in a way the format's own checks must catch."""
    weights, tensors = header.get("weights", {}), header.get("tensors", {})
    names = [("weights", k) for k in weights if isinstance(weights[k], dict)]
    names += [("tensors", k) for k in tensors if isinstance(tensors[k], dict)]
    if not names:
        return
    group, name = rng.choice(names)
    entry = header[group][name]
    op = rng.randrange(10)
    shape = list(entry.get("shape", [1]))
    if op == 0:  # shapes
        lies = [[d * rng.choice([2, 10, 1000, 2**20]) for d in shape], [*shape, rng.choice([1, 2, 7])], shape[1:],
                [0, *shape[1:]], [-1, *shape[1:]], [2**31, 2**31], [2**16] * 4, list(reversed(shape)), [3.5], "x"]
        entry["shape"] = rng.choice(lies)
    elif op == 1 and _streams(entry):  # lengths and widths of a stream
        stream = rng.choice(_streams(entry))
        key = rng.choice(["count", "alphabet", "raw_bits", "bits", "offset"])
        value = stream.get(key, 1)
        stream[key] = rng.choice([value + 1, value - 1, value * 2, value * 256, *HUGE, 0, 33, 64, 1.5, None])
    elif op == 2 and isinstance(entry.get("arrays"), dict) and entry["arrays"]:  # codebook (array) sizes, consistent
        key = rng.choice(list(entry["arrays"]))
        array = entry["arrays"][key]
        if isinstance(array.get("section"), int) and 0 <= array["section"] < len(sections):
            itemsize = np.dtype(array.get("dtype", "float32")).itemsize if array.get("dtype") in (
                "float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool") else 4
            new_shape = rng.choice([[1], [2], [max(1, int(np.prod(array["shape"])) // 2)], [0], [1, 1],
                                    [int(np.prod(array["shape"])) * 4]])
            array["shape"] = new_shape
            sections[array["section"]] = bytes(rng.randrange(256) for _ in range(int(np.prod(new_shape)) * itemsize))
    elif op == 3 and isinstance(entry.get("fields"), dict) and entry["fields"]:  # bit widths, scales, formats
        key = rng.choice(list(entry["fields"]))
        entry["fields"][key] = rng.choice([*HUGE, 0.0, -0.0, 1e308, float("inf"), float("nan"), "x", [], None, [1, 2]])
    elif op == 4 and isinstance(entry.get("index"), dict):  # an index stream that runs outside the tensor
        bits = entry["index"].get("bits", 4)
        bits = bits if isinstance(bits, int) and 1 <= bits <= 16 else 4
        count = max(1, min(int(entry["index"].get("count", 8)) if isinstance(entry["index"].get("count"), int) else 8,
                           4096))
        top = (1 << bits) - 1
        codes = np.array([rng.choice([top - 1, top, rng.randrange(top + 1)]) for _ in range(count + rng.randint(0, 8))],
                         dtype=np.int64)
        entry["index"] = _new_stream(sections, codes, rng, bits=bits)
    elif op == 5 and isinstance(entry.get("values"), dict) and "coding" in entry["values"]:  # symbols outside codebook
        count = entry["values"].get("count", 8)
        count = count if isinstance(count, int) and 0 < count <= 4096 else 8
        top = rng.choice([2, 3, 4, 16, 256, 65536, 2**20])
        symbols = np.array([rng.randrange(top) for _ in range(count)], dtype=np.int64)
        entry["values"] = _new_stream(sections, symbols, rng, offset=rng.choice([0, -1, -top, top, 2**40]))
    elif op == 6:  # section ids pointing elsewhere, or nowhere
        holders = [entry, *_streams(entry), *[a for a in (entry.get("arrays") or {}).values() if isinstance(a, dict)]]
        if isinstance(entry.get("mask"), dict):
            holders.append(entry["mask"])
        holder = rng.choice(holders)
        keys = [k for k in ("section", "data", "table", "model") if k in holder]
        if keys:
            holder[rng.choice(keys)] = rng.choice([len(sections), len(sections) + 7, -1, rng.randrange(len(sections) or 1),
                                                   None, "0", 1.0, True])
    elif op == 7 and len(sections) > 1:  # swap two sections' contents
        i, j = rng.randrange(len(sections)), rng.randrange(len(sections))
        sections[i], sections[j] = sections[j], sections[i]
    elif op == 8 and isinstance(entry.get("mask"), dict):  # the context-coded mask's model
        mask = entry["mask"]
        key = rng.choice(["rows", "pbar", "model_bytes"])
        if key == "model_bytes" and isinstance(mask.get("model"), int) and 0 <= mask["model"] < len(sections):
            model = bytearray(sections[mask["model"]])
            for _ in range(rng.randint(1, 8)):
                if model:
                    model[rng.randrange(len(model))] = rng.randrange(256)
            sections[mask["model"]] = bytes(model)
        else:
            mask[key] = rng.choice([*HUGE, 0, 65537])
    else:  # the dtype of a raw array
        entry["dtype"] = rng.choice(["float64", "int8", "bool", "uint8", "float16", "object", "<f4", 7])


def mutate_dsz(data: bytes, rng: Random) -> bytes:
    """One structure-aware mutation of a valid ``.dsz`` file; falls back to a blind one when it does not parse."""
    try:
        header, sections = split_dsz(data)
    except Exception:
        return mutate_bytes(data, rng)
    op = rng.randrange(6)
    if op == 0:
        return join_dsz(mutate_json(header, rng), sections, fix_table=rng.random() < 0.8)
    if op == 1:  # a section's contents (tables and data included), re-checksummed
        if sections:
            i = rng.randrange(len(sections))
            sections[i] = mutate_bytes(sections[i], rng)
        return join_dsz(header, sections)
    if op == 2:  # prefix fields: lengths, flags, version
        values = list(PREFIX.unpack_from(data))
        field_ = rng.randrange(1, 6)
        values[field_] = rng.choice([*HUGE, values[field_] + 1, values[field_] - 1]) % 2**32
        return PREFIX.pack(*values) + data[PREFIX.size:]
    if op == 3:  # the header inflates to more than it states (a deflate bomb), or is not deflated
        text = json.dumps(header).encode() + b" " * rng.choice([1, 1000, 2**20])
        blob = zlib.compress(text)
        stated = rng.choice([len(text), len(text) - 1, 64 << 20, (64 << 20) + 1, 10])
        return PREFIX.pack(MAGIC, 1, 1, len(blob), stated % 2**32, zlib.crc32(blob)) + blob + b"".join(sections)
    try:
        for _ in range(rng.randint(1, 3)):
            _lie(header, sections, rng)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError):
        return mutate_bytes(data, rng)  # an input already too mangled to lie about itself
    return join_dsz(header, sections, deflate=rng.random() < 0.8)


# ---------------------------------------------------------------- zip archives (torch.save)


def mutate_zip(data: bytes, rng: Random) -> bytes:
    """Mutate one member of a ``torch.save`` archive (or drop, duplicate, rename one) and re-archive it with valid
    CRCs, so that torch's reader and the restricted unpickler are reached."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except Exception:
        return mutate_bytes(data, rng)
    if not members:
        return mutate_bytes(data, rng)
    op = rng.randrange(5)
    i = rng.randrange(len(members))
    pickles = [k for k, (name, _) in enumerate(members) if name.endswith(".pkl")]
    if op <= 1 and pickles:  # the pickle: where the structure is
        i = rng.choice(pickles)
    if op <= 2:
        members[i] = (members[i][0], mutate_bytes(members[i][1], rng))
    elif op == 3:
        del members[i]
    else:
        name = members[i][0]
        members[i] = (rng.choice([name + "x", name.replace("data", "dat"), "archive/data/999", name]), members[i][1])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the point
        for name, payload in members:
            with contextlib.suppress(ValueError):
                archive.writestr(name, payload)
    return out.getvalue()


def _mutate_payload(node: Any, rng: Random) -> Any:
    """Like :func:`mutate_json`, also over tensors (wrong shapes, dtypes, sizes)."""
    if isinstance(node, torch.Tensor) or rng.random() < 0.05:
        return rng.choice([torch.zeros(0), torch.zeros(3, 2), torch.ones(1, dtype=torch.int64), torch.tensor(float("nan")),
                           torch.zeros(2, 2, dtype=torch.bool), "x", None, 7, [torch.zeros(1)]])
    if isinstance(node, dict) and node and rng.random() < 0.85:
        key = rng.choice(list(node))
        out = dict(node)
        if rng.random() < 0.08:
            del out[key]
        else:
            out[key] = _mutate_payload(node[key], rng)
        return out
    if isinstance(node, list) and node and rng.random() < 0.85:
        out_list = list(node)
        i = rng.randrange(len(node))
        out_list[i] = _mutate_payload(node[i], rng)
        return out_list
    if isinstance(node, int) and not isinstance(node, bool):
        return rng.choice([node + 1, node * 1000, 2**31, -1, 0])
    return rng.choice([*LEAVES, {"in_features": 2**40}, {"hidden": [2**30]}, "lenet300", "torchvision:x",
                       "os:system", ["Mask", "Nope"]])


def mutate_checkpoint(data: bytes, rng: Random) -> bytes:
    """A semantic change to a checkpoint's payload (re-saved with ``torch.save``), or a member mutation."""
    if rng.random() < 0.5:
        return mutate_zip(data, rng)
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        return mutate_zip(data, rng)
    out = io.BytesIO()
    try:  # a byte-mutated file can unpickle to objects torch.save cannot write back (e.g. a tensor whose
        torch.save(_mutate_payload(payload, rng), out)  # backward hooks became a class): mutate the members instead
    except Exception:
        return mutate_zip(data, rng)
    return out.getvalue()


# ---------------------------------------------------------------- IDX


def mutate_idx(data: bytes, rng: Random) -> bytes:
    """IDX headers that lie (dimensions, dtype, rank) around shortened or padded payloads; gzip-wrapped or not."""
    raw = data
    with contextlib.suppress(Exception):
        raw = gzip.decompress(data)
    if len(raw) >= 4 and rng.random() < 0.6:
        ndim = raw[3] if 1 <= raw[3] <= 4 else 1
        dims = list(struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])) if len(raw) >= 4 + 4 * ndim else [1] * ndim
        op = rng.randrange(4)
        if op == 0:
            dims[rng.randrange(ndim)] = rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 65536, dims[0] + 1])
        elif op == 1:
            raw = raw[:2] + bytes([rng.choice([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF])]) + raw[3:]
        elif op == 2:
            ndim = rng.choice([0, 1, 2, 3, 4, 5, 255])
            dims = (dims + [rng.randint(0, 9)] * 5)[:min(ndim, 5)]
        payload = raw[4 + 4 * (raw[3] if 1 <= raw[3] <= 4 else 1):]
        payload = payload[:rng.randrange(len(payload) + 1)] if op == 3 else payload
        raw = raw[:3] + bytes([ndim % 256]) + struct.pack(f">{len(dims)}I", *[d % 2**32 for d in dims]) + payload
    else:
        raw = mutate_bytes(raw, rng)
    if rng.random() < 0.5:
        wrapped = gzip.compress(raw, mtime=0)
        return mutate_bytes(wrapped, rng) if rng.random() < 0.3 else wrapped
    return raw


# ---------------------------------------------------------------- seeds and targets


def _small_lenet() -> nn.Module:
    from deepshrink.models import build_model

    return build_model("lenet300", in_features=16, hidden=(12, 6), num_classes=4)


def dsz_seeds(folder: Path) -> list[bytes]:
    """Small valid files of every stored kind: codebook (per layer and per channel group), fixed point, ternary,
    sparse (relative index and context-coded mask), dense fp32/fp16, BatchNorm buffers; Huffman, ANS and raw."""
    from deepshrink.codec import save_compressed
    from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
    from deepshrink.models import build_model
    from deepshrink.prune import MagnitudePrune, prune_
    from deepshrink.share import WeightSharing, share_weights_
    from deepshrink.ternary import TTQ, ternarize_

    torch.manual_seed(0)
    files: list[bytes] = []
    model = _small_lenet()
    prune_(model, MagnitudePrune(sparsity=0.6))
    share_weights_(model, WeightSharing(bits=3), select="fc1")
    ternarize_(model, TTQ(keep_first_last=False), select="fc2")
    for i, (entropy, coding) in enumerate([("huffman", "relative"), ("ans", "auto"), ("raw", "relative")]):
        path = folder / f"mixed{i}.dsz"
        save_compressed(model, path, entropy=entropy, index_bits={"fc": 3}, index_coding=coding)
        files.append(path.read_bytes())
    model = _small_lenet()
    quantize_(model, DynamicFixedPoint(bits=6), calib=[torch.randn(8, 16)])
    save_compressed(model, folder / "fixed.dsz", entropy="ans")
    files.append((folder / "fixed.dsz").read_bytes())
    model = build_model("vgg", in_channels=1, num_classes=4, widths=(4, 8))
    prune_(model, MagnitudePrune(sparsity=0.5), select="type:conv")
    share_weights_(model, WeightSharing(bits=2, groups=2), select="type:conv")
    save_compressed(model, folder / "vgg.dsz", entropy="huffman", index_coding="auto")
    files.append((folder / "vgg.dsz").read_bytes())
    save_compressed(_small_lenet(), folder / "dense.dsz", dense_dtype="fp16")
    files.append((folder / "dense.dsz").read_bytes())
    return files


def checkpoint_seeds(folder: Path) -> list[bytes]:
    """A plain and a pruned + shared checkpoint."""
    from deepshrink.prune import MagnitudePrune, prune_
    from deepshrink.share import WeightSharing, share_weights_
    from deepshrink.train import save_checkpoint

    torch.manual_seed(0)
    model = _small_lenet()
    save_checkpoint(folder / "plain.pt", model, meta={"dataset": "digits"})
    prune_(model, MagnitudePrune(sparsity=0.5))
    share_weights_(model, WeightSharing(bits=2), select="fc1")
    save_checkpoint(folder / "shared.pt", model, meta={"dataset": "digits", "config": {"lr": 0.1}})
    return [(folder / "plain.pt").read_bytes(), (folder / "shared.pt").read_bytes()]


def weights_seeds(folder: Path) -> list[bytes]:
    """A plain state dict and a ``{"state_dict": ...}`` wrapper, as users save them."""
    torch.manual_seed(0)
    state = _small_lenet().state_dict()
    out = []
    for payload in (state, {"state_dict": state, "epoch": 3}):
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        out.append(buffer.getvalue())
    return out


def idx_seeds() -> list[bytes]:
    """Small IDX files of images (uint8, rank 3) and labels (rank 1), raw and gzip, and a float one."""
    rng = np.random.default_rng(0)
    images = b"\x00\x00\x08\x03" + struct.pack(">3I", 3, 4, 4) + rng.integers(0, 256, 48, dtype=np.uint8).tobytes()
    labels = b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([1, 2, 3])
    floats = b"\x00\x00\x0d\x02" + struct.pack(">2I", 2, 2) + np.arange(4, dtype=">f4").tobytes()
    return [images, labels, floats, gzip.compress(images, mtime=0), gzip.compress(labels, mtime=0)]


def _forward(model: nn.Module, header: dict[str, Any]) -> None:
    """Run a loaded model once on zeros of the shape its recorded architecture takes."""
    kwargs = header.get("kwargs") or {}
    if header.get("arch") == "lenet300":
        x = torch.zeros(2, int(kwargs.get("in_features", 784)))
    elif header.get("arch") == "vgg":
        x = torch.zeros(2, int(kwargs.get("in_channels", 3)), 8, 8)
    else:
        return
    with torch.no_grad():
        model(x)


@dataclass
class Target:
    """A reader under test: ``run(path, data)`` reads the input the way a user's command would."""

    name: str
    run: Callable[[Path, bytes], object]
    seeds: list[bytes]
    structured: Callable[[bytes, Random], bytes]
    suffix: str = ".bin"


def _read_compressed(path: Path, data: bytes) -> object:
    from deepshrink.codec import read_compressed

    return read_compressed(path)


def _load_compressed(path: Path, data: bytes) -> object:
    from deepshrink.codec import load_compressed_with_meta

    model, _ = load_compressed_with_meta(path)
    return model


def _runtime_load(path: Path, data: bytes) -> object:
    from deepshrink import runtime
    from deepshrink.codec import read_compressed

    model = runtime.load(path)
    _forward(model, read_compressed(path).header)  # the loaded kernels run on what was accepted
    return model


def _idx(path: Path, data: bytes) -> object:
    from deepshrink.data import parse_idx, read_idx

    with contextlib.suppress(DeepShrinkError):
        parse_idx(data, "<fuzz>")
    return read_idx(path)


def _checkpoint(path: Path, data: bytes) -> object:
    from deepshrink.train import load_checkpoint

    return load_checkpoint(path)


def _weights(path: Path, data: bytes) -> object:
    from deepshrink.models.registry import load_weights

    return load_weights(_small_lenet(), path)


def make_targets(folder: Path) -> dict[str, Target]:
    """Every fuzz target with its seed inputs (written under ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    dsz = dsz_seeds(folder)
    return {
        "read_compressed": Target("read_compressed", _read_compressed, dsz, mutate_dsz, ".dsz"),
        "load_compressed": Target("load_compressed", _load_compressed, dsz, mutate_dsz, ".dsz"),
        "runtime.load": Target("runtime.load", _runtime_load, dsz, mutate_dsz, ".dsz"),
        "idx": Target("idx", _idx, idx_seeds(), mutate_idx, ".idx"),
        "checkpoint": Target("checkpoint", _checkpoint, checkpoint_seeds(folder), mutate_checkpoint, ".pt"),
        "weights": Target("weights", _weights, weights_seeds(folder), mutate_checkpoint, ".pt"),
    }


# ---------------------------------------------------------------- running


@dataclass
class Outcome:
    """What a run over one target found."""

    target: str
    tried: int = 0
    accepted: int = 0
    clean: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean_errors(self) -> int:
        return sum(self.clean.values())

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "tried": self.tried, "accepted": self.accepted, "clean_errors": self.clean_errors,
                "clean_by_class": dict(self.clean), "other": len(self.findings), "findings": self.findings,
                "seconds": round(self.seconds, 1)}


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` inside the body once ``seconds`` have passed (main thread only; a no-op elsewhere)."""
    def handler(signum: int, frame: Any) -> None:
        raise Hang(f"more than {seconds} s on one input")

    try:
        previous = signal.signal(signal.SIGALRM, handler)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_one(target: Target, data: bytes, workdir: Path, outcome: Outcome, save_dir: Path | None,
              limit: float = 10.0) -> None:
    """Run ``target`` on ``data``; count the outcome and record (and save) anything but a deepshrink error."""
    path = workdir / f"input{target.suffix}"
    path.write_bytes(data)
    outcome.tried += 1
    try:
        with time_limit(limit), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings about odd archives and pickles
            target.run(path, data)
        outcome.accepted += 1
    except DeepShrinkError as exc:
        outcome.clean[type(exc).__name__] = outcome.clean.get(type(exc).__name__, 0) + 1
    except Exception as exc:  # a finding: save the reproducer
        digest = hashlib.sha1(data).hexdigest()[:12]
        saved = None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            saved = save_dir / f"{target.name}-{digest}{target.suffix}"
            saved.write_bytes(data)
        outcome.findings.append({"error": f"{type(exc).__name__}: {str(exc)[:300]}", "bytes": len(data),
                                 "sha1": digest, "saved": str(saved) if saved else None})


def fuzz(target: Target, seconds: float, seed: int, save_dir: Path | None = None,
         max_findings: int = 20) -> Outcome:
    """Mutate ``target``'s seeds for ``seconds`` (wall clock): half blind, half structure-aware mutations, each
    applied 1-3 times; every seed is also tried as it is."""
    rng = Random(seed)
    outcome = Outcome(target.name)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsfuzz-") as tmp:
        workdir = Path(tmp)
        for data in target.seeds:
            check_one(target, data, workdir, outcome, save_dir)
        while time.perf_counter() - started < seconds and len(outcome.findings) < max_findings:
            data = rng.choice(target.seeds)
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                data = target.structured(data, rng) if rng.random() < 0.5 else mutate_bytes(data, rng)
            check_one(target, data, workdir, outcome, save_dir)
    outcome.seconds = time.perf_counter() - started
    return outcome
