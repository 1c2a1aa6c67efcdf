"""``prune`` (magnitude / OBD / random, one shot or iterative with retraining) and ``sensitivity``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
    SelectOpt,
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
    set_threads,
)
from .common import quality as measure
from .runs import RestartOpt, ResumeOpt, WorkdirOpt, open_run, resumable, run_mode


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)
    app.command("sensitivity")(sensitivity_cmd)


def parse_per_layer(text: str | None, option: str) -> float | dict[str, float] | None:
    """``"0.9"`` -> 0.9; ``"fc1=0.92,fc2=0.91"`` -> ``{"fc1": 0.92, "fc2": 0.91}``."""
    from ..core.errors import ConfigError

    if text is None:
        return None
    try:
        if "=" not in text:
            return float(text)
        pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
        return {k.strip(): float(v) for k, v in pairs}
    except ValueError as exc:
        raise ConfigError(f"{option} takes a number or layer=value pairs like fc1=0.9,fc2=0.8; got {text!r}") from exc


def prune_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write.")],
    path: Annotated[Path | None, typer.Argument(help="Checkpoint to prune (or give --model).")] = None,
    model_spec: ModelOpt = None,
    weights: WeightsOpt = None,
    method: Annotated[str, typer.Option("--method", help="magnitude | obd | obs (layer-wise OBS from the validation "
                                        "split, no retraining needed) | random")] = "magnitude",
    pattern: Annotated[str, typer.Option("--pattern", help="OBS: unstructured | 2:4")] = "unstructured",
    calib: Annotated[int, typer.Option("--calib", help="OBS: calibration samples (validation split).")] = 256,
    sparsity: Annotated[str | None, typer.Option("--sparsity", help="Final sparsity: 0.9 or fc1=0.92,fc2=0.9")] = None,
    quality: Annotated[str | None, typer.Option("--quality", help="Han's quality parameter (x layer std).")] = None,
    from_sensitivity: Annotated[Path | None, typer.Option("--from-sensitivity", help="Folder of `deepshrink sensitivity`.")] = None,
    max_drop: Annotated[float, typer.Option("--max-drop", help="With --from-sensitivity: accuracy-drop budget per layer.")] = 0.02,
    target: Annotated[float | None, typer.Option("--target", help="With --from-sensitivity: overall sparsity to reach.")] = None,
    scope: Annotated[str, typer.Option("--scope", help="layer | global")] = "layer",
    rounds: Annotated[int, typer.Option("--rounds", help="Prune->retrain rounds of rising sparsity.")] = 1,
    retrain_epochs: Annotated[int, typer.Option("--retrain-epochs", help="Retraining epochs per round (0: none).")] = 0,
    final_epochs: Annotated[int | None, typer.Option("--final-epochs", help="Retraining epochs of the last round.")] = None,
    power: Annotated[float, typer.Option("--power", help="Schedule shape: s_r = s (1 - (1 - r/R)^power); 3 = big steps first.")] = 1.0,
    lr: Annotated[float | None, typer.Option("--lr", help="Retraining lr (default: 1/10 of the file's training lr).")] = None,
    hessian: Annotated[str, typer.Option("--hessian", help="OBD: exact | gauss-newton | hutchinson")] = "gauss-newton",
    hessian_samples: Annotated[int, typer.Option("--hessian-samples", help="OBD: training samples for the Hessian.")] = 2048,
    dropout_adjust: Annotated[bool, typer.Option("--dropout-adjust", help="Han's dropout rule while retraining.")] = False,
    select: SelectOpt = None,
    dataset: FileDatasetOpt = None,
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
    workdir: WorkdirOpt = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Prune a model (Han et al. magnitude, Optimal Brain Damage or random), optionally retraining (on data without
    labels, by distillation from the model as it was before pruning). With retraining the run is resumable:
    rerun the same command (or add --resume) after a stop."""
    from dataclasses import replace

    import torch

    from ..core.errors import ConfigError
    from ..prune import (
        PRUNE_METHODS,
        Sensitivity,
        choose_thresholds,
        iterative_prune_,
        quality_schedule,
        rising_schedule,
    )
    from ..train import DistillationLoss, TrainConfig, save_checkpoint
    from ..train.stage import frozen_copy

    set_threads(threads)
    run_mode(resume, restart)
    torch.manual_seed(seed)
    given = [o for o, v in (("--sparsity", sparsity), ("--quality", quality), ("--from-sensitivity", from_sensitivity))
             if v is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of --sparsity, --quality, --from-sensitivity (got {given or 'none'})")
    if method not in PRUNE_METHODS:
        raise ConfigError(f"--method must be one of {', '.join(PRUNE_METHODS)}, got {method!r}")
    if quality is not None and method != "magnitude":
        raise ConfigError("--quality is Han's magnitude threshold; use --sparsity with --method obd/random")
    model, meta = open_model(path, model_spec, weights)
    source = open_source(meta, dataset, data_options(data_dir=data_dir, val_split=val_split, image_size=image_size,
                                                     resize=resize, norm=norm, mean=mean, std=std,
                                                     skip_bad_images=skip_bad_images, seed=seed))
    name = source.name
    train, val, test = source.split("train", limit), source.split("val"), source.split("test")
    reference = frozen_copy(model)
    before = measure(model, test, reference)
    chosen: dict[str, Any] | None = None
    final_sparsity = parse_per_layer(sparsity, "--sparsity")
    if from_sensitivity is not None:
        thresholds = choose_thresholds(Sensitivity.load(from_sensitivity), max_drop, target, model)
        chosen = thresholds.to_dict()
        final_sparsity = thresholds.sparsity
        if not quiet and not json_out:
            typer.echo(f"from sensitivity (budget {thresholds.budget:.4f}, overall {thresholds.overall:.3f}"
                       f"{'' if thresholds.met else ', target NOT met'}): {thresholds.sparsity}")
    if quality is not None:
        q = parse_per_layer(quality, "--quality")
        assert q is not None
        schedule = quality_schedule(q, rounds, scope)
    else:
        assert final_sparsity is not None
        schedule = rising_schedule(final_sparsity, rounds, method, scope, power, hessian=hessian,
                                   max_samples=calib if method == "obs" else hessian_samples, seed=seed,
                                   pattern=pattern)
    base_lr = float(meta.get("config", {}).get("lr", 0.05)) if isinstance(meta.get("config"), dict) else 0.05
    retrain = TrainConfig(epochs=retrain_epochs, lr=lr if lr is not None else base_lr / 10, seed=seed)
    new_meta = {"dataset": name, "source": str(path or model_spec), "method": method, "retrain": retrain.__dict__}
    final = replace(retrain, epochs=final_epochs) if final_epochs is not None else None
    kd_target = "logits" if source.input_shape is not None else "outputs"  # images: class scores; text: embeddings
    loss_fn = None if source.labelled else DistillationLoss(reference, alpha=1.0, target=kd_target)
    run = None
    if retrain_epochs > 0 or (final_epochs or 0) > 0:  # only runs that train are worth resuming
        run = open_run(ctx, out, workdir, resume, restart, model, meta, {
            "method": method, "pattern": pattern, "calib": calib, "sparsity": final_sparsity, "quality": quality,
            "scope": scope, "rounds": rounds, "retrain": retrain.__dict__, "final_epochs": final_epochs,
            "power": power, "hessian": hessian, "hessian_samples": hessian_samples, "dropout_adjust": dropout_adjust,
            "select": select, "dataset": name, "limit": limit, "val_split": val_split, "image_size": image_size,
            "resize": resize, "norm": norm, "mean": mean, "std": std, "skip_bad_images": skip_bad_images})
    with resumable(ctx, run, "prune"):
        history = iterative_prune_(model, train, val, schedule, retrain, None, select=select or None,
                                   dropout_adjust=dropout_adjust, final_retrain=final, meta=new_meta,
                                   quiet=quiet or json_out, loss_fn=loss_fn,
                                   prune_data=val if method == "obs" else None)
    after = measure(model, test, reference)
    last = history[-1]["prune"]
    save_checkpoint(out, model, meta={**new_meta, "test_accuracy": after.get("accuracy"),
                                      "test_accuracy_before": before.get("accuracy"), "test_quality": after,
                                      "prune_rounds": history, "thresholds": chosen})
    if run is not None:
        run.finish()
    report = {"file": str(path or model_spec), "out": str(out), "dataset": name, "method": method,
              "top1_before": before.get("accuracy"), "top1_after": after.get("accuracy"), "quality_before": before,
              "quality_after": after, "sparsity": last["sparsity"], "layers": last["layers"], "thresholds": chosen}
    if json_out:
        emit_json(report)
        return
    typer.echo(f"{'layer':<24} {'weights':>10} {'kept':>10} {'% kept':>7}")
    for row in last["layers"]:
        typer.echo(f"{row['name']:<24} {row['params']:>10,} {row['kept_after']:>10,} {100 * row['kept_fraction']:>6.1f}%")
    typer.echo(f"{path or model_spec} -> {out}: sparsity {last['sparsity']:.3f} "
               f"({1 / max(1 - last['sparsity'], 1e-9):.1f}x fewer weights); before: {describe(before)}; "
               f"after: {describe(after)}")


def sensitivity_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for sensitivity.csv / .json / .png.")],
    path: Annotated[Path | None, typer.Argument(help="Checkpoint to analyse (or give --model).")] = None,
    model_spec: ModelOpt = None,
    weights: WeightsOpt = None,
    dataset: FileDatasetOpt = None,
    sparsities: Annotated[str, typer.Option("--sparsities", help="Comma-separated sweep.")] =
        "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.85,0.9,0.95",
    workers: Annotated[int, typer.Option("--workers", help="Parallel processes (one layer each).")] = 1,
    technique: Annotated[str, typer.Option("--technique", help="prune (sparsity sweep) | share (bits per layer: "
                                           "k-means weight sharing of each layer alone).")] = "prune",
    bits: Annotated[str, typer.Option("--bits", help="share: comma-separated widths to sweep.")] = "1,2,3,4,5,6",
    budget_bytes: Annotated[float | None, typer.Option("--budget-bytes", help="share: also choose bits per layer "
                                                       "within this estimate of code + codebook bytes.")] = None,
    max_drop: Annotated[float | None, typer.Option("--max-drop", help="Also choose per-layer sparsities (share: bits) within this drop.")] = None,
    target: Annotated[float | None, typer.Option("--target", help="Overall sparsity to reach when choosing.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N validation samples.")] = None,
    select: SelectOpt = None,
    data_dir: DataDirOpt = None,
    val_split: ValSplitOpt = None,
    image_size: ImageSizeOpt = 224,
    resize: ResizeOpt = None,
    norm: NormOpt = "imagenet",
    mean: MeanOpt = None,
    std: StdOpt = None,
    skip_bad_images: SkipBadOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Prune each layer alone over a sweep of sparsities; write accuracy curves (CSV, JSON, plot). On data without
    labels the curves are top-1 agreement with the unpruned model."""
    import json

    from ..core.atomic import atomic_write_text
    from ..core.errors import ConfigError
    from ..prune import choose_thresholds, sensitivity_sweep

    set_threads(threads)
    try:
        sweep = [float(s) for s in sparsities.split(",") if s.strip()]
    except ValueError as exc:
        raise ConfigError(f"--sparsities takes comma-separated numbers, got {sparsities!r}") from exc
    model, meta = open_model(path, model_spec, weights)
    source = open_source(meta, dataset, data_options(data_dir=data_dir, val_split=val_split, image_size=image_size,
                                                     resize=resize, norm=norm, mean=mean, std=std,
                                                     skip_bad_images=skip_bad_images))
    val = source.split("val", limit)
    if technique == "share":
        _share_sensitivity(model, val, bits, budget_bytes, max_drop, select or None, out, path or model_spec,
                           source.name, quiet, json_out)
        return
    if technique != "prune":
        raise ConfigError(f"--technique must be prune or share, got {technique!r}")
    if budget_bytes is not None:
        raise ConfigError("--budget-bytes goes with --technique share")
    result = sensitivity_sweep(model, val, sweep, select or None, out_dir=out, workers=workers, quiet=quiet or json_out)
    report: dict[str, Any] = {"file": str(path or model_spec), "dataset": source.name, "out": str(out),
                              **result.to_dict()}
    if max_drop is not None:
        thresholds = choose_thresholds(result, max_drop, target, model)
        report["thresholds"] = thresholds.to_dict()
        atomic_write_text(out / "thresholds.json", json.dumps(thresholds.to_dict(), indent=1))
    if json_out:
        emit_json(report)
        return
    typer.echo(f"baseline val top-1 {result.baseline:.4f}")
    for layer, curve in result.curves.items():
        typer.echo(f"{layer:<24} " + " ".join(f"{100 * s:.0f}%:{100 * a:.1f}" for s, a in curve.items()))
    if "thresholds" in report:
        t = report["thresholds"]
        typer.echo(f"chosen (budget {t['budget']:.4f}, overall {t['overall']:.3f}, met {t['met']}): {t['sparsity']}")
    typer.echo(f"wrote {out}/sensitivity.csv, sensitivity.json, sensitivity.png")


def _share_sensitivity(model: Any, val: Any, bits: str, budget_bytes: float | None, max_drop: float | None,
                       select: Any, out: Path, source_file: Any, dataset: str, quiet: bool, json_out: bool) -> None:
    """``sensitivity --technique share``: accuracy vs bits per layer, and (with a budget) the bits chosen."""
    import json

    from ..core.atomic import atomic_write_text
    from ..core.errors import ConfigError
    from ..share import bits_sweep, choose_bits

    try:
        widths = [int(b) for b in bits.split(",") if b.strip()]
    except ValueError as exc:
        raise ConfigError(f"--bits takes comma-separated integers, got {bits!r}") from exc
    result = bits_sweep(model, val, widths, select, out_dir=out, quiet=quiet or json_out)
    report: dict[str, Any] = {"file": str(source_file), "dataset": dataset, "out": str(out), **result.to_dict()}
    if budget_bytes is not None or max_drop is not None:
        choice = choose_bits(result, budget_bytes=budget_bytes, max_drop=max_drop)
        report["choice"] = choice.to_dict()
        atomic_write_text(out / "bits.json", json.dumps(choice.to_dict(), indent=1))
    if json_out:
        emit_json(report)
        return
    typer.echo(f"baseline val top-1 {result.baseline:.4f}")
    for layer, curve in result.curves.items():
        typer.echo(f"{layer:<24} " + " ".join(f"{b}b:{100 * a:.1f}" for b, a in curve.items()))
    if "choice" in report:
        c = report["choice"]
        typer.echo(f"chosen (about {c['bytes']:.0f} bytes, met {c['met']}): {c['bits']}")
    typer.echo(f"wrote {out}/sensitivity.csv, sensitivity.json, sensitivity.png")
