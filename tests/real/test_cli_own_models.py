"""Bring your own model and data through the CLI: ``--model package.module:factory --weights``, image folders
(labelled and flat), text files, the validation split, bad images, and files that name modules."""

from __future__ import annotations

import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deepshrink.cli import app
from deepshrink.codec import load_compressed, read_compressed, save_compressed
from deepshrink.core import DataError, FormatError
from deepshrink.data import DataOptions, open_data
from deepshrink.models import build_from_spec

from .factories import tiny_cnn, tiny_text

CNN = "tests.real.factories:tiny_cnn"
TEXT = "tests.real.factories:tiny_text"
pytestmark = pytest.mark.slow  # CLI runs


def _images(folder: Path, classes: int = 3, per_class: int = 5, flat: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for k in range(classes):
        target = folder if flat else folder / f"class{k}"
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((14 + i, 12 + k, 3)) * 255).astype(np.uint8)
            pixels[..., k] = 255  # one colour per class: learnable
            Image.fromarray(pixels).save(target / f"img{k}_{i}.png")
    return folder


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    model = tiny_cnn()
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.randn(8, 3, 16, 16))
    torch.save(model.state_dict(), path)
    return path


def _run(args: list[str]) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.output.strip().splitlines()[-1])


def test_quantize_then_eval_a_factory_model_on_an_image_folder(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    weights = _weights(tmp_path)
    out = tmp_path / "q.dsz"
    common = ["--dataset", f"imagefolder:{folder}", "--image-size", "16", "--val-split", "6"]
    report = _run(["quantize", "--model", CNN, "--weights", str(weights), "--out", str(out), "--calib", "4",
                   "--bits", "8", *common])
    assert report["bytes"] == out.stat().st_size and report["fp32"]["accuracy"] is not None
    assert report["integer"] == report["simulated"]  # the integer layers are bit-exact with the simulation
    assert read_compressed(out).header["arch"] == CNN
    with pytest.raises(FormatError, match="names a Python module"):
        load_compressed(out)  # the file names the factory: it is not imported on the file's word
    evaluated = _run(["eval", str(out), "--model", CNN, *common])
    assert evaluated["accuracy"] == report["simulated"]["accuracy"]


def test_flat_folder_has_no_labels_so_pruning_retrains_by_distillation(tmp_path: Path) -> None:
    folder = _images(tmp_path / "flat", flat=True)
    source = open_data(f"imagefolder:{folder}", DataOptions(image_size=16))
    assert not source.labelled and len(source.split("train")) + len(source.split("val")) == 15
    out = tmp_path / "p.pt"
    report = _run(["prune", "--model", CNN, "--weights", str(_weights(tmp_path)), "--out", str(out), "--sparsity",
                   "0.5", "--retrain-epochs", "1", "--dataset", f"imagefolder:{folder}", "--image-size", "16"])
    assert report["top1_after"] is None and 0.0 <= report["quality_after"]["top1_agreement"] <= 1.0
    assert 0.4 < report["sparsity"] < 0.6
    flat = ["--dataset", f"imagefolder:{folder}", "--image-size", "16"]
    evaluated = _run(["eval", str(out), "--model", CNN, "--baseline", CNN, *flat])  # a spec as the baseline
    assert 0.0 <= evaluated["top1_agreement"] <= 1.0 and evaluated["cosine"] is not None
    result = CliRunner().invoke(app, ["eval", str(out), "--model", CNN, "--baseline", "missing.pt", *flat])
    assert result.exit_code != 0 and "no such model file" in str(result.exception)


def test_text_file_model_takes_lists_of_strings(tmp_path: Path) -> None:
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(f"sentence number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain", "sun",
                                                                                           "code", "tea"] * 3)))
    out = tmp_path / "t.dsz"
    report = _run(["quantize", "--model", TEXT, "--out", str(out), "--dataset", f"textfile:{text}", "--calib", "6"])
    assert report["simulated"]["cosine"] > 0.9 and report["layers"][0]["layer"] in ("embed", "proj")
    model = load_compressed(out, model=tiny_text())
    assert model(["a sentence"]).shape == (1, 8)


def test_bad_images_are_named_or_skipped(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs", per_class=3)
    (folder / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png"):
        open_data(f"imagefolder:{folder}", DataOptions(image_size=8))
    source = open_data(f"imagefolder:{folder}", DataOptions(image_size=8, skip_bad_images=True))
    assert source.num_classes == 3


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_the_validation_split_fits_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for stem, count in (("train", 60), ("t10k", 20)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    args = ["train", "lenet300", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--out",
            str(tmp_path / "m.pt")]
    failed = CliRunner().invoke(app, args)
    assert isinstance(failed.exception, DataError) and "--val-split" in str(failed.exception)
    assert _run([*args, "--val-split", "0.2"])["epochs"] == 1


def test_a_file_naming_a_module_is_refused_without_importing_it(tmp_path: Path) -> None:
    model = build_from_spec(CNN)
    model.deepshrink_arch = ("evil_module_that_must_not_load:factory", {})  # what a crafted file would say
    path = tmp_path / "crafted.dsz"
    save_compressed(model, path)
    with pytest.raises(FormatError, match="names a Python module"):
        load_compressed(path)
    from deepshrink.runtime import load

    with pytest.raises(FormatError, match="names a Python module"):
        load(path)
    assert "evil_module_that_must_not_load" not in sys.modules


def test_library_specs_dispatch_to_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls = []
    fake = types.ModuleType("torchvision.models")
    fake.get_model = lambda name, weights, **kwargs: calls.append((name, weights, kwargs)) or tiny_cnn()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", fake)
    model = build_from_spec("torchvision:mobilenet_v3_small", {"num_classes": 3})
    assert calls == [("mobilenet_v3_small", None, {"num_classes": 3})]
    assert model.deepshrink_arch == ("torchvision:mobilenet_v3_small", {"num_classes": 3})
