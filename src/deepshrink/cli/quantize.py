"""``deepshrink quantize``: dynamic (or static) fixed point of a trained model, with integer inference."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from torch import nn

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
    app.command("quantize")(quantize)


def quantize(
    checkpoint: Annotated[Path, typer.Argument(help="Trained checkpoint (or .dsz) to quantize.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="FILE.dsz (compressed) or FILE.pt (checkpoint with state).")],
    scheme: Annotated[str, typer.Option("--scheme", help="dfp: dynamic fixed point (Qiu et al. 2016).")] = "dfp",
    bits: Annotated[str, typer.Option("--bits", help="Weight bits: N, or per layer kind conv=8,fc=4.")] = "8",
    act_bits: Annotated[int | None, typer.Option("--act-bits", help="Activation bits (default: widest weight bits).")] = None,
    static: Annotated[bool, typer.Option("--static/--dynamic", help="One global fractional length (baseline).")] = False,
    calib: Annotated[int, typer.Option("--calib", help="Calibration images from the validation split.")] = 512,
    objective: Annotated[str, typer.Option("--weight-objective", help="Weight search: error | accuracy "
                                           "(calibration top-1 may overrule the least-error choice).")] = "error",
    dataset: FileDatasetOpt = None,
    evaluate_after: Annotated[bool, typer.Option("--eval/--no-eval", help="Test top-1 before/after and of "
                                                 "the integer engine.")] = True,
    entropy: Annotated[str, typer.Option("--entropy", help="Coding of the integers in .dsz: huffman | ans | raw.")] = "huffman",
    data_dir: DataDirOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Quantize every Linear/Conv layer to fixed point, print the per-layer (b, fl_w, fl_a) table, write OUT."""
    import torch

    from ..core.errors import ConfigError
    from ..data import load_dataset, make_loader
    from ..fixedpoint import DynamicFixedPoint, parse_bits, quantize_
    from ..io import load_model
    from ..runtime import IntegerModel
    from ..train import evaluate

    if scheme != "dfp":
        raise ConfigError(f"--scheme {scheme!r} is not supported here (known: dfp)")
    if out.suffix not in (".dsz", ".pt"):
        raise ConfigError(f"--out must end in .dsz (compressed file) or .pt (checkpoint), got {out}")
    if calib < 1:
        raise ConfigError(f"--calib must be at least 1, got {calib}")
    set_threads(threads)
    torch.manual_seed(seed)
    model, meta = load_model(checkpoint)
    name = dataset_of(meta, dataset)
    config = DynamicFixedPoint(bits=parse_bits(bits), act_bits=act_bits, static=static, weight_objective=objective)
    val = load_dataset(name, "val", data_dir)
    batches = [(x, y) for x, y in make_loader(torch.utils.data.Subset(val, range(min(calib, len(val)))), 256)]
    test_set = load_dataset(name, "test", data_dir) if evaluate_after else None
    fp32 = evaluate(model, test_set)["accuracy"] if test_set is not None else None
    started = time.perf_counter()
    report = quantize_(model, config, calib=batches)
    seconds = time.perf_counter() - started
    info: dict[str, Any] = {"dataset": name, "scheme": "static" if static else "dynamic", "bits": bits,
                            "act_bits": config.activation_bits, "calib_images": sum(len(b[0]) for b in batches),
                            "weight_objective": objective,
                            "search_seconds": round(seconds, 2), "source": str(checkpoint), **report.to_dict()}
    if test_set is not None:
        info["fp32_accuracy"] = fp32
        info["test_accuracy"] = evaluate(model, test_set)["accuracy"]
        try:
            info["integer_accuracy"] = evaluate(IntegerModel(model), test_set)["accuracy"]
        except Exception as exc:  # untraceable models keep the simulated figure only
            info["integer_accuracy"] = None
            info["integer_note"] = f"{type(exc).__name__}: {exc}"
    _write(model, out, {k: v for k, v in info.items() if k != "layers"}, entropy)
    info["out"], info["bytes"] = str(out), out.stat().st_size
    if json_out:
        emit_json(info)
        return
    typer.echo(str(report))
    if test_set is not None and not quiet:
        typer.echo(f"test top-1: fp32 {fp32:.4f} -> {info['scheme']} fixed point {info['test_accuracy']:.4f} "
                   f"(integer engine {info['integer_accuracy']}) [search {seconds:.1f}s]")
    typer.echo(f"wrote {out} ({info['bytes']:,} bytes)")


def _write(model: nn.Module, out: Path, meta: dict[str, Any], entropy: str) -> None:
    """``.dsz`` through the codec (read back and checked), or a checkpoint carrying the fixed-point state."""
    if out.suffix == ".pt":
        from ..train import save_checkpoint

        save_checkpoint(out, model, meta=meta)
        return
    from ..codec import load_compressed, save_compressed

    save_compressed(model, out, entropy=entropy, meta=meta)
    load_compressed(out)  # read back: every section checked, the fixed-point weights rebuilt bit-exactly
