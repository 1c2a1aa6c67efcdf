"""``deepshrink report``: the HTML page of tiny compressed models, checked as HTML (figures present and non-empty,
no external URL, the per-layer table adding up to the file size), the comparison page, and bad inputs."""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from deepshrink.codec import save_compressed
from deepshrink.data import load_dataset
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.models import build_model
from deepshrink.prune import MagnitudePrune, prune_, sensitivity_sweep
from deepshrink.report import write_html
from deepshrink.report.compare import pareto_front
from deepshrink.report.energy import estimate, parse_size
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.ternary import TWN, ternarize_
from deepshrink.train import TrainConfig, fit, save_checkpoint

META = {"dataset": "digits"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained tiny LeNet-300 on digits, its sensitivity sweep, and files of four compressions."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("report")
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=[24, 12])
    fit(model, load_dataset("digits", "train"), TrainConfig(epochs=4, lr=0.1, batch_size=64), quiet=True)
    out = {"baseline": root / "base.pt", "sweep": root / "sweep"}
    save_checkpoint(out["baseline"], model, meta=META)
    sensitivity_sweep(model, load_dataset("digits", "val"), [0.0, 0.5, 0.8], out_dir=out["sweep"], quiet=True)

    shared = copy.deepcopy(model)
    prune_(shared, MagnitudePrune(sparsity=0.7))
    share_weights_(shared, WeightSharing(bits=4))
    out["shared"] = root / "shared.dsz"
    save_compressed(shared, out["shared"], meta=META)

    pruned = copy.deepcopy(model)
    prune_(pruned, MagnitudePrune(sparsity=0.5))
    out["pruned"] = root / "pruned.dsz"
    save_compressed(pruned, out["pruned"], entropy="raw", meta=META)

    ternary = copy.deepcopy(model)
    ternarize_(ternary, TWN())
    out["ternary"] = root / "ternary.dsz"
    save_compressed(ternary, out["ternary"], meta=META)

    vgg = build_model("vgg", in_channels=1, num_classes=10, widths=(4, 8))
    calib = torch.stack([load_dataset("digits", "train")[i][0] for i in range(32)])
    quantize_(vgg, DynamicFixedPoint(bits=8), calib=calib)
    out["fixed"] = root / "vgg-fixed.dsz"
    save_compressed(vgg, out["fixed"], meta=META)
    return out


