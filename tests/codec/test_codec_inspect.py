"""``deepshrink inspect``: the Tables 2/3 layout, every size from the file's own bytes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from deepshrink.cli import app
from deepshrink.codec import file_stats, save_compressed

from .codec_helpers import prune_, quantize_


def test_inspect_json_sizes_add_up_to_the_file(tmp_path: Path, make_model: Callable, transforms: dict) -> None:
    model = make_model("lenet300")
    for module in (model.fc1, model.fc2):
        prune_(module, 0.1)
        quantize_(module, "codebook", levels=32)
    path = tmp_path / "m.dsz"
    save_compressed(model, path)
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    total = stats["total"]
    assert total["file_bytes"] == os.path.getsize(path)
    assert total["weight_bytes"] + total["other_bytes"] + total["header_bytes"] == total["file_bytes"]
    rows = {r["name"]: r for r in stats["layers"]}
    fc1 = rows["fc1.weight"]
    assert fc1["weights"] == 24 * 64 and fc1["kind"] == "codebook" and fc1["weight_bits_fixed"] == 5
    assert fc1["index_bits_fixed"] == 5 and fc1["index_entries"] == fc1["kept"] + fc1["fillers"]
    assert 0 < fc1["kept_pct"] <= 11
    assert rows["fc3.weight"]["kind"] == "dense" and rows["fc3.weight"]["weight_bits"] == 32.0
    assert total["ratio"] == round(total["fp32_bytes"] / total["file_bytes"], 2)


def test_inspect_table_and_raw_columns(tmp_path: Path, make_model: Callable, transforms: dict) -> None:
    model = make_model("lenet300")
    prune_(model.fc1, 0.1)
    quantize_(model.fc1, "codebook", levels=32)
    save_compressed(model, tmp_path / "raw.dsz", entropy="raw")
    stats = file_stats(tmp_path / "raw.dsz")
    fc1 = next(r for r in stats["layers"] if r["name"] == "fc1.weight")
    assert fc1["bytes"] == fc1["fixed_bytes"]  # a raw file holds exactly the P+Q sizes (+ codebook)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "raw.dsz")])
    assert result.exit_code == 0, result.output
    assert "fc1.weight" in result.output and "total" in result.output and "5->" in result.output
