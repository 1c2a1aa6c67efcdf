"""``deepshrink report FILE.dsz [FILE2.dsz ...] --out report.html``: one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DataDirOpt, JsonOpt, emit_json


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def report_cmd(
    files: Annotated[list[Path], typer.Argument(help="One .dsz file, or several files of one model to compare.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (nothing is left there on error).")],
    baseline: Annotated[Path | None, typer.Option("--baseline", help="The uncompressed checkpoint: weight "
                                                  "distributions before, accuracy vs the baseline.")] = None,
    sensitivity: Annotated[Path | None, typer.Option("--sensitivity", help="Folder written by `deepshrink "
                                                     "sensitivity` for this model (one file only).")] = None,
    bench: Annotated[bool, typer.Option("--bench", help="Time the runtime vs dense fp32 and int8, whole model and "
                                        "per layer, batch 1 and 64.")] = False,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Measure top-1 on its test split "
                                                "(fashion-mnist | mnist | cifar10 | digits | imagefolder:DIR | "
                                                "textfile:FILE).")] = None,
    data_dir: DataDirOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N test samples.")] = None,
    sram: Annotated[str, typer.Option("--sram", help="On-chip memory for the fit and energy estimate, e.g. "
                                      "256KiB, 2MB.")] = "256KiB",
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="Per-sample shape for MACs and latency "
                                                    "when no dataset tells it, e.g. 1,28,28.")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Threads for --bench.")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Write an HTML report: technique chain, per-layer table, size waterfall, weight distributions, sensitivity,
    latency, energy and on-chip fit; or, for several files, a comparison with the accuracy-vs-bytes Pareto front."""
    from ..report import write_html
    from .bench import parse_shape

    shape = parse_shape(input_shape) if input_shape else None
    result = write_html(files, out, baseline=baseline, sensitivity=sensitivity, bench=bench, dataset=dataset,
                        data_dir=data_dir, limit=limit, sram=sram, input_shape=shape, threads=threads)
    if json_out:
        emit_json(result)
    else:
        typer.echo(f"wrote {result['out']} ({result['bytes']:,} bytes, {result['figures']} figures)")
