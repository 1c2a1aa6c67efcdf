"""``train``, ``eval`` and ``summary``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DataDirOpt,
    FileDatasetOpt,
    JsonOpt,
    QuietOpt,
    SeedOpt,
    ThreadsOpt,
    TrainLimitOpt,
    dataset_of,
    emit_json,
    set_threads,
)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate_cmd)
    app.command("summary")(summary_cmd)


def train(
    model: Annotated[str, typer.Argument(help="Zoo name: lenet300 | lenet5 | vgg | resnet20")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d")] = "fashion-mnist",
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    lr: Annotated[float, typer.Option("--lr")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 128,
    optimizer: Annotated[str, typer.Option("--optimizer")] = "sgd",
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 5e-4,
    limit: TrainLimitOpt = None,
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a zoo model from scratch (runs under torchrun for DDP) and write a checkpoint."""
    import torch

    from ..data import dataset_info, load_dataset
    from ..models import build_model, model_kwargs_for
    from ..train import TrainConfig, evaluate, fit, is_main_process, save_checkpoint, shutdown
    from ..train.distributed import default_device, init_distributed

    set_threads(threads)
    init_distributed()
    torch.manual_seed(seed)
    info = dataset_info(dataset)
    net = build_model(model, **model_kwargs_for(model, info.input_shape, info.num_classes)).to(default_device())
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay, seed=seed)
    train_set = load_dataset(dataset, "train", data_dir, limit=limit)
    partial = out.with_name(out.name + ".partial")
    started = time.perf_counter()
    history = fit(net, train_set, config, checkpoint=partial, quiet=quiet or json_out,
                  checkpoint_meta={"dataset": dataset})
    seconds = time.perf_counter() - started
    if is_main_process():
        result = evaluate(net, load_dataset(dataset, "test", data_dir))
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


def evaluate_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint or .dsz file.")],
    dataset: FileDatasetOpt = None,
    split: Annotated[str, typer.Option("--split", help="test | val | train")] = "test",
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a checkpoint or compressed file."""
    from ..data import load_dataset
    from ..io import load_model
    from ..train import evaluate

    set_threads(threads)
    model, meta = load_model(path)
    name = dataset_of(meta, dataset)
    result = evaluate(model, load_dataset(name, split, data_dir))
    if json_out:
        emit_json({"accuracy": round(result["accuracy"], 6), "samples": result["samples"], "loss": round(result["loss"], 6),
                   "dataset": name, "split": split, "file": str(path)})
    else:
        typer.echo(f"{path}: top-1 {result['accuracy']:.4f} on {result['samples']} {name} {split} samples")


def summary_cmd(
    path: Annotated[Path, typer.Argument(help="Checkpoint or .dsz file.")],
    json_out: JsonOpt = False,
) -> None:
    """Per-layer table: shape, params, non-zeros, bits per weight, estimated bytes."""
    from ..core.summary import summary
    from ..data import dataset_info
    from ..io import load_model

    model, meta = load_model(path)
    input_size = dataset_info(meta["dataset"]).input_shape if meta.get("dataset") else None
    table = summary(model, input_size)
    if json_out:
        emit_json(table.to_dict())
    else:
        typer.echo(str(table))
