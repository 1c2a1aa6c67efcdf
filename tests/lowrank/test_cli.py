"""``deepshrink lowrank`` on a tiny checkpoint: writes a loadable factorised model with fewer MACs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from deepshrink import build_model, load_model, save_checkpoint
from deepshrink.cli import app

runner = CliRunner()


@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_lowrank_cli_conv_and_linear(tmp_path) -> None:
    torch.manual_seed(0)
    ckpt, out = tmp_path / "vgg.pt", tmp_path / "vgg-lr.pt"
    save_checkpoint(ckpt, build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16)), meta={"dataset": "digits"})
    result = runner.invoke(app, ["lowrank", str(ckpt), "--speedup", "2", "--method", "asymmetric", "--images", "60",
                                 "--linear-ratio", "0.5", "--finetune-epochs", "1", "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["conv"]["speedup"] >= 2.0 and report["macs_after"] < report["macs_before"]
    assert report["folded_bn"] and report["linear"]["ranks"] == {"classifier": 3}
    model, meta = load_model(out)
    assert meta["dataset"] == "digits" and sum(isinstance(m, torch.nn.Sequential) for m in model.modules()) >= 2
    result = runner.invoke(app, ["eval", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == pytest.approx(report["top1_finetuned"], abs=1e-5)


def test_lowrank_cli_needs_something_to_do(tmp_path) -> None:
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("lenet300", in_features=64), meta={"dataset": "digits"})
    result = runner.invoke(app, ["lowrank", str(ckpt), "--out", str(tmp_path / "o.pt")])
    assert result.exit_code != 0
    result = runner.invoke(app, ["lowrank", str(ckpt), "--speedup", "2", "--out", str(tmp_path / "o.pt")])
    assert result.exit_code != 0 and "conv" in str(result.exception)
    result = runner.invoke(app, ["lowrank", str(ckpt), "--linear-ratio", "0.25", "--linear-response", "--images", "50",
                                 "--out", str(tmp_path / "o.pt"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["linear"]["ranks"]["fc1"] < 64 and report["linear"]["params_after"] < report["linear"]["params_before"]


def test_lowrank_cli_3d_decomposition(tmp_path) -> None:
    torch.manual_seed(0)
    ckpt, out = tmp_path / "vgg.pt", tmp_path / "vgg-3d.pt"
    save_checkpoint(ckpt, build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16)), meta={"dataset": "digits"})
    result = runner.invoke(app, ["lowrank", str(ckpt), "--speedup", "2", "--decomposition", "3d", "--images", "40",
                                 "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["conv"]["speedup"] >= 2.0 and report["conv"]["spatial_ranks"]
    model, _ = load_model(out)
    assert any(isinstance(m, torch.nn.Sequential) and len(m) == 3 for m in model.modules())
    result = runner.invoke(app, ["lowrank", str(ckpt), "--speedup", "2", "--decomposition", "4d", "--out", str(out)])
    assert result.exit_code != 0 and "decomposition" in str(result.exception)
