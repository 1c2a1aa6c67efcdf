"""The .dsz file holds the trained ternary weights bit for bit; the CLI writes it; the runtime builder runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import deepshrink.codec as codec
from deepshrink.core import get_value_transform
from deepshrink.data import load_dataset
from deepshrink.models import build_model
from deepshrink.ternary import TTQ, TWN, Ternary, masked_latent, ternarize_, ternary_param_groups
from deepshrink.train import TrainConfig, fit, save_checkpoint


def _trained_ternary(config: TTQ | TWN) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))
    ternarize_(model, config)
    fit(model, load_dataset("digits", "train", limit=128), TrainConfig(epochs=1, lr=0.05, batch_size=32),
        params=ternary_param_groups(model), quiet=True)
    return model


@pytest.mark.parametrize("entropy", ["ans", "huffman"])
def test_file_weights_equal_trained_model_bit_for_bit(tmp_path, entropy: str) -> None:  # type: ignore[no-untyped-def]
    model = _trained_ternary(TTQ())
    path = tmp_path / "m.dsz"
    codec.save_compressed(model, path, entropy=entropy)
    stored = codec.read_compressed(path)
    entry = stored.weights["fc2.weight"].export()
    transform = get_value_transform(model.fc2)
    assert isinstance(transform, Ternary)
    exported = transform.export(masked_latent(model.fc2))
    assert entry["kind"] == "ternary"
    assert np.array_equal(entry["code"], exported["code"])
    wp, wn = transform.scales()  # Wp, Wn in the layer's units (unit * normalised scale)
    assert np.float32(entry["wp"]) == np.float32(wp) and np.float32(entry["wn"]) == np.float32(wn)
    loaded = codec.load_compressed(path)
    for name in ("fc1", "fc2", "fc3"):
        a = model.get_submodule(name).weight.detach().numpy()
        b = loaded.get_submodule(name).weight.detach().numpy()
        assert np.array_equal(a.view(np.int32), b.view(np.int32)), name
    assert isinstance(get_value_transform(loaded.fc2), Ternary)  # reloaded with its state, trainable further
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_ternary_codes_cost_at_most_two_bits_each(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _trained_ternary(TTQ())
    path = tmp_path / "m.dsz"
    report = codec.save_compressed(model, path, entropy="ans")
    numel = model.fc2.weight.numel()
    assert report.tensors["fc2.weight"] <= numel * 2 / 8 + 64  # 2-bit codes (or fewer) + Wp, Wn + tables


def test_symmetric_baseline_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _trained_ternary(TWN())
    path = tmp_path / "twn.dsz"
    codec.save_compressed(model, path)
    loaded = codec.load_compressed(path)
    assert torch.equal(loaded.fc2.weight, model.fc2.weight)
    entry = codec.read_compressed(path).weights["fc2.weight"].export()
    assert entry["wp"] == entry["wn"]


@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_cli_ternary_writes_dsz(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deepshrink.cli import app

    torch.manual_seed(0)
    fp32 = build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))
    fit(fp32, load_dataset("digits", "train"), TrainConfig(epochs=2, lr=0.1, batch_size=64), quiet=True)
    ckpt = tmp_path / "fp32.pt"
    save_checkpoint(ckpt, fp32, meta={"dataset": "digits"})
    out = tmp_path / "t.dsz"
    result = CliRunner().invoke(app, ["ternary", str(ckpt), "--t", "0.05", "--epochs", "1", "--dataset", "digits",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["bytes"] == out.stat().st_size
    assert [row["name"] for row in report["layers"]] == ["fc2"]
    assert 0.0 <= report["layers"][0]["sparsity"] <= 1.0
    loaded = codec.load_compressed(out)
    assert isinstance(get_value_transform(loaded.fc2), Ternary)
    assert get_value_transform(loaded.fc1) is None and get_value_transform(loaded.fc3) is None


def test_runtime_builder_uses_the_add_subtract_kernel() -> None:
    from deepshrink.core import stored_from_export
    from deepshrink.runtime import TernaryConv2d, TernaryLinear, build_layer

    code = np.random.default_rng(0).integers(-1, 2, size=(4, 6)).astype(np.int8)
    exported = {"kind": "ternary", "code": code, "wp": 0.5, "wn": 0.25}
    linear = build_layer(nn.Linear(6, 4), stored_from_export(exported), None, "fc.weight")
    assert isinstance(linear, TernaryLinear)
    conv_code = np.random.default_rng(1).integers(-1, 2, size=(3, 2, 3, 3)).astype(np.int8)
    conv = build_layer(nn.Conv2d(2, 3, 3, padding=1), stored_from_export({**exported, "code": conv_code}),
                       torch.zeros(3), "conv.weight")
    assert isinstance(conv, TernaryConv2d)
    x = torch.randn(1, 6)
    dense = x @ torch.from_numpy(stored_from_export(exported).dense()).T
    torch.testing.assert_close(linear(x), dense)
