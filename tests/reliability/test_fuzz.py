"""Fuzzing in ``make test``: a bounded-time run of the mutation engine (``fuzzing.py``) over every reader of untrusted
bytes (``read_compressed``, ``load_compressed``, ``runtime.load``, the IDX reader, ``load_checkpoint``,
``load_weights``), and a regression test for each thing the fuzzer found.

The budget is ``DEEPSHRINK_FUZZ_SECONDS`` (default 24 s in all, shared by the targets), the seed comes from the clock
(printed; ``DEEPSHRINK_FUZZ_SEED`` replays one). Only deepshrink's own errors are acceptable: anything else fails
the test, with each reproducer saved under ``DEEPSHRINK_FUZZ_OUT`` (default: the test's tmp folder) and named in the
failure message. The long, coverage-guided run is ``benchmarks/fuzz.py --seconds 600``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deepshrink import runtime
from deepshrink.codec import load_compressed, read_compressed
from deepshrink.core import FormatError
from deepshrink.data import read_idx
from deepshrink.train import load_checkpoint

from .fuzzing import Target, fuzz, join_dsz, make_targets, split_dsz

TOTAL_SECONDS = float(os.environ.get("DEEPSHRINK_FUZZ_SECONDS", "24"))
TARGETS = ["read_compressed", "load_compressed", "runtime.load", "idx", "checkpoint", "weights"]


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    return make_targets(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.fixture(scope="module")
def fuzz_seed() -> int:
    seed = int(os.environ.get("DEEPSHRINK_FUZZ_SEED", time.time_ns() % 2**32))
    print(f"\nfuzz seed {seed} (replay: DEEPSHRINK_FUZZ_SEED={seed})")
    return seed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_only_deepshrink_errors(name: str, targets: dict[str, Target], fuzz_seed: int, tmp_path: Path) -> None:
    save = Path(os.environ.get("DEEPSHRINK_FUZZ_OUT", tmp_path / "findings"))
    outcome = fuzz(targets[name], TOTAL_SECONDS / len(TARGETS), fuzz_seed + TARGETS.index(name), save)
    report = outcome.to_dict()
    print(f"{name}: {report['tried']} inputs, {report['accepted']} read, {report['clean_errors']} deepshrink errors "
          f"{report['clean_by_class']}, {report['other']} other")
    assert outcome.tried > len(targets[name].seeds), "the budget ran out before any mutant was tried"
    assert not outcome.findings, (f"{name}, fuzz seed {fuzz_seed}: {len(outcome.findings)} inputs raised something "
                                  f"other than a deepshrink error:\n" + json.dumps(outcome.findings, indent=1))
    assert outcome.clean_errors > 0  # the mutants do reach the checks


# ---------------------------------------------------------------- regressions: what the fuzzer found


def _gz_idx(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


def test_idx_corrupt_deflate_data_is_a_format_error(tmp_path: Path) -> None:
    """zlib.error (not an OSError) escaped from a gzip stream with a damaged deflate block."""
    data = bytearray(_gz_idx(b"\x00\x00\x08\x01" + struct.pack(">I", 64) + bytes(range(64))))
    data[10] ^= 0xFF  # the first byte of the deflate stream: an invalid block type
    (tmp_path / "x.gz").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="gzip"):
        read_idx(tmp_path / "x.gz")


def test_idx_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """A small .gz whose IDX header states 16 bytes but which inflates to 64 MiB: read no further than stated."""
    (tmp_path / "bomb.gz").write_bytes(_gz_idx(b"\x00\x00\x08\x01" + struct.pack(">I", 16) + bytes(64 << 20)))
    assert (tmp_path / "bomb.gz").stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="trailing"):
            read_idx(tmp_path / "bomb.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def _checkpoint_bytes(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def test_checkpoint_fields_of_other_types_are_format_errors(tmp_path: Path, targets: dict[str, Target]) -> None:
    """A tensor where the version number belongs (``!=`` on it raised RuntimeError), list kwargs a constructor
    cannot index (IndexError from inside the model), a zip whose end record names several disks (BadZipFile from
    ``zipfile.is_zipfile``)."""
    base = torch.load(io.BytesIO(targets["checkpoint"].seeds[0]), weights_only=True)
    cases = {
        "version.pt": _checkpoint_bytes({**base, "version": torch.zeros(2, 2)}),
        "format.pt": _checkpoint_bytes({**base, "format": torch.zeros(3)}),
        "hidden.pt": _checkpoint_bytes({**base, "kwargs": {**base["kwargs"], "hidden": []}}),
        "state.pt": _checkpoint_bytes({**base, "state_dict": {"fc1.weight": "x"}}),
    }
    disks = bytearray(targets["checkpoint"].seeds[0])
    locator = disks.rfind(b"PK\x06\x07")  # torch writes zip64 records
    disks[locator + 16:locator + 20] = struct.pack("<I", 7)  # "total number of disks"
    cases["disks.pt"] = bytes(disks)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FormatError, match=name):
            load_checkpoint(tmp_path / name)


def test_dsz_kwargs_a_constructor_cannot_take_are_format_errors(tmp_path: Path, targets: dict[str, Target]) -> None:
    """``hidden: []`` made the zoo constructor raise IndexError in load_compressed (and in runtime.load)."""
    header, sections = split_dsz(targets["load_compressed"].seeds[0])
    header["kwargs"]["hidden"] = []
    (tmp_path / "k.dsz").write_bytes(join_dsz(header, sections))
    for load in (load_compressed, runtime.load):
        with pytest.raises(FormatError, match=r"k\.dsz"):
            load(tmp_path / "k.dsz")


def test_runtime_checks_the_files_shapes_against_the_architecture(tmp_path: Path,
                                                                  targets: dict[str, Target]) -> None:
    """runtime.load built layers from the stored weights whatever the recorded arch said (a model that failed at
    its first forward), and let a bias of another shape, or load_state_dict's RuntimeError, through."""
    header, sections = split_dsz(targets["runtime.load"].seeds[0])
    header["kwargs"]["in_features"] = 19
    (tmp_path / "arch.dsz").write_bytes(join_dsz(header, sections))
    header, sections = split_dsz(targets["runtime.load"].seeds[0])
    header["tensors"]["fc1.bias"]["shape"] = [12, 1]
    (tmp_path / "bias.dsz").write_bytes(join_dsz(header, sections))
    vgg = next(s for s in targets["runtime.load"].seeds if split_dsz(s)[0]["arch"] == "vgg")
    header, sections = split_dsz(vgg)
    header["kwargs"]["num_classes"] = 9
    (tmp_path / "head.dsz").write_bytes(join_dsz(header, sections))
    for name in ("arch", "bias", "head"):
        with pytest.raises(FormatError, match=f"{name}.dsz.*shape|{name}.dsz.*fit"):
            runtime.load(tmp_path / f"{name}.dsz")


