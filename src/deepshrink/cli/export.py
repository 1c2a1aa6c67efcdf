"""``export``: a compressed model -> ONNX (stock ONNX Runtime) or C99 (microcontrollers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import DataDirOpt, FileDatasetOpt, JsonOpt, ModelOpt, WeightsOpt, emit_json, open_model


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)


def example_inputs(meta: dict[str, Any], dataset: str | None, data_dir: str | None, input_shape: str | None,
                   batch: int = 1) -> Any:
    """An example batch for tracing: ``--input-shape`` zeros, else the first test samples of the dataset."""
    import torch

    from ..core.errors import ConfigError
    from ..data import INFO
    from .bench import _test_inputs, parse_shape

    if input_shape:
        return torch.zeros((batch, *parse_shape(input_shape)))
    name = dataset or meta.get("dataset")
    if name in INFO:
        return torch.zeros((batch, *INFO[str(name)].input_shape))
    if name:
        return _test_inputs(str(name), data_dir, batch)
    raise ConfigError("give --input-shape C,H,W (or --dataset) to trace the model with")


def export_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="File (onnx) or folder (c) to write.")],
    path: Annotated[Path | None, typer.Argument(help="A .dsz file or checkpoint (or give --model).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx | c")] = "onnx",
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="Per-sample shape, e.g. 1,28,28 "
                                                    "(default: the recorded dataset's).")] = None,
    dataset: FileDatasetOpt = None,
    data_dir: DataDirOpt = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="Exporter option key=value (repeat), e.g. "
                                                     "opset=21 for onnx.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the model in a deployable format, its compressed weights kept compressed."""
    from ..core.errors import ConfigError
    from ..export import export

    net, meta = open_model(path, model, weights)
    options: dict[str, Any] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option takes key=value, got {item!r}")
        options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    report = export(net.eval(), example_inputs(meta, dataset, data_dir, input_shape), out, fmt, **options)
    if json_out:
        emit_json(report)
    else:
        for key, value in report.items():
            typer.echo(f"{key}: {value}")
