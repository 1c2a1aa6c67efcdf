"""``deepshrink.summary(model)``: per-layer parameters, non-zeros, bits per weight, estimated bytes, MACs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .select import SUPPORTED_LAYERS, layer_kind, layer_type_name, select_layers
from .state import get_mask, get_value_transform

INDEX_BITS = {"conv": 8, "fc": 5}
"""Relative-index width per layer family (Deep Compression's defaults) used for sparse size estimates."""


@dataclass
class LayerRow:
    name: str
    type: str
    shape: list[int]
    params: int
    nonzeros: int
    bits: float
    bytes: int
    macs: int | None = None


@dataclass
class Summary:
    """Per-layer rows plus a total; ``str()`` is a table, ``to_json()`` the CLI's ``--json`` object."""

    layers: list[LayerRow] = field(default_factory=list)
    other_params: int = 0

    @property
    def total(self) -> dict[str, Any]:
        params = sum(r.params for r in self.layers) + self.other_params
        nonzeros = sum(r.nonzeros for r in self.layers) + self.other_params
        est = sum(r.bytes for r in self.layers) + 4 * self.other_params
        total: dict[str, Any] = {
            "params": params,
            "nonzeros": nonzeros,
            "bytes": est,
            "fp32_bytes": 4 * params,
            "ratio": round(4 * params / est, 2) if est else None,
        }
        if all(r.macs is not None for r in self.layers) and self.layers:
            total["macs"] = sum(r.macs or 0 for r in self.layers)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "other_params": self.other_params, "total": self.total}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        with_macs = any(r.macs is not None for r in self.layers)
        head = f"{'layer':<28} {'type':<8} {'shape':<18} {'params':>9} {'nonzero':>9} {'kept':>6} {'bits':>5} {'bytes':>9}"
        lines = [head + (f" {'MACs':>11}" if with_macs else ""), "-" * (len(head) + (12 if with_macs else 0))]
        for r in self.layers:
            kept = 100.0 * r.nonzeros / max(r.params, 1)
            line = (
                f"{r.name:<28} {r.type:<8} {'x'.join(map(str, r.shape)):<18} {r.params:>9,} {r.nonzeros:>9,} "
                f"{kept:>5.1f}% {r.bits:>5.1f} {r.bytes:>9,}"
            )
            lines.append(line + (f" {r.macs or 0:>11,}" if with_macs else ""))
        t = self.total
        lines.append("-" * len(lines[1]))
        lines.append(
            f"{'total (+' + format(self.other_params, ',') + ' other)':<28} {'':<8} {'':<18} {t['params']:>9,} "
            f"{t['nonzeros']:>9,} {100.0 * t['nonzeros'] / max(t['params'], 1):>5.1f}% {'':>5} {t['bytes']:>9,}"
            + (f" {t['macs']:>11,}" if "macs" in t else "")
        )
        lines.append(f"estimated {t['bytes']:,} bytes vs {t['fp32_bytes']:,} fp32 ({t['ratio']}x)")
        return "\n".join(lines)


def _macs(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """Multiply-accumulates per supported layer for one input of ``input_size`` (no batch dim)."""
    counts: dict[str, int] = {}
    hooks = []
    for name, module in select_layers(model).layers:

        def hook(mod: nn.Module, inputs: Any, output: torch.Tensor, name: str = name) -> None:
            weight: torch.Tensor = mod.weight  # type: ignore[assignment]
            if isinstance(mod, nn.Embedding):
                counts[name] = 0  # a lookup: no multiply-accumulates
            elif isinstance(mod, nn.Linear):
                counts[name] = int(weight.numel() * (output.numel() // output.shape[-1]))
            else:  # conv: every output element costs (in/groups * kernel) MACs
                per_output = weight[0].numel()
                counts[name] = int(per_output * output.numel())

        hooks.append(module.register_forward_hook(hook))
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=device))
        model.train(was_training)
    finally:
        for handle in hooks:
            handle.remove()
    return counts


def summary(model: nn.Module, input_size: tuple[int, ...] | None = None) -> Summary:
    """Per-layer table of ``model``; with ``input_size`` (e.g. ``(1, 28, 28)``) MACs per layer too."""
    result = Summary()
    counted: set[int] = set()
    for name, module in select_layers(model, supported=SUPPORTED_LAYERS).layers:
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        mask = get_mask(module)
        transform = get_value_transform(module)
        params = weight.numel()
        nonzeros = int((weight.detach() != 0).sum())
        bits = float(transform.bits) if transform is not None else float(torch.finfo(weight.dtype).bits)
        est_bits = nonzeros * (bits + INDEX_BITS[layer_kind(module)]) if mask is not None else params * bits
        codebook = getattr(transform, "centroids", None)
        est = int(-(-est_bits // 8)) + (4 * codebook.numel() if codebook is not None else 0)
        result.layers.append(
            LayerRow(name, layer_type_name(module), list(weight.shape), params, nonzeros, round(bits, 3), est)
        )
        for p in module.parameters():
            counted.add(id(p))
    result.other_params = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    # parameters of parametrized weights are the latent originals; biases of selected layers count as other
    for _, module in select_layers(model).layers:
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            result.other_params += bias.numel()
    if input_size is not None:
        macs = _macs(model, input_size)
        for row in result.layers:
            row.macs = macs.get(row.name)
    return result
