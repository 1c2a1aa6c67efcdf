"""The report's figures: matplotlib drawn to inline SVG (no files, no network, text kept as text).

Each function returns one ``<svg>`` element as a string, ready to sit in the HTML: the XML prolog and the
namespace declarations are dropped (HTML parses inline SVG without them) and every ``id`` is prefixed with the
figure's name so several figures can share a page.
"""

from __future__ import annotations

import io
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .data import PARTS, STAGES, FileFacts, LayerFacts
from .energy import Energy, format_energy, format_size
from .latency import CONTENDERS, Latency
from .sweep import Sweep

PART_COLORS = {"weights": "#4c72b0", "indices": "#dd8452", "codebooks": "#55a868", "other": "#8c8c8c"}
CONTENDER_COLORS = {"runtime": "#4c72b0", "dense_fp32": "#8c8c8c", "dynamic_int8": "#dd8452"}
STYLE: dict[str, Any] = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "svg.fonttype": "none", "svg.hashsalt": "deepshrink-report", "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}


def style(**extra: Any) -> Any:
    """The report's matplotlib settings (``extra`` keys given with ``_`` for ``.``: ``font_size=11``)."""
    rc: Any = {**STYLE, **{k.replace("_", "."): v for k, v in extra.items()}}
    return plt.rc_context(rc)


def svg(fig: Figure, name: str) -> str:
    """``fig`` as an inline ``<svg>`` element (ids prefixed with ``name``); the figure is closed."""
    buffer = io.StringIO()
    with style():
        fig.savefig(buffer, format="svg", bbox_inches="tight",
                    metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    head, rest = text.split(">", 1)
    head = re.sub(r'\s(xmlns(:\w+)?|width|height)="[^"]*"', "", head)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", name)
    rest = re.sub(r'\bid="', f'id="{prefix}-', rest)
    rest = re.sub(r'(url\(#|href="#)', rf"\g<1>{prefix}-", rest)
    return f'{head} role="img" aria-label="{prefix}">{rest.strip()}'


def waterfall(facts: FileFacts) -> str:
    """Bytes after each step (log scale): fp32, pruned, + shared, + entropy, file; beside it, each step's bytes
    split by part (weights, indices, codebooks, other tensors + header) as shares."""
    stages = facts.stages()
    labels = list(STAGES)[::-1]
    totals = np.array([sum(stages[s].values()) for s in labels], dtype=float)
    with style():
        fig, (ax, share) = plt.subplots(1, 2, figsize=(6.8, 3.0), sharey=True, width_ratios=(3, 2))
        ax.barh(labels, totals, color="#4c72b0", height=0.6)
        ax.set_xscale("log")
        ax.set_xlim(totals.min() / 2, totals.max() * 12)
        for y, total in enumerate(totals):
            ax.text(total * 1.1, y, f"{int(total):,} B ({totals.max() / total:.1f}x)", va="center", fontsize=9)
        ax.set_xlabel("bytes (log scale)")
        ax.set_title("Size after each step")
        ax.grid(axis="y", visible=False)
        left = np.zeros(len(labels))
        for part in PARTS:
            widths = np.array([100 * stages[s][part] / max(sum(stages[s].values()), 1) for s in labels])
            share.barh(labels, widths, left=left, color=PART_COLORS[part], label=part, height=0.6)
            left += widths
        share.set_xlim(0, 100)
        share.set_xlabel("share of the bytes (%)")
        share.set_title("What they are")
        share.legend(loc="upper center", ncols=2, frameon=False, bbox_to_anchor=(0.5, -0.25))
        share.grid(axis="y", visible=False)
    return svg(fig, "waterfall")


def layer_bytes(facts: FileFacts) -> str:
    """The file's bytes per layer, stacked by part (the header and other tensors as one more bar)."""
    names = [x.name for x in facts.layers] + ["other tensors + header"]
    parts = [x.waterfall()["+ entropy"] for x in facts.layers]
    parts.append({"other": int(facts.total["other_bytes"]) + int(facts.total["header_bytes"])})
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.32 * len(names)))
        left = np.zeros(len(names))
        for part in PARTS:
            widths = np.array([p.get(part, 0) for p in parts], dtype=float)
            ax.barh(names, widths, left=left, color=PART_COLORS[part], label=part, height=0.65)
            left += widths
        for y, total in enumerate(left):
            ax.text(total, y, f" {int(total):,}", va="center", fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, left.max() * 1.25)
        ax.set_xlabel("bytes in the file")
        ax.set_title("Where the file's bytes go")
        ax.legend(loc="lower right", frameon=False)
        ax.grid(axis="y", visible=False)
    return svg(fig, "layer-bytes")


