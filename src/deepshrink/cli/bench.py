"""``bench``: the runtime model of a ``.dsz`` file vs. the dense fp32 model vs. torch's dynamic int8."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import DataDirOpt, FileDatasetOpt, JsonOpt, ModelOpt, emit_json


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def parse_shape(given: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``."""
    from ..core.errors import ConfigError

    try:
        return tuple(int(d) for d in given.split(","))
    except ValueError as exc:
        raise ConfigError(f"--input-shape must be comma-separated integers like 1,28,28, got {given!r}") from exc


def _input_shape(meta: dict[str, Any], given: str | None) -> tuple[int, ...]:
    from ..core.errors import ConfigError
    from ..data import INFO

    if given:
        return parse_shape(given)
    if meta.get("dataset") in INFO:
        return tuple(INFO[str(meta["dataset"])].input_shape)
    raise ConfigError("the file records no built-in dataset; pass --input-shape C,H,W (or FEATURES), or --inputs test")


def _test_inputs(dataset: str | None, data_dir: str | None, batch: int) -> Any:
    """The first ``batch`` test samples of ``dataset`` as one batch (a clear error when there is none)."""
    from ..core.errors import ConfigError
    from ..data import calibration_batches, open_data
    from .common import data_options

    if not dataset:
        raise ConfigError("--inputs test needs a dataset: the file records none; pass --dataset")
    samples = open_data(str(dataset), data_options(data_dir=data_dir)).split("test", batch)
    if len(samples) < batch:  # type: ignore[arg-type]
        raise ConfigError(f"--batch {batch} exceeds the {len(samples)} test samples of {dataset}")  # type: ignore[arg-type]
    from ..core.graph import split_batch

    return split_batch(calibration_batches(samples, batch, batch_size=batch)[0])[0]


def bench(
    path: Annotated[Path, typer.Argument(help="Compressed .dsz file.")],
    batch: Annotated[int, typer.Option("--batch", help="Batch size of the timed forward passes.")] = 1,
    threads: Annotated[int, typer.Option("--threads", help="Threads for torch and the runtime kernels alike.")] = 1,
    repeats: Annotated[int, typer.Option("--repeats", help="Interleaved timing rounds (median reported).")] = 50,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="Per-sample shape, e.g. 1,28,28.")] = None,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Also probe load memory in fresh processes.")] = False,
    inputs: Annotated[str, typer.Option("--inputs", help="random (Gaussian) or test: the first BATCH test samples "
                                        "of --dataset (default: the file's).")] = "random",
    model: ModelOpt = None,
    dataset: FileDatasetOpt = None,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Time the runtime model against dense fp32 torch and dynamic int8 (same threads, medians).

    Real inputs (``--inputs test``) matter: the runtime skips the columns of zero inputs at batch 1 (image
    background, ReLU outputs), which Gaussian inputs only show after the first ReLU."""
    import torch

    from ..codec import load_compressed
    from ..core.errors import ConfigError
    from ..core.state import bake_
    from ..runtime import load_with_meta, runtime_layers
    from ..runtime.measure import compare, dynamic_int8, load_memory, resident_bytes, set_threads
    from ..train import save_checkpoint

    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    if inputs not in ("random", "test"):
        raise ConfigError(f"--inputs must be 'random' or 'test', got {inputs!r}")
    from ..models import build_from_spec

    set_threads(threads)
    started = time.perf_counter()
    fast, meta = load_with_meta(path, build_from_spec(model) if model else None)
    load_s = time.perf_counter() - started
    dense = bake_(load_compressed(path, build_from_spec(model) if model else None)).eval()
    int8 = dynamic_int8(copy.deepcopy(dense))
    if inputs == "test":
        x = _test_inputs(dataset or meta.get("dataset"), data_dir, batch)
        shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else ()
    else:
        shape = _input_shape(meta, input_shape)
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        t0 = time.perf_counter()
        got = fast(x)
        first_call_ms = 1e3 * (time.perf_counter() - t0)
        want = dense(x)
    timings = compare({"runtime": lambda: fast(x), "dense_fp32": lambda: dense(x), "dynamic_int8": lambda: int8(x)},
                      repeats=repeats)
    report: dict[str, Any] = {
        "file": str(path), "file_bytes": path.stat().st_size, "batch": batch, "threads": threads,
        "input_shape": list(shape), "inputs": inputs, "runtime_layers": runtime_layers(fast),
        "timings_ms": {k: round(v["median_ms"], 4) for k, v in timings.items()},
        "cpu_timings_ms": {k: round(v["cpu_median_ms"], 4) for k, v in timings.items()},
        "speedup": timings["dense_fp32"]["median_ms"] / timings["runtime"]["median_ms"],
        "speedup_vs_int8": timings["dynamic_int8"]["median_ms"] / timings["runtime"]["median_ms"],
        "max_abs_diff_vs_dense": float((got - want).abs().max()),
        "first_call_ms": round(first_call_ms, 3), "load_s": round(load_s, 4),
        "resident_bytes": {"runtime": resident_bytes(fast), "dense_fp32": resident_bytes(dense)},
        "torch": torch.__version__,
    }
    if memory and shape:
        with tempfile.TemporaryDirectory() as tmp:
            dense_file = Path(tmp) / "dense.pt"
            save_checkpoint(dense_file, dense)
            report["load_memory"] = {
                "runtime": load_memory(path, runtime=True, input_shape=shape, threads=threads),
                "dense_fp32": load_memory(dense_file, runtime=False, input_shape=shape, threads=threads),
            }
    if json_out:
        emit_json(report)
        return
    t = report["timings_ms"]
    typer.echo(f"{path} batch {batch}, {threads} thread(s), medians of {repeats} interleaved rounds:")
    typer.echo(f"  runtime {t['runtime']:.3f} ms | dense fp32 {t['dense_fp32']:.3f} ms | "
               f"dynamic int8 {t['dynamic_int8']:.3f} ms")
    typer.echo(f"  speedup vs dense {report['speedup']:.2f}x, vs int8 {report['speedup_vs_int8']:.2f}x; "
               f"max |diff| {report['max_abs_diff_vs_dense']:.2e}; first call {first_call_ms:.1f} ms")
    typer.echo(f"  resident bytes: runtime {report['resident_bytes']['runtime']:,} | "
               f"dense {report['resident_bytes']['dense_fp32']:,}")
    for name, probe in report.get("load_memory", {}).items():
        typer.echo(f"  load memory {name}: peak +{probe['peak_delta_bytes']:,} B, rss +{probe['rss_delta_bytes']:,} B")
