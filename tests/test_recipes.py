"""Recipes: parsing and validation, and the whole prune -> share -> fine-tune -> encode pipeline on digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from deepshrink.cli import app
from deepshrink.core import ConfigError, get_mask, get_value_transform
from deepshrink.data import load_dataset
from deepshrink.io import load_model
from deepshrink.models import build_model
from deepshrink.recipes import STAGES, RecipeContext, load_recipe, parse_recipe, run_recipe
from deepshrink.share import SharedWeights
from deepshrink.train import TrainConfig, evaluate, fit, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 1,
    "stages": [
        {"prune": {"sparsity": {"fc1": 0.8, "fc2": 0.7, "fc3": 0.5}, "rounds": 2, "retrain": {"epochs": 1}}},
        {"retrain": {"epochs": 1}},
        {"share": {"bits": {"fc": 3}, "init": "linear"}},
        {"finetune": {"epochs": 1, "lr": 1.0e-3}},
        {"encode": {"entropy": "huffman", "index_bits": "auto", "index_coding": "auto"}},
    ],
}


def test_parse_builds_ordered_stages() -> None:
    recipe = parse_recipe(TINY)
    assert [s.name for s in recipe.stages] == ["prune", "retrain", "share", "finetune", "encode"]
    assert recipe.seed == 1 and recipe.name == "tiny"
    assert {"prune", "retrain", "share", "finetune", "encode"} <= set(STAGES)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"stages": [{"shrink": {}}]}, r"unknown stage 'shrink'.*allowed: .*share"),
        ({"stages": [{"share": {"bitz": 3}}]}, r"unknown key 'bitz' in stage 1 \(share\).*allowed: bias_bits, bias_dtype, bits"),
        ({"stages": [{"share": {"bits": 0}}]}, r"stage 1 \(share\).*bits"),
        ({"stages": [{"finetune": {"epochs": -1}}]}, r"epochs"),
        ({"stages": [{"prune": {"sparsity": 0.5, "retrain": {"epoch": 1}}}]}, r"retrain key.*epoch"),
        ({"stages": [{"prune": {"sparsity": 1.5}}]}, r"sparsity"),
        ({"stages": [{"encode": {"entropy": "zip"}}]}, r"entropy"),
        ({"stages": [{"encode": {"index_coding": "mask"}}]}, r"index_coding"),
        ({"stages": [{"encode": {"index_bits": {"lstm": 4}}}]}, r"index_bits"),
        ({"stagez": []}, r"unknown top-level key 'stagez'"),
        ({"stages": []}, r"non-empty list"),
    ],
)
def test_bad_recipes_name_the_key(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_recipe(data)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_shipped_recipes_parse(name: str) -> None:
    recipe = load_recipe(REPO / "recipes" / name)
    assert [s.name for s in recipe.stages][-1] == "encode"
    assert {"share", "prune"} & {s.name for s in recipe.stages}


@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_compress_and_eval_cli_on_digits(tmp_path: Path) -> None:
    train = load_dataset("digits", "train")
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=[32, 16])
    config = TrainConfig(epochs=6, lr=0.1, batch_size=64)
    fit(model, train, config, quiet=True)
    ckpt = tmp_path / "base.pt"
    save_checkpoint(ckpt, model, meta={"dataset": "digits", "config": config.__dict__})
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "tiny.dsz"
    runner = CliRunner()
    result = runner.invoke(app, ["compress", str(ckpt), "--recipe", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "x smaller" in result.output
    loaded, meta = load_model(out)
    assert meta["dataset"] == "digits"
    for name in ("fc1", "fc2", "fc3"):
        layer = getattr(loaded, name)
        step, mask = get_value_transform(layer), get_mask(layer)
        assert isinstance(step, SharedWeights) and mask is not None
        assert step.centroids.numel() == 8
        assert torch.all(layer.weight[~mask] == 0)
    assert 1 - float(get_mask(loaded.fc1).float().mean()) == pytest.approx(0.8, abs=0.01)  # type: ignore[union-attr]
    accuracy = evaluate(loaded, load_dataset("digits", "val"))["accuracy"]
    assert accuracy > 0.8
    result = runner.invoke(app, ["eval", str(out), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert f"{accuracy:.4f}" in result.output


def test_compress_requires_encode_last(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"share": {"bits": 2}}]}))
    result = CliRunner().invoke(app, ["compress", "missing.pt", "--recipe", str(recipe), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "encode" in str(result.exception)


def test_prune_final_retrain_trains_only_the_last_round() -> None:
    """``final_retrain`` replaces the last round's retraining (and only it): epochs 0 per round, 1 at the end."""
    train = load_dataset("digits", "train")

    def pruned(final: dict | None) -> tuple[torch.nn.Module, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("lenet300", in_features=64, num_classes=10, hidden=[32, 16])
        before = model.fc1.weight.detach().clone()
        options: dict = {"sparsity": {"fc1": 0.6}, "rounds": 2, "power": 3, "retrain": {"epochs": 0, "lr": 0.1}}
        if final is not None:
            options["final_retrain"] = final
        recipe = parse_recipe({"stages": [{"prune": options}]})
        (record,) = run_recipe(recipe, RecipeContext(model=model, train_data=train, quiet=True))
        assert record["rounds"] == 2 and record["sparsity"] > 0
        return model, before

    model, before = pruned(None)  # no training anywhere: kept weights are the original ones
    mask = get_mask(model.fc1).bool()
    assert float(mask.float().mean()) == pytest.approx(0.4, abs=0.01)
    assert torch.equal(model.fc1.weight.detach()[mask], before[mask])
    model, before = pruned({"epochs": 1})  # lr inherited from retrain
    mask = get_mask(model.fc1).bool()
    assert not torch.equal(model.fc1.weight.detach()[mask], before[mask])
    assert torch.all(model.fc1.weight.detach()[~mask] == 0)


def test_prune_final_retrain_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"final_retrain key.*epoch"):
        parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "rounds": 2, "final_retrain": {"epoch": 1}}}]})
    with pytest.raises(ConfigError, match=r"final_retrain must be a mapping"):
        parse_recipe({"stages": [{"prune": {"sparsity": 0.5, "rounds": 2, "final_retrain": 3}}]})


