"""The CLI's base commands on a tiny run: train, eval --json, summary --json, clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deepshrink.cli import app

runner = CliRunner()


@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_train_eval_summary_json(tmp_path) -> None:
    ckpt = tmp_path / "tiny.pt"
    result = runner.invoke(app, ["train", "lenet300", "--dataset", "digits", "--epochs", "2", "--lr", "0.1",
                                 "--out", str(ckpt), "--quiet"])
    assert result.exit_code == 0, result.output
    assert ckpt.is_file() and not (tmp_path / "tiny.pt.partial").exists()

    result = runner.invoke(app, ["eval", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["samples"] == 360 and 0.5 < report["accuracy"] <= 1.0

    result = runner.invoke(app, ["summary", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)
    assert [row["name"] for row in table["layers"]] == ["fc1", "fc2", "fc3"]
    assert table["total"]["params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for line in result.output.splitlines():
        parts = line.strip("│ ").split()
        if parts and parts[0] in {"train", "eval", "summary"}:
            sub = runner.invoke(app, [parts[0], "--help"])
            assert sub.exit_code == 0 and "Usage" in sub.output


def test_eval_of_missing_or_bogus_file_is_a_clear_error(tmp_path) -> None:
    from deepshrink.core import FormatError

    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["eval", str(bogus), "--dataset", "digits"])
    assert result.exit_code != 0 and isinstance(result.exception, FormatError)
    result = runner.invoke(app, ["eval", str(tmp_path / "missing.pt"), "--dataset", "digits"])
    assert isinstance(result.exception, FormatError) and "not found" in str(result.exception)
