"""The reader's guarantees (docs/format.md, "Guarantees"), one test each.

``.dsz`` files and checkpoints are untrusted input: reading one runs no code from it and imports nothing it names,
allocates within a bound stated in terms of the file size, checks every index before use, refuses truncated and
trailing data, and fails with a ``FormatError`` naming the file and the part. What is *not* promised is tested too:
NaN and Inf values are loaded as stored.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any

import numpy as np
import pytest
import torch

from deepshrink import runtime
from deepshrink.codec import load_compressed, read_compressed, read_compressed_bytes
from deepshrink.codec.ans import AnsTable, ans_encode
from deepshrink.core import DeepShrinkError, FormatError
from deepshrink.train import load_checkpoint

from .fuzzing import PREFIX, dsz_seeds, join_dsz, mutate_bytes, mutate_dsz, split_dsz

BYTES_PER_FILE_BYTE = 32 << 10
"""The stated allocation bound of ``read_compressed``: 32 KiB per byte of the file (plus 1 MiB)."""


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return dsz_seeds(tmp_path_factory.mktemp("guarantee-seeds"))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak traced allocation (numpy buffers included) while ``fn`` runs, and its result or exception."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            result: Any = fn()
        except DeepShrinkError as exc:
            result = exc
        return tracemalloc.get_traced_memory()[1] - base, result
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- 1. no code, no import, no pickle


def test_reading_runs_no_pickle(seeds: list[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guarantee 1: the .dsz readers never unpickle (nor call torch.load) — with every unpickler disabled, every
    kind of file still reads, loads and runs."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a .dsz reader unpickled something")

    paths = [_write(tmp_path, f"s{i}.dsz", data) for i, data in enumerate(seeds)]
    for path in paths:  # first with pickle: numba loads its compiled kernels from its own (pickled) cache
        runtime.load(path)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for path in paths:
        read_compressed(path)
        load_compressed(path)
        runtime.load(path)


def test_names_in_a_file_import_nothing(seeds: list[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guarantee 1: a name read from a file (arch, kind, edit op, dtype, state class) is only looked up in fixed
    registries: a module it names is never imported, and the file is refused."""
    probe = "deepshrink_probe_module"
    (tmp_path / f"{probe}.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\ndef make(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    header, sections = split_dsz(seeds[0])
    weight = next(iter(header["weights"]))
    tensor = next(iter(header["tensors"]))
    lies = [("arch", f"{probe}:make"), ("arch", probe), ("edits", [{"op": probe}]),
            ("edits", [{"op": f"{probe}:make"}])]
    for i, (key, value) in enumerate(lies):
        path = _write(tmp_path, f"lie{i}.dsz", join_dsz({**header, key: value}, sections))
        for reader in (load_compressed, runtime.load):
            with pytest.raises(DeepShrinkError):
                reader(path)
    for i, (group, name, key) in enumerate([("weights", weight, "kind"), ("tensors", tensor, "dtype")]):
        changed = json.loads(json.dumps(header))
        changed[group][name][key] = f"{probe}:make"
        with pytest.raises(FormatError):
            read_compressed(_write(tmp_path, f"name{i}.dsz", join_dsz(changed, sections)))
    assert probe not in sys.modules and not (tmp_path / "imported").exists()


def test_checkpoints_run_no_code(tmp_path: Path) -> None:
    """Guarantee 1 for checkpoints: torch.load(weights_only=True) — a pickle that would run code is refused with a
    FormatError naming the file, and the code does not run."""
    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, (f"open({str(flag)!r}, 'w').close()",))

    torch.save({"format": "deepshrink-checkpoint", "version": 1, "state_dict": {}, "x": Payload()},
               tmp_path / "evil.pt")
    with pytest.raises(FormatError, match=r"evil\.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not flag.exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="legacy format"):
        load_checkpoint(legacy)


# ---------------------------------------------------------------- 2. allocation bounded by the file size


def _ans_worst_case(seed: bytes) -> bytes:
    """A codebook weight of 2**20 symbols at about 1/32 bit each: the densest stream the reader accepts."""
    header, sections = split_dsz(seed)
    symbols = (np.random.default_rng(0).random(1 << 20) < 0.0035).astype(np.int64)
    table = AnsTable.from_counts(np.bincount(symbols, minlength=2), 4095)
    data = ans_encode(symbols, table)
    assert symbols.size > 200 * len(data)
    sections += [table.to_bytes(), data, np.array([0.5, -0.5], np.float32).tobytes()]
    n = len(sections)
    header["weights"]["big.weight"] = {
        "kind": "codebook", "shape": [1024, 1024], "layer": "fc", "arrays": {"centroids": {
            "dtype": "float32", "shape": [2], "section": n - 1}}, "fields": {},
        "values": {"coding": "ans", "count": symbols.size, "alphabet": 2, "raw_bits": 1, "table": n - 3,
                   "data": n - 2, "offset": 0}}
    return join_dsz(header, sections)


def _header_bomb(seed: bytes) -> bytes:
    """4 MB of header JSON objects (empty lists in ``meta``) deflated into a few kilobytes."""
    header, sections = split_dsz(seed)
    header["meta"] = {"x": [[]] * 1_000_000}
    return join_dsz(header, sections)


def _dead_ctx_mask(seed: bytes) -> bytes:
    """A 2**31-element weight whose context-coded mask has every row and column at level 0 (nothing kept): the
    decoder used to allocate the 2 GiB boolean grid before finding it empty."""
    header, sections = split_dsz(seed)
    rows, cols = 1 << 15, 1 << 16
    sections += [bytes((rows + cols + 1) // 2), b"", np.zeros(0, np.float32).tobytes()]
    n = len(sections)
    header["weights"]["huge.weight"] = {
        "kind": "sparse", "shape": [rows, cols], "layer": "fc",
        "mask": {"coding": "ctx", "rows": rows, "pbar": 1, "model": n - 3, "data": n - 2},
        "values": {"dtype": "float32", "shape": [0], "section": n - 1}}
    return join_dsz(header, sections)


def test_reader_memory_is_bounded_by_the_file_size(seeds: list[bytes]) -> None:
    """Guarantee 2: ``read_compressed`` allocates at most 32 KiB per byte of the file (+ 1 MiB): on the densest
    stream, a header of deflated JSON objects, a huge weight whose mask keeps nothing, and 3 s of mutants."""
    crafted = {"ans": _ans_worst_case(seeds[1]), "header": _header_bomb(seeds[0]), "ctx": _dead_ctx_mask(seeds[1])}
    for name, data in crafted.items():
        peak, result = _peak(lambda data=data: read_compressed_bytes(data))
        assert not isinstance(result, Exception), f"{name}: {result}"
        assert peak <= BYTES_PER_FILE_BYTE * len(data) + (1 << 20), f"{name}: {peak} bytes for a {len(data)}-byte file"
    assert read_compressed_bytes(crafted["ctx"]).weights["huge.weight"].positions.size == 0
    rng, started, worst = Random(0), time.perf_counter(), 0.0
    while time.perf_counter() - started < 3:
        data = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            data = mutate_dsz(data, rng) if rng.random() < 0.7 else mutate_bytes(data, rng)
        peak, _ = _peak(lambda data=data: read_compressed_bytes(data))
        worst = max(worst, (peak - (1 << 20)) / max(len(data), 1))
    assert worst <= BYTES_PER_FILE_BYTE


def test_header_is_never_inflated_beyond_its_stated_length(seeds: list[bytes]) -> None:
    """Guarantee 2: the prefix states the header's inflated length (at most 64 MiB); a header that inflates to more
    is refused after inflating only what was stated."""
    header, sections = split_dsz(seeds[0])
    text = json.dumps({**header, "meta": {"pad": " " * (50 << 20)}}).encode()
    blob = zlib.compress(text, 9)
    data = PREFIX.pack(b"\x89DSZ\r\n\x1a\n", 1, 1, len(blob), 4096, zlib.crc32(blob)) + blob + b"".join(sections)
    peak, result = _peak(lambda: read_compressed_bytes(data))
    assert isinstance(result, FormatError) and "inflates to other than its stated 4096 bytes" in str(result)
    assert peak < 1 << 20
    too_big = PREFIX.pack(b"\x89DSZ\r\n\x1a\n", 1, 1, len(blob), (64 << 20) + 1, zlib.crc32(blob)) + blob
    with pytest.raises(FormatError, match="more than"):
        read_compressed_bytes(too_big)


def test_loaders_check_stated_shapes_before_building_the_model(seeds: list[bytes], tmp_path: Path) -> None:
    """Guarantee 2: ``load_compressed`` and ``runtime.load`` build the recorded architecture only once its shapes
    (checked on the meta device) equal the file's: arguments asking for a 2**31-element layer allocate nothing."""
    header, sections = split_dsz(seeds[0])
    header["kwargs"] = {**header["kwargs"], "in_features": 1 << 31}
    path = _write(tmp_path, "wide.dsz", join_dsz(header, sections))
    for loader in (load_compressed, runtime.load):
        peak, result = _peak(lambda loader=loader: loader(path))
        assert isinstance(result, FormatError) and "wide.dsz" in str(result)
        assert peak < 16 << 20


# ---------------------------------------------------------------- 3-4. indices checked, errors name the part


def _lie(seed: bytes, change: Callable[[dict[str, Any], list[bytes]], None]) -> bytes:
    header, sections = split_dsz(seed)
    change(header, sections)
    return join_dsz(header, sections)


def _stream_of(symbols: list[int], sections: list[bytes], **extra: Any) -> dict[str, Any]:
    from deepshrink.codec import encode_stream

    alphabet = max(symbols) + 1
    coded = encode_stream(np.array(symbols, dtype=np.int64), alphabet, max(1, alphabet - 1).bit_length(), "raw")
    sections.append(coded.data)
    return {"coding": "raw", "count": len(symbols), "alphabet": alphabet, "raw_bits": coded.raw_bits, "table": None,
            "data": len(sections) - 1, **extra}


def _entry(header: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(e for e in header["weights"].values() if e["kind"] == kind)


def _index_past_the_end(header: dict[str, Any], sections: list[bytes]) -> None:
    entry = _entry(header, "codebook")
    bits = entry["index"]["bits"]
    entry["index"] = _stream_of([(1 << bits) - 2] * (entry["index"]["count"] + 40), sections, bits=bits)


def _index_short(header: dict[str, Any], sections: list[bytes]) -> None:
    entry = _entry(header, "codebook")
    entry["index"] = _stream_of([0] * 3, sections, bits=entry["index"]["bits"])


def _codebook_index(header: dict[str, Any], sections: list[bytes]) -> None:
    entry = _entry(header, "codebook")
    k = entry["arrays"]["centroids"]["shape"][-1]
    entry["values"] = _stream_of([k + 5] * entry["values"]["count"], sections, offset=0)


def _ternary_code(header: dict[str, Any], sections: list[bytes]) -> None:
    entry = _entry(header, "ternary")
    entry["values"] = _stream_of([4] * entry["values"]["count"], sections, offset=0)


def _section_id(header: dict[str, Any], sections: list[bytes]) -> None:
    _entry(header, "codebook")["values"]["data"] = len(sections) + 3


def _symbol_outside_alphabet(header: dict[str, Any], sections: list[bytes]) -> None:
    entry = _entry(header, "codebook")
    entry["values"]["alphabet"] = 1
    entry["values"]["raw_bits"] = 1


def _raw_size(header: dict[str, Any], sections: list[bytes]) -> None:
    header["tensors"]["fc1.bias"]["shape"] = [13]


def _count_beyond_bytes(header: dict[str, Any], sections: list[bytes]) -> None:
    _entry(header, "codebook")["values"]["count"] += 10_000


INDEX_CASES = {  # name -> (lie, the part the error must name)
    "index past the end": (_index_past_the_end, r"weight 'fc1\.weight'.*(reaches position|cover)"),
    "index too short": (_index_short, r"weight 'fc1\.weight'.*(short of the tensor's end|cover)"),
    "codebook index >= K": (_codebook_index, r"weight 'fc1\.weight'"),
    "ternary code": (_ternary_code, r"weight 'fc2\.weight'"),
    "section id": (_section_id, r"weight 'fc1\.weight' values data names section \d+, which does not exist"),
    "symbol outside alphabet": (_symbol_outside_alphabet, r"weight 'fc1\.weight' values"),
    "raw size": (_raw_size, r"tensor 'fc1\.bias' needs 52 bytes"),
    "count beyond bytes": (_count_beyond_bytes, r"weight 'fc1\.weight' values"),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_every_index_is_checked_and_errors_name_the_part(case: str, seeds: list[bytes], tmp_path: Path) -> None:
    """Guarantees 3 and 4: indices into the tensor, the codebook, the code alphabet and the section table are
    checked before use; the FormatError names the file, the tensor and the part."""
    change, part = INDEX_CASES[case]
    path = _write(tmp_path, "case.dsz", _lie(seeds[0], change))
    for reader in (read_compressed, load_compressed, runtime.load):
        with pytest.raises(FormatError, match=rf"case\.dsz: .*{part}|case\.dsz: {part}"):
            reader(path)


# ---------------------------------------------------------------- 5-6. truncation, trailing data, integrity


def test_truncated_and_trailing_data_are_refused(seeds: list[bytes], tmp_path: Path) -> None:
    """Guarantee 5: the sections end exactly at the end of the file: one byte more or less is an error."""
    data = seeds[0]
    with pytest.raises(FormatError, match="trailing data"):
        read_compressed(_write(tmp_path, "long.dsz", data + b"\x00"))
    with pytest.raises(FormatError, match="truncated"):
        read_compressed(_write(tmp_path, "short.dsz", data[:-1]))
    with pytest.raises(FormatError, match="truncated"):
        read_compressed(_write(tmp_path, "prefix.dsz", data[:20]))


def test_any_single_bit_flip_is_detected(seeds: list[bytes]) -> None:
    """Guarantee 6: every byte is covered by the magic, a checked prefix field or a CRC-32: flipping one bit
    anywhere in a file is a FormatError (one random bit per byte of a whole file)."""
    data, rng = seeds[0], Random(0)
    for at in range(len(data)):
        flipped = bytearray(data)
        flipped[at] ^= 1 << rng.randrange(8)
        with pytest.raises(FormatError):
            read_compressed_bytes(bytes(flipped))


# ---------------------------------------------------------------- not promised


def test_nan_and_inf_are_loaded_as_stored(seeds: list[bytes], tmp_path: Path) -> None:
    """Not promised: values are not judged. NaN and Inf in raw tensors and codebooks read and load as stored."""
    def poison(header: dict[str, Any], sections: list[bytes]) -> None:
        bias = header["tensors"]["fc3.bias"]
        sections[bias["section"]] = np.array([np.nan, np.inf, -np.inf, 0], np.float32).tobytes()
        centroids = _entry(header, "codebook")["arrays"]["centroids"]
        values = np.frombuffer(sections[centroids["section"]], np.float32).copy()
        values[0] = np.nan
        sections[centroids["section"]] = values.tobytes()

    path = _write(tmp_path, "nan.dsz", _lie(seeds[0], poison))
    model = load_compressed(path)
    assert torch.isnan(model.fc3.bias[0]) and torch.isinf(model.fc3.bias[1:3]).all()
    assert torch.isnan(model.fc1.weight).any()


def test_stated_model_size_is_not_bounded_by_the_file(seeds: list[bytes]) -> None:
    """Not promised: a file states the model's shapes; a sparse weight may be up to 65,535 elements per index
    entry (all-zero gaps cost one filler each). ``read_compressed`` shows the shapes without building anything."""
    header, _ = split_dsz(seeds[2])
    entry = next(e for e in header["weights"].values() if "index" in e)
    bits = entry["index"]["bits"]
    assert int(np.prod(entry["shape"])) <= (entry["index"]["count"] + 1) * ((1 << bits) - 1)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_archives_are_checked_before_torch_reads_them(tmp_path: Path) -> None:
    """Guarantee 2 for checkpoints: members must be stored (as torch.save writes them) and add up to no more than
    the file; anything else is a FormatError naming the file before torch.load runs."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    data = bytearray(buffer.getvalue())
    info, _ = members[0]
    at = info.header_offset + 18  # the local header's compressed size; the central directory disagrees
    data[at:at + 4] = struct.pack("<I", 1 << 30)
    path = _write(tmp_path, "sizes.pt", bytes(data))
    with pytest.raises(FormatError, match=r"sizes\.pt"):
        load_checkpoint(path)
    end = bytes(data).rfind(b"PK\x01\x02")  # the last central directory entry: a member larger than the file
    data = bytearray(buffer.getvalue())
    data[end + 24:end + 28] = struct.pack("<I", 1 << 30)  # uncompressed size
    data[end + 20:end + 24] = struct.pack("<I", 1 << 30)  # compressed size
    with pytest.raises(FormatError, match=r"big\.pt"):
        load_checkpoint(_write(tmp_path, "big.pt", bytes(data)))