def test_post_training_recipe_obs_bn_bias_quantize_and_ternary_stages(tmp_path: Path) -> None:
    """Stages of every technique, calibration-only recovery included, on a BatchNorm model."""
    from deepshrink.data import load_dataset
    from deepshrink.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg", in_channels=1, num_classes=10, widths=(4, 8)).eval()
    recipe = parse_recipe({"stages": [
        {"prune": {"method": "obs", "sparsity": 0.5, "max_samples": 64, "select": "type:conv"}},
        {"recalibrate_bn": {"batches": 2, "batch_size": 32}},
        {"bias_correct": {"samples": 64}},
        {"quantize": {"bits": 8, "granularity": "channel", "calib": 64, "bias_correction": True}},
        {"encode": {"entropy": "ans"}},
    ]})
    data = load_dataset("digits", "train", limit=200)
    context = RecipeContext(model=model, train_data=data, val_data=load_dataset("digits", "val"), out=tmp_path / "m.dsz")
    records = run_recipe(recipe, context)
    assert [r["stage"] for r in records] == ["prune", "recalibrate_bn", "bias_correct", "quantize", "encode"]
    assert 0.45 < records[0]["sparsity"] < 0.55 and records[2]["layers"] > 0
    assert (tmp_path / "m.dsz").stat().st_size == records[-1]["bytes"]
    ternary = parse_recipe({"stages": [{"ternarize": {"epochs": 1, "batch_size": 64}}, "encode"]})
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=(16, 8))
    run_recipe(ternary, RecipeContext(model=model, train_data=data, out=tmp_path / "t.dsz"))
    assert (tmp_path / "t.dsz").is_file()
