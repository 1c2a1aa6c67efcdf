"""The pruning engine shared by every criterion: scores -> masks (per layer or global) -> ``core.set_mask``.

A criterion (magnitude, OBD saliency, random) only says how important each weight is; this module turns
scores into masks that meet a target sparsity or a threshold, and records what happened in a report.
Masks only ever narrow (``core.set_mask``), so a weight pruned in an earlier round is never revived.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.select import Selector, select_layers
from ..core.state import get_mask, latent_weight, set_mask

SCOPES = ("layer", "global")
PerLayer = float | Mapping[str, float]


class PruneMethod(Protocol):
    """What :func:`prune_` needs from a criterion config."""

    needs_data: ClassVar[bool]

    @property
    def scope(self) -> str: ...

    @property
    def sparsity(self) -> PerLayer | None: ...

    def scores(self, model: nn.Module, layers: list[tuple[str, nn.Module]], data: Any) -> dict[str, Tensor]:
        """Importance of every weight of every layer (higher = keep); same shape as the weight."""
        ...


def check_fraction(name: str, value: PerLayer | None, upper: float = 1.0, closed: bool = False) -> None:
    """Validate a float or ``{fqn: float}`` fraction in [0, upper) (or [0, upper] when ``closed``)."""
    if value is None:
        return
    items = value.items() if isinstance(value, Mapping) else [("", value)]
    for key, v in items:
        ok = 0.0 <= float(v) <= upper if closed else 0.0 <= float(v) < upper
        if not ok:
            where = f" for layer {key!r}" if key else ""
            bound = f"[0, {upper}]" if closed else f"[0, {upper})"
            raise ConfigError(f"{name}{where} must be in {bound}, got {v}")


def check_scope(scope: str, value: PerLayer | None, name: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "global" and isinstance(value, Mapping):
        raise ConfigError(f"scope='global' takes one {name} for all layers, not a per-layer dict")


def frozen_copy(value: PerLayer | None) -> PerLayer | None:
    """A private dict copy of a per-layer mapping (so a frozen config cannot change under the caller)."""
    return dict(value) if isinstance(value, Mapping) else value


def per_layer(value: PerLayer, names: Iterable[str], what: str) -> dict[str, float]:
    """Expand a float or ``{fqn or glob: v}`` to ``{fqn: v}`` over ``names``; unknown keys are an error."""
    names = list(names)
    if not isinstance(value, Mapping):
        return dict.fromkeys(names, float(value))
    out: dict[str, float] = {}
    for key, v in value.items():
        hits = [n for n in names if n == key or fnmatch.fnmatchcase(n, key)]
        if not hits:
            raise ConfigError(f"{what} names layer {key!r}, which is not among the selected layers {names}")
        for hit in hits:
            out.setdefault(hit, float(v))
    return out


@dataclass
class LayerReport:
    """One layer's pruning outcome: weights, non-zeros before/after, the threshold used (score units)."""

    name: str
    params: int
    kept_before: int
    kept_after: int
    threshold: float | None = None

    @property
    def kept_fraction(self) -> float:
        return self.kept_after / max(self.params, 1)


@dataclass
class PruneReport:
    """Per-layer table of one pruning step (like Han et al.'s Tables 2/3: weights and % kept)."""

    method: str
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def kept(self) -> int:
        return sum(r.kept_after for r in self.layers)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / max(self.params, 1)

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(r), "kept_fraction": round(r.kept_fraction, 6)} for r in self.layers]
        return {"method": self.method, "layers": rows, "params": self.params, "kept": self.kept,
                "sparsity": round(self.sparsity, 6), "skipped": [list(s) for s in self.skipped]}

    def __str__(self) -> str:
        lines = [f"{'layer':<24} {'weights':>10} {'kept':>10} {'% kept':>7}", "-" * 54]
        for r in self.layers:
            lines.append(f"{r.name:<24} {r.params:>10,} {r.kept_after:>10,} {100 * r.kept_fraction:>6.1f}%")
        lines.append("-" * 54)
        ratio = self.params / max(self.kept, 1)
        lines.append(f"{'total':<24} {self.params:>10,} {self.kept:>10,} {100 * (1 - self.sparsity):>6.1f}%"
                     f"  ({ratio:.1f}x fewer)")
        return "\n".join(lines)


def current_mask(module: nn.Module) -> Tensor:
    """The layer's keep-mask (all True when it carries none)."""
    mask = get_mask(module)
    if mask is None:
        return torch.ones_like(latent_weight(module), dtype=torch.bool)
    return mask


