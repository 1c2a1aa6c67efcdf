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
    app.command("ternary")(ternary)


def ternary(
    checkpoint: Annotated[Path, typer.Argument(help="Trained fp32 checkpoint to start from.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="FILE.dsz (compressed) or FILE.pt (checkpoint with state).")],
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
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Ternarize every Linear/Conv weight but the first and last, train Wp, Wn and the latent weights, write OUT."""
    import torch

    from ..core.errors import ConfigError
    from ..data import load_dataset
    from ..ternary import TTQ, TWN, ternarize_, ternary_layers, ternary_param_groups
    from ..train import TrainConfig, evaluate, fit, is_main_process, load_checkpoint, shutdown
    from ..train.distributed import default_device, init_distributed

    if method not in ("ttq", "twn"):
        raise ConfigError(f"--method must be ttq or twn, got {method!r}")
    if out.suffix not in (".dsz", ".pt"):
        raise ConfigError(f"--out must end in .dsz (compressed file) or .pt (checkpoint), got {out}")
    set_threads(threads)
    init_distributed()
    torch.manual_seed(seed)
    model, meta = load_checkpoint(checkpoint)
    model = model.to(default_device())
    name = dataset_of(meta, dataset)
    test_set = load_dataset(name, "test", data_dir)
    main = is_main_process()
    fp32 = evaluate(model, test_set)["accuracy"] if main else float("nan")
    config = TTQ(t=t, keep_first_last=keep_first_last, init=init) if method == "ttq" else TWN(keep_first_last=keep_first_last)
    layers = ternarize_(model, config)
    before = evaluate(model, test_set)["accuracy"] if main else float("nan")
    train_config = TrainConfig(epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                               batch_size=batch_size, seed=seed)
    started = time.perf_counter()
    history = fit(model, load_dataset(name, "train", data_dir, limit=limit), train_config,
                  params=ternary_param_groups(model), quiet=quiet or json_out)
    seconds = time.perf_counter() - started
    if main:
        after = evaluate(model, test_set)["accuracy"]
        rows = [r.to_dict() for r in ternary_layers(model)]
        info = {"dataset": name, "method": method, "t": t, "epochs": epochs, "fp32_accuracy": fp32,
                "ternary_accuracy_before_training": before, "test_accuracy": after, "train_seconds": round(seconds, 1),
                "seed": seed, "threads": torch.get_num_threads(), "layers": rows, "source": str(checkpoint)}
        _write(model, out, info, entropy)
        if json_out:
            emit_json({"out": str(out), "bytes": out.stat().st_size, "history": history.epochs, **info})
        else:
            typer.echo(f"ternarized {len(layers)} layers ({method}, t={t}); test top-1 {fp32:.4f} fp32 -> {before:.4f} "
                       f"ternary -> {after:.4f} after {epochs} epochs ({seconds:.0f}s)")
            typer.echo(f"{'layer':<24} {'Wp':>9} {'Wn':>9} {'zeros':>7}")
            for row in rows:
                typer.echo(f"{row['name']:<24} {row['wp']:>9.4f} {row['wn']:>9.4f} {row['sparsity']:>7.1%}")
            typer.echo(f"wrote {out} ({out.stat().st_size:,} bytes)")
    shutdown()


def _write(model: nn.Module, out: Path, meta: dict[str, Any], entropy: str) -> None:
    """``.dsz`` through the codec (entropy-coded 2-bit codes + Wp, Wn per layer), or a checkpoint with the state."""
    if out.suffix == ".pt":
        from ..train import save_checkpoint

        save_checkpoint(out, model, meta=meta)
        return
    from ..codec import load_compressed, save_compressed

    save_compressed(model, out, entropy=entropy, meta=meta)
    load_compressed(out)  # read back: the loader checks every section and rebuilds the ternary weights
