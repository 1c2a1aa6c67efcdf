"""``lowrank``: Zhang et al.'s conv factorisation (svd / linear / nonlinear / asymmetric) and Linear-layer SVD."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import lowrank as _lowrank  # noqa: F401  (registers the lowrank_* edits so factorised files load)
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
    SeedOpt,
    SkipBadOpt,
    StdOpt,
    ThreadsOpt,
    ValSplitOpt,
    WeightsOpt,
    data_options,
    describe,
    emit_json,
    open_model,
    open_source,
    quality,
    set_threads,
)


def register(app: typer.Typer) -> None:
    app.command("lowrank")(lowrank_cmd)


def lowrank_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write.")],
    path: Annotated[Path | None, typer.Argument(help="Checkpoint to factorise (or give --model).")] = None,
    model_spec: ModelOpt = None,
    weights: WeightsOpt = None,
    speedup: Annotated[float | None, typer.Option("--speedup", help="Whole-model conv FLOP reduction, e.g. 2, 3, 4.")] = None,
    method: Annotated[str, typer.Option("--method", help="svd | linear | nonlinear | asymmetric | linear-asymmetric")] = "asymmetric",
    decomposition: Annotated[str, typer.Option("--decomposition", help="channel (k x k then 1x1) | 3d (k x 1, 1 x k, 1x1: the TPAMI version)")] = "channel",
    rank_rule: Annotated[str, typer.Option("--rank-rule", help="energy (the paper's: kept PCA energy) | sensitivity (measured output change per layer and rank)")] = "energy",
    linear_energy: Annotated[float | None, typer.Option("--linear-energy", help="SVD of Linear layers keeping this fraction of sigma^2.")] = None,
    linear_ratio: Annotated[float | None, typer.Option("--linear-ratio", help="SVD of Linear layers to this fraction of their weights.")] = None,
    linear_response: Annotated[bool, typer.Option("--linear-response", help="Linear layers by PCA of their outputs on val images (Zhang's linear reconstruction) instead of weight SVD.")] = False,
    dataset: FileDatasetOpt = None,
    images: Annotated[int, typer.Option("--images", help="Calibration images from the val split.")] = 3000,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tune the factorised model (0: none).")] = 0,
    lr: Annotated[float, typer.Option("--lr", help="Fine-tuning learning rate (cosine schedule).")] = 0.005,
    data_dir: DataDirOpt = None,
    val_split: ValSplitOpt = None,
    image_size: ImageSizeOpt = 224,
    resize: ResizeOpt = None,
    norm: NormOpt = "imagenet",
    mean: MeanOpt = None,
    std: StdOpt = None,
    skip_bad_images: SkipBadOpt = False,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Replace conv layers by two convs fitted to their responses, and/or Linear layers by their truncated SVD."""
    import torch
    from torch import nn

    from ..core import ConfigError
    from ..core.summary import summary
    from ..lowrank import SVDLinear, ZhangLowRank, lowrank_
    from ..train import DistillationLoss, TrainConfig, fit, save_checkpoint
    from ..train.stage import frozen_copy

    set_threads(threads)
    torch.manual_seed(seed)
    if speedup is None and linear_energy is None and linear_ratio is None:
        raise ConfigError("nothing to do: give --speedup (convs) and/or --linear-energy / --linear-ratio (Linear layers)")
    model, meta = open_model(path, model_spec, weights)
    source = open_source(meta, dataset, data_options(data_dir=data_dir, val_split=val_split, image_size=image_size,
                                                     resize=resize, norm=norm, mean=mean, std=std,
                                                     skip_bad_images=skip_bad_images, seed=seed))
    test = source.split("test")
    reference = frozen_copy(model)
    before = quality(model, test, reference)
    shape = source.input_shape
    macs_before = summary(model, shape).total.get("macs") if shape else None
    if speedup is not None and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ConfigError(f"{path or model_spec}: --speedup needs conv layers; use --linear-energy or --linear-ratio "
                          "for Linear ones")
    conv = (ZhangLowRank(speedup=speedup, method=method, images=images, seed=seed, decomposition=decomposition,
                         rank_rule=rank_rule) if speedup is not None else None)
    linear = (SVDLinear(energy=linear_energy, param_ratio=linear_ratio)
              if linear_energy is not None or linear_ratio is not None else None)
    result: dict = {"file": str(path or model_spec), "dataset": source.name, "quality_before": before,
                    **lowrank_(model, source.split("val"), conv=conv, linear=linear,
                               linear_response=linear_response, seed=seed, images=images)}
    result["quality_after"] = quality(model, test, reference)
    if finetune_epochs > 0:
        loss_fn = None if source.labelled else DistillationLoss(reference, alpha=1.0,
                                                                target="logits" if shape else "outputs")
        fit(model, source.split("train"), TrainConfig(epochs=finetune_epochs, lr=lr, seed=seed),
            quiet=quiet or json_out, loss_fn=loss_fn)
        result["quality_finetuned"] = quality(model, test, reference)
    for key in ("before", "after", "finetuned"):
        if f"quality_{key}" in result:
            result[f"top1_{key}"] = result[f"quality_{key}"].get("accuracy")
    result["macs_before"] = macs_before
    result["macs_after"] = summary(model, shape).total.get("macs") if shape else None
    save_checkpoint(out, model, meta={**{k: v for k, v in meta.items() if k not in ("arch", "kwargs")},
                                      "dataset": source.name, "lowrank": result})
    result["out"] = str(out)
    if json_out:
        emit_json(result)
        return
    line = f"{path or model_spec}: before: {describe(before)}; after: {describe(result['quality_after'])}"
    if "quality_finetuned" in result:
        line += f"; after {finetune_epochs} epoch(s) fine-tuning: {describe(result['quality_finetuned'])}"
    typer.echo(line)
    if macs_before and result["macs_after"]:
        typer.echo(f"MACs {macs_before:,} -> {result['macs_after']:,} ({macs_before / result['macs_after']:.2f}x) -> {out}")
