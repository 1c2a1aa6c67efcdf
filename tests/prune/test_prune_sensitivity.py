from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from deepshrink.core import ConfigError, FormatError, get_mask, latent_weight
from deepshrink.models import build_model
from deepshrink.prune import MagnitudePrune, Sensitivity, choose_thresholds, prune_, sensitivity_sweep
from deepshrink.train import TrainConfig, fit


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))
    fit(model, digits[0], TrainConfig(epochs=4, lr=0.1, batch_size=64), quiet=True)
    return model


def test_sweep_writes_csv_json_and_plot(trained: nn.Module, digits, tmp_path: Path) -> None:
    before = {n: p.detach().clone() for n, p in trained.state_dict().items()}
    result = sensitivity_sweep(trained, digits[1], [0.0, 0.5, 0.9], out_dir=tmp_path, quiet=True)
    assert set(result.curves) == {"fc1", "fc2", "fc3"}
    assert all(result.curves[n][0.0] == result.baseline for n in result.curves)
    assert result.curves["fc1"][0.9] < result.baseline  # pruning 90% of a layer hurts
    assert result.params == {"fc1": 64 * 32, "fc2": 32 * 16, "fc3": 16 * 10}
    # the model comes back untouched
    assert all(torch.equal(before[n], p) for n, p in trained.state_dict().items())
    rows = list(csv.DictReader((tmp_path / "sensitivity.csv").open()))
    assert len(rows) == 9 and {r["layer"] for r in rows} == {"fc1", "fc2", "fc3"}
    assert json.loads((tmp_path / "sensitivity.json").read_text())["curves"]["fc2"]["0.5"] == result.curves["fc2"][0.5]
    assert (tmp_path / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Sensitivity.load(tmp_path).curves == result.curves


def test_parallel_sweep_matches_serial(trained: nn.Module, digits) -> None:
    serial = sensitivity_sweep(trained, digits[1], [0.0, 0.7], quiet=True)
    parallel = sensitivity_sweep(trained, digits[1], [0.0, 0.7], workers=2, quiet=True)
    assert parallel.curves == serial.curves


def test_sweep_respects_existing_masks(trained: nn.Module, digits) -> None:
    import copy

    model = copy.deepcopy(trained)
    prune_(model, MagnitudePrune(sparsity=0.5), select="fc1")
    kept = latent_weight(model.fc1).detach().clone()
    result = sensitivity_sweep(model, digits[1], [0.5, 0.8], select="fc1", quiet=True)
    assert result.curves["fc1"][0.5] == result.baseline  # already at 50%: nothing more removed
    assert torch.equal(latent_weight(model.fc1), kept)
    assert get_mask(model.fc1) is not None


def test_choose_thresholds_budget_and_target() -> None:
    result = Sensitivity(0.9, {
        "a": {0.0: 0.9, 0.5: 0.9, 0.8: 0.895, 0.9: 0.85},
        "b": {0.0: 0.9, 0.5: 0.88, 0.8: 0.7, 0.9: 0.6},
    }, {"a": 900, "b": 100})
    free = choose_thresholds(result, max_drop=0.0)
    assert free.sparsity == {"a": 0.5, "b": 0.0} and free.budget == 0.0
    t = choose_thresholds(result, max_drop=0.03, target_sparsity=0.7)
    # a: 0.5 (free), then 0.8 (drop 0.005) overshoots 0.7 overall, so a lands on 0.7 * 1000 / 900
    assert t.sparsity["b"] == 0.0 and t.sparsity["a"] == pytest.approx(0.7 / 0.9) and t.met
    assert t.overall == pytest.approx(0.7) and t.budget == pytest.approx(0.005)
    short = choose_thresholds(result, max_drop=0.03, target_sparsity=0.95)
    assert not short.met and short.sparsity == {"a": 0.8, "b": 0.5}
    with pytest.raises(ConfigError):
        choose_thresholds(result, max_drop=-1)


def test_choose_thresholds_reports_quality(trained: nn.Module, digits) -> None:
    result = sensitivity_sweep(trained, digits[1], [0.0, 0.3, 0.6], quiet=True)
    t = choose_thresholds(result, max_drop=1.0, model=trained)
    assert t.sparsity == {"fc1": 0.6, "fc2": 0.6, "fc3": 0.6}
    import copy

    model = copy.deepcopy(trained)
    prune_(model, MagnitudePrune(quality=t.quality))
    for name in ("fc1", "fc2"):
        kept = float(get_mask(getattr(model, name)).float().mean())  # type: ignore[union-attr]
        assert kept == pytest.approx(0.4, abs=0.01)


def test_bad_inputs(trained: nn.Module, digits, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        sensitivity_sweep(trained, digits[1], [1.0], quiet=True)
    with pytest.raises(FormatError):
        Sensitivity.load(tmp_path)
    (tmp_path / "sensitivity.json").write_text("{}")
    with pytest.raises(FormatError):
        Sensitivity.load(tmp_path)
