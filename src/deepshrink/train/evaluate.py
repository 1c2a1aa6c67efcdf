"""Top-1 evaluation, and agreement with a reference model (for data without labels)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..core.graph import run_model, split_batch
from ..data import make_loader


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def to_device(inputs: Any, device: torch.device) -> Any:
    """Tensors (also inside a feature dict) moved to ``device``; other inputs (lists of strings) as they are."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return inputs


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512, device: str | torch.device | None = None) -> dict[str, Any]:
    """``{"accuracy", "loss", "samples"}`` of ``model`` on ``dataset`` (eval mode restored afterwards); accuracy
    and loss are None when the data has no labels (use :func:`agreement` with a reference model then)."""
    device = _device(model, device)
    was_training = model.training
    model.eval()
    correct, total, loss_sum, labelled = 0, 0, 0.0, True
    for batch in make_loader(dataset, batch_size):
        inputs, labels = split_batch(batch)
        logits = run_model(model, to_device(inputs, device))
        if labels is None:
            labelled = False
            total += len(inputs) if not isinstance(inputs, dict) else len(next(iter(inputs.values())))
            continue
        labels = labels.to(device)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    model.train(was_training)
    if not labelled:
        return {"accuracy": None, "loss": None, "samples": total}
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1), "samples": total}


@torch.no_grad()
def agreement(reference: nn.Module, model: nn.Module, dataset: Dataset, batch_size: int = 256) -> dict[str, Any]:
    """How closely ``model`` reproduces ``reference`` on ``dataset`` (labels not needed): the share of equal
    top-1 classes (2-D outputs), and the mean cosine of the outputs (logits or embeddings)."""
    device = _device(model, None)
    modes = reference.training, model.training
    reference.eval()
    model.eval()
    same, cosines, total = 0, [], 0
    for batch in make_loader(dataset, batch_size):
        inputs = to_device(split_batch(batch)[0], device)
        ref, out = run_model(reference, inputs).float(), run_model(model, inputs).float()
        flat_ref, flat_out = ref.reshape(ref.shape[0], -1), out.reshape(out.shape[0], -1)
        cosines.append(F.cosine_similarity(flat_ref, flat_out, dim=1))
        if ref.dim() == 2:
            same += int((ref.argmax(1) == out.argmax(1)).sum())
        total += ref.shape[0]
    reference.train(modes[0])
    model.train(modes[1])
    cos = torch.cat(cosines) if cosines else torch.zeros(0)
    return {"top1_agreement": same / max(total, 1), "cosine": float(cos.mean()) if total else None,
            "cosine_p05": float(cos.quantile(0.05)) if total else None, "samples": total}
