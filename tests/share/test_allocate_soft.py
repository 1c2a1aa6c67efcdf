"""Bits per layer from a sharing sweep under a byte budget, codebooks/biases in 2-byte floats, soft weight-sharing,
their recipe stages and ``deepshrink sensitivity --technique share``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deepshrink.cli import app
from deepshrink.codec import read_compressed, save_compressed
from deepshrink.core import ConfigError, get_mask, get_value_transform, set_mask
from deepshrink.data import load_dataset
from deepshrink.models import build_model
from deepshrink.recipes import RecipeContext, parse_recipe, run_recipe
from deepshrink.share import (
    BitSensitivity,
    SharedWeights,
    SoftSharing,
    WeightSharing,
    bits_sweep,
    choose_bits,
    round_biases_,
    round_codebooks_,
    share_weights_,
    soft_share_,
)
from deepshrink.train import TrainConfig, evaluate, fit, save_checkpoint


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, object, object]:
    torch.manual_seed(0)
    train, val = load_dataset("digits", "train"), load_dataset("digits", "val")
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))
    fit(model, train, TrainConfig(epochs=4, lr=0.1, batch_size=64), quiet=True)
    return model, train, val


def _copy(model: nn.Module) -> nn.Module:
    fresh = build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))
    fresh.load_state_dict(model.state_dict())
    return fresh


def test_bits_sweep_restores_the_model_and_costs_grow_with_bits(trained, tmp_path: Path) -> None:
    model, _, val = trained
    model = _copy(model)
    set_mask(model.fc1, model.fc1.weight.abs() > model.fc1.weight.abs().median())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = bits_sweep(model, val, [1, 2, 4], out_dir=tmp_path, quiet=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert set(result.curves) == {"fc1", "fc2", "fc3"} and result.params["fc1"] == int(get_mask(model.fc1).sum())
    for name in result.curves:
        costs = result.bytes[name]
        assert costs[1] <= costs[2] <= costs[4]
    assert result.curves["fc1"][4] > result.curves["fc1"][1] - 0.05
    from deepshrink.codec.encode import index_bytes

    mask_cost = index_bytes(get_mask(model.fc1).numpy())  # the pruned layer's estimate counts its mask as coded
    assert mask_cost > 0 and result.bytes["fc1"][1] > mask_cost
    assert result.bytes["fc2"][1] <= result.params["fc2"] / 8 + 3 * 2  # unpruned: no mask cost, 1 bit a code
    loaded = BitSensitivity.load(tmp_path)
    assert loaded.curves == result.curves and (tmp_path / "sensitivity.png").is_file()


def test_choose_bits_meets_the_budget_and_spends_where_it_matters() -> None:
    sweep = BitSensitivity(0.9, curves={"a": {2: 0.5, 4: 0.89, 6: 0.9}, "b": {2: 0.89, 4: 0.9, 6: 0.9}},
                           bytes={"a": {2: 100.0, 4: 200.0, 6: 300.0}, "b": {2: 100.0, 4: 200.0, 6: 300.0}},
                           params={"a": 400, "b": 400})
    assert choose_bits(sweep, budget_bytes=400).bits == {"a": 4, "b": 4}  # free steps first
    choice = choose_bits(sweep, budget_bytes=300)
    assert choice.met and choice.bytes <= 300 and choice.bits == {"a": 4, "b": 2}  # b is the cheap one to narrow
    assert choose_bits(sweep, max_drop=0.005).bits == {"a": 6, "b": 4}
    unmet = choose_bits(sweep, budget_bytes=10)
    assert not unmet.met and unmet.bits == {"a": 2, "b": 2}
    with pytest.raises(ConfigError):
        choose_bits(sweep)


def test_rounded_codebooks_and_biases_are_stored_in_two_bytes(trained, tmp_path: Path) -> None:
    model = _copy(trained[0])
    share_weights_(model, WeightSharing(bits=3))
    save_compressed(model, tmp_path / "full.dsz")
    assert round_codebooks_(model, "float16") == 3 and round_biases_(model, "float16") == 3
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = model(x)
    save_compressed(model, tmp_path / "half.dsz")
    full, half = read_compressed(tmp_path / "full.dsz"), read_compressed(tmp_path / "half.dsz")
    saved = half.file_size - full.file_size
    assert saved <= -(2 * 3 * 8 + 2 * (32 + 16 + 10)) + 64  # codebooks and biases at 2 bytes a value (header aside)
    assert half.header["tensors"]["fc1.bias"].get("as") == "float16"
    assert half.header["weights"]["fc1.weight"]["arrays"]["centroids"].get("as") == "float16"
    from deepshrink.codec import load_compressed

    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "half.dsz")(x), expected)  # exact: what the model computes


def test_soft_sharing_prunes_and_quantizes_into_mask_and_codebook(trained) -> None:
    model, train, val = trained
    model = _copy(model)
    base = evaluate(model, val)["accuracy"]
    report = soft_share_(model, train, SoftSharing(components=5, tau=0.05, pi_zero=0.9),
                         TrainConfig(epochs=3, lr=1e-3, batch_size=64, optimizer="adam", weight_decay=0.0),
                         quiet=True)
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(model, name)
        transform, mask = get_value_transform(layer), get_mask(layer)
        assert isinstance(transform, SharedWeights) and mask is not None
        assert len(torch.unique(layer.weight[mask])) <= 4 and torch.all(layer.weight[~mask] == 0)
        assert report.layers[name]["kept"] == int(mask.sum())
    assert sum(report.layers[n]["kept"] for n in report.layers) < sum(
        getattr(model, n).weight.numel() for n in ("fc1", "fc2", "fc3"))
    assert evaluate(model, val)["accuracy"] > min(0.5, base - 0.3)  # 3 epochs on a tiny set: far above chance
    with pytest.raises(ConfigError):
        SoftSharing(pi_zero=1.5)


def test_recipe_stages_bits_auto_and_soft_share(trained, tmp_path: Path) -> None:
    model, train, val = trained
    recipe = parse_recipe({"stages": [
        {"prune": {"sparsity": 0.5, "rounds": 1}},
        {"share": {"bits": "auto", "budget_bytes": 1500, "sweep_bits": [2, 3, 4], "init": "linear",
                   "centroid_dtype": "float16", "bias_dtype": "float16"}},
        {"encode": {"entropy": "ans"}}]})
    ctx = RecipeContext(model=_copy(model), train_data=train, val_data=val, out=tmp_path / "auto.dsz", quiet=True)
    records = run_recipe(recipe, ctx)
    auto = records[1]["auto"]
    assert auto["choice"]["met"] and auto["choice"]["bytes"] <= 1500 and set(auto["choice"]["bits"]) == {"fc1", "fc2", "fc3"}
    assert records[1]["codebooks_rounded"] == 3 and (tmp_path / "auto.dsz").is_file()
    soft = parse_recipe({"stages": [{"soft_share": {"epochs": 1, "components": 5, "tau": 0.05}},
                                    {"finetune": {"epochs": 1, "lr": 1e-4, "centroid_dtype": "bfloat16"}}]})
    ctx = RecipeContext(model=_copy(model), train_data=train, val_data=val, quiet=True)
    records = run_recipe(soft, ctx)
    assert set(records[0]["layers"]) == {"fc1", "fc2", "fc3"}
    for bad in ({"bits": "auto"}, {"budget_bytes": 10}, {"bits": "auto", "budget_bytes": 10, "sweep_bits": [0]},
                {"bits": 4, "centroid_dtype": "int8"}):
        with pytest.raises(ConfigError):
            parse_recipe({"stages": [{"share": bad}]})


def test_sensitivity_cli_share(trained, tmp_path: Path) -> None:
    path = tmp_path / "base.pt"
    save_checkpoint(path, trained[0], meta={"dataset": "digits", "config": {"lr": 0.1}})
    result = CliRunner().invoke(app, ["sensitivity", str(path), "--technique", "share", "--bits", "1,3",
                                      "--budget-bytes", "1500", "--out", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["technique"] == "share" and set(report["curves"]["fc1"]) == {"1", "3"}
    assert report["choice"]["met"] and report["choice"]["bytes"] <= 1500 and (tmp_path / "s" / "bits.json").is_file()
    assert np.isfinite(report["baseline"])