def distribution(layer: LayerFacts) -> str:
    """The weight distribution before and after: baseline, kept weights, and the values the file can hold."""
    values = layer.values
    kept = layer.baseline_kept()
    levels = layer.levels()
    with style(font_size=12, legend_fontsize=10, axes_titlesize=12, axes_labelsize=12):
        fig, ax = plt.subplots(figsize=(4.2, 2.9))
        pool = [v for v in (layer.baseline, kept, values) if v is not None and v.size]
        lo = min(float(np.min(v)) for v in pool) if pool else -1.0
        hi = max(float(np.max(v)) for v in pool) if pool else 1.0
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 81).tolist()
        if layer.baseline is not None:
            ax.hist(layer.baseline.reshape(-1), bins=bins, histtype="stepfilled", color="#c8c8c8", label="baseline")
        if kept is not None:
            ax.hist(kept, bins=bins, histtype="step", color="#4c72b0", linewidth=1.2, label="kept (baseline)")
        if levels is not None and levels.size <= 64:
            for i, level in enumerate(levels):
                ax.axvline(float(level), color="#c44e52", linewidth=0.8, alpha=0.8,
                           label="stored values" if i == 0 else None)
        else:
            ax.hist(values, bins=bins, histtype="step", color="#c44e52", linewidth=1.0, label="stored")
        ax.set_yscale("log")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count (log)")
        ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, handlelength=1.2,
                  columnspacing=0.8)
    return svg(fig, f"dist-{layer.name}")


def sensitivity(sweep: Sweep, matched: dict[str, str], facts: FileFacts) -> str:
    """Han et al.'s Figure 5: accuracy vs the share pruned, one layer at a time; the file's sparsity marked."""
    by_name = {x.name: x for x in facts.layers}
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for i, (layer, curve) in enumerate(sweep.curves.items()):
            color = f"C{i % 10}"
            xs = sorted(curve)
            ax.plot([100 * x for x in xs], [100 * curve[x] for x in xs], marker="o", markersize=3, color=color,
                    label=layer)
            if layer in matched:
                weight = by_name[matched[layer]].weight
                pruned = 1 - weight.kept / max(weight.numel, 1)
                ax.plot([100 * pruned], [100 * sweep.accuracy_at(layer, pruned)], marker="*", markersize=12,
                        color=color, markeredgecolor="black", linestyle="none")
            if sweep.chosen and layer in sweep.chosen:
                s = sweep.chosen[layer]
                ax.plot([100 * s], [100 * sweep.accuracy_at(layer, s)], marker="x", markersize=9, color="black",
                        linestyle="none")
        ax.axhline(100 * sweep.baseline, color="grey", linestyle=":", linewidth=1, label="unpruned")
        ax.plot([], [], marker="*", color="white", markeredgecolor="black", markersize=10, linestyle="none",
                label="this file")
        if sweep.chosen:
            ax.plot([], [], marker="x", color="black", linestyle="none", label="chosen (thresholds.json)")
        ax.set_xlabel("parameters pruned away (%)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Sensitivity: each layer pruned alone")
        ax.legend(fontsize=9, ncols=2, frameon=False)
    return svg(fig, "sensitivity")


def latency(results: list[Latency]) -> str:
    """Whole-model latency per contender at each batch size (log scale)."""
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        width = 0.8 / len(CONTENDERS)
        for i, name in enumerate(CONTENDERS):
            xs = np.arange(len(results)) + (i - 1) * width
            ms = [r.whole[name] for r in results]
            ax.bar(xs, ms, width=width, color=CONTENDER_COLORS[name], label=name)
            for x, v in zip(xs, ms, strict=True):
                ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(np.arange(len(results)), [f"batch {r.batch}" for r in results])
        ax.set_yscale("log")
        ax.set_ylabel("ms per forward (median)")
        ax.set_title("Whole-model latency")
        ax.legend(frameon=False, ncols=3, loc="upper left")
        ax.grid(axis="x", visible=False)
    return svg(fig, "latency")


