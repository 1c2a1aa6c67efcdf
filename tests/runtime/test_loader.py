"""Whole models: compressed LeNets run from their compressed form and match the dense-quantized model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import deepshrink.codec as codec
import deepshrink.runtime as rt
from deepshrink.core import set_mask, stored_from_export
from deepshrink.core.errors import FormatError
from deepshrink.models import build_model
from deepshrink.share import WeightSharing, share_weights_


def compress(model: nn.Module, density: dict[str, float], bits: dict[str, int] | None = None) -> nn.Module:
    """Magnitude-prune each named layer to ``density`` and share its weights (Deep Compression's state)."""
    torch.manual_seed(0)
    for name, keep in density.items():
        layer = model.get_submodule(name)
        w = layer.weight.detach().abs().flatten()
        k = max(round(keep * w.numel()), 1)
        set_mask(layer, layer.weight.detach().abs() >= w.kthvalue(w.numel() - k + 1).values)
    share_weights_(model, WeightSharing(bits=bits or {"conv": 8, "fc": 5}))
    return model.eval()


LENET300 = {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}
LENET5 = {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}


@pytest.fixture(scope="module")
def lenets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"lenet300": compress(build_model("lenet300"), LENET300),
            "lenet5": compress(build_model("lenet5"), LENET5)}


def dense_weight_shapes(model: nn.Module) -> set[tuple[int, ...]]:
    return {tuple(t.shape) for t in (*model.parameters(), *model.buffers()) if t.dim() >= 2}


@pytest.mark.parametrize("arch", ["lenet300", "lenet5"])
@pytest.mark.parametrize("batch", [1, 64])
def test_runtime_matches_dense_quantized_model(lenets: dict[str, nn.Module], arch: str, batch: int) -> None:
    model = lenets[arch]
    fast = rt.from_model(model)
    assert set(rt.runtime_layers(fast)) == set(LENET300 if arch == "lenet300" else LENET5)
    assert not dense_weight_shapes(fast), "a dense weight matrix was materialised"
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    assert rt.measure.resident_bytes(fast) < sum(p.numel() * 4 for p in build_model(arch).parameters()) / 4


def test_from_stored_on_meta_skeleton_with_dense_and_sparse_kinds(lenets: dict[str, nn.Module]) -> None:
    model = lenets["lenet300"]
    weights, tensors = rt.stored_from_model(model)
    assert weights["fc1.weight"].kind == "codebook"
    # fc2 stored pruned-only (sparse floats), fc3 stored dense: both kinds the file may hold
    fc2 = model.fc2.weight.detach()
    weights["fc2.weight"] = stored_from_export({"kind": "sparse", "mask": (fc2 != 0).numpy(),
                                                "values": fc2[fc2 != 0].numpy()})
    weights["fc3.weight"] = stored_from_export({"kind": "dense", "array": model.fc3.weight.detach().numpy().copy()})
    fast = rt.from_stored(("lenet300", {}), weights, tensors)
    assert rt.runtime_layers(fast) == {"fc1": "SparseLinear (codebook)", "fc2": "SparseLinear (sparse)"}
    assert fast.runtime_report.kept == {}
    assert isinstance(fast.fc3, nn.Linear) and not fast.fc3.weight.is_meta
    assert fast.fc2.weight_layout.direct
    x = torch.randn(3, 784)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_small_plain_convs_become_runtime_layers_and_large_ones_stay() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 600, 1), nn.Flatten(),
                          nn.Linear(600 * 36, 4)).eval()
    assert model[0].weight.numel() <= rt.policy.DIRECT_CONV_MAX_WEIGHTS < model[2].weight.numel()
    set_mask(model[4], torch.rand(4, 600 * 36) < 0.3)
    fast = rt.from_model(model)
    # the uncompressed first conv (216 weights) runs through SparseConv2d at full density, so small batches time
    # the direct kernel against F.conv2d; the large 1x1 conv stays an nn.Conv2d
    assert rt.runtime_layers(fast) == {"0": "SparseConv2d (dense)", "4": "SparseLinear (sparse)"}
    assert isinstance(fast[2], nn.Conv2d) and fast[0].weight_layout.density == 1.0
    for batch in (1, 2, 16):
        x = torch.randn(batch, 3, 6, 6)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)


