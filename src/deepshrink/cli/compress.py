"""``compress``: run a YAML recipe (prune -> retrain -> share -> fine-tune -> encode) on a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    DataDirOpt,
    FileDatasetOpt,
    ImageSizeOpt,
    JsonOpt,
    MeanOpt,
    ModelOpt,
    NormOpt,
    QuietOpt,
    ResizeOpt,
    SkipBadOpt,
    StdOpt,
    ThreadsOpt,
    TrainLimitOpt,
    ValSplitOpt,
    WeightsOpt,
    data_options,
    emit_json,
    open_model,
    set_threads,
)
from .runs import RestartOpt, ResumeOpt, WorkdirOpt, interruptible, resume_command, run_mode, workdir_for


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
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Option("--recipe", "-r", help="YAML recipe, e.g. recipes/deep-compression-lenet300.yaml")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Compressed file to write (.dsz).")],
    checkpoint: Annotated[Path | None, typer.Argument(help="Trained checkpoint (deepshrink train ...), or give "
                                                      "--model.")] = None,
    model_spec: ModelOpt = None,
    weights: WeightsOpt = None,
    dataset: FileDatasetOpt = None,
    limit: TrainLimitOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the recipe's seed.")] = None,
    data_dir: DataDirOpt = None,
    val_split: ValSplitOpt = None,
    image_size: ImageSizeOpt = 224,
    resize: ResizeOpt = None,
    norm: NormOpt = "imagenet",
    mean: MeanOpt = None,
    std: StdOpt = None,
    skip_bad_images: SkipBadOpt = False,
    threads: ThreadsOpt = None,
    workdir: WorkdirOpt = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compress a model with a recipe (Deep Compression: prune, retrain, share, fine-tune, encode; or any stages).

    Resumable: a checkpoint after every stage and training epoch in the run directory; rerun the same command
    (or add --resume) after a stop to continue, with the same result as a run never stopped."""
    from ..recipes import compress_checkpoint, load_compression_recipe

    set_threads(threads)
    mode = run_mode(resume, restart)
    load_compression_recipe(recipe)  # a bad recipe fails before any model or data is read
    model, meta = open_model(checkpoint, model_spec, weights)
    options = data_options(data_dir=data_dir, val_split=val_split, image_size=image_size, resize=resize, norm=norm,
                           mean=mean, std=std, skip_bad_images=skip_bad_images)
    with interruptible(ctx):
        report = compress_checkpoint(checkpoint, recipe, out, dataset, data_dir, limit, seed, quiet or json_out,
                                     model=model, meta=meta, data_options=options,
                                     workdir=workdir_for(out, workdir), resume=mode, command=resume_command(ctx))
    if json_out:
        emit_json(report)
    else:
        typer.echo(format_stages(report))
        typer.echo(f"evaluate the written file with: deepshrink eval {out} --dataset {report['dataset']}")
