"""Writing a one-layer-at-a-time sensitivity sweep (pruning's sparsities, sharing's bit widths): the same three
files for every technique, so reports and choosers read any of them.

``sensitivity.csv`` (one row per layer and swept point), ``sensitivity.json`` (the sweep's own ``to_dict``) and
``sensitivity.png`` (accuracy vs the swept setting, one curve per layer, Han et al.'s Fig. 5 style).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_text

__all__ = ["plot_curves", "write_sweep"]


def plot_curves(curves: Mapping[str, Mapping[Any, float]], baseline: float, *, xlabel: str, title: str,
                baseline_label: str, x_scale: float = 1.0) -> bytes:
    """PNG bytes of accuracy (%) vs the swept setting (times ``x_scale``), one curve per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, curve in curves.items():
        xs = sorted(curve)
        ax.plot([x_scale * x for x in xs], [100 * curve[x] for x in xs], marker="o", markersize=3, label=name)
    ax.axhline(100 * baseline, color="grey", linestyle=":", linewidth=1, label=baseline_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_sweep(out_dir: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]],
                summary: dict[str, Any], png: bytes) -> dict[str, Path]:
    """Write ``sensitivity.csv`` (``header`` + ``rows``), ``sensitivity.json`` and ``sensitivity.png`` atomically
    into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    paths = {"csv": out / "sensitivity.csv", "json": out / "sensitivity.json", "png": out / "sensitivity.png"}
    atomic_write_text(paths["csv"], text.getvalue())
    atomic_write_text(paths["json"], json.dumps(summary, indent=1))
    atomic_write_bytes(paths["png"], png)
    return paths
