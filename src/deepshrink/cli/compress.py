"""``compress``: run a YAML recipe (prune -> retrain -> share -> fine-tune -> encode) on a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    DataDirOpt,
    FileDatasetOpt,
    JsonOpt,
    QuietOpt,
    ThreadsOpt,
    TrainLimitOpt,
    emit_json,
    set_threads,
)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)


def format_stages(report: dict[str, Any]) -> str:
    """A short table: one line per stage with its validation accuracy and time."""
    lines = [f"{'stage':<10} {'val top-1':>9} {'seconds':>8}  detail", "-" * 60]
    for record in report["stages"]:
        detail = ""
        if "sparsity" in record:
            detail = f"sparsity {record['sparsity']:.3f}"
        elif record["stage"] == "share":
            detail = ", ".join(f"{k}:{v['bits']}b" for k, v in record["layers"].items())
        elif "epochs" in record:
            detail = f"{record['epochs']} epochs, lr {record['lr']:g}"
        elif "bytes" in record:
            detail = f"{record['bytes']:,} bytes"
        acc = f"{record['val_accuracy']:.4f}" if "val_accuracy" in record else "-"
        lines.append(f"{record['stage']:<10} {acc:>9} {record['seconds']:>8.1f}  {detail}")
    lines.append("-" * 60)
    lines.append(f"{report['out']}: {report['bytes']:,} bytes vs {report['fp32_bytes']:,} fp32 "
                 f"({report['ratio']}x smaller)")
    return "\n".join(lines)


def compress(
    checkpoint: Annotated[Path, typer.Argument(help="Trained checkpoint (deepshrink train ...).")],
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="YAML recipe, e.g. recipes/deep-compression-lenet300.yaml")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Compressed file to write (.dsz).")],
    dataset: FileDatasetOpt = None,
    limit: TrainLimitOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the recipe's seed.")] = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compress a checkpoint with a recipe (Deep Compression: prune, retrain, share, fine-tune, encode)."""
    from ..recipes import compress_checkpoint

    set_threads(threads)
    report = compress_checkpoint(checkpoint, recipe, out, dataset, data_dir, limit, seed, quiet or json_out)
    if json_out:
        emit_json(report)
    else:
        typer.echo(format_stages(report))
        typer.echo(f"evaluate the written file with: deepshrink eval {out} --dataset {report['dataset']}")
