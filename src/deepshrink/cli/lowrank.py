"""``lowrank``: Zhang et al.'s conv factorisation (svd / linear / nonlinear / asymmetric) and Linear-layer SVD."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import lowrank as _lowrank  # noqa: F401  (registers the lowrank_* edits so factorised files load)
from .common import (
    DataDirOpt,
    FileDatasetOpt,
    JsonOpt,
    QuietOpt,
    SeedOpt,
    ThreadsOpt,
    dataset_of,
    emit_json,
    set_threads,
)


def register(app: typer.Typer) -> None:
    app.command("lowrank")(lowrank_cmd)


def lowrank_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint to factorise.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write.")],
    speedup: Annotated[float | None, typer.Option("--speedup", help="Whole-model conv FLOP reduction, e.g. 2, 3, 4.")] = None,
    method: Annotated[str, typer.Option("--method", help="svd | linear | nonlinear | asymmetric | linear-asymmetric")] = "asymmetric",
    linear_energy: Annotated[float | None, typer.Option("--linear-energy", help="SVD of Linear layers keeping this fraction of sigma^2.")] = None,
    linear_ratio: Annotated[float | None, typer.Option("--linear-ratio", help="SVD of Linear layers to this fraction of their weights.")] = None,
    linear_response: Annotated[bool, typer.Option("--linear-response", help="Linear layers by PCA of their outputs on val images (Zhang's linear reconstruction) instead of weight SVD.")] = False,
    dataset: FileDatasetOpt = None,
    images: Annotated[int, typer.Option("--images", help="Calibration images from the val split.")] = 3000,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tune the factorised model (0: none).")] = 0,
    lr: Annotated[float, typer.Option("--lr", help="Fine-tuning learning rate (cosine schedule).")] = 0.005,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Replace conv layers by two convs fitted to their responses, and/or Linear layers by their truncated SVD."""
    import torch
    from torch import nn

    from ..core import ConfigError
    from ..data import dataset_info, load_dataset
    from ..io import load_model
    from ..lowrank import SVDLinear, ZhangLowRank, lowrank_
    from ..train import TrainConfig, evaluate, fit, save_checkpoint

    set_threads(threads)
    torch.manual_seed(seed)
    if speedup is None and linear_energy is None and linear_ratio is None:
        raise ConfigError("nothing to do: give --speedup (convs) and/or --linear-energy / --linear-ratio (Linear layers)")
    model, meta = load_model(path)
    name = dataset_of(meta, dataset)
    info = dataset_info(name)
    test = load_dataset(name, "test", data_dir)
    before = evaluate(model, test)["accuracy"]
    from ..core.summary import summary

    macs_before = summary(model, info.input_shape).total.get("macs")
    if speedup is not None and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ConfigError(f"{path}: --speedup needs conv layers; use --linear-energy or --linear-ratio for Linear ones")
    conv = ZhangLowRank(speedup=speedup, method=method, images=images, seed=seed) if speedup is not None else None
    linear = (SVDLinear(energy=linear_energy, param_ratio=linear_ratio)
              if linear_energy is not None or linear_ratio is not None else None)
    result: dict = {"file": str(path), "dataset": name, "top1_before": before,
                    **lowrank_(model, load_dataset(name, "val", data_dir), conv=conv, linear=linear,
                               linear_response=linear_response, seed=seed, images=images)}
    result["top1_after"] = evaluate(model, test)["accuracy"]
    if finetune_epochs > 0:
        fit(model, load_dataset(name, "train", data_dir), TrainConfig(epochs=finetune_epochs, lr=lr, seed=seed),
            quiet=quiet or json_out)
        result["top1_finetuned"] = evaluate(model, test)["accuracy"]
    result["macs_before"], result["macs_after"] = macs_before, summary(model, info.input_shape).total.get("macs")
    save_checkpoint(out, model, meta={**{k: v for k, v in meta.items() if k not in ("arch", "kwargs")},
                                      "dataset": name, "lowrank": result})
    result["out"] = str(out)
    if json_out:
        emit_json(result)
        return
    line = f"{path}: top-1 {before:.4f} -> {result['top1_after']:.4f}"
    if "top1_finetuned" in result:
        line += f" -> {result['top1_finetuned']:.4f} after {finetune_epochs} epoch(s) fine-tuning"
    typer.echo(line)
    if macs_before and result["macs_after"]:
        typer.echo(f"MACs {macs_before:,} -> {result['macs_after']:,} ({macs_before / result['macs_after']:.2f}x) -> {out}")
