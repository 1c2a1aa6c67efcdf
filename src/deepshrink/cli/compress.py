"""``compress``: run a YAML recipe (prune -> retrain -> share -> fine-tune -> encode) on a checkpoint."""

from __future__ import annotations

import time
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
    dataset_of,
    emit_json,
    set_threads,
)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)


def run_compression(
    checkpoint: Path,
    recipe_path: Path,
    out: Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Load ``checkpoint``, run the recipe, write ``out``; returns a JSON-able report (stages, sizes, ratio).

    Choices inside the recipe see only the validation split; the test split is never touched here.
    """
    from ..core.errors import ConfigError
    from ..data import load_dataset
    from ..recipes import RecipeContext, load_recipe, run_recipe
    from ..train import load_checkpoint

    recipe = load_recipe(recipe_path)
    if recipe.stages[-1].name != "encode":
        raise ConfigError(f"{recipe_path}: the last stage must be 'encode' to write {out} "
                          f"(stages: {', '.join(s.name for s in recipe.stages)})")
    model, meta = load_checkpoint(checkpoint)
    name = dataset_of(meta, dataset)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    base_lr = float(meta.get("config", {}).get("lr", 0.05))
    context = RecipeContext(
        model=model,
        train_data=load_dataset(name, "train", data_dir, limit=limit),
        val_data=load_dataset(name, "val", data_dir),
        out=out,
        base_lr=base_lr,
        seed=recipe.seed if seed is None else seed,
        quiet=quiet,
        meta={"dataset": name, "recipe": recipe.name, "source": str(checkpoint)},
    )
    started = time.perf_counter()
    stages = run_recipe(recipe, context)
    size = out.stat().st_size
    return {
        "checkpoint": str(checkpoint),
        "recipe": recipe.name,
        "dataset": name,
        "out": str(out),
        "bytes": size,
        "fp32_bytes": fp32_bytes,
        "ratio": round(fp32_bytes / size, 2),
        "seconds": round(time.perf_counter() - started, 1),
        "baseline_test_accuracy": meta.get("test_accuracy"),
        "stages": stages,
    }


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
    set_threads(threads)
    report = run_compression(checkpoint, recipe, out, dataset, data_dir, limit, seed, quiet or json_out)
    if json_out:
        emit_json(report)
    else:
        typer.echo(format_stages(report))
        typer.echo(f"evaluate the written file with: deepshrink eval {out} --dataset {report['dataset']}")
