"""Options and helpers shared by the CLI command modules: which model, which data, how to report quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

if TYPE_CHECKING:
    from torch import nn

    from ..data import DataSource

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="fashion-mnist | mnist | cifar10 | digits | "
                                         "imagefolder:DIR | textfile:FILE")]
FileDatasetOpt = Annotated[
    str | None, typer.Option("--dataset", "-d", help="fashion-mnist | mnist | cifar10 | digits | imagefolder:DIR | "
                             "textfile:FILE; default: the one recorded in the model file.")
]
TrainLimitOpt = Annotated[int | None, typer.Option("--limit", help="Use only the first N training samples.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Folder holding the dataset files (MNIST, CIFAR-10).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
SelectOpt = Annotated[list[str] | None, typer.Option("--select", help="Layer name glob or type:linear|conv (repeat).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="Layer name glob or type:... to leave alone "
                                                      "(repeat).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch intra-op threads (default: torch's).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="The architecture: a zoo name, torchvision:NAME, "
                                              "timm:NAME or package.module:factory (a function of yours).")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="State dict for --model (read with "
                                                 "weights_only=True).")]
ImageSizeOpt = Annotated[int, typer.Option("--image-size", help="imagefolder: centre-crop side in pixels.")]
ResizeOpt = Annotated[int | None, typer.Option("--resize", help="imagefolder: shorter side before the crop "
                                               "(default: --image-size).")]
NormOpt = Annotated[str, typer.Option("--norm", help="imagefolder: imagenet | pm1 ([-1, 1]) | none; or --mean/--std.")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="imagefolder: per-channel mean, e.g. 0.5,0.5,0.5.")]
StdOpt = Annotated[str | None, typer.Option("--std", help="imagefolder: per-channel std, e.g. 0.5,0.5,0.5.")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad-images", help="imagefolder: skip (and count) files that do "
                                          "not decode, instead of stopping.")]
ValSplitOpt = Annotated[float | None, typer.Option("--val-split", help="Held-out validation share: a fraction "
                                                   "(0.1) or a count (500). Default: the built-in sets' fixed 5,000 "
                                                   "(so published figures stay comparable), 10% of a folder or file.")]


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj))


def dataset_of(meta: dict[str, Any], given: str | None) -> str:
    """The dataset to use: the one given, else the one recorded in the model file."""
    from ..core.errors import ConfigError

    name = given or meta.get("dataset")
    if not name:
        raise ConfigError("no --dataset given and the model file records none")
    return str(name)


def open_model(path: Path | None, model: str | None = None, weights: Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)``: a checkpoint or ``.dsz`` file (read into ``--model`` when given: files of your own
    architectures do not rebuild themselves), or ``--model`` with optional ``--weights``."""
    from ..core.errors import ConfigError
    from ..io import load_model
    from ..models import build_from_spec

    if path is None and model is None:
        raise ConfigError("give a model file (checkpoint or .dsz) or --model (and --weights)")
    if path is not None and weights is not None:
        raise ConfigError("--weights goes with --model; a model file carries its own weights")
    if path is None:
        assert model is not None
        return build_from_spec(model, weights=weights).eval(), {"arch": model}
    return load_model(path, build_from_spec(model) if model is not None else None)


def data_options(*, data_dir: str | None = None, val_split: float | None = None, image_size: int = 224,
                 resize: int | None = None, norm: str = "imagenet", mean: str | None = None, std: str | None = None,
                 skip_bad_images: bool = False, seed: int = 0) -> Any:
    """:class:`~deepshrink.data.DataOptions` from the CLI's options (``--val-split 500`` is a count)."""
    from ..core.errors import ConfigError
    from ..data import DataOptions

    def floats(text: str | None, option: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError as exc:
            raise ConfigError(f"{option} takes comma-separated numbers, got {text!r}") from exc

    split: float | int | None = val_split
    if val_split is not None and val_split >= 1 and float(val_split).is_integer():
        split = int(val_split)
    return DataOptions(data_dir=data_dir, val_split=split, image_size=image_size, resize=resize, norm=norm,
                       mean=floats(mean, "--mean"), std=floats(std, "--std"), skip_bad_images=skip_bad_images, seed=seed)


def open_source(meta: dict[str, Any], given: str | None, options: Any = None) -> DataSource:
    """The data source to use: ``--dataset`` or the one the model file records."""
    from ..data import open_data

    return open_data(dataset_of(meta, given), options)


def quality(model: nn.Module, data: Any, reference: nn.Module | None = None) -> dict[str, Any]:
    """Top-1 accuracy on labelled data; on data without labels, agreement with ``reference`` (if given)."""
    from ..train import agreement, evaluate

    result = evaluate(model, data)
    if result["accuracy"] is not None:
        return {"accuracy": result["accuracy"], "samples": result["samples"]}
    if reference is None:
        return {"samples": result["samples"]}
    return agreement(reference, model, data)


def describe(q: dict[str, Any]) -> str:
    """``top-1 0.9182`` or ``agreement top-1 0.973, cosine 0.9981`` (or ``-`` without either)."""
    if q.get("accuracy") is not None:
        return f"top-1 {q['accuracy']:.4f}"
    if q.get("cosine") is not None:
        return f"agreement with the uncompressed model: top-1 {q['top1_agreement']:.4f}, cosine {q['cosine']:.4f}"
    return "- (no labels)"
