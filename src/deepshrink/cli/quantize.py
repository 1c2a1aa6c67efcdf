"""``deepshrink quantize``: dynamic (or static) fixed point of a trained model, with integer inference."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from torch import nn

from .common import (
    DataDirOpt,
    ExcludeOpt,
    FileDatasetOpt,
    ImageSizeOpt,
    JsonOpt,
    MeanOpt,
    ModelOpt,
    NormOpt,
    QuietOpt,
    ResizeOpt,
    SeedOpt,
    SelectOpt,
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
    app.command("quantize")(quantize)


def quantize(
    out: Annotated[Path, typer.Option("--out", "-o", help="FILE.dsz (compressed) or FILE.pt (checkpoint with state).")],
    checkpoint: Annotated[Path | None, typer.Argument(help="Trained checkpoint (or .dsz) to quantize (or give "
                                                      "--model).")] = None,
    model_spec: ModelOpt = None,
    weights: WeightsOpt = None,
    scheme: Annotated[str, typer.Option("--scheme", help="dfp: dynamic fixed point (Qiu et al. 2016).")] = "dfp",
    bits: Annotated[str, typer.Option("--bits", help="Weight bits: N, or per layer kind conv=8,fc=4.")] = "8",
    act_bits: Annotated[int | None, typer.Option("--act-bits", help="Activation bits (default: widest weight bits).")] = None,
    static: Annotated[bool, typer.Option("--static/--dynamic", help="One global fractional length (baseline).")] = False,
    granularity: Annotated[str, typer.Option("--granularity", help="Weight fractional lengths: layer (the paper) | "
                                             "channel (one per output channel).")] = "layer",
    activations: Annotated[str, typer.Option("--activations", help="static (calibrated) | per_token (Linear "
                                             "inputs: a format per row chosen at run time).")] = "static",
    max_bits_avg: Annotated[float | None, typer.Option("--max-bits-avg", help="Mixed precision: widen the costliest "
                                                       "layers to --wide-bits within this average weight width.")] = None,
    wide_bits: Annotated[int, typer.Option("--wide-bits", help="Width of widened layers.")] = 16,
    max_act_bits_avg: Annotated[float | None, typer.Option("--max-act-bits-avg", help="Also widen single layers' "
                                                           "activations to --wide-bits (those the network output "
                                                           "gains most from) within this average activation "
                                                           "width.")] = None,
    mixed_objective: Annotated[str, typer.Option("--mixed-objective", help="What mixed precision widens by: layer "
                                                 "(each layer's own error) | network (the network output's error, "
                                                 "one calibration pass per layer).")] = "layer",
    unsigned_activations: Annotated[bool, typer.Option("--unsigned-activations/--signed-activations", help=(
        "Unsigned formats ([0, 2^bits - 1]) for non-negative activations (ReLU/ReLU6 outputs): one more bit of "
        "resolution; --signed-activations: the paper's signed formats everywhere."))] = True,
    rounding: Annotated[str, typer.Option("--rounding", help="half_up (the paper; the C backend) | half_even "
                                          "(ONNX's rule: a Q/DQ export is then bit-exact).")] = "half_up",
    weight_rounding: Annotated[str, typer.Option("--weight-rounding", help="nearest (the paper) | obs (GPTQ: each "
                                                 "column's rounding error compensated through the input Hessian)."
                                                 )] = "nearest",
    bias_correction: Annotated[bool, typer.Option("--bias-correction", help="Fold each layer's mean output shift "
                                                  "into its bias.")] = False,
    equalize: Annotated[bool, typer.Option("--equalize", help="Cross-layer equalisation of channel ranges "
                                           "first.")] = False,
    select: SelectOpt = None,
    exclude: ExcludeOpt = None,
    calib: Annotated[int, typer.Option("--calib", help="Calibration samples from the validation split (the first N "
                                       "of its seeded order).")] = 512,
    objective: Annotated[str, typer.Option("--weight-objective", help="Weight search: error | accuracy "
                                           "(calibration top-1 may overrule the least-error choice).")] = "error",
    dataset: FileDatasetOpt = None,
    evaluate_after: Annotated[bool, typer.Option("--eval/--no-eval", help="Test top-1 before/after and of "
                                                 "the integer engine.")] = True,
    entropy: Annotated[str, typer.Option("--entropy", help="Coding of the integers in .dsz: huffman | ans | raw.")] = "huffman",
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
    """Quantize every Linear/Conv layer to fixed point, print the per-layer (b, fl_w, fl_a) table, write OUT."""
    import torch

    from ..core.errors import ConfigError, UnsupportedLayerError
    from ..data import calibration_batches
    from ..fixedpoint import DynamicFixedPoint, parse_bits, quantize_
    from ..runtime import IntegerModel, swap_integer_layers_
    from ..train.stage import frozen_copy

    if scheme != "dfp":
        raise ConfigError(f"--scheme {scheme!r} is not supported here (known: dfp)")
    if out.suffix not in (".dsz", ".pt"):
        raise ConfigError(f"--out must end in .dsz (compressed file) or .pt (checkpoint), got {out}")
    if calib < 1:
        raise ConfigError(f"--calib must be at least 1, got {calib}")
    set_threads(threads)
    torch.manual_seed(seed)
    model, meta = open_model(checkpoint, model_spec, weights)
    source = open_source(meta, dataset, data_options(data_dir=data_dir, val_split=val_split, image_size=image_size,
                                                     resize=resize, norm=norm, mean=mean, std=std,
                                                     skip_bad_images=skip_bad_images, seed=seed))
    config = DynamicFixedPoint(bits=parse_bits(bits), act_bits=act_bits, static=static, weight_objective=objective,
                               granularity=granularity, activations=activations, max_bits_avg=max_bits_avg,
                               wide_bits=wide_bits, mixed_objective=mixed_objective,
                               bias_correction=bias_correction, equalize=equalize, rounding=rounding,
                               weight_rounding=weight_rounding, max_act_bits_avg=max_act_bits_avg,
                               unsigned_activations=unsigned_activations, quantize_outputs=activations == "static")
    batches = calibration_batches(source.split("val"), calib)
    test_set = source.split("test") if evaluate_after else None
    reference = frozen_copy(model)
    fp32 = quality(model, test_set, reference) if test_set is not None else None
    started = time.perf_counter()
    report = quantize_(model, config, calib=batches, select=select or None, exclude=exclude or None)
    seconds = time.perf_counter() - started
    info: dict[str, Any] = {"dataset": source.name, "scheme": "static" if static else "dynamic", "bits": bits,
                            "act_bits": config.activation_bits, "calib_samples": calib,
                            "weight_objective": objective, "search_seconds": round(seconds, 2),
                            "source": str(checkpoint or model_spec), **report.to_dict()}
    if test_set is not None:
        info["fp32"] = fp32
        info["simulated"] = quality(model, test_set, reference)
        engine: nn.Module
        try:
            engine, info["integer_engine"] = IntegerModel(model, example=batches[0]), "whole model on integers"
        except UnsupportedLayerError as exc:  # a forward the tracer cannot follow: integer layers, float between
            engine = swap_integer_layers_(copy.deepcopy(model))
            info["integer_engine"] = f"integer layers, float between them ({type(exc).__name__}: {exc})"
        info["integer"] = quality(engine, test_set, reference)
        info["fp32_accuracy"], info["test_accuracy"] = fp32.get("accuracy") if fp32 else None, info["simulated"].get("accuracy")
        info["integer_accuracy"] = info["integer"].get("accuracy")
    _write(model, out, {k: v for k, v in info.items() if k != "layers"}, entropy)
    info["out"], info["bytes"] = str(out), out.stat().st_size
    if json_out:
        emit_json(info)
        return
    typer.echo(str(report))
    if test_set is not None and not quiet:
        typer.echo(f"fp32: {describe(info['fp32'])}; {info['scheme']} fixed point: {describe(info['simulated'])}; "
                   f"integer engine ({info['integer_engine'].split(' (')[0]}): {describe(info['integer'])} "
                   f"[search {seconds:.1f}s]")
    typer.echo(f"wrote {out} ({info['bytes']:,} bytes)")


def _write(model: nn.Module, out: Path, meta: dict[str, Any], entropy: str) -> None:
    """``.dsz`` through the codec (read back and checked), or a checkpoint carrying the fixed-point state."""
    if out.suffix == ".pt":
        from ..train import save_checkpoint

        save_checkpoint(out, model, meta=meta)
        return
    from ..codec import read_compressed, save_compressed

    save_compressed(model, out, entropy=entropy, meta=meta)  # checks every weight reproduces bit for bit
    read_compressed(out)  # read back: every section's checksum, size and integer range checked
