"""Options and helpers shared by the CLI command modules."""

from __future__ import annotations

import json
from typing import Annotated, Any

import torch
import typer

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="fashion-mnist | mnist | cifar10 | digits")]
FileDatasetOpt = Annotated[
    str | None, typer.Option("--dataset", "-d", help="Dataset name; default: the one recorded in the model file.")
]
TrainLimitOpt = Annotated[int | None, typer.Option("--limit", help="Use only the first N training samples.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Folder holding the dataset files (MNIST, CIFAR-10).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch intra-op threads (default: torch's).")]


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