def energy(estimate: Energy) -> str:
    """Energy per inference, dense vs compressed: memory and arithmetic (log scale)."""
    dense, comp = estimate.total("dense"), estimate.total("compressed")
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        keys = ["memory", "arithmetic", "total"] if estimate.has_macs else ["memory"]
        xs = np.arange(len(keys))
        for offset, (label, values, color) in enumerate((("dense fp32", dense, "#8c8c8c"),
                                                         ("compressed", comp, "#4c72b0"))):
            heights = [max(values[k], 1e-3) for k in keys]
            ax.bar(xs + (offset - 0.5) * 0.38, heights, width=0.38, color=color, label=label)
            for x, v in zip(xs + (offset - 0.5) * 0.38, heights, strict=True):
                ax.text(x, v, format_energy(v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs, keys)
        ax.set_yscale("log")
        ax.set_ylabel("pJ per inference")
        ax.set_title(f"Estimated energy per inference (45 nm){'' if estimate.ratio is None else f': {estimate.ratio:.0f}x less'}")
        ax.legend(frameon=False)
        ax.grid(axis="x", visible=False)
    return svg(fig, "energy")


def fit(estimate: Energy) -> str:
    """The weights' bytes (dense fp32, compressed fixed-width, the file) against the on-chip SRAM size."""
    rows = [("dense fp32", estimate.dense_bytes), ("compressed (P+Q)", estimate.compressed_bytes),
            ("file (entropy-coded)", estimate.file_bytes)]
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 2.2))
        colors = ["#4c72b0" if n <= estimate.sram_bytes else "#c44e52" for _, n in rows]
        ax.barh([r[0] for r in rows], [r[1] for r in rows], color=colors, height=0.6)
        ax.axvline(estimate.sram_bytes, color="black", linestyle="--", linewidth=1,
                   label=f"on-chip SRAM {format_size(estimate.sram_bytes)}")
        ax.legend(frameon=False, loc="lower right")
        for y, (_, n) in enumerate(rows):
            ax.text(n, y, f" {format_size(n)}", va="center", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlim(min(n for _, n in rows) / 3, max(max(n for _, n in rows), estimate.sram_bytes) * 8)
        ax.invert_yaxis()
        ax.set_xlabel("bytes (log scale)")
        ax.set_title("Do the weights fit on chip? (blue: yes, red: no)")
        ax.grid(axis="y", visible=False)
    return svg(fig, "fit")


def pareto(points: list[dict[str, Any]]) -> str:
    """Accuracy vs file bytes (log x) of several files (+ the baseline), the Pareto front drawn as a step line."""
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for i, p in enumerate(points):
            on = p.get("pareto", False)
            ax.plot([p["bytes"]], [100 * p["accuracy"]], marker="o" if on else "s", markersize=8 if on else 6,
                    color=f"C{i % 10}", markeredgecolor="black" if on else "none", linestyle="none", label=p["label"])
        front = sorted((p for p in points if p.get("pareto")), key=lambda p: p["bytes"])
        if front:
            ax.step([p["bytes"] for p in front], [100 * p["accuracy"] for p in front], where="post",
                    color="black", linewidth=1, alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("bytes (log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("Accuracy vs size")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    return svg(fig, "pareto")


def sizes(points: list[dict[str, Any]]) -> str:
    """File bytes per file (log scale), for a comparison without accuracies."""
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.35 * len(points)))
        ax.barh([p["label"] for p in points], [p["bytes"] for p in points], color="#4c72b0", height=0.6)
        for y, p in enumerate(points):
            ax.text(p["bytes"], y, f" {p['bytes']:,}", va="center", fontsize=9)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("bytes (log scale)")
        ax.set_title("File sizes (pass --dataset for the accuracy axis)")
        ax.grid(axis="y", visible=False)
    return svg(fig, "sizes")