def test_runtime_refuses_a_non_finite_fixed_point_bias(tmp_path: Path, targets: dict[str, Target]) -> None:
    """A NaN bias reached ``int()`` in the integer layer (ValueError); the integer engine cannot round it."""
    fixed = next(s for s in targets["runtime.load"].seeds if "fixedpoint" in json.dumps(split_dsz(s)[0]["weights"]))
    header, sections = split_dsz(fixed)
    entry = header["tensors"]["fc2.bias"]
    nan = np.full(entry["shape"], np.nan, dtype=np.float32).tobytes()
    sections[entry["section"]] = nan
    (tmp_path / "nan.dsz").write_bytes(join_dsz(header, sections))
    assert np.isnan(read_compressed(tmp_path / "nan.dsz").tensors["fc2.bias"]).all()  # read as stored
    with pytest.raises(FormatError, match="not finite"):
        runtime.load(tmp_path / "nan.dsz")


def test_torch_zip_members_must_be_stored_and_fit_the_file(tmp_path: Path, targets: dict[str, Target]) -> None:
    """The archive check before torch.load: compressed members (sizes the file does not hold) are refused."""
    with zipfile.ZipFile(io.BytesIO(targets["weights"].seeds[0])) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data + bytes(1 << 20) if name.endswith("data/0") else data)
    (tmp_path / "deflated.pt").write_bytes(out.getvalue())
    assert (tmp_path / "deflated.pt").stat().st_size < 1 << 20
    with pytest.raises(FormatError, match="compressed"):
        load_checkpoint(tmp_path / "deflated.pt")


def test_state_dict_metadata_is_checked_before_load_state_dict(tmp_path: Path) -> None:
    """A state dict whose ``_metadata`` (read by ``load_state_dict``) holds a tensor raised AttributeError from
    inside torch; metadata that is not names -> flat mappings is now dropped."""
    from collections import OrderedDict

    from deepshrink.models import build_model
    from deepshrink.models.registry import load_weights

    model = build_model("lenet300", in_features=16, hidden=(12, 6), num_classes=4)
    state = OrderedDict(model.state_dict())
    state._metadata = {"fc1": torch.zeros(2)}  # type: ignore[attr-defined]
    torch.save(state, tmp_path / "meta.pt")
    load_weights(model, tmp_path / "meta.pt")
    torch.save({"fc1.weight": "not a tensor"}, tmp_path / "str.pt")
    with pytest.raises(FormatError, match=r"str\.pt: expected a state dict"):
        load_weights(model, tmp_path / "str.pt")


def test_idx_shape_with_a_zero_and_huge_dimensions_is_a_format_error() -> None:
    """(2972836634, 2354918035, 332398848, 0) holds no data, but numpy cannot reshape to it (ValueError); found by
    the long atheris run."""
    from deepshrink.data import parse_idx

    data = b"\x00\x00\x08\x04" + struct.pack(">4I", 2972836634, 2354918035, 332398848, 0)
    with pytest.raises(FormatError, match="claims"):
        parse_idx(data)
    assert parse_idx(b"\x00\x00\x08\x03" + struct.pack(">3I", 0, 28, 28)).shape == (0, 28, 28)


def test_runtime_layers_refuse_inputs_of_another_shape_with_a_deepshrink_error(tmp_path: Path,
                                                                              targets: dict[str, Target]) -> None:
    """Fuzzing (seed 2204552864) found a file whose model runs its first conv on 1 channel while the recorded
    architecture feeds 3: the runtime's shape check raised a bare ValueError from inside the forward pass."""
    from deepshrink.core import DeepShrinkError

    checked = set()
    for seed in targets["runtime.load"].seeds:
        path = tmp_path / "m.dsz"
        path.write_bytes(seed)
        model = runtime.load(path)
        for module in model.modules():
            if type(module).__name__ in ("SparseConv2d", "SparseLinear"):
                wrong = torch.zeros(2, 7, 8, 8) if type(module).__name__ == "SparseConv2d" else torch.zeros(2, 7)
                with pytest.raises(DeepShrinkError, match="expects"):
                    module(wrong)
                checked.add(type(module).__name__)
    assert checked == {"SparseConv2d", "SparseLinear"}
