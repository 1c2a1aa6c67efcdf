"""``ternarize_(model, TTQ(...) | TWN(...), select=...)`` and helpers to train and report ternary models."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.select import Selector, select_layers
from ..core.state import ValueTransform, get_value_transform, latent_weight, set_value_transform
from .ttq import TTQ, Ternary, initial_scales
from .twn import TWN, SymmetricTernary

__all__ = ["TernaryLayer", "masked_latent", "ternarize_", "ternary_layers", "ternary_param_groups"]


def _first_last(model: nn.Module) -> set[str]:
    """Names of the model's first and last weight layers (in registration order)."""
    names = select_layers(model).names()
    return {names[0], names[-1]} if names else set()


def _current_weight(module: nn.Module) -> torch.Tensor:
    """The weight a new value transform will start from: the masked latent, or the plain weight."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def ternarize_(model: nn.Module, config: TTQ | TWN, select: Selector = None, *, exclude: Selector = None) -> list[str]:
    """Make the selected Linear/Conv weights ternary in place; returns the names of the layers changed.

    With ``config.keep_first_last`` the model's first and last weight layers stay full precision (the
    paper's setting) even when ``select`` matches them. A layer's existing pruning mask is kept.
    """
    if not isinstance(config, TTQ | TWN):
        raise ConfigError(f"ternarize_ takes a TTQ or TWN config, got {type(config).__name__}")
    keep = _first_last(model) if config.keep_first_last else set()
    changed = []
    for name, module in select_layers(model, select, exclude=exclude).layers:
        if name in keep:
            continue
        if isinstance(config, TTQ):
            wp, wn, unit = initial_scales(_current_weight(module), config.t, config.init)
            transform = Ternary(t=config.t, wp=wp, wn=wn, unit=unit).to(latent_weight(module).device)
            set_value_transform(module, transform)
            with torch.no_grad():
                latent_weight(module).div_(unit)  # the paper's normalisation to [-1, 1], once
        else:
            set_value_transform(module, SymmetricTernary(config.factor).to(latent_weight(module).device))
        changed.append(name)
    if not changed:
        raise ConfigError("ternarize_ changed no layer: the selection is empty or holds only the first/last layer "
                          "(pass keep_first_last=False to ternarize those too)")
    return changed


def ternary_param_groups(model: nn.Module, scale_weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer groups for :func:`deepshrink.train.fit`: Wp/Wn without weight decay (as the reference code),
    everything else with the config's."""
    scales = [p for m in model.modules() if isinstance(m, Ternary) for p in (m.wp, m.wn)]
    ids = {id(p) for p in scales}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": others}]
    if scales:
        groups.append({"params": scales, "weight_decay": scale_weight_decay})
    return groups


@dataclass
class TernaryLayer:
    """One ternary layer's state: scales (their mean over channels when per channel), fraction of zeros, counts."""

    name: str
    method: str
    wp: float
    wn: float
    sparsity: float
    positives: int
    negatives: int
    params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def ternary_layers(model: nn.Module) -> list[TernaryLayer]:
    """Per-layer Wp, Wn (in the layer's units, as stored) and sparsity of every ternary weight in ``model``."""
    rows = []
    for name, module in select_layers(model).layers:
        transform = get_value_transform(module)
        if not isinstance(transform, Ternary | SymmetricTernary):
            continue
        exported = transform.export(masked_latent(module))
        code = torch.from_numpy(exported["code"])
        rows.append(TernaryLayer(name, "ttq" if isinstance(transform, Ternary) else "twn",
                                 float(np.mean(exported["wp"])), float(np.mean(exported["wn"])),
                                 float((code == 0).float().mean()),
                                 int((code > 0).sum()), int((code < 0).sum()), code.numel()))
    return rows


def masked_latent(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The input of ``module.<name>``'s value transform: the latent after the steps before it (the mask)."""
    value = latent_weight(module, name)
    for step in module.parametrizations[name]:  # type: ignore[index]
        if isinstance(step, ValueTransform):
            break
        value = step(value)
    return value
