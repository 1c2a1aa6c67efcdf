from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deepshrink.core import ConfigError, get_mask, latent_weight
from deepshrink.models import build_model
from deepshrink.prune import (
    DropoutAdjuster,
    MagnitudePrune,
    OBDPrune,
    iterative_prune_,
    model_sparsity,
    prune_,
    rising_schedule,
    rising_sparsities,
)
from deepshrink.train import TrainConfig, load_checkpoint

from .prune_helpers import TinyCNN


def _model():
    torch.manual_seed(0)
    return build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))


def test_rising_sparsities() -> None:
    assert rising_sparsities(0.9, 3) == pytest.approx([0.3, 0.6, 0.9])
    cubic = rising_sparsities({"fc1": 0.8}, 2, power=3)
    assert cubic[0]["fc1"] == pytest.approx(0.7) and cubic[1]["fc1"] == pytest.approx(0.8)  # type: ignore[index]
    with pytest.raises(ConfigError):
        rising_sparsities(0.5, 0)
    with pytest.raises(ConfigError):
        rising_schedule(0.5, 2, method="optimal-brain-surgeon")
    obd = rising_schedule(0.5, 2, method="obd", hessian="hutchinson")
    assert isinstance(obd[1], OBDPrune) and obd[1].hessian == "hutchinson"


def test_iterative_prune_retrains_and_resumes(digits, tmp_path: Path) -> None:
    train, val = digits
    retrain = TrainConfig(epochs=1, lr=0.02, batch_size=64)
    ckpt = tmp_path / "pruned.pt"
    model = _model()
    schedule = rising_schedule({"fc1": 0.8, "fc2": 0.7, "fc3": 0.5}, 3)
    rounds = iterative_prune_(model, train, val, schedule[:2], retrain, ckpt, meta={"dataset": "digits"}, quiet=True)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["prune"]["layers"][0]["kept_after"] == round((1 - 0.8 * 2 / 3) * 64 * 32)
    assert "val_accuracy_retrained" in rounds[1] and len(rounds[1]["history"]) == 1
    saved, meta = load_checkpoint(ckpt)
    assert meta["dataset"] == "digits" and len(meta["prune_rounds"]) == 2
    assert torch.equal(get_mask(saved.fc1), get_mask(model.fc1))  # type: ignore[arg-type]
    # a fresh model pointed at the checkpoint resumes after round 2 and runs only round 3
    fresh = _model()
    rounds = iterative_prune_(fresh, train, val, schedule, retrain, ckpt, meta={"dataset": "digits"}, quiet=True,
                              final_retrain=replace(retrain, epochs=2))
    assert [r["round"] for r in rounds] == [1, 2, 3] and len(rounds[2]["history"]) == 2
    assert rounds[0] == meta["prune_rounds"][0]
    assert float(get_mask(fresh.fc1).float().mean()) == pytest.approx(0.2, abs=1e-3)  # type: ignore[union-attr]
    assert model_sparsity(fresh, "fc1") == pytest.approx(0.8, abs=1e-3)
    mask = get_mask(fresh.fc1)
    assert mask is not None and torch.all(latent_weight(fresh.fc1)[~mask] == 0)  # retraining revived nothing
    assert not list(tmp_path.glob("*.partial"))


def test_iterative_obd_without_retraining(digits) -> None:
    train = digits[0]
    model = _model()
    schedule = rising_schedule(0.6, 2, method="obd", scope="global", max_samples=64)
    rounds = iterative_prune_(model, train, None, schedule, TrainConfig(epochs=0), quiet=True)
    assert rounds[-1]["prune"]["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_dropout_adjustment_follows_han() -> None:
    model = TinyCNN()
    adjuster = DropoutAdjuster(model)
    assert len(adjuster.links) == 1 and adjuster.links[0][2] is model.fc
    prune_(model, MagnitudePrune(sparsity=0.75), select="fc")
    adjuster.update()
    assert model.drop.p == pytest.approx(0.5 * 0.25 ** 0.5)
