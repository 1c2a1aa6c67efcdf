"""``bench``: the runtime model of a ``.dsz`` file vs. the dense fp32 model vs. torch's dynamic int8."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from .common import DataDirOpt, FileDatasetOpt, JsonOpt, ModelOpt, emit_json

_LISTS = ("--batch", "--threads")


def spread_lists(args: list[str]) -> list[str]:
    """``--batch 1 64`` -> ``--batch 1 --batch 64`` (and so for ``--threads``): integers after a list option
    beyond its first value repeat the option."""
    out: list[str] = []
    option, seen = None, 0
    for word in args:
        if option is not None and word.isdigit():
            out += [word] if seen == 0 else [option, word]
            seen += 1
            continue
        option, seen = (word, 0) if word in _LISTS else (None, 0)
        out.append(word)
    return out


class _ListOptions(TyperCommand):
    """A command whose list options take several values after one flag (:func:`spread_lists`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_lists(list(args)))


def register(app: typer.Typer) -> None:
    app.command("bench", cls=_ListOptions)(bench)


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


def _setting(fast: Any, dense: Any, int8: Any, x: Any, repeats: int) -> dict[str, Any]:
    """One (batch, threads) setting: medians side by side, agreement and the kernel each runtime layer ran."""
    import torch

    from ..runtime.measure import compare, layer_kernels

    with torch.inference_mode():
        t0 = time.perf_counter()
        got = fast(x)
        first_call_ms = 1e3 * (time.perf_counter() - t0)
        want = dense(x)
    timings = compare({"runtime": lambda: fast(x), "dense_fp32": lambda: dense(x), "dynamic_int8": lambda: int8(x)},
                      repeats=repeats)
    return {
        "timings_ms": {k: round(v["median_ms"], 4) for k, v in timings.items()},
        "cpu_timings_ms": {k: round(v["cpu_median_ms"], 4) for k, v in timings.items()},
        "speedup": timings["dense_fp32"]["median_ms"] / timings["runtime"]["median_ms"],
        "speedup_vs_int8": timings["dynamic_int8"]["median_ms"] / timings["runtime"]["median_ms"],
        "max_abs_diff_vs_dense": float((got - want).abs().max()),
        "first_call_ms": round(first_call_ms, 3), "kernels": layer_kernels(fast),
    }


def bench(
    path: Annotated[Path, typer.Argument(help="Compressed .dsz file.")],
    batch: Annotated[list[int] | None, typer.Option(
        "--batch", help="Batch sizes of the timed forward passes, e.g. --batch 1 64.")] = None,
    threads: Annotated[list[int] | None, typer.Option(
        "--threads", help="Thread counts, for torch and the runtime kernels alike, e.g. --threads 1 2.")] = None,
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
    """Time the runtime model against dense fp32 torch and dynamic int8 (same threads, medians), for every
    batch size and thread count given; reports the kernel each runtime layer ran per setting.

    Real inputs (``--inputs test``) matter: the runtime skips the columns of zero inputs at batch 1 (image
    background, ReLU outputs), which Gaussian inputs only show after the first ReLU."""
    import torch

    from ..codec import load_compressed
    from ..core.errors import ConfigError
    from ..core.state import bake_
    from ..runtime import load_with_meta, runtime_layers
    from ..runtime.measure import dynamic_int8, load_memory, resident_bytes, set_threads
    from ..train import save_checkpoint

    batches, thread_counts = list(batch or [1]), list(threads or [1])
    if min(batches) < 1 or min(thread_counts) < 1:
        raise ConfigError(f"--batch and --threads must be >= 1, got {batches} and {thread_counts}")
    if inputs not in ("random", "test"):
        raise ConfigError(f"--inputs must be 'random' or 'test', got {inputs!r}")
    from ..models import build_from_spec

    set_threads(thread_counts[0])
    started = time.perf_counter()
    fast, meta = load_with_meta(path, build_from_spec(model) if model else None)
    load_s = time.perf_counter() - started
    dense = bake_(load_compressed(path, build_from_spec(model) if model else None)).eval()
    int8 = dynamic_int8(copy.deepcopy(dense))
    runs: list[dict[str, Any]] = []
    shape: tuple[int, ...] = ()
    for count in thread_counts:
        set_threads(count)
        for size in batches:
            if inputs == "test":
                x = _test_inputs(dataset or meta.get("dataset"), data_dir, size)
                shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else ()
            else:
                shape = _input_shape(meta, input_shape)
                x = torch.randn(size, *shape, generator=torch.Generator().manual_seed(0))
            runs.append({"batch": size, "threads": count, **_setting(fast, dense, int8, x, repeats)})
    report: dict[str, Any] = {
        "file": str(path), "file_bytes": path.stat().st_size, "input_shape": list(shape), "inputs": inputs,
        "runtime_layers": runtime_layers(fast), "load_s": round(load_s, 4),
        "resident_bytes": {"runtime": resident_bytes(fast), "dense_fp32": resident_bytes(dense)},
        "torch": torch.__version__,
    }
    report |= runs[0] if len(runs) == 1 else {"runs": runs}
    if memory and shape:
        with tempfile.TemporaryDirectory() as tmp:
            dense_file = Path(tmp) / "dense.pt"
            save_checkpoint(dense_file, dense)
            report["load_memory"] = {
                "runtime": load_memory(path, runtime=True, input_shape=shape, threads=thread_counts[0]),
                "dense_fp32": load_memory(dense_file, runtime=False, input_shape=shape, threads=thread_counts[0]),
            }
    if json_out:
        emit_json(report)
        return
    typer.echo(f"{path}, medians of {repeats} interleaved rounds:")
    for run in runs:
        t = run["timings_ms"]
        typer.echo(f"  batch {run['batch']}, {run['threads']} thread(s): runtime {t['runtime']:.3f} ms | dense fp32 "
                   f"{t['dense_fp32']:.3f} ms | dynamic int8 {t['dynamic_int8']:.3f} ms -> {run['speedup']:.2f}x vs "
                   f"dense, {run['speedup_vs_int8']:.2f}x vs int8; max |diff| {run['max_abs_diff_vs_dense']:.2e}; "
                   f"first call {run['first_call_ms']:.1f} ms")
        if run["kernels"]:
            typer.echo("    kernels: " + ", ".join(f"{k}={v}" for k, v in run["kernels"].items()))
    typer.echo(f"  resident bytes: runtime {report['resident_bytes']['runtime']:,} | "
               f"dense {report['resident_bytes']['dense_fp32']:,}")
    for name, probe in report.get("load_memory", {}).items():
        typer.echo(f"  load memory {name}: peak +{probe['peak_delta_bytes']:,} B, rss +{probe['rss_delta_bytes']:,} B")