def keep_top(scores: Tensor, alive: Tensor, keep: int) -> Tensor:
    """Mask keeping the ``keep`` highest-scoring positions among ``alive`` ones (ties broken by position)."""
    keep = max(0, min(keep, int(alive.sum())))
    flat = torch.where(alive, scores.float(), torch.tensor(float("-inf"))).flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def masks_for_sparsity(
    scores: dict[str, Tensor], alive: dict[str, Tensor], sparsity: PerLayer, scope: str
) -> tuple[dict[str, Tensor], dict[str, float | None]]:
    """Masks meeting ``sparsity`` (fraction of zeros, counting earlier pruning) per layer or over all layers."""
    thresholds: dict[str, float | None] = {}
    if scope == "global":
        total = sum(s.numel() for s in scores.values())
        keep = round((1.0 - float(sparsity)) * total)  # type: ignore[arg-type]
        names = list(scores)
        flat_scores = torch.cat([torch.where(alive[n], scores[n].float(), torch.tensor(float("-inf"))).flatten()
                                 for n in names])
        keep = max(0, min(keep, int(torch.isfinite(flat_scores).sum())))
        chosen = torch.zeros(flat_scores.numel(), dtype=torch.bool)
        if keep > 0:
            chosen[torch.topk(flat_scores, keep, sorted=False).indices] = True
            cut = float(flat_scores[chosen].min())
        else:
            cut = None
        masks, offset = {}, 0
        for n in names:
            size = scores[n].numel()
            masks[n] = chosen[offset:offset + size].reshape(scores[n].shape)
            thresholds[n] = cut
            offset += size
        return masks, thresholds
    targets = per_layer(sparsity, scores, "sparsity")
    masks = {}
    for n, s in targets.items():
        keep = round((1.0 - s) * scores[n].numel())
        masks[n] = keep_top(scores[n], alive[n], keep)
        kept_scores = scores[n][masks[n]]
        thresholds[n] = float(kept_scores.min()) if kept_scores.numel() else None
    return masks, thresholds


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, Tensor], thresholds: dict[str, float | None],
                method: str) -> PruneReport:
    """Narrow each layer's mask through ``core.set_mask`` and report weights kept before/after."""
    report = PruneReport(method)
    for name, module in layers.items():
        if name not in masks:
            continue
        before = int(current_mask(module).sum())
        set_mask(module, masks[name])
        after = int(current_mask(module).sum())
        report.layers.append(LayerReport(name, latent_weight(module).numel(), before, after, thresholds.get(name)))
    return report


def prune_(model: nn.Module, config: PruneMethod, select: Selector = None, *, data: Any = None,
           exclude: Selector = None) -> PruneReport:
    """Prune ``model`` in place with ``config`` (MagnitudePrune, OBDPrune, OBSPrune, RandomPrune) on the selected
    layers.

    ``data`` (a Dataset, DataLoader or iterable of batches) is needed by criteria that look at the loss (OBD) or
    at the layers' inputs (OBS, which also updates the surviving weights). Returns a per-layer report. Pruned
    weights are zeroed in the latent tensor too.
    """
    selection = select_layers(model, select, exclude=exclude)
    if not selection.layers:
        raise ConfigError(f"no prunable (Linear/Conv) layer matched select={select!r}")
    if config.needs_data and data is None:
        raise ConfigError(f"{type(config).__name__} needs data (training or calibration samples) to estimate the "
                          "Hessian: pass data= (calib= with compress_)")
    layers = dict(selection.layers)
    if isinstance(config.sparsity, Mapping) and config.scope == "layer":
        named = per_layer(config.sparsity, layers, "sparsity")
        layers = {n: m for n, m in layers.items() if n in named}
    with torch.no_grad():
        alive = {n: current_mask(m).cpu() for n, m in layers.items()}
    solve = getattr(config, "solve", None)  # criteria that also update the surviving weights (OBS)
    scores = {} if solve is not None else {
        n: s.detach().cpu() for n, s in config.scores(model, list(layers.items()), data).items()}
    masks_and_thresholds = getattr(config, "masks", None)
    if solve is not None:
        masks, thresholds = solve(model, layers, alive, data)
    elif masks_and_thresholds is not None:
        masks, thresholds = masks_and_thresholds(layers, scores, alive)
    else:
        assert config.sparsity is not None
        masks, thresholds = masks_for_sparsity(scores, alive, config.sparsity, config.scope)
    report = apply_masks(layers, masks, thresholds, type(config).__name__)
    report.skipped = list(selection.skipped)
    return report


def model_sparsity(model: nn.Module, select: Selector = None) -> float:
    """Fraction of zero weights over the selected layers (effective weights, all causes of zeros)."""
    total, zeros = 0, 0
    for _, module in select_layers(model, select):
        weight = module.weight.detach()
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / max(total, 1)


def clear_pruned_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Zero momentum / Adam moments at pruned positions, for an optimizer that outlives a pruning step.

    The mask already keeps the effective weight at zero; this also keeps the latent tensor at zero, so
    removing the mask later (or a value transform reading the latent) never sees a revived weight.
    """
    masks: dict[int, Tensor] = {}
    for _, module in select_layers(model):
        mask = get_mask(module)
        if mask is not None:
            masks[id(latent_weight(module))] = mask
    for group in optimizer.param_groups:
        for p in group["params"]:
            mask = masks.get(id(p))
            if mask is None:
                continue
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.shape == mask.shape:
                    value.mul_(mask.to(value.dtype))
