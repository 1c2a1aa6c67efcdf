"""The one-file report: header, per-layer table, size waterfall, weight distributions, sensitivity, latency and
energy, each section built from :class:`~deepshrink.report.data.FileFacts` and drawn by :mod:`.figures`."""

from __future__ import annotations

from typing import Any

from ..core.version import __version__
from . import figures
from .data import STAGES, FileFacts
from .energy import MAC_PJ, PJ, Energy, format_energy, format_size
from .html import cards, esc, figure, kv, note, num, page, pct, section, table
from .latency import CONTENDERS, Latency
from .sweep import Sweep

ENERGY_MODEL = (
    "Energy per operation: Han et al.'s 45 nm table (after Horowitz, ISSCC 2014). Batch 1: every weight is read "
    "once per inference, one 32-bit access per 32 bits of weight storage; the dense model reads 4 bytes per "
    "weight, the compressed one its fixed-width form (P weight bits + Q index bits per kept weight, plus "
    "codebooks; entropy coding is for storage and is decoded once at load). All weights live in on-chip SRAM "
    "when they fit it as a whole, else in DRAM. Arithmetic: a multiply and an add per weight use (per output "
    "position in a convolution), for the compressed model only for its non-zero weights: fp32 for float and "
    "codebook weights, int32 for fixed point, an add alone for ternary. Activations, bias arithmetic and "
    "codebook lookups are not counted.")


def accuracy_text(facts: FileFacts) -> str | None:
    q = facts.quality
    if q is None:
        return None
    if q.accuracy is not None:
        base = "" if q.baseline_accuracy is None else (
            f" vs baseline {100 * q.baseline_accuracy:.2f}% ({100 * (q.accuracy - q.baseline_accuracy):+.2f} points)")
        return f"top-1 {100 * q.accuracy:.2f}%{base} on {q.samples:,} {q.dataset} {q.split} samples"
    if q.agreement is not None:
        return (f"agreement with the baseline: top-1 {100 * q.agreement:.2f}%, cosine {q.cosine:.4f} on {q.samples:,} "
                f"{q.dataset} {q.split} samples")
    return f"{q.dataset} has no labels; pass --baseline to measure agreement"


def header(facts: FileFacts, energy: Energy) -> str:
    t = facts.total
    items = [(format_size(t["file_bytes"]), f"file ({t['file_bytes']:,} B)"),
             (format_size(t["fp32_bytes"]), f"fp32 weights and tensors ({t['fp32_bytes']:,} B)"),
             (f"{t['ratio']}x", "smaller than fp32"), (f"{t['kept_pct']:.1f}%", "weights kept")]
    if facts.quality is not None and facts.quality.accuracy is not None:
        items.append((f"{100 * facts.quality.accuracy:.2f}%", f"top-1, {facts.quality.dataset}"))
    if energy.ratio is not None:
        items.append((f"{energy.ratio:.0f}x", "less energy per inference (est.)"))
    chain = "".join(f"<li>{esc(step)}</li>" for step in facts.chain())
    acc = accuracy_text(facts)
    lines = [f"<p><b>Model</b> {esc(facts.model)} &middot; <b>file</b> {esc(facts.path)}</p>",
             cards(items), f"<h3>Technique chain</h3><ol class=\"chain\">{chain}</ol>"]
    if acc:
        lines.append(f"<p><b>Accuracy</b> {esc(acc)}</p>")
    lines += [note(n) for n in facts.notes]
    return section("summary", "Summary", "".join(lines))


def layer_table(facts: FileFacts) -> str:
    """Han et al.'s Tables 2-4: per layer weights, % kept, weight and index bits, bytes, compression rate."""
    rows = []
    for x in facts.layers:
        r = x.row
        shape = "x".join(str(d) for d in r["shape"])
        rows.append([x.name, x.kind, shape, num(r["weights"]), pct(r["kept_pct"]), num(r["weight_bits_fixed"], "g"),
                     num(r["weight_bits"], ".2f"), num(r.get("index_bits_fixed"), "g"), num(r.get("index_bits"), ".2f"),
                     num(r["bytes"]), num(r["fp32_bytes"]), pct(r["rate_pct"], 2),
                     num(r["fp32_bytes"] / r["bytes"] if r["bytes"] else None, ".1f")])
    t = facts.total
    foot = [["other tensors", "raw", "", None, None, None, None, None, None, num(t["other_bytes"]), None, None, None],
            ["header", "json", "", None, None, None, None, None, None, num(t["header_bytes"]), None, None, None],
            ["file", "", "", num(t["weights"]), pct(t["kept_pct"]), num(t["weight_bits_fixed"], "g"),
             num(t["weight_bits"], ".2f"), num(t["index_bits_fixed"], "g"), num(t["index_bits"], ".2f"),
             num(t["file_bytes"]), num(t["fp32_bytes"]), pct(t["rate_pct"], 2), num(t["ratio"], ".1f")]]
    heads = ["layer", "kind", "shape", "weights", "kept", "w bits P", "w bits coded", "idx bits Q", "idx bits coded",
             "bytes", "fp32 bytes", "rate", "ratio x"]
    intro = ("As in Deep Compression's Tables 2-4: P and Q are the fixed widths of a weight's value and of its "
             "relative index, 'coded' the bits per weight (per index entry) after entropy coding, from the file's "
             "own sections. Bytes add up to the file size. Tap a header to sort.")
    return section("layers", "Per-layer table", table(heads, rows, foot, name="layer-table"), intro)


