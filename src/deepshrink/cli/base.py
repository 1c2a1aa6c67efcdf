"""``train``, ``eval`` and ``summary``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    DataDirOpt,
    DatasetOpt,
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
    TrainLimitOpt,
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

PathArg = Annotated[Path | None, typer.Argument(help="Checkpoint or .dsz file (or give --model).")]


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate_cmd)
    app.command("summary")(summary_cmd)


def train(
    model: Annotated[str, typer.Argument(help="Zoo name (lenet300 | lenet5 | vgg | resnet20), torchvision:NAME, "
                                        "timm:NAME or package.module:factory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write.")],
    dataset: DatasetOpt = "fashion-mnist",
    weights: WeightsOpt = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    lr: Annotated[float, typer.Option("--lr")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 128,
    optimizer: Annotated[str, typer.Option("--optimizer")] = "sgd",
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 5e-4,
    limit: TrainLimitOpt = None,
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
    """Train a model (from scratch, or from --weights) and write a checkpoint (runs under torchrun for DDP)."""
    import torch

    from ..core.errors import ConfigError
    from ..models import MODELS, build_from_spec, model_kwargs_for
    from ..train import TrainConfig, evaluate, fit, is_main_process, save_checkpoint, shutdown
    from ..train.distributed import default_device, init_distributed

    set_threads(threads)
    init_distributed()
    torch.manual_seed(seed)
    source = open_source({}, dataset, data_options(data_dir=data_dir, val_split=val_split, image_size=image_size,
                                                   resize=resize, norm=norm, mean=mean, std=std,
                                                   skip_bad_images=skip_bad_images, seed=seed))
    if not source.labelled or source.input_shape is None or source.num_classes is None:
        raise ConfigError(f"training from scratch needs labelled images: {dataset} has no labels")
    kwargs: dict[str, Any] = model_kwargs_for(model, source.input_shape, source.num_classes)
    if ":" in model and weights is not None:
        kwargs = {}  # the weights fix the head's size
    elif model not in MODELS and ":" not in model:
        raise ConfigError(f"unknown model {model!r} (zoo: {', '.join(sorted(MODELS))}; or a spec)")
    net = build_from_spec(model, kwargs if model in MODELS or model.startswith(("torchvision:", "timm:")) else {},
                          weights=weights).to(default_device())
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay, seed=seed)
    train_set = source.split("train", limit)
    partial = out.with_name(out.name + ".partial")
    started = time.perf_counter()
    history = fit(net, train_set, config, checkpoint=partial, quiet=quiet or json_out,
                  checkpoint_meta={"dataset": dataset})
    seconds = time.perf_counter() - started
    if is_main_process():
        result = evaluate(net, source.split("test"))
        meta = {"dataset": dataset, "epochs": epochs, "test_accuracy": result["accuracy"], "train_seconds": round(seconds, 1),
                "seed": seed, "threads": torch.get_num_threads(), "config": config.__dict__}
        save_checkpoint(out, net, meta=meta)
        partial.unlink(missing_ok=True)
        report = {"model": model, "out": str(out), **meta, "history": history.epochs}
        if json_out:
            emit_json(report)
        else:
            typer.echo(f"{model} on {dataset}: test accuracy {result['accuracy']:.4f} after {epochs} epochs "
                       f"({seconds:.0f}s, {torch.get_num_threads()} threads) -> {out}")
    shutdown()


def open_baseline(baseline: str, model: str | None) -> Any:
    """``--baseline``: a model file (read into ``--model`` when given), or else a model spec built as it stands."""
    from ..core.errors import ConfigError
    from ..models import build_from_spec

    if Path(baseline).is_file():
        return open_model(Path(baseline), model)[0]
    if Path(baseline).suffix in (".pt", ".dsz", ".pth"):
        raise ConfigError(f"--baseline: no such model file: {baseline}")
    return build_from_spec(baseline).eval()


def evaluate_cmd(
    path: PathArg = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="The uncompressed model to compare with (data "
                                                 "without labels: agreement with it): a model file, or a model "
                                                 "spec as --model takes (e.g. pkg.module:factory).")] = None,
    dataset: FileDatasetOpt = None,
    split: Annotated[str, typer.Option("--split", help="test | val | train")] = "test",
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N samples.")] = None,
    data_dir: DataDirOpt = None,
    val_split: ValSplitOpt = None,
    image_size: ImageSizeOpt = 224,
    resize: ResizeOpt = None,
    norm: NormOpt = "imagenet",
    mean: MeanOpt = None,
    std: StdOpt = None,
    skip_bad_images: SkipBadOpt = False,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a checkpoint or compressed file (or, without labels, its agreement with --baseline)."""
    set_threads(threads)
    net, meta = open_model(path, model, weights)
    source = open_source(meta, dataset, data_options(data_dir=data_dir, val_split=val_split, image_size=image_size,
                                                     resize=resize, norm=norm, mean=mean, std=std,
                                                     skip_bad_images=skip_bad_images))
    reference = open_baseline(baseline, model) if baseline is not None else None
    data = source.split(split, limit)
    result = quality(net, data, reference)
    if json_out:
        emit_json({**{k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()},
                   "dataset": source.name, "split": split, "file": str(path) if path else model})
    else:
        typer.echo(f"{path or model}: {describe(result)} on {result['samples']} {source.name} {split} samples"
                   + ("" if "accuracy" in result or reference is not None else
                      " (no labels: --baseline MODEL gives the agreement with the uncompressed model)"))


def summary_cmd(
    path: PathArg = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="Per-sample shape for MACs, e.g. 3,224,224 "
                                                    "(default: the recorded dataset's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Per-layer table: shape, params, non-zeros, bits per weight, estimated bytes (and MACs with a known input)."""
    from ..core.summary import summary
    from ..data import INFO
    from .bench import parse_shape

    net, meta = open_model(path, model, weights)
    size = parse_shape(input_shape) if input_shape else (
        INFO[meta["dataset"]].input_shape if meta.get("dataset") in INFO else None)
    table = summary(net, size)
    if json_out:
        emit_json(table.to_dict())
    else:
        typer.echo(str(table))
