"""The common training loop: learns, keeps masks, runs callbacks, resumes from its checkpoint."""

from __future__ import annotations

import pytest
import torch

from deepshrink.core import ConfigError, get_mask, set_mask
from deepshrink.data import load_dataset
from deepshrink.models import build_model
from deepshrink.train import (
    TrainConfig,
    evaluate,
    fit,
    load_checkpoint,
    read_checkpoint,
    recalibrate_batchnorm_,
)


def _tiny() -> torch.nn.Module:
    return build_model("lenet300", in_features=64, num_classes=10, hidden=[32, 16])


def test_fit_learns_digits_and_keeps_masks() -> None:
    model = _tiny()
    set_mask(model.fc1, model.fc1.weight.abs() > 0.1)
    mask = get_mask(model.fc1).clone()
    steps: list[int] = []

    class Counter:
        def on_step_end(self, model: torch.nn.Module, step: int) -> None:
            steps.append(step)

    test = load_dataset("digits", "test")
    before = evaluate(model, test)["accuracy"]
    history = fit(model, load_dataset("digits", "train"), TrainConfig(epochs=4, lr=0.1, batch_size=32),
                  val_data=load_dataset("digits", "val"), callbacks=(Counter(),), quiet=True)
    after = evaluate(model, test)["accuracy"]
    assert after > 0.85 > before
    assert torch.all(model.fc1.weight[~mask] == 0)
    assert len(history.epochs) == 4 and "val_accuracy" in history.last
    assert steps[-1] == len(steps)


def test_fit_resumes_after_interruption(tmp_path) -> None:
    data = load_dataset("digits", "train")
    config = TrainConfig(epochs=3, lr=0.05, batch_size=64)
    ckpt = tmp_path / "run.pt"

    class Interrupt(Exception):
        pass

    class StopAfterEpoch:
        def on_epoch_end(self, model: torch.nn.Module, epoch: int, metrics: dict) -> None:
            if epoch == 1:
                raise Interrupt

    model = _tiny()
    with pytest.raises(Interrupt):
        fit(model, data, config, callbacks=(StopAfterEpoch(),), checkpoint=ckpt, quiet=True)
    assert read_checkpoint(ckpt)["train_state"]["epoch"] == 0
    resumed = _tiny()
    history = fit(resumed, data, config, checkpoint=ckpt, quiet=True)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]
    reloaded, _ = load_checkpoint(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), resumed.state_dict().values(), strict=True))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="dropout"):
        TrainConfig(dropout="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("dropout", [True, False])
def test_dropout_false_keeps_dropout_off_while_training(dropout: bool) -> None:
    class Probe(torch.nn.Module):
        """Records whether its dropout was active on each training step."""

        def __init__(self) -> None:
            super().__init__()
            self.linear, self.drop, self.seen = torch.nn.Linear(4, 2), torch.nn.Dropout(0.5), []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(self.drop.training)
            return self.drop(self.linear(x))

    model = Probe()
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    fit(model, data, TrainConfig(epochs=1, batch_size=4, dropout=dropout), quiet=True)
    assert model.seen == [dropout, dropout] and model.training


def test_recalibrate_batchnorm_changes_running_stats() -> None:
    model = build_model("vgg", in_channels=1, widths=[4, 4])
    bn = model.features[1]
    recalibrate_batchnorm_(model, load_dataset("digits", "val"), batches=2, batch_size=32)
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_checkpoint_replays_batchnorm_folding(tmp_path) -> None:
    from deepshrink.core import fold_batchnorm_
    from deepshrink.train import save_checkpoint

    model = build_model("vgg", in_channels=1, widths=[4, 4])
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    fold_batchnorm_(model, x)
    set_mask(model.features[0], model.features[0].weight.abs() > 0.1)
    save_checkpoint(tmp_path / "folded.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "folded.pt")
    loaded.eval()
    assert isinstance(loaded.features[1], torch.nn.Identity)
    assert torch.equal(loaded(x), model(x))


def test_param_group_lr_scale_is_kept_by_the_schedule() -> None:
    model = _tiny()
    frozen_before = model.fc2.weight.detach().clone()
    scaled = [p for n, p in model.named_parameters() if n.startswith("fc2")]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.startswith("fc2")]},
        {"params": scaled, "lr_scale": 0.0},  # a zero scale must survive every epoch's lr update
    ]
    config = TrainConfig(epochs=2, lr=0.2, batch_size=64, weight_decay=0.0, momentum=0.0)
    fc1_before = model.fc1.weight.detach().clone()
    fit(model, load_dataset("digits", "train", limit=128), config, params=groups, quiet=True)
    assert torch.equal(model.fc2.weight, frozen_before)
    assert not torch.equal(model.fc1.weight, fc1_before)