def waterfall(facts: FileFacts) -> str:
    stages = facts.stages()
    rows = [[x.name] + [num(sum(x.waterfall().get(s, x.waterfall()["+ entropy"]).values())) for s in STAGES]
            for x in facts.layers]
    other = [["other tensors + header"] + [num(stages[s]["other"]) for s in STAGES]]
    foot = [["total"] + [num(sum(stages[s].values())) for s in STAGES]]
    intro = ("fp32: 4 bytes per weight. Pruned: the kept weights as fp32 values plus the relative index at its "
             "fixed width. + shared: the values at their fixed width (codebook indices, fixed-point or ternary "
             "codes) plus the codebooks and scales. + entropy: the file's coded sections. File: + the header.")
    body = (figure(figures.waterfall(facts), "waterfall")
            + figure(figures.layer_bytes(facts), "layer-bytes")
            + table(["layer", *STAGES], rows + other, foot, name="waterfall-table"))
    return section("waterfall", "Size waterfall", body, intro)


def distributions(facts: FileFacts) -> str:
    cells = []
    for x in facts.layers:
        cells.append(figure(figures.distribution(x), f"dist-{x.name}", f"<b>{esc(x.name)}</b>", kv(x.params())))
    intro = ("Per weight: the baseline's weights (grey, with --baseline), the baseline's values at the positions "
             "the file keeps (blue), and the values the file can hold (red lines: centroids, fixed-point grid or "
             "ternary scales; a red outline when there are too many to draw, or float values). The change vs the "
             "baseline is quantization error after post-training compression, and includes retraining when the "
             "recipe retrained.")
    return section("distributions", "Weight distributions", '<div class="grid">' + "".join(cells) + "</div>", intro)


def sensitivity(facts: FileFacts, sweep: Sweep, matched: dict[str, str]) -> str:
    by_name = {x.name: x for x in facts.layers}
    rows = []
    for layer in sweep.curves:
        pruned = None
        if layer in matched:
            w = by_name[matched[layer]].weight
            pruned = 1 - w.kept / max(w.numel, 1)
        chosen = sweep.chosen.get(layer) if sweep.chosen else None
        at = sweep.accuracy_at(layer, pruned) if pruned is not None else None
        rows.append([layer, num(sweep.params[layer]), pct(None if pruned is None else 100 * pruned),
                     pct(None if chosen is None else 100 * chosen), pct(None if at is None else 100 * at, 2),
                     num(None if at is None else 100 * (sweep.baseline - at), ".2f")])
    intro = (f"From {esc(sweep.path)}: accuracy with one layer alone magnitude-pruned (Han et al. 2015, Fig. 5); "
             "stars: the share this file prunes from each layer, on that layer's curve; crosses: the sparsities the "
             "sweep chose (thresholds.json), when it wrote them.")
    body = figure(figures.sensitivity(sweep, matched, facts), "sensitivity") + table(
        ["layer", "weights", "pruned in file", "chosen by sweep", "one-layer acc. there", "drop (points)"], rows,
        name="sensitivity-table")
    return section("sensitivity", "Sensitivity", body, intro)


