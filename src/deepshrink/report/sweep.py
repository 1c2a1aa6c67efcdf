"""A sensitivity sweep's folder read as data (``deepshrink sensitivity`` writes it), checked against the file.

The report draws Han et al.'s Figure 5 from ``sensitivity.json`` (or ``sensitivity.csv``) and the chosen
per-layer sparsities from ``thresholds.json`` when the sweep wrote one. The files are parsed here, not through
the pruning package: the report reads results, it does not run techniques.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import FormatError
from .data import FileFacts


@dataclass
class Sweep:
    """``curves[layer][sparsity] = accuracy``, the unpruned ``baseline``, weights per layer, chosen sparsities."""

    path: Path
    baseline: float
    curves: dict[str, dict[float, float]]
    params: dict[str, int]
    chosen: dict[str, float] | None = None

    def accuracy_at(self, layer: str, sparsity: float) -> float:
        """The layer's one-layer accuracy at ``sparsity``, interpolated between the swept points."""
        xs = sorted(self.curves[layer])
        return float(np.interp(sparsity, xs, [self.curves[layer][x] for x in xs]))


def _from_json(obj: Any, where: Path) -> tuple[float, dict[str, dict[float, float]], dict[str, int]]:
    try:
        curves = {str(n): {float(s): float(a) for s, a in c.items()} for n, c in obj["curves"].items()}
        return float(obj["baseline"]), curves, {str(k): int(v) for k, v in obj["params"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{where}: not a sensitivity result (needs baseline, curves, params): {exc}") from exc


def _from_csv(path: Path) -> tuple[float, dict[str, dict[float, float]], dict[str, int]]:
    curves: dict[str, dict[float, float]] = {}
    params: dict[str, int] = {}
    baseline = None
    try:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                layer, sparsity, acc = row["layer"], float(row["sparsity"]), float(row["accuracy"])
                curves.setdefault(layer, {})[sparsity] = acc
                params[layer] = int(row["params"])
                baseline = acc + float(row["drop"])
    except (KeyError, TypeError, ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not a sensitivity CSV (layer, params, sparsity, accuracy, drop): {exc}") from exc
    if baseline is None:
        raise FormatError(f"{path}: an empty sensitivity CSV")
    return baseline, curves, params


def read_sweep(folder: str | os.PathLike[str]) -> Sweep:
    """The sweep in ``folder`` (``sensitivity.json``, else ``sensitivity.csv``; ``thresholds.json`` if there)."""
    root = Path(folder)
    if not root.is_dir():
        raise FormatError(f"--sensitivity {root}: not a folder (give the folder `deepshrink sensitivity --out` wrote)")
    json_path, csv_path = root / "sensitivity.json", root / "sensitivity.csv"
    if json_path.is_file():
        try:
            baseline, curves, params = _from_json(json.loads(json_path.read_text()), json_path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FormatError(f"{json_path}: not JSON ({exc})") from exc
    elif csv_path.is_file():
        baseline, curves, params = _from_csv(csv_path)
    else:
        raise FormatError(f"--sensitivity {root}: no sensitivity.json or sensitivity.csv in it")
    if not curves or any(not c for c in curves.values()) or set(params) != set(curves):
        raise FormatError(f"{root}: the sweep has no curves, or curves and params name different layers")
    sweep = Sweep(root, baseline, curves, params)
    chosen_path = root / "thresholds.json"
    if chosen_path.is_file():
        try:
            chosen = json.loads(chosen_path.read_text())["sparsity"]
            sweep.chosen = {str(k): float(v) for k, v in chosen.items() if str(k) in curves}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"{chosen_path}: not a thresholds file (needs a sparsity per layer): {exc}") from exc
    return sweep


def check_sweep(sweep: Sweep, facts: FileFacts) -> dict[str, str]:
    """``{sweep layer: file weight}`` (``conv1`` -> ``conv1.weight``); FormatError when the sweep is of another model.

    Every swept layer must be a weight of the file with the same number of weights; a file with structural edits
    (low-rank) may lack some, but at least one must match.
    """
    weights = {x.name: x for x in facts.layers}
    matched: dict[str, str] = {}
    for layer, count in sweep.params.items():
        found = weights.get(f"{layer}.weight")
        if found is None:
            if not facts.header.get("edits"):
                raise FormatError(f"--sensitivity {sweep.path} is of another model: it sweeps layer {layer!r}, "
                                  f"which {facts.name} does not have")
            continue
        if found.weight.numel != count:
            raise FormatError(f"--sensitivity {sweep.path} is of another model: layer {layer!r} has {count:,} "
                              f"weights there, {found.weight.numel:,} in {facts.name}")
        matched[layer] = found.name
    if not matched:
        raise FormatError(f"--sensitivity {sweep.path} is of another model: none of its layers is in {facts.name}")
    return matched
