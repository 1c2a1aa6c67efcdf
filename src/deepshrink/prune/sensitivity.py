"""Sensitivity analysis (Han et al. 2015, Fig. 5): prune one layer at a time over a sweep of sparsities.

For each layer alone the smallest-magnitude weights are zeroed (temporarily, in the latent tensor) and the
model is evaluated on the validation split. The result has Distiller's shape ``{layer: {sparsity: acc}}``
and is written as CSV, JSON and a matplotlib plot. Layers are independent, so ``workers > 1`` sweeps them
in parallel processes (forked: the model is shared copy-on-write, one torch thread per worker; CPU models
only, a model on a GPU is swept in-process).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.errors import ConfigError, FormatError
from ..core.select import Selector, select_layers
from ..core.state import latent_weight, plain_copy
from ..core.sweeps import plot_curves, write_sweep
from ..train import agreement, evaluate
from .base import current_mask, keep_top

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


@dataclass
class Sensitivity:
    """``curves[layer][sparsity] = accuracy`` with the unpruned ``baseline`` and each layer's weight count."""

    baseline: float
    curves: dict[str, dict[float, float]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "params": self.params,
                "curves": {n: {f"{s:g}": a for s, a in c.items()} for n, c in self.curves.items()}}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Sensitivity:
        try:
            curves = {n: {float(s): float(a) for s, a in c.items()} for n, c in obj["curves"].items()}
            return cls(float(obj["baseline"]), curves, {k: int(v) for k, v in obj["params"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"not a sensitivity result (needs baseline, curves, params): {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Sensitivity:
        """Read ``sensitivity.json`` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "sensitivity.json"
        if not path.is_file():
            raise FormatError(f"no sensitivity result at {path}: run `deepshrink sensitivity` first")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: not JSON ({exc})") from exc


_SWEEP: dict[str, Any] = {}


def _score(model: nn.Module, data: Dataset, batch_size: int) -> float:
    """Top-1 accuracy; on data without labels, top-1 agreement (or, for non-class outputs, the mean cosine) with
    the model as it was before the sweep."""
    accuracy = evaluate(model, data, batch_size)["accuracy"]
    if accuracy is not None:
        return float(accuracy)
    result = agreement(_SWEEP["reference"], model, data, batch_size)
    return float(result["top1_agreement"] if result["top1_agreement"] else result["cosine"])


def _sweep_layer(name: str) -> tuple[str, dict[float, float]]:
    model, val_data, sparsities, batch_size = (_SWEEP[k] for k in ("model", "val", "sparsities", "batch_size"))
    if _SWEEP.get("worker"):
        torch.set_num_threads(1)
    module = dict(model.named_modules())[name]
    weight = latent_weight(module)
    original = weight.detach().clone()
    alive = current_mask(module).cpu()
    curve: dict[float, float] = {}
    try:
        for s in sparsities:
            keep = round((1.0 - s) * weight.numel())
            mask = keep_top(original.abs().cpu(), alive, keep).to(weight.device)
            with torch.no_grad():
                weight.copy_(original * mask)
            curve[float(s)] = _score(model, val_data, batch_size)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    return name, curve


def sensitivity_sweep(
    model: nn.Module,
    val_data: Dataset,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    select: Selector = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    batch_size: int = 1000,
    quiet: bool = False,
) -> Sensitivity:
    """Accuracy on ``val_data`` with each selected layer alone magnitude-pruned to each sparsity (on data without
    labels: top-1 agreement with the unpruned model, or the mean cosine of outputs that are not class scores).

    With ``out_dir``, writes ``sensitivity.csv``, ``sensitivity.json`` and ``sensitivity.png``.
    """
    if not sparsities or any(not 0.0 <= s < 1.0 for s in sparsities):
        raise ConfigError(f"sparsities must be a non-empty list of values in [0, 1), got {list(sparsities)}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    layers = select_layers(model, select).layers
    if not layers:
        raise ConfigError(f"no prunable (Linear/Conv) layer matched select={select!r}")
    _SWEEP.update(model=model, val=val_data, sparsities=sorted(set(sparsities)), batch_size=batch_size, worker=False,
                  reference=plain_copy(model).eval())
    result = Sensitivity(_score(model, val_data, batch_size))
    result.params = {n: latent_weight(m).numel() for n, m in layers}
    names = [n for n, _ in layers]
    progress = None
    if not quiet:
        from tqdm import tqdm

        progress = tqdm(total=len(names), desc="sensitivity", leave=False)
    try:
        on_gpu = next(model.parameters()).device.type != "cpu"  # forked workers cannot share a GPU context
        if workers > 1 and len(names) > 1 and not on_gpu:
            _SWEEP["worker"] = True
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(workers, len(names)), mp_context=context) as pool:
                for name, curve in pool.map(_sweep_layer, names):
                    result.curves[name] = curve
                    if progress is not None:
                        progress.update()
        else:
            for name in names:
                result.curves[name] = _sweep_layer(name)[1]
                if progress is not None:
                    progress.update()
    finally:
        _SWEEP.clear()
        if progress is not None:
            progress.close()
    if out_dir is not None:
        write_sensitivity(result, out_dir)
    return result


def write_sensitivity(result: Sensitivity, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write CSV, JSON and the accuracy-vs-sparsity plot (one curve per layer) into ``out_dir``."""
    rows = ([name, result.params[name], f"{s:g}", f"{acc:.6f}", f"{result.baseline - acc:.6f}"]
            for name, curve in result.curves.items() for s, acc in curve.items())
    return write_sweep(out_dir, ["layer", "params", "sparsity", "accuracy", "drop"], rows, result.to_dict(),
                       plot_sensitivity(result))


def plot_sensitivity(result: Sensitivity) -> bytes:
    """PNG bytes of accuracy vs. sparsity, one curve per layer (Han et al.'s Fig. 5 style)."""
    return plot_curves(result.curves, result.baseline, xlabel="parameters pruned away (%)",
                       title="Sensitivity: each layer pruned alone", baseline_label="unpruned", x_scale=100)


@dataclass
class Thresholds:
    """Per-layer sparsities chosen from a sensitivity sweep (and, with a model, the matching quality)."""

    sparsity: dict[str, float]
    overall: float
    budget: float
    met: bool
    quality: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "quality": self.quality, "overall": self.overall,
                "budget": self.budget, "met": self.met}


def _step_drops(curve: dict[float, float], baseline: float) -> list[tuple[float, float]]:
    """``(sparsity, drop)`` along the sweep, the drop made monotone (worst drop at or below each sparsity)."""
    steps, worst = [], 0.0
    for s in sorted(curve):
        worst = max(worst, baseline - curve[s])
        steps.append((s, worst))
    return steps


def choose_thresholds(result: Sensitivity, max_drop: float, target_sparsity: float | None = None,
                      model: nn.Module | None = None) -> Thresholds:
    """Per-layer sparsities whose one-layer accuracy drop stays within ``max_drop``, reaching ``target_sparsity``.

    Greedy over the swept points: repeatedly move the layer whose next sparsity costs the least accuracy
    (a drop of at most ``max_drop``, absolute: 0.01 = 1 point) until the overall sparsity (weighted by
    weights per layer) reaches the target; the last move is interpolated to land on the target exactly.
    Without a target every layer goes as far as the budget allows; ``met=False`` when the target is out of
    reach. With ``model`` the equivalent Han quality parameter (threshold / std of live weights) is
    reported per layer too.
    """
    if max_drop < 0:
        raise ConfigError(f"max_drop must be >= 0, got {max_drop}")
    if target_sparsity is not None and not 0 <= target_sparsity < 1:
        raise ConfigError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
    total = max(sum(result.params.values()), 1)
    steps = {n: _step_drops(c, result.baseline) for n, c in result.curves.items()}
    position = dict.fromkeys(steps, -1)
    chosen = dict.fromkeys(steps, 0.0)
    used = 0.0

    def overall() -> float:
        return sum(chosen[n] * result.params[n] for n in chosen) / total

    while target_sparsity is None or overall() < target_sparsity:
        moves = [(steps[n][position[n] + 1][1], -result.params[n], n) for n in steps
                 if position[n] + 1 < len(steps[n]) and steps[n][position[n] + 1][1] <= max_drop + 1e-12]
        if not moves:
            break
        drop, _, name = min(moves)
        position[name] += 1
        previous, chosen[name] = chosen[name], max(chosen[name], steps[name][position[name]][0])
        used = max(used, drop)
        if target_sparsity is not None and overall() > target_sparsity:  # land on the target
            chosen[name] = previous + (target_sparsity - overall() + (chosen[name] - previous)
                                       * result.params[name] / total) * total / result.params[name]
    thresholds = Thresholds(dict(chosen), overall(), used, True)
    if model is not None:
        modules = dict(model.named_modules())
        for name, s in chosen.items():
            weight = latent_weight(modules[name]).detach().cpu()
            alive = weight[current_mask(modules[name]).cpu()].float()
            cut_fraction = (s * weight.numel() - (weight.numel() - alive.numel())) / max(alive.numel(), 1)
            if cut_fraction <= 0 or alive.numel() < 2:
                thresholds.quality[name] = 0.0
                continue
            cut = torch.quantile(alive.abs(), min(cut_fraction, 1.0)).item()
            thresholds.quality[name] = cut / float(alive.std())  # MagnitudePrune's std is over alive weights
    thresholds.met = target_sparsity is None or thresholds.overall >= target_sparsity - 1e-9
    return thresholds
