from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepshrink.cli import app
from deepshrink.core import ConfigError
from deepshrink.models import build_model
from deepshrink.train import TrainConfig, fit, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, digits) -> Path:
    torch.manual_seed(0)
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))
    fit(model, digits[0], TrainConfig(epochs=3, lr=0.1, batch_size=64), quiet=True)
    path = tmp_path_factory.mktemp("cli") / "base.pt"
    save_checkpoint(path, model, meta={"dataset": "digits", "config": {"lr": 0.1}})
    return path


def _run(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_sensitivity_then_prune_from_it_then_eval(ckpt: Path, tmp_path: Path) -> None:
    sens = _run("sensitivity", str(ckpt), "--out", str(tmp_path / "sens"), "--sparsities", "0,0.5,0.8",
                "--max-drop", "0.05", "--target", "0.5")
    assert set(sens["curves"]) == {"fc1", "fc2", "fc3"} and (tmp_path / "sens/thresholds.json").is_file()
    out = tmp_path / "pruned.pt"
    report = _run("prune", str(ckpt), "--from-sensitivity", str(tmp_path / "sens"), "--max-drop", "0.05",
                  "--target", "0.5", "--rounds", "2", "--retrain-epochs", "1", "--out", str(out))
    assert report["sparsity"] == pytest.approx(sens["thresholds"]["overall"], abs=0.01)
    _, meta = load_checkpoint(out)
    assert meta["dataset"] == "digits" and len(meta["prune_rounds"]) == 2
    assert not list(tmp_path.glob("*.partial"))
    evaluated = _run("eval", str(out))
    assert evaluated["accuracy"] == pytest.approx(report["top1_after"])


@pytest.mark.parametrize("args", [["--method", "obd", "--sparsity", "0.6", "--hessian-samples", "64"],
                                  ["--method", "random", "--sparsity", "fc1=0.5,fc3=0.2"],
                                  ["--quality", "0.5", "--scope", "global"]])
def test_prune_methods(ckpt: Path, tmp_path: Path, args: list[str]) -> None:
    report = _run("prune", str(ckpt), *args, "--out", str(tmp_path / "p.pt"))
    assert 0 < report["sparsity"] < 1
    if "random" in args:
        assert {r["name"] for r in report["layers"]} == {"fc1", "fc3"}


def test_prune_needs_exactly_one_target(ckpt: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["prune", str(ckpt), "--out", str(tmp_path / "p.pt")])
    assert isinstance(result.exception, ConfigError)
    result = CliRunner().invoke(app, ["prune", str(ckpt), "--sparsity", "x=y", "--out", str(tmp_path / "p.pt")])
    assert isinstance(result.exception, ConfigError)
