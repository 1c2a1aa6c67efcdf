"""``deepshrink ternary``: Trained Ternary Quantization (or the TWN baseline) of a trained checkpoint."""

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
from .runs import RestartOpt, ResumeOpt, WorkdirOpt, open_run, resumable, run_mode


def register(app: typer.Typer) -> None:
    app.command("ternary")(ternary)


def ternary(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="FILE.dsz (compressed) or FILE.pt (checkpoint with state).")],
    checkpoint: Annotated[Path | None, typer.Argument(help="Trained fp32 checkpoint to start from (or give --model).")] = None,
    model_spec: ModelOpt = None,
    weights: WeightsOpt = None,
    t: Annotated[float, typer.Option("--t", help="Threshold factor: Delta = t * max|w| per layer.")] = 0.05,
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    dataset: FileDatasetOpt = None,
    method: Annotated[str, typer.Option("--method", help="ttq (trained Wp/Wn) | twn (symmetric fixed scale).")] = "ttq",
    init: Annotated[str, typer.Option("--init", help="TTQ start scales: mean (least squares) | paper (1.0).")] = "mean",
    keep_first_last: Annotated[bool, typer.Option("--keep-first-last/--all-layers",
                                                  help="First and last layers full precision (the paper).")] = True,
    lr: Annotated[float, typer.Option("--lr")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 128,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam (default: per-parameter steps keep the "
                                                           "Wp/Wn updates stable without BN) | sgd.")] = "adam",
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 5e-4,
    entropy: Annotated[str, typer.Option("--entropy", help="Coding of the codes in .dsz: ans | huffman | raw.")] = "ans",
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
    """Ternarize every Linear/Conv weight but the first and last, train Wp, Wn and the latent weights, write OUT
    (on data without labels the training is distillation from the fp32 model). The training is resumable: rerun
    the same command (or add --resume) after a stop."""
    import torch

    from ..core.errors import ConfigError
    from ..ternary import TTQ, TWN, ternarize_, ternary_layers, ternary_param_groups
    from ..train import DistillationLoss, TrainConfig, fit, is_main_process, shutdown
    from ..train.distributed import default_device, init_distributed
    from ..train.stage import frozen_copy

    if method not in ("ttq", "twn"):
        raise ConfigError(f"--method must be ttq or twn, got {method!r}")
    if out.suffix not in (".dsz", ".pt"):
        raise ConfigError(f"--out must end in .dsz (compressed file) or .pt (checkpoint), got {out}")
    set_threads(threads)
    run_mode(resume, restart)
    init_distributed()
    torch.manual_seed(seed)
    model, meta = open_model(checkpoint, model_spec, weights)
    run = open_run(ctx, out, workdir, resume, restart, model, meta, {
        "t": t, "epochs": epochs, "method": method, "init": init, "keep_first_last": keep_first_last, "lr": lr,
        "batch_size": batch_size, "optimizer": optimizer, "weight_decay": weight_decay, "dataset": dataset,
        "limit": limit, "val_split": val_split, "image_size": image_size, "resize": resize, "norm": norm,
        "mean": mean, "std": std, "skip_bad_images": skip_bad_images, "seed": seed}) if epochs > 0 else None
    model = model.to(default_device())
    source = open_source(meta, dataset, data_options(data_dir=data_dir, val_split=val_split, image_size=image_size,
                                                     resize=resize, norm=norm, mean=mean, std=std,
                                                     skip_bad_images=skip_bad_images, seed=seed))
    test_set = source.split("test")
    main = is_main_process()
    reference = frozen_copy(model)
    fp32 = quality(model, test_set, reference) if main else {}
    config = TTQ(t=t, keep_first_last=keep_first_last, init=init) if method == "ttq" else TWN(keep_first_last=keep_first_last)
    layers = ternarize_(model, config)
    before = quality(model, test_set, reference) if main else {}
    train_config = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                               batch_size=batch_size, seed=seed)
    loss_fn = None if source.labelled else DistillationLoss(
        reference, alpha=1.0, target="logits" if source.input_shape else "outputs")
    started = time.perf_counter()
    with resumable(ctx, run, "ternary"):
        history = fit(model, source.split("train", limit), train_config, params=ternary_param_groups(model),
                      quiet=quiet or json_out, loss_fn=loss_fn)
    seconds = time.perf_counter() - started
    if main:
        after = quality(model, test_set, reference)
        rows = [r.to_dict() for r in ternary_layers(model)]
        info = {"dataset": source.name, "method": method, "t": t, "epochs": epochs, "fp32": fp32,
                "ternary_before_training": before, "ternary": after, "fp32_accuracy": fp32.get("accuracy"),
                "ternary_accuracy_before_training": before.get("accuracy"), "test_accuracy": after.get("accuracy"),
                "train_seconds": round(seconds, 1), "seed": seed, "threads": torch.get_num_threads(), "layers": rows,
                "source": str(checkpoint or model_spec)}
        _write(model, out, info, entropy)
        if json_out:
            emit_json({"out": str(out), "bytes": out.stat().st_size, "history": history.epochs, **info})
        else:
            typer.echo(f"ternarized {len(layers)} layers ({method}, t={t}); fp32: {describe(fp32)}; ternary: "
                       f"{describe(before)}; after {epochs} epochs ({seconds:.0f}s): {describe(after)}")
            typer.echo(f"{'layer':<24} {'Wp':>9} {'Wn':>9} {'zeros':>7}")
            for row in rows:
                typer.echo(f"{row['name']:<24} {row['wp']:>9.4f} {row['wn']:>9.4f} {row['sparsity']:>7.1%}")
            typer.echo(f"wrote {out} ({out.stat().st_size:,} bytes)")
    if run is not None:
        run.finish()
    shutdown()


def _write(model: nn.Module, out: Path, meta: dict[str, Any], entropy: str) -> None:
    """``.dsz`` through the codec (entropy-coded 2-bit codes + Wp, Wn per layer), or a checkpoint with the state."""
    if out.suffix == ".pt":
        from ..train import save_checkpoint

        save_checkpoint(out, model, meta=meta)
        return
    from ..codec import read_compressed, save_compressed

    save_compressed(model, out, entropy=entropy, meta=meta)  # checks every weight reproduces bit for bit
    read_compressed(out)  # read back: every section's checksum and the codes checked