def test_palette_builder_runs_fixedpoint_and_ternary_from_codes() -> None:
    rng = np.random.default_rng(0)
    skeleton = nn.Sequential(nn.Linear(20, 7), nn.Conv2d(2, 3, 3))
    ints = rng.integers(-40, 40, (7, 20)) * (rng.random((7, 20)) < 0.3)
    code = rng.integers(-1, 2, (3, 2, 3, 3)).astype(np.int8)
    fixed = stored_from_export({"kind": "fixedpoint", "int": ints, "bits": 8, "frac_len": 5})
    tern = stored_from_export({"kind": "ternary", "code": code, "wp": 0.7, "wn": 0.3})
    lin = rt.LAYER_BUILDERS[rt.ANY_LOOKUP](skeleton[0], fixed, None, "0.weight")
    conv = rt.LAYER_BUILDERS[rt.ANY_LOOKUP](skeleton[1], tern, torch.ones(3), "1.weight")
    assert isinstance(lin, rt.SparseLinear) and isinstance(conv, rt.SparseConv2d)
    assert lin.weight_layout.nnz == int(np.count_nonzero(ints))  # exact zeros are left out
    x = torch.randn(2, 20)
    torch.testing.assert_close(lin(x), x @ torch.from_numpy(fixed.dense()).T, rtol=1e-5, atol=1e-5)
    img = torch.randn(1, 2, 6, 6)
    want = torch.nn.functional.conv2d(img, torch.from_numpy(tern.dense()), torch.ones(3))
    torch.testing.assert_close(conv(img), want, rtol=1e-5, atol=1e-5)


