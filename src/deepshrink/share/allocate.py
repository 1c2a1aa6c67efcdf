"""Bits per layer for weight sharing: a sensitivity sweep (accuracy vs bits, one layer at a time) and a chooser
that spends a byte budget where the sweep says bits matter.

:func:`bits_sweep` shares each selected layer alone at each bit width (its surviving weights clustered, the values
written into the latent weight for the evaluation, then restored) and records validation accuracy and the bytes
the layer's codes, codebook and mask would take (kept weights x the entropy of the cluster labels, a float16
codebook and a code table, plus the mask as the file codes it): the result has the pruning sweep's shape, ``{layer: {bits: accuracy}}``, with
``{layer: {bits: bytes}}`` beside it. :func:`choose_bits` starts every layer at its widest swept width and narrows,
step by step, the layer whose next narrower width loses the least accuracy per byte saved, until the estimated
bytes fit the budget (or, with ``max_drop``, while each layer's own drop stays within it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError, FormatError
from ..core.select import Selector, select_layers
from ..core.state import get_mask, get_value_transform, latent_weight
from ..core.sweeps import plot_curves, write_sweep
from ..train import evaluate
from .kmeans import INITS, kmeans_1d
from .soft import _weight

__all__ = ["DEFAULT_SWEEP_BITS", "BitChoice", "BitSensitivity", "bits_sweep", "choose_bits", "code_bytes", "mask_bytes",
           "write_bits_sensitivity"]

DEFAULT_SWEEP_BITS = (1, 2, 3, 4, 5, 6)


def mask_bytes(mask: torch.Tensor | np.ndarray) -> float:
    """The bytes the kept positions of ``mask`` take in a file (ANS, per layer the smallest relative-index width
    or the context-coded mask, as ``encode: {entropy: ans, index_bits: auto, index_coding: auto}`` writes it):
    the same at every width, so it shifts the budget to whole-weight bytes without changing the choice."""
    from ..codec.encode import index_bytes

    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return float(index_bytes(array.astype(bool)))


def code_bytes(labels: np.ndarray, clusters: int) -> float:
    """Estimated bytes of one layer's shared form: ``len(labels)`` codes at the labels' empirical entropy, a float16
    codebook of ``clusters`` values and about one byte of code table per value."""
    if labels.size == 0:
        return 0.0
    counts = np.bincount(labels, minlength=clusters).astype(np.float64)
    p = counts[counts > 0] / labels.size
    entropy = float(-(p * np.log2(p)).sum())
    return labels.size * entropy / 8 + 3 * clusters


@dataclass
class BitSensitivity:
    """``curves[layer][bits] = accuracy`` (the pruning sweep's shape), ``bytes[layer][bits]``, the unshared
    ``baseline`` accuracy and each layer's ``params`` (weights that are shared, i.e. kept)."""

    baseline: float
    curves: dict[str, dict[int, float]] = field(default_factory=dict)
    bytes: dict[str, dict[int, float]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"technique": "share", "x": "bits", "baseline": self.baseline, "params": self.params,
                "curves": {n: {str(b): a for b, a in c.items()} for n, c in self.curves.items()},
                "bytes": {n: {str(b): round(v, 1) for b, v in c.items()} for n, c in self.bytes.items()}}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> BitSensitivity:
        try:
            if obj.get("technique") != "share":
                raise ValueError("not a weight-sharing sweep (technique is not 'share')")
            curves = {n: {int(b): float(a) for b, a in c.items()} for n, c in obj["curves"].items()}
            costs = {n: {int(b): float(v) for b, v in c.items()} for n, c in obj["bytes"].items()}
            return cls(float(obj["baseline"]), curves, costs, {k: int(v) for k, v in obj["params"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"not a bits sensitivity result (technique share, baseline, curves, bytes, params): "
                              f"{exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BitSensitivity:
        """Read ``sensitivity.json`` (or the folder holding it) written by ``deepshrink sensitivity --technique share``."""
        path = Path(path)
        if path.is_dir():
            path = path / "sensitivity.json"
        if not path.is_file():
            raise FormatError(f"no sensitivity result at {path}: run `deepshrink sensitivity --technique share` first")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: not JSON ({exc})") from exc


def bits_sweep(
    model: nn.Module,
    val_data: Any,
    bits: Sequence[int] = DEFAULT_SWEEP_BITS,
    select: Selector = None,
    *,
    exclude: Selector = None,
    init: str = "optimal",
    batch_size: int = 1000,
    out_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> BitSensitivity:
    """Validation accuracy with each selected layer alone shared at each of ``bits`` (k-means with ``init`` over its
    surviving weights, no fine-tuning), and the bytes each choice would take. Layers must carry no value transform
    yet (a mask is fine). With ``out_dir``, writes ``sensitivity.csv``, ``sensitivity.json`` and ``sensitivity.png``.
    """
    widths = sorted({int(b) for b in bits})
    if not widths or widths[0] < 1 or widths[-1] > 16:
        raise ConfigError(f"bits must be a non-empty list of widths in 1..16, got {list(bits)}")
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r} (allowed: {', '.join(INITS)})")
    layers = select_layers(model, select, exclude=exclude).layers
    if not layers:
        raise ConfigError(f"no Linear/Conv layer matched select={select!r}")

    def score() -> float:
        accuracy = evaluate(model, val_data, batch_size)["accuracy"]
        if accuracy is None:
            raise ConfigError("the bits sweep needs labelled validation data")
        return float(accuracy)

    result = BitSensitivity(score())
    progress = None
    if not quiet:
        from tqdm import tqdm

        progress = tqdm(total=len(layers) * len(widths), desc="bits sensitivity", leave=False)
    try:
        for name, module in layers:
            if get_value_transform(module) is not None:
                raise ConfigError(f"{name} already carries a value transform; sweep bits on the pruned float model")
            latent = latent_weight(module)
            original = latent.detach().clone()
            mask = get_mask(module)
            live = (mask if mask is not None else torch.ones_like(latent, dtype=torch.bool)).cpu()
            values = _weight(module).detach().cpu().double()[live].numpy()
            result.params[name] = int(values.size)
            index = mask_bytes(mask) if mask is not None else 0.0
            result.curves[name], result.bytes[name] = {}, {}
            try:
                for b in widths:
                    k = min(2**b, max(1, int(np.unique(values).size)))
                    clustered = kmeans_1d(values, k, init)
                    shared = torch.zeros(latent.shape, dtype=torch.float64)
                    shared[live] = torch.from_numpy(clustered.centroids.astype(np.float64)[clustered.labels])
                    with torch.no_grad():
                        latent.copy_(shared.to(latent.dtype).to(latent.device))
                    result.curves[name][b] = score()
                    result.bytes[name][b] = code_bytes(clustered.labels, k) + index
                    if progress is not None:
                        progress.update()
            finally:
                with torch.no_grad():
                    latent.copy_(original)
    finally:
        if progress is not None:
            progress.close()
    if out_dir is not None:
        write_bits_sensitivity(result, out_dir)
    return result


def write_bits_sensitivity(result: BitSensitivity, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write CSV, JSON and the accuracy-vs-bits plot (one curve per layer) into ``out_dir``."""
    rows = ([name, result.params[name], b, f"{acc:.6f}", f"{result.baseline - acc:.6f}", f"{result.bytes[name][b]:.1f}"]
            for name, curve in result.curves.items() for b, acc in curve.items())
    png = plot_curves(result.curves, result.baseline, xlabel="bits per shared weight (codebook of 2^bits values)",
                      title="Sensitivity: each layer shared alone", baseline_label="not shared")
    return write_sweep(out_dir, ["layer", "params", "bits", "accuracy", "drop", "bytes"], rows, result.to_dict(), png)


@dataclass
class BitChoice:
    """Bits per layer, the estimated bytes of their codes and codebooks, the summed one-layer drops, and whether
    the budget was met."""

    bits: dict[str, int]
    bytes: float
    drop: float
    met: bool
    budget_bytes: float | None = None
    max_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "bytes": round(self.bytes, 1), "drop": round(self.drop, 6), "met": self.met,
                "budget_bytes": self.budget_bytes, "max_drop": self.max_drop}


def _drops(curve: dict[int, float], baseline: float) -> dict[int, float]:
    """The drop at each width made monotone: never smaller than at any wider width (a noisy bump is not trusted)."""
    out, worst = {}, 0.0
    for b in sorted(curve, reverse=True):
        worst = max(worst, baseline - curve[b])
        out[b] = worst
    return out


def choose_bits(result: BitSensitivity, budget_bytes: float | None = None, max_drop: float | None = None) -> BitChoice:
    """Bits per layer: from the widest swept width, narrow the layer whose next step loses the least (monotone)
    accuracy per byte saved, until the estimated bytes are within ``budget_bytes``; with ``max_drop`` only steps
    keeping that layer's drop within it are taken (alone: narrow every layer as far as it allows)."""
    if budget_bytes is None and max_drop is None:
        raise ConfigError("choose bits under a byte budget (budget_bytes), a per-layer drop (max_drop), or both")
    if budget_bytes is not None and not budget_bytes > 0:
        raise ConfigError(f"budget_bytes must be > 0, got {budget_bytes}")
    drops = {n: _drops(c, result.baseline) for n, c in result.curves.items()}
    widths = {n: sorted(c) for n, c in result.curves.items()}
    chosen = {n: w[-1] for n, w in widths.items()}

    def total() -> float:
        return sum(result.bytes[n][b] for n, b in chosen.items())

    while budget_bytes is None or total() > budget_bytes:
        best: tuple[float, str] | None = None
        for name, b in chosen.items():
            position = widths[name].index(b)
            if position == 0:
                continue
            narrower = widths[name][position - 1]
            if max_drop is not None and drops[name][narrower] > max_drop + 1e-12:
                continue
            saved = result.bytes[name][b] - result.bytes[name][narrower]
            cost = (drops[name][narrower] - drops[name][b]) / max(saved, 1e-9)
            if best is None or cost < best[0]:
                best = (cost, name)
        if best is None:
            break
        name = best[1]
        chosen[name] = widths[name][widths[name].index(chosen[name]) - 1]
    size = total()
    return BitChoice(dict(chosen), size, sum(drops[n][b] for n, b in chosen.items()),
                     budget_bytes is None or size <= budget_bytes, budget_bytes, max_drop)
