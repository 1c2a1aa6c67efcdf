"""Damaged files: truncated, bit-flipped, wrong-version and fuzzed files raise FormatError, nothing else.

The fuzz test mutates valid files thousands of times, both blindly (bytes) and structure-aware (header
values and section contents re-checksummed so the decoders themselves are reached), and checks that
reading never raises anything but FormatError, never hangs, and never allocates beyond the stated sizes.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.codec import read_compressed, read_compressed_bytes, save_compressed
from deepshrink.codec.container import compact_header, expand_header
from deepshrink.core import FormatError, set_mask
from deepshrink.models import build_model

from .codec_helpers import prune_, quantize_

PREFIX = struct.Struct("<8sIIIII")


def _sample(tmp_path: Path, entropy: str, transforms: dict, index_coding: str = "relative", version: int = 2) -> bytes:
    model = build_model("lenet300", in_features=16, hidden=(12, 6), num_classes=4)
    prune_(model.fc1, 0.2)
    quantize_(model.fc1, "codebook")
    quantize_(model.fc2, "fixedpoint")
    prune_(model.fc3, 0.5)
    quantize_(model.fc3, "ternary")
    model.extra = nn.Linear(3, 3)  # dense and pruned-only forms too
    prune_(model.extra, 0.3)
    path = tmp_path / f"{entropy}.dsz"
    model.wide = nn.Linear(64, 24, bias=False)  # empty rows and columns: the context-coded mask wins
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(24, 64, generator=gen) < 0.5
    mask[torch.rand(24, generator=gen) < 0.5] = False
    mask[:, torch.rand(64, generator=gen) < 0.5] = False
    set_mask(model.wide, mask)
    save_compressed(model, path, entropy=entropy, index_bits={"fc": 3}, index_coding=index_coding, version=version)
    return path.read_bytes()


def _split(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    _, _, flags, stored, _, _ = PREFIX.unpack_from(data)
    blob = data[PREFIX.size : PREFIX.size + stored]
    header = json.loads(zlib.decompress(blob) if flags & 1 else blob)
    base = PREFIX.size + stored
    if PREFIX.unpack_from(data)[1] == 2:  # the compact header, as version 1 (what _join writes)
        header = {**expand_header(header), "version": 1}
    return header, [data[base + o : base + o + n] for o, n, _ in header["sections"]]


def _join(header: Any, sections: list[bytes], fix_table: bool = True) -> bytes:
    """A file with valid checksums around (possibly nonsensical) header values and section bytes."""
    if fix_table and isinstance(header, dict):
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in sections])[:-1]]).tolist() if sections else []
        header = {**header, "sections": [[int(o), len(s), zlib.crc32(s)] for o, s in zip(offsets, sections, strict=True)]}
    text = json.dumps(header).encode()
    blob = zlib.compress(text)
    return PREFIX.pack(b"\x89DSZ\r\n\x1a\n", 1, 1, len(blob), len(text), zlib.crc32(blob)) + blob + b"".join(sections)


@pytest.fixture
def sample(tmp_path: Path, transforms: dict) -> bytes:
    return _sample(tmp_path, "huffman", transforms)


def test_sample_reads_back(sample: bytes) -> None:
    cf = read_compressed_bytes(sample)
    assert {w.kind for w in cf.weights.values()} == {"codebook", "fixedpoint", "ternary", "sparse"}
    header, sections = _split(sample)
    rebuilt = read_compressed_bytes(_join(header, sections))  # the fuzzer's re-checksummed form reads back
    assert rebuilt.weights.keys() == cf.weights.keys()


def test_truncated_file(tmp_path: Path, sample: bytes) -> None:
    for cut in (0, 5, 20, 40, len(sample) // 2, len(sample) - 1):
        path = tmp_path / "cut.dsz"
        path.write_bytes(sample[:cut])
        with pytest.raises(FormatError, match=r"truncated|bad magic"):
            read_compressed(path)


def test_bit_flip_in_a_section_names_the_checksum(sample: bytes, tmp_path: Path, transforms: dict) -> None:
    damaged = bytearray(sample)  # version 2: one CRC-32 over everything after the prefix
    damaged[-3] ^= 0x10
    with pytest.raises(FormatError, match="checksum mismatch"):
        read_compressed_bytes(bytes(damaged))
    damaged = bytearray(sample)
    damaged[PREFIX.size + 2] ^= 0x01
    with pytest.raises(FormatError, match="checksum mismatch"):
        read_compressed_bytes(bytes(damaged))
    sample = _sample(tmp_path, "huffman", transforms, version=1)  # version 1: per section, and the header's
    _, sections = _split(sample)
    base = len(sample) - sum(len(s) for s in sections)
    damaged = bytearray(sample)
    damaged[base + 3] ^= 0x10
    with pytest.raises(FormatError, match="checksum mismatch in section"):
        read_compressed_bytes(bytes(damaged))
    damaged = bytearray(sample)
    damaged[PREFIX.size + 2] ^= 0x01
    with pytest.raises(FormatError, match="header checksum"):
        read_compressed_bytes(bytes(damaged))


def test_wrong_version_names_it(sample: bytes) -> None:
    damaged = sample[:8] + struct.pack("<I", 7) + sample[12:]
    with pytest.raises(FormatError, match="version 7 is not supported"):
        read_compressed_bytes(damaged)


def test_not_a_dsz_file(tmp_path: Path) -> None:
    (tmp_path / "x.dsz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(FormatError, match="bad magic"):
        read_compressed(tmp_path / "x.dsz")
    with pytest.raises(FormatError, match="not found"):
        read_compressed(tmp_path / "missing.dsz")


def test_header_lies_are_caught_before_allocation(sample: bytes) -> None:
    header, sections = _split(sample)
    header["weights"]["fc2.weight"]["shape"] = [100_000, 100_000]
    with pytest.raises(FormatError, match="more than"):
        read_compressed_bytes(_join(header, sections))
    header, sections = _split(sample)
    header["weights"]["fc1.weight"]["shape"] = [5000, 5000]  # index far too short to cover this
    with pytest.raises(FormatError, match="cover"):
        read_compressed_bytes(_join(header, sections))
    header, sections = _split(sample)
    header["tensors"]["fc1.bias"]["shape"] = [13]
    with pytest.raises(FormatError, match="needs 52 bytes"):
        read_compressed_bytes(_join(header, sections))


LEAVES: list[Any] = [-1, 0, 1, 2, 3, 5, 16, 17, 33, 255, 4096, 2**31, 2**40, -(2**40), 1.5, "x", "huffman", "ans",
                     "raw", "dense", "sparse", "codebook", "float64", "bool", None, True, [], {}, [1, 2], [0, 3, 1]]


def _mutate_json(node: Any, rng: np.random.Generator) -> Any:
    if isinstance(node, dict) and node and rng.random() < 0.85:
        key = list(node)[rng.integers(len(node))]
        out = dict(node)
        if rng.random() < 0.1:
            del out[key]
        else:
            out[key] = _mutate_json(node[key], rng)
        return out
    if isinstance(node, list) and node and rng.random() < 0.85:
        i = int(rng.integers(len(node)))
        out = list(node)
        out[i] = _mutate_json(node[i], rng)
        return out
    if isinstance(node, int) and not isinstance(node, bool) and rng.random() < 0.5:
        return int(node + rng.integers(-3, 4)) if rng.random() < 0.7 else node * 1000
    return LEAVES[rng.integers(len(LEAVES))]


def _mutations(data: bytes, rng: np.random.Generator) -> bytes:
    choice = rng.integers(8)
    buf = bytearray(data)
    if choice == 0:  # flip bits anywhere
        for _ in range(rng.integers(1, 4)):
            buf[rng.integers(len(buf))] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    if choice == 1:  # overwrite a run of bytes
        start = int(rng.integers(len(buf)))
        buf[start : start + int(rng.integers(1, 9))] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        return bytes(buf[: len(data)])
    if choice == 2:  # truncate
        return bytes(buf[: rng.integers(len(buf))])
    if choice == 3:  # insert or delete
        at = int(rng.integers(len(buf)))
        if rng.random() < 0.5:
            return bytes(buf[:at] + rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes() + buf[at:])
        return bytes(buf[:at] + buf[at + int(rng.integers(1, 16)) :])
    if choice == 4:  # prefix fields: version / flags / lengths
        field = int(rng.integers(2, 6))
        values = list(PREFIX.unpack_from(data))
        values[field] = int(rng.choice([0, 1, 2, 3, values[field] + 1, values[field] - 1, 2**31, 2**32 - 1])) % 2**32
        return PREFIX.pack(*values) + data[PREFIX.size :]
    header, sections = _split(data)
    if choice in (5, 6):  # header values, re-checksummed so validation and decoders are reached
        return _join(_mutate_json(header, rng), sections, fix_table=choice == 5)
    i = int(rng.integers(len(sections)))  # section contents, re-checksummed
    section = bytearray(sections[i])
    action = rng.integers(3)
    if action == 0 and section:
        for _ in range(rng.integers(1, 4)):
            section[rng.integers(len(section))] ^= 1 << int(rng.integers(8))
    elif action == 1:
        section = section[: rng.integers(len(section) + 1)]
    else:
        section += rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    sections[i] = bytes(section)
    return _join(header, sections)


def _stated_elements(data: bytes) -> int:
    try:
        header, _ = _split(data)
        total = 0
        for group in ("weights", "tensors"):
            for entry in header[group].values():
                total += int(np.prod([max(int(d), 0) for d in entry["shape"]], dtype=np.float64))
        return total
    except Exception:
        return 0


@pytest.mark.timeout(120)
def test_fuzz_only_format_errors(tmp_path: Path, transforms: dict) -> None:
    seeds = [_sample(tmp_path, "huffman", transforms), _sample(tmp_path, "ans", transforms, "auto"),
             _sample(tmp_path, "raw", transforms)]
    assert "mask" in json.dumps(_split(seeds[1])[0]["weights"]["wide.weight"])  # the context coder is fuzzed too
    rng = np.random.default_rng(1234)
    outcomes = {"format_error": 0, "read": 0}
    tracemalloc.start()
    try:
        for trial in range(3000):
            data = _mutations(seeds[trial % 3], rng)
            stated = _stated_elements(data)
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                read_compressed_bytes(data, f"mutant{trial}")
                outcomes["read"] += 1
            except FormatError:
                outcomes["format_error"] += 1
            except Exception as exc:  # pragma: no cover - the failure being tested for
                raise AssertionError(f"mutant {trial}: {type(exc).__name__}: {exc}") from exc
            peak = tracemalloc.get_traced_memory()[1] - base
            assert peak <= 64 * stated + 16 * len(data) + (2 << 20), f"mutant {trial} allocated {peak} bytes"
    finally:
        tracemalloc.stop()
    assert outcomes["format_error"] > 2000  # most mutants are damaged; the rest decoded cleanly


# ---------------------------------------------------------------- version 2: the compact header itself


def _split2(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The compact header as stored and the sections of a valid version 2 file."""
    _, version, flags, stored, _, _ = PREFIX.unpack_from(data)
    assert version == 2
    blob = data[PREFIX.size : PREFIX.size + stored]
    header = json.loads(zlib.decompress(blob) if flags & 1 else blob)
    base, sections = PREFIX.size + stored, []
    for length in header["s"]:
        sections.append(data[base : base + length])
        base += length
    return header, sections