def test_registry_dispatches_on_kind_and_keeps_layers_it_cannot_reproduce(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def special(module: nn.Module, weight: Any, bias: torch.Tensor | None, name: str) -> nn.Module:
        calls.append(name)
        return nn.Identity()

    monkeypatch.setitem(rt.LAYER_BUILDERS, "ternary", special)
    tern = stored_from_export({"kind": "ternary", "code": np.ones((2, 2), np.int8), "wp": 1.0, "wn": 1.0})
    fast = rt.from_stored(nn.Sequential(nn.Linear(2, 2)), {"0.weight": tern}, {"0.bias": np.zeros(2, np.float32)})
    assert calls == ["0.weight"] and isinstance(fast[0], nn.Identity)
    # a layer no builder reproduces (BatchNorm) keeps its class, gets its decoded weight, and is reported
    sparse = stored_from_export({"kind": "sparse", "mask": np.array([True, False, True]),
                                 "values": np.array([1.0, 2.0], np.float32)})
    bn = rt.from_stored(nn.Sequential(nn.BatchNorm1d(3)), {"0.weight": sparse}, {
        "0.bias": np.zeros(3, np.float32), "0.running_mean": np.zeros(3, np.float32),
        "0.running_var": np.ones(3, np.float32), "0.num_batches_tracked": np.zeros((), np.int64)})
    assert isinstance(bn[0], nn.BatchNorm1d) and bn[0].weight.tolist() == [1.0, 0.0, 2.0]
    assert "BatchNorm1d" in bn.runtime_report.kept["0"]


def test_loader_errors_name_the_tensor(lenets: dict[str, nn.Module]) -> None:
    weights, tensors = rt.stored_from_model(lenets["lenet300"])
    with pytest.raises(FormatError, match=r"fc3\.bias"):
        rt.from_stored(("lenet300", {}), weights, {k: v for k, v in tensors.items() if k != "fc3.bias"})
    with pytest.raises(FormatError, match=r"fc9\.weight"):
        rt.from_stored(("lenet300", {}), {**weights, "fc9.weight": weights["fc1.weight"]}, tensors)
    with pytest.raises(FormatError, match="extra"):
        rt.from_stored(("lenet300", {}), weights, {**tensors, "extra": torch.zeros(1)})


def test_load_reads_a_dsz_file(lenets: dict[str, nn.Module], tmp_path: Path) -> None:
    path = tmp_path / "lenet5.dsz"
    codec.save_compressed(lenets["lenet5"], path, meta={"dataset": "fashion-mnist"})
    fast, meta = rt.load_with_meta(path)
    assert meta["arch"] == "lenet5" and meta["dataset"] == "fashion-mnist"
    assert set(rt.runtime_layers(fast)) == set(LENET5) and not dense_weight_shapes(fast)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rt.load(path)(x), lenets["lenet5"](x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index_coding", ["relative", "auto"])  # auto: context-modelled masks where smaller
def test_reader_never_builds_weight_shaped_arrays(lenets: dict[str, nn.Module], tmp_path: Path,
                                                  index_coding: str) -> None:
    from deepshrink.codec.container import Container

    model = lenets["lenet300"]
    if index_coding == "auto":  # rows and columns of very different densities, as trained layers have
        model = build_model("lenet300")
        with torch.no_grad():
            model.fc1.weight.mul_(torch.outer(torch.rand(300), torch.rand(784)) ** 2)
        model = compress(model, LENET300)
    path = tmp_path / "lenet300.dsz"
    codec.save_compressed(model, path, entropy="ans", index_coding=index_coding)
    if index_coding == "auto":
        assert any("mask" in e for e in Container.open(path).header["weights"].values())
    for name, stored in codec.read_compressed(path).weights.items():
        assert stored.kind == "codebook" and stored.positions is not None
        kept = int((model.get_submodule(name.rpartition(".")[0]).weight != 0).sum())
        assert stored.data.size == stored.positions.size == kept  # one symbol per kept weight, no full-shape array
        layout = rt.sparse_rows(stored, name)
        assert np.array_equal(layout.to_dense().reshape(stored.shape), stored.dense())


def test_bench_cli_reports_speedup(lenets: dict[str, nn.Module], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from deepshrink.cli import app

    path = tmp_path / "lenet5.dsz"
    codec.save_compressed(lenets["lenet5"], path, meta={"dataset": "fashion-mnist"})
    result = CliRunner().invoke(app, ["bench", str(path), "--batch", "2", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["speedup"] > 0 and report["batch"] == 2 and report["input_shape"] == [1, 28, 28]
    assert set(report["timings_ms"]) == {"runtime", "dense_fp32", "dynamic_int8"}
    assert report["max_abs_diff_vs_dense"] < 1e-4
    assert report["resident_bytes"]["runtime"] < report["resident_bytes"]["dense_fp32"]


def test_bench_cli_takes_several_batches_and_thread_counts(lenets: dict[str, nn.Module], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from deepshrink.cli import app
    from deepshrink.cli.bench import spread_lists

    assert spread_lists(["f.dsz", "--batch", "1", "64", "--threads", "1", "2", "--json"]) == [
        "f.dsz", "--batch", "1", "--batch", "64", "--threads", "1", "--threads", "2", "--json"]
    path = tmp_path / "lenet5.dsz"
    codec.save_compressed(lenets["lenet5"], path, meta={"dataset": "fashion-mnist"})
    result = CliRunner().invoke(app, ["bench", str(path), "--batch", "1", "64", "--threads", "1", "2", "--repeats",
                                      "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert [(r["batch"], r["threads"]) for r in report["runs"]] == [(1, 1), (64, 1), (1, 2), (64, 2)]
    for run in report["runs"]:
        assert run["max_abs_diff_vs_dense"] < 1e-4 and set(run["kernels"]) == set(LENET5)
    # LeNet-5's conv1 is 66% dense: the dense op at batch 64 (policy.DENSE_FROM); batch 1 times both kernels
    assert report["runs"][1]["kernels"]["conv1"] == "dense"
    assert report["runs"][0]["kernels"]["conv1"] in ("dense", "direct", "blocked")


def test_bench_cli_on_test_images_and_without_a_dataset(lenets: dict[str, nn.Module], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from deepshrink.cli import app

    with_data, without = tmp_path / "a.dsz", tmp_path / "b.dsz"
    codec.save_compressed(lenets["lenet300"], with_data, meta={"dataset": "fashion-mnist"})
    codec.save_compressed(lenets["lenet300"], without)
    result = CliRunner().invoke(app, ["bench", str(with_data), "--inputs", "test", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["inputs"] == "test" and report["input_shape"] == [1, 28, 28] and report["max_abs_diff_vs_dense"] < 1e-4
    failed = CliRunner().invoke(app, ["bench", str(without), "--inputs", "test", "--repeats", "2"])
    assert failed.exit_code != 0 and "pass --dataset" in str(failed.exception)


def test_demo_runtime_line_times_the_written_file(lenets: dict[str, nn.Module], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import TensorDataset

    from deepshrink.cli import demo

    path = tmp_path / "demo.dsz"
    codec.save_compressed(lenets["lenet300"], path)
    monkeypatch.setattr(demo, "OUT", path)
    images = TensorDataset(torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    line = demo._runtime_line(codec.load_compressed(path), images)
    assert "batch 1, 1 thread" in line and "outputs equal" in line and "x)" in line
