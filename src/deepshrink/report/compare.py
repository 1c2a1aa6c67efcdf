"""Several files of one model side by side: a summary table, accuracy vs bytes with the Pareto front, the bytes of
each layer in each file, and (with ``--bench``) whole-model latency."""

from __future__ import annotations

from typing import Any

from ..core.errors import ConfigError
from ..core.version import __version__
from . import figures
from .data import FileFacts
from .energy import Energy, format_energy
from .html import esc, figure, note, num, page, pct, section, table
from .latency import Latency


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each ``(bytes, accuracy)``: True when no other point is as small and as accurate, and better in one."""
    return [not any(b2 <= b and a2 >= a and (b2 < b or a2 > a) for b2, a2 in points) for b, a in points]


def same_model(files: list[FileFacts]) -> None:
    """ConfigError unless every file is of the first file's model (same arch and kwargs, or the same weights)."""
    first = files[0]

    def identity(f: FileFacts) -> Any:
        if f.header.get("arch"):
            return (f.header["arch"], sorted((f.header.get("kwargs") or {}).items()))
        return sorted(x.name for x in f.layers)

    for other in files[1:]:
        if identity(other) != identity(first):
            raise ConfigError(f"{other.name} is not of the same model as {first.name} ({other.model} vs {first.model}): "
                              "compare files of one model")


def labels(files: list[FileFacts]) -> list[str]:
    """Each file's name, or its path where two files share a name."""
    names = [f.name for f in files]
    return [f.name if names.count(f.name) == 1 else f.path for f in files]


def points(files: list[FileFacts], baseline_bytes: int | None) -> list[dict[str, Any]]:
    """The accuracy-vs-bytes points (files with an accuracy, plus the fp32 baseline when measured)."""
    out: list[dict[str, Any]] = [{"label": label, "bytes": int(f.total["file_bytes"]), "accuracy": f.quality.accuracy}
           for f, label in zip(files, labels(files), strict=True)
           if f.quality is not None and f.quality.accuracy is not None]
    base = next((f.quality.baseline_accuracy for f in files if f.quality and f.quality.baseline_accuracy is not None),
                None)
    if base is not None and baseline_bytes is not None:
        out.append({"label": "baseline (fp32)", "bytes": baseline_bytes, "accuracy": base})
    for p, on in zip(out, pareto_front([(p["bytes"], p["accuracy"]) for p in out]), strict=True):
        p["pareto"] = on
    return out


def render(files: list[FileFacts], energies: list[Energy], bench: list[list[Latency]] | None = None) -> str:
    """The comparison page."""
    fp32 = int(files[0].total["fp32_bytes"])
    pts = points(files, fp32)
    on_front = {p["label"] for p in pts if p.get("pareto")}
    rows = []
    for f, e, label in zip(files, energies, labels(files), strict=True):
        t, q = f.total, f.quality
        acc = q.accuracy if q is not None else None
        delta = None if acc is None or q is None or q.baseline_accuracy is None else 100 * (acc - q.baseline_accuracy)
        chain = " \u2192 ".join(step.split(":")[0] for step in f.chain())
        rows.append([label, chain, num(t["file_bytes"]), num(t["ratio"], ".1f"), pct(t["kept_pct"]),
                     num(t["weight_bits"], ".2f"), pct(None if acc is None else 100 * acc, 2), num(delta, "+.2f"),
                     (format_energy(e.total("compressed")["total"]), e.total("compressed")["total"]),
                     "yes" if label in on_front else ("-" if acc is None else "no")])
    heads = ["file", "techniques", "bytes", "x vs fp32", "kept", "w bits coded", "top-1", "vs baseline (points)",
             "energy (est.)", "Pareto"]
    summary = section("files", "Files", table(heads, rows, name="compare-table"),
                      f"{len(files)} files of {esc(files[0].model)}; fp32 weights and tensors: {fp32:,} bytes. "
                      "Tap a header to sort.")
    if pts:
        plot = figure(figures.pareto(pts), "pareto",
                      "Filled circles with a black edge lie on the Pareto front: no other file is both smaller and "
                      "more accurate.")
    else:
        plot = note("No accuracies: pass --dataset to place the files on an accuracy axis.") + figure(
            figures.sizes([{"label": f.name, "bytes": int(f.total["file_bytes"])} for f in files]), "sizes")
    parts = [summary, section("pareto", "Accuracy vs bytes", plot)]
    names = list(dict.fromkeys(x.name for f in files for x in f.layers))
    layer_rows = []
    for name in names:
        row: list[Any] = [name]
        for f in files:
            found = next((x for x in f.layers if x.name == name), None)
            row += [None, None] if found is None else [
                (f"{found.kind} {found.row['kept_pct']:.0f}%", found.row["kept_pct"]), num(found.row["bytes"])]
        layer_rows.append(row)
    foot = [["file"] + [v for f in files for v in ("", num(f.total["file_bytes"]))]]
    layer_heads = ["layer"] + [h for f in files for h in (f"{f.name} kind, kept", f"{f.name} bytes")]
    parts.append(section("layers", "Bytes per layer", table(layer_heads, layer_rows, foot, name="compare-layers")))
    if bench:
        lat_rows = [[f.name] + [num(r.whole[c], ".4f") for r in runs for c in ("runtime", "dense_fp32", "dynamic_int8")]
                    for f, runs in zip(files, bench, strict=True)]
        lat_heads = ["file"] + [f"b{r.batch} {c}" for r in bench[0] for c in ("runtime ms", "dense ms", "int8 ms")]
        parts.append(section("latency", "Latency", table(lat_heads, lat_rows, name="compare-latency"),
                             "Whole-model median milliseconds (deepshrink bench's method)."))
    return page("deepshrink comparison: " + ", ".join(f.name for f in files), esc(files[0].model), parts,
                f"Written by deepshrink {esc(__version__)}.")