class Page(HTMLParser):
    """Collects the parts of a report the checks need: tags, figures, SVG sizes, tables (with sort keys)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.figures: list[str] = []
        self.svg_children: list[int] = []
        self.svg_depth = 0
        self.tables: dict[str, dict[str, list[list[tuple[str, str | None]]]]] = {}
        self._table: str | None = None
        self._part = "body"
        self._cell: list[str] | None = None
        self._key: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "figure":
            self.figures.append(str(a.get("data-figure")))
        if tag == "svg":
            self.svg_depth += 1
            self.svg_children.append(0)
        elif self.svg_depth:
            self.svg_children[-1] += 1
        if tag == "table":
            self._table = str(a.get("id"))
            self.tables[self._table] = {"head": [], "body": [], "foot": []}
        if tag in ("thead", "tbody", "tfoot"):
            self._part = {"thead": "head", "tbody": "body", "tfoot": "foot"}[tag]
        if tag == "tr" and self._table:
            self.tables[self._table][self._part].append([])
        if tag in ("td", "th"):
            self._cell, self._key = [], a.get("data-v")

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.svg_depth -= 1
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][self._part][-1].append(("".join(self._cell), self._key))
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def check_page(text: str) -> Page:
    """The checks every report passes: self-contained, every figure drawn, viewport set."""
    assert "http://" not in text and "https://" not in text  # no external URL, not even an SVG namespace
    page = Page(text)
    assert not [t for t, a in page.tags if t in ("link", "iframe") or (t in ("script", "img") and a.get("src")
                                                                        and not str(a["src"]).startswith("data:"))]
    for _, attrs in (t for t in page.tags if t[0] == "img"):
        assert re.fullmatch(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]{100,}", str(attrs.get("src")))
    assert page.svg_children and all(n > 10 for n in page.svg_children)  # every <svg> has drawn content
    assert len(page.figures) == len(page.svg_children) + sum(t == "img" for t, _ in page.tags)
    assert any(t == "meta" and a.get("name") == "viewport" for t, a in page.tags)
    ids = [a["id"] for _, a in page.tags if a.get("id")]
    assert len(ids) == len(set(ids))  # figures' ids are prefixed: no clashes between figures
    return page


def column(table: dict[str, Any], name: str, part: str) -> list[float | None]:
    index = [c[0] for c in table["head"][0]].index(name)
    return [None if row[index][1] is None else float(str(row[index][1])) for row in table[part]]


def test_one_file_report(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = write_html(files["shared"], out, baseline=files["baseline"], sensitivity=files["sweep"], dataset="digits",
                        sram="4KiB")
    text = out.read_text()
    page = check_page(text)
    assert result["figures"] == len(page.figures) and result["bytes"] == os.path.getsize(out)
    layers = ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert set(page.figures) == {"waterfall", "layer-bytes", "sensitivity", "energy", "fit",
                                 *(f"dist-{n}" for n in layers)}
    table = page.tables["layer-table"]
    assert [r[0][0] for r in table["body"]] == layers
    body, foot = column(table, "bytes", "body"), column(table, "bytes", "foot")
    size = os.path.getsize(files["shared"])
    assert sum(b or 0 for b in body) + (foot[0] or 0) + (foot[1] or 0) == foot[2] == size  # layers + other + header
    waterfall = page.tables["waterfall-table"]
    assert column(waterfall, "file", "foot") == [size]
    fresh = build_model("lenet300", in_features=64, num_classes=10, hidden=[24, 12])
    assert column(waterfall, "fp32", "foot") == [4 * sum(p.numel() for p in fresh.parameters())]
    for words in ("pruning: 3 of 3 tensors", "weight sharing: 4-bit codebooks", "entropy coding", "top-1",
                  "vs baseline", "Han et al.", "640", "on-chip SRAM"):
        assert words in text, words
    assert len(page.tables["sensitivity-table"]["body"]) == 3
    assert "table.sortable" in text  # the sorting script


def test_kinds_fixed_point_and_ternary(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fixed.html"
    write_html(files["fixed"], out)  # no dataset: the input shape comes from the file's recorded dataset
    text = out.read_text()
    page = check_page(text)
    assert "BatchNorm folded" in text and "dynamic fixed point: 8-bit" in text
    assert "fl_w" in text and "fl_a in" in text
    macs = column(page.tables["energy-table"], "dense MACs", "body")
    assert macs[0] == 4 * 9 * 64  # first conv: 4 x 1 x 3 x 3 weights at each of 8 x 8 positions
    table = page.tables["layer-table"]
    assert sum(b or 0 for b in column(table, "bytes", "body")) + sum(
        b or 0 for b in column(table, "bytes", "foot")[:2]) == os.path.getsize(files["fixed"])

    out = tmp_path / "ternary.html"
    write_html(files["ternary"], out, baseline=files["baseline"])
    text = out.read_text()
    check_page(text)
    assert "ternary weights" in text and "Wp" in text and "zeros" in text and "stored dense" in text


def test_compare_report(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "compare.html"
    paths = [files["shared"], files["pruned"], files["ternary"]]
    write_html(paths, out, dataset="digits", baseline=files["baseline"])
    text = out.read_text()
    page = check_page(text)
    assert page.figures == ["pareto"]
    rows = page.tables["compare-table"]["body"]
    assert [r[0][0] for r in rows] == [p.name for p in paths]
    assert "yes" in [r[-1][0] for r in rows]
    assert column(page.tables["compare-table"], "bytes", "body") == [os.path.getsize(p) for p in paths]
    write_html(paths[:2], out)  # without accuracies: a size chart instead
    assert check_page(out.read_text()).figures == ["sizes"]


def test_pareto_front_and_energy_model() -> None:
    assert pareto_front([(10, 0.9), (20, 0.95), (30, 0.94), (5, 0.5), (10, 0.8)]) == [True, True, False, True, False]
    assert parse_size("256KiB") == 262144 and parse_size("2MB") == 2_000_000 and parse_size("512") == 512
    row = {"name": "fc.weight", "kind": "codebook", "weights": 1000, "kept": 100, "nonzero": 100, "fixed_bytes": 100}
    fits = estimate([row], 0, 0, 150, {"fc.weight": 1000}, parse_size("256KiB"))
    assert fits.dense_in_sram and fits.compressed_in_sram
    assert fits.total("dense") == pytest.approx({"memory": 1000 * 5.0, "arithmetic": 1000 * 4.6, "total": 9600})
    assert fits.total("compressed") == pytest.approx({"memory": 25 * 5.0, "arithmetic": 100 * 4.6, "total": 585})
    small = estimate([row], 0, 0, 150, {"fc.weight": 1000}, 1000)  # 4,000 dense bytes: DRAM; 100 compressed: SRAM
    assert small.total("dense")["memory"] == 1000 * 640.0 and small.total("compressed")["memory"] == 25 * 5.0


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run ``deepshrink ARGS`` as the console script does; returns stderr (the exit code must be 2)."""
    from deepshrink.cli import main

    monkeypatch.setattr(sys, "argv", ["deepshrink", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_bad_inputs_give_one_line_and_leave_nothing(files: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "report.html"
    not_dsz = tmp_path / "model.dsz"
    not_dsz.write_text("hello")
    truncated = tmp_path / "truncated.dsz"
    truncated.write_bytes(files["shared"].read_bytes()[:-50])
    other_sweep = tmp_path / "other-sweep"
    other_sweep.mkdir()
    (other_sweep / "sensitivity.json").write_text(json.dumps(
        {"baseline": 0.9, "params": {"conv1": 500}, "curves": {"conv1": {"0": 0.9, "0.5": 0.8}}}))
    resized_sweep = tmp_path / "resized-sweep"
    resized_sweep.mkdir()
    (resized_sweep / "sensitivity.json").write_text(json.dumps(
        {"baseline": 0.9, "params": {"fc1": 999}, "curves": {"fc1": {"0": 0.9}}}))
    other_ckpt = tmp_path / "other.pt"
    save_checkpoint(other_ckpt, build_model("lenet300", in_features=64, num_classes=10, hidden=[8, 8]))
    cases = [
        ([str(not_dsz)], "not a .dsz file"),
        ([str(truncated)], "truncated"),
        ([str(tmp_path / "missing.dsz")], "not found"),
        ([str(files["shared"]), "--sensitivity", str(other_sweep)], "of another model"),
        ([str(files["shared"]), "--sensitivity", str(resized_sweep)], "999"),
        ([str(files["shared"]), "--sensitivity", str(tmp_path / "nowhere")], "not a folder"),
        ([str(files["shared"]), "--baseline", str(other_ckpt)], "not the model"),
        ([str(files["shared"]), str(files["fixed"])], "not of the same model"),
        ([str(files["shared"]), "--sram", "lots"], "--sram"),
    ]
    for args, words in cases:
        err = run_cli(["report", *args, "--out", str(out)], capsys, monkeypatch)
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, (args, err)
        assert not out.parent.exists() or not list(out.parent.iterdir()), args  # no half-written file, no temp file
    out.parent.mkdir()
    out.write_text("the previous report")
    run_cli(["report", str(truncated), "--out", str(out)], capsys, monkeypatch)
    assert out.read_text() == "the previous report" and len(list(out.parent.iterdir())) == 1


def test_cli_writes_the_report_with_bench(files: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from deepshrink.cli import main

    out = tmp_path / "bench.html"
    monkeypatch.setattr(sys, "argv", ["deepshrink", "report", str(files["pruned"]), "--bench", "--dataset", "digits",
                                      "--out", str(out), "--json"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out) and result["figures"] >= 6
    page = check_page(out.read_text())
    assert "latency" in page.figures
    latency = page.tables["latency-table"]
    assert [r[0][0] for r in latency["body"]] == ["fc1", "fc2", "fc3"]
    assert all(v is not None and v > 0 for v in column(latency, "b1 runtime ms", "foot"))
    assert all(v is not None and v > 0 for v in column(latency, "b64 dense ms", "body"))
