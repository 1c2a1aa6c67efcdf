"""Fixed-point formats round-trip through the .dsz file; the ``quantize`` command end to end on digits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepshrink.cli import app
from deepshrink.codec import load_compressed, save_compressed
from deepshrink.core import get_value_transform
from deepshrink.data import load_dataset
from deepshrink.fixedpoint import DynamicFixedPoint, FixedPoint, quantize_
from deepshrink.runtime import IntegerModel
from deepshrink.train import evaluate

from .conftest import TinyCNN, randomize_

runner = CliRunner()


def _save(model: torch.nn.Module, path: Path, fresh: Callable[[], torch.nn.Module] = TinyCNN) -> None:
    """save_compressed, then check the file loads back into a fresh model."""
    save_compressed(model, path)
    load_compressed(path, fresh())


def test_formats_round_trip_through_dsz(tmp_path: Path) -> None:
    model = randomize_(TinyCNN(), 7, 1.0)
    quantize_(model, DynamicFixedPoint(bits={"conv": 8, "fc": 4}, act_bits=8), calib=torch.randn(16, 1, 8, 8))
    path = tmp_path / "tiny.dsz"
    _save(model, path)
    loaded = load_compressed(path, randomize_(TinyCNN(), 1, 1.0))
    for name in ("conv1", "conv2", "fc1", "fc2"):
        a, b = get_value_transform(model.get_submodule(name)), get_value_transform(loaded.get_submodule(name))
        assert isinstance(a, FixedPoint) and isinstance(b, FixedPoint)
        assert (a.weight_format, a.act_in, a.act_out) == (b.weight_format, b.act_in, b.act_out)
    x = torch.randn(20, 1, 8, 8) * 2
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(IntegerModel(loaded)(x), model(x))


def test_runtime_loads_integer_kernels(tmp_path: Path) -> None:
    from deepshrink import runtime
    from deepshrink.models import build_model
    from deepshrink.runtime import IntegerLayer

    model = build_model("lenet300", in_features=64, num_classes=10)
    quantize_(model, DynamicFixedPoint(bits=6, act_bits=8), calib=torch.randn(32, 1, 8, 8))
    path = tmp_path / "mlp.dsz"
    _save(model, path, lambda: build_model("lenet300", in_features=64, num_classes=10))
    fast = runtime.load(path)
    assert set(runtime.runtime_layers(fast)) == {"fc1", "fc2", "fc3"}
    assert all(isinstance(fast.get_submodule(n), IntegerLayer) for n in ("fc1", "fc2", "fc3"))
    x = torch.randn(25, 1, 8, 8) * 2
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))


@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_quantize_command_on_digits(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "mlp.pt", tmp_path / "mlp-dfp.dsz"
    result = runner.invoke(app, ["train", "lenet300", "--dataset", "digits", "--epochs", "3", "--lr", "0.1",
                                 "--out", str(ckpt), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["quantize", str(ckpt), "--scheme", "dfp", "--bits", "conv=8,fc=6",
                                 "--calib", "128", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output.strip().splitlines()[-1])
    assert [row["layer"] for row in info["layers"]] == ["fc1", "fc2", "fc3"]
    assert all(row["bits"] == 6 and row["act_bits"] == 8 for row in info["layers"])
    assert info["integer_accuracy"] == info["test_accuracy"]
    assert info["test_accuracy"] > info["fp32_accuracy"] - 0.03
    model = load_compressed(out)
    test = load_dataset("digits", "test")
    assert evaluate(model, test)["accuracy"] == info["test_accuracy"]
    assert out.stat().st_size == info["bytes"]

    result = runner.invoke(app, ["quantize", str(ckpt), "--bits", "8", "--out", str(tmp_path / "table.pt"),
                                 "--static", "--no-eval"])
    assert result.exit_code == 0, result.output
    assert "fl_w" in result.output and "fc3" in result.output
    result = runner.invoke(app, ["quantize", str(ckpt), "--bits", "8", "--rounding", "half_even", "--calib", "64",
                                 "--weight-rounding", "obs", "--unsigned-activations",
                                 "--out", str(tmp_path / "even.dsz"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output.strip().splitlines()[-1])
    assert info["integer_accuracy"] == info["test_accuracy"]
    assert "rounding=half_even" in repr(load_compressed(tmp_path / "even.dsz"))
    assert set(info["obs_rounding"]) == {"fc1", "fc2", "fc3"}
    assert [row["in_format"][:2] for row in info["layers"]] == ["Q8", "UQ", "UQ"]  # fc2, fc3 read ReLU outputs
    result = runner.invoke(app, ["quantize", str(ckpt), "--bits", "conv:8", "--out", str(out)])
    assert result.exit_code != 0
