"""``demo`` (what ``make demo`` runs): Deep Compression of LeNet-300-100 on Fashion-MNIST, end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from .common import QuietOpt, ThreadsOpt, set_threads

BASELINE = Path("benchmarks/baselines/lenet300-fmnist.pt")
RECIPE = Path("recipes/deep-compression-lenet300.yaml")
OUT = Path("out/demo-lenet300.dsz")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def _baseline(quiet: bool) -> Path:
    """The committed baseline, or a freshly trained one (3 epochs) when it is missing."""
    if BASELINE.is_file():
        return BASELINE
    from ..data import dataset_info, load_dataset
    from ..models import build_model, model_kwargs_for
    from ..train import TrainConfig, evaluate, fit, save_checkpoint

    path = OUT.parent / "lenet300-fmnist-3ep.pt"
    if path.is_file():
        return path
    typer.echo(f"{BASELINE} not found: training a LeNet-300-100 baseline for 3 epochs -> {path}")
    info = dataset_info("fashion-mnist")
    model = build_model("lenet300", **model_kwargs_for("lenet300", info.input_shape, info.num_classes))
    config = TrainConfig(epochs=3)
    fit(model, load_dataset("fashion-mnist", "train"), config, quiet=quiet)
    accuracy = evaluate(model, load_dataset("fashion-mnist", "test"))["accuracy"]
    save_checkpoint(path, model, meta={"dataset": "fashion-mnist", "epochs": 3, "test_accuracy": accuracy,
                                       "config": config.__dict__})
    return path


def demo(
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Prune, retrain, share weights, fine-tune centroids and entropy-code LeNet-300-100; evaluate the file."""
    from ..codec import file_stats
    from ..codec.stats import format_table
    from ..data import load_dataset
    from ..io import load_model
    from ..recipes import compress_checkpoint
    from ..train import evaluate
    from .compress import format_stages

    set_threads(threads)
    started = time.perf_counter()
    baseline = _baseline(quiet)
    report = compress_checkpoint(baseline, RECIPE, OUT, dataset="fashion-mnist", quiet=quiet)
    typer.echo(format_stages(report))
    typer.echo("")
    typer.echo(format_table(file_stats(OUT)))
    model, _ = load_model(OUT)  # what `deepshrink eval` does: accuracy of the loaded file, on the test split
    test = load_dataset("fashion-mnist", "test")
    accuracy = evaluate(model, test)["accuracy"]
    base = report.get("baseline_test_accuracy")
    if base is None:
        base_model, _ = load_model(baseline)
        base = evaluate(base_model, test)["accuracy"]
    typer.echo("")
    typer.echo(f"baseline {baseline}: test top-1 {base:.4f}, {report['fp32_bytes']:,} bytes fp32")
    typer.echo(f"compressed {OUT}: test top-1 {accuracy:.4f} ({100 * (accuracy - base):+.2f} pp), "
               f"{report['bytes']:,} bytes, {report['ratio']}x smaller")
    typer.echo(_runtime_line(model, test))
    typer.echo(f"done in {time.perf_counter() - started:.0f}s; check with: deepshrink eval {OUT} --dataset fashion-mnist; "
               f"deepshrink bench {OUT} --inputs test")


def _runtime_line(dense: Any, test: Any) -> str:
    """Batch-1 latency of the file through ``deepshrink.runtime`` next to the dense model (same weights, 1 thread)."""
    import copy

    import torch

    from ..core.state import bake_
    from ..runtime import load as load_runtime
    from ..runtime.measure import compare, set_threads

    set_threads(1)
    dense = bake_(copy.deepcopy(dense)).eval()  # plain fp32 layers holding the quantized values
    fast = load_runtime(OUT)
    x = test[0][0].unsqueeze(0)
    timings = compare({"runtime": lambda: fast(x), "dense": lambda: dense(x)}, repeats=200)
    with torch.inference_mode():
        same = bool(torch.allclose(fast(x), dense(x), atol=1e-4))
    runtime_ms, dense_ms = timings["runtime"]["median_ms"], timings["dense"]["median_ms"]
    return (f"runtime (computes from the compressed form), batch 1, 1 thread: {runtime_ms:.3f} ms vs dense fp32 "
            f"{dense_ms:.3f} ms ({dense_ms / runtime_ms:.2f}x), outputs {'equal' if same else 'DIFFER'} to 1e-4")
