"""Launched by tests/train/test_ddp.py under ``torchrun --nproc_per_node=2``: trains a tiny MLP on digits."""

from __future__ import annotations

import json
import sys

import torch

from deepshrink.core import set_mask
from deepshrink.data import load_dataset
from deepshrink.models import build_model
from deepshrink.train import TrainConfig, evaluate, fit, init_distributed, shutdown


def main(out_prefix: str) -> None:
    rank, world = init_distributed()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("lenet300", in_features=64, num_classes=10, hidden=[32, 16])
    set_mask(model.fc1, model.fc1.weight.abs() > 0.05)  # compression state must survive DDP too
    data = load_dataset("digits", "train")
    before = evaluate(model, data)["loss"]
    history = fit(model, data, TrainConfig(epochs=3, lr=0.1, batch_size=32, seed=1), quiet=True)
    flat = torch.cat([t.detach().flatten() for t in model.state_dict().values() if t.is_floating_point()])
    torch.save(flat, f"{out_prefix}.rank{rank}.pt")
    with open(f"{out_prefix}.rank{rank}.json", "w") as handle:
        json.dump({"world": world, "loss_before": before, "losses": [e["train_loss"] for e in history.epochs],
                   "pruned_zero": bool(torch.all(model.fc1.weight[~model.fc1.parametrizations.weight[0].mask] == 0))},
                  handle)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