def _join2(header: Any, sections: list[bytes], fix_lengths: bool = True) -> bytes:
    """A version 2 file with a valid whole-file CRC around a (possibly lying) compact header."""
    if fix_lengths and isinstance(header, dict):
        header = {**header, "s": [len(s) for s in sections]}
    text = json.dumps(header).encode()
    blob = zlib.compress(text)
    body = b"".join(sections)
    crc = zlib.crc32(body, zlib.crc32(blob))
    return PREFIX.pack(b"\x89DSZ\r\n\x1a\n", 2, 1, len(blob), len(text), crc) + blob + body


def test_compact_header_round_trips_and_is_smaller(tmp_path: Path, transforms: dict) -> None:
    torch.manual_seed(0)
    v2 = _sample(tmp_path, "ans", transforms, "auto")
    torch.manual_seed(0)
    v1 = _sample(tmp_path, "ans", transforms, "auto", version=1)
    header, sections = _split2(v2)
    assert read_compressed_bytes(_join2(header, sections)).weights.keys() == read_compressed_bytes(v1).weights.keys()
    full, _ = _split(v1)
    expanded = expand_header(compact_header({k: v for k, v in full.items() if k != "sections"}))
    for key in ("arch", "kwargs", "tensors"):  # the version 1 layout back (weights differ: v2 codes mask levels)
        assert json.dumps(expanded[key], sort_keys=True) == json.dumps(full[key], sort_keys=True)
    assert len(v2) < len(v1)
    a, b = read_compressed_bytes(v1), read_compressed_bytes(v2)
    for name, weight in a.weights.items():
        other = b.weights[name]
        assert weight.kind == other.kind and np.array_equal(weight.data, other.data)
        assert np.array_equal(weight.flat_positions(), other.flat_positions())
        for key, value in weight.params.items():
            assert np.array_equal(np.asarray(value), np.asarray(other.params[key]))
    for name, tensor in a.tensors.items():
        assert np.array_equal(tensor, b.tensors[name])


@pytest.mark.timeout(120)
def test_fuzz_compact_header_only_format_errors(tmp_path: Path, transforms: dict) -> None:
    seeds = [_sample(tmp_path, "huffman", transforms), _sample(tmp_path, "ans", transforms, "auto")]
    rng = np.random.default_rng(4321)
    outcomes = {"format_error": 0, "read": 0}
    for trial in range(1500):
        header, sections = _split2(seeds[trial % 2])
        choice = rng.integers(3)
        if choice < 2:
            data = _join2(_mutate_json(header, rng), sections, fix_lengths=choice == 0)
        else:
            i = int(rng.integers(len(sections)))
            section = bytearray(sections[i])
            if section:
                section[rng.integers(len(section))] ^= 1 << int(rng.integers(8))
            sections[i] = bytes(section)
            data = _join2(header, sections)
        try:
            read_compressed_bytes(data, f"mutant{trial}")
            outcomes["read"] += 1
        except FormatError:
            outcomes["format_error"] += 1
        except Exception as exc:  # pragma: no cover - the failure being tested for
            raise AssertionError(f"mutant {trial}: {type(exc).__name__}: {exc}") from exc
    assert outcomes["format_error"] > 500
