"""Top-1 evaluation and BatchNorm statistics re-estimation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import make_loader


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512, device: str | torch.device | None = None) -> dict[str, Any]:
    """``{"accuracy", "loss", "samples"}`` of ``model`` on ``dataset`` (eval mode restored afterwards)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for inputs, labels in make_loader(dataset, batch_size):
        inputs, labels = inputs.to(device), labels.to(device)
        logits = model(inputs)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    model.train(was_training)
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1), "samples": total}


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, dataset: Dataset, batches: int = 50, batch_size: int = 128) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``dataset`` (a cheap recovery after pruning or low-rank)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    for i, (inputs, _) in enumerate(make_loader(dataset, batch_size, shuffle=True)):
        if i >= batches:
            break
        model(inputs.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model