def latency(results: list[Latency], threads: int, inputs: str) -> str:
    rows = []
    names = list(results[0].layers) if results else []
    for name in names:
        row: list[Any] = [name]
        for r in results:
            ms = r.layers[name]
            row += [num(ms[c], ".4f") for c in CONTENDERS]
            runtime, dense = ms["runtime"], ms["dense_fp32"]
            row.append(num(dense / runtime if runtime and dense else None, ".2f"))
        rows.append(row)
    foot = [["whole model"] + [v for r in results for v in
                               [*(num(r.whole[c], ".4f") for c in CONTENDERS),
                                num(r.whole["dense_fp32"] / r.whole["runtime"], ".2f")]]]
    heads = ["layer"] + [f"b{r.batch} {h}" for r in results for h in ("runtime ms", "dense ms", "int8 ms", "speedup")]
    intro = (f"Median milliseconds, {threads} thread(s), {esc(inputs)} inputs, contenders interleaved in one process "
             "(deepshrink bench's method). Dynamic int8 quantizes Linear layers only (its convolutions stay fp32). "
             "Speedup: dense fp32 / runtime.")
    body = figure(figures.latency(results), "latency") + table(heads, rows, foot, name="latency-table")
    return section("latency", "Latency", body, intro)


def energy(estimate: Energy) -> str:
    const = table(["operation (45 nm)", "pJ"], [["32-bit DRAM access", PJ["dram"]], ["32-bit SRAM access", PJ["sram"]],
                                               ["fp32 multiply", PJ["fp32_mul"]], ["fp32 add", PJ["fp32_add"]],
                                               ["int32 multiply", PJ["int32_mul"]], ["int32 add", PJ["int32_add"]]],
                  sortable=False)
    rows = []
    for r in estimate.layers:
        rows.append([r.name, r.kind, num(r.dense_accesses), num(r.compressed_accesses), num(r.dense_macs),
                     num(r.compressed_macs), (format_energy(sum(r.dense_pj.values())), sum(r.dense_pj.values())),
                     (format_energy(sum(r.compressed_pj.values())), sum(r.compressed_pj.values()))])
    d, c = estimate.total("dense"), estimate.total("compressed")
    foot = [["total", "", num(sum(r.dense_accesses for r in estimate.layers)),
             num(sum(r.compressed_accesses for r in estimate.layers)), None, None,
             (format_energy(d["total"]), d["total"]), (format_energy(c["total"]), c["total"])]]
    where = {True: "on-chip SRAM", False: "DRAM"}
    fits = (f"With an on-chip memory of {format_size(estimate.sram_bytes)}: the dense fp32 weights "
            f"({format_size(estimate.dense_bytes)}) {'fit' if estimate.dense_in_sram else 'do not fit'} and live in "
            f"{where[estimate.dense_in_sram]}; the compressed weights ({format_size(estimate.compressed_bytes)} "
            f"fixed-width) {'fit' if estimate.compressed_in_sram else 'do not fit'} and live in "
            f"{where[estimate.compressed_in_sram]}. Estimated energy per inference: dense {format_energy(d['total'])} "
            f"(memory {format_energy(d['memory'])}), compressed {format_energy(c['total'])} (memory "
            f"{format_energy(c['memory'])})" + ("" if estimate.ratio is None else f": {estimate.ratio:.1f}x less") + ".")
    macs = "" if estimate.has_macs else note("No input shape known: arithmetic is not counted (memory only).")
    body = (f"<p>{esc(fits)}</p>{macs}" + figure(figures.energy(estimate), "energy")
            + figure(figures.fit(estimate), "fit")
            + f"<h3>The model</h3><p>{esc(ENERGY_MODEL)}</p>" + const
            + f"<p>Per weight use: fp32 multiply-add {MAC_PJ['fp32']:.1f} pJ, int32 {MAC_PJ['int32']:.1f} pJ, "
              f"ternary add {MAC_PJ['add']:.1f} pJ.</p>"
            + table(["weight", "kind", "dense accesses", "compr. accesses", "dense MACs", "compr. MACs",
                     "dense energy", "compr. energy"], rows, foot, name="energy-table"))
    return section("energy", "Energy and on-chip fit", body)


def render(facts: FileFacts, estimate: Energy, *, sweep: tuple[Sweep, dict[str, str]] | None = None,
           bench: tuple[list[Latency], int, str] | None = None) -> str:
    """The full HTML page of one file."""
    parts = [header(facts, estimate), layer_table(facts), waterfall(facts), distributions(facts)]
    if sweep is not None:
        parts.append(sensitivity(facts, *sweep))
    if bench is not None:
        parts.append(latency(*bench))
    parts.append(energy(estimate))
    subtitle = esc(" \u2192 ".join(s.split(":")[0] for s in facts.chain()))
    return page(f"deepshrink report: {facts.name}", subtitle, parts,
                f"Written by deepshrink {esc(__version__)} from {esc(facts.path)} (format version "
                f"{esc(facts.header.get('version'))}, {esc(facts.header.get('library', ''))}).")
