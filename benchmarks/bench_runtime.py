"""Whole compressed LeNets through the runtime: latency, equality with the dense-quantized model, memory.

Each trained Fashion-MNIST baseline (``benchmarks/baselines/``) is magnitude-pruned to the Deep Compression
paper's per-layer densities (LeNet-300-100: 8/9/26%; LeNet-5: 66/12/8/19%) and weight-shared (k-means, linear
init: 8-bit conv, 5-bit fc) with the library (``core.set_mask`` + ``deepshrink.share``), no retraining; it is
written with ``deepshrink.codec.save_compressed`` and loaded back with ``deepshrink.runtime.load``.

Compared side by side (same process, same threads, interleaved rounds, medians): the runtime model, the
dense fp32 model with the same (dequantized) weights, and torch's dynamic int8 of that dense model; batch 1
and 64. Also: outputs vs. the dense-quantized model on the whole test set, memory of loading each in a
fresh process (dense: an fp32 checkpoint of the same weights), and the numba compile cost (cold cache vs.
cached) apart from the steady-state figures. Run:

    nice -n 10 .venv/bin/python benchmarks/bench_runtime.py --threads 1 2   # writes benchmarks/results/runtime-lenets.json

``--files A.dsz B.dsz ...`` benchmarks given files instead (e.g. the trained Deep Compression output of
``deepshrink compress ... --recipe recipes/deep-compression-lenet300.yaml``); the baseline accuracy is that of
the committed checkpoint for the file's recorded arch, when there is one:

    nice -n 10 .venv/bin/python benchmarks/bench_runtime.py --threads 1 \
        --files out/dc-lenet300.dsz out/dc-lenet5.dsz   # writes benchmarks/results/runtime-lenets-trained.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from deepshrink.codec import load_compressed, load_compressed_with_meta, save_compressed
from deepshrink.core import atomic_write_text, bake_, set_mask
from deepshrink.data import load_dataset
from deepshrink.runtime import load, runtime_layers
from deepshrink.runtime.measure import (
    compare,
    dynamic_int8,
    kernel_start_cost,
    load_memory,
    resident_bytes,
    set_threads,
)
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.train import evaluate, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent
MODELS = {
    "lenet300": ("lenet300-fmnist.pt", {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}),
    "lenet5": ("lenet5-fmnist.pt", {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}),
}


def compress_(model: nn.Module, density: dict[str, float]) -> nn.Module:
    """Magnitude pruning to ``density`` per layer, then 8-bit conv / 5-bit fc k-means sharing (in place)."""
    for name, keep in density.items():
        layer = model.get_submodule(name)
        magnitude = layer.weight.detach().abs()
        k = max(round(keep * magnitude.numel()), 1)
        threshold = magnitude.flatten().kthvalue(magnitude.numel() - k + 1).values
        set_mask(layer, magnitude >= threshold)
    share_weights_(model, WeightSharing(bits={"conv": 8, "fc": 5}, init="linear"))
    return model.eval()


def one_shot(name: str, work: Path) -> tuple[Path, nn.Module]:
    """Write the one-shot (untrained) compressed ``name`` to ``work``; return the file and the baseline."""
    checkpoint, density = MODELS[name]
    baseline, _ = load_checkpoint(ROOT / "baselines" / checkpoint)
    compressed = compress_(copy.deepcopy(baseline), density)
    dsz = work / f"{name}.dsz"
    save_compressed(compressed, dsz, meta={"dataset": "fashion-mnist"})
    return dsz, baseline


def given_file(path: Path) -> tuple[str, dict[str, Any], nn.Module | None]:
    """Name, meta and the committed baseline (matched by the file's recorded arch) of a given ``.dsz`` file."""
    _, meta = load_compressed_with_meta(path)
    arch = str(meta.get("arch") or "")
    key = next((k for k in MODELS if arch.startswith(k)), None)
    baseline = load_checkpoint(ROOT / "baselines" / MODELS[key][0])[0] if key else None
    return path.stem, meta, baseline


def run_model(name: str, dsz: Path, baseline: nn.Module | None, args: argparse.Namespace, work: Path,
              test: Any, source: Path | None = None) -> dict[str, Any]:
    """Benchmark the runtime on ``dsz`` against the dense-quantized model of ``source`` (default: ``dsz``)."""
    fast = load(dsz)
    dense = bake_(load_compressed(source or dsz)).eval()  # the dense-quantized model: same values, fp32 dense layers
    dense_file = work / f"{name}-dense.pt"
    save_checkpoint(dense_file, dense)
    int8 = dynamic_int8(copy.deepcopy(dense)).eval()
    images = test.tensors[0]
    with torch.inference_mode():
        got, want = fast(images), dense(images)
    row: dict[str, Any] = {
        "runtime_layers": runtime_layers(fast),
        "file_bytes": (source or dsz).stat().st_size, "runtime_file_bytes": dsz.stat().st_size,
        "dense_checkpoint_bytes": dense_file.stat().st_size,
        "test_accuracy": {"baseline": evaluate(baseline, test)["accuracy"] if baseline is not None else None,
                          "dense_quantized": evaluate(dense, test)["accuracy"],
                          "runtime": float((got.argmax(1) == test.tensors[1]).float().mean())},
        "equality_vs_dense_quantized": {"max_abs_diff": float((got - want).abs().max()),
                                        "max_rel_diff": float(((got - want).abs() / want.abs().clamp_min(1e-3)).max()),
                                        "argmax_agreement": float((got.argmax(1) == want.argmax(1)).float().mean()),
                                        "samples": int(images.shape[0])},
        "resident_bytes": {"runtime": resident_bytes(fast), "dense_fp32": resident_bytes(dense)},
        "latency": {},
    }
    shape = tuple(images.shape[1:])
    for threads in args.threads:
        set_threads(threads)
        for batch in args.batches:
            x = images[:batch].contiguous()
            timings = compare({"runtime": lambda x=x: fast(x), "dense_fp32": lambda x=x: dense(x),
                               "dynamic_int8": lambda x=x: int8(x)}, repeats=args.repeats, budget_s=args.budget)
            med = {k: v["median_ms"] for k, v in timings.items()}
            cpu = {k: v["cpu_median_ms"] for k, v in timings.items()}
            row["latency"][f"threads{threads}_batch{batch}"] = {
                "threads": threads, "batch": batch, "timings": timings,
                "speedup_vs_dense": med["dense_fp32"] / med["runtime"],
                "speedup_vs_int8": med["dynamic_int8"] / med["runtime"],
                "cpu_speedup_vs_dense": cpu["dense_fp32"] / cpu["runtime"],
                "cpu_speedup_vs_int8": cpu["dynamic_int8"] / cpu["runtime"]}
            print(f"{name} threads {threads} batch {batch:>2}: runtime {med['runtime']:.4f} ms | dense fp32 "
                  f"{med['dense_fp32']:.4f} ms | dynamic int8 {med['dynamic_int8']:.4f} ms -> "
                  f"{med['dense_fp32'] / med['runtime']:.2f}x vs dense, {med['dynamic_int8'] / med['runtime']:.2f}x vs int8"
                  f"; thread CPU time {cpu['runtime']:.4f} | {cpu['dense_fp32']:.4f} | {cpu['dynamic_int8']:.4f} ms",
                  flush=True)
    row["load_memory"] = {"runtime": load_memory(dsz, runtime=True, input_shape=shape),
                          "dense_fp32": load_memory(dense_file, runtime=False, input_shape=shape)}
    with tempfile.TemporaryDirectory() as cache:
        row["kernel_start"] = kernel_start_cost(dsz, input_shape=shape, cache_dir=cache)
    eq, mem, start = row["equality_vs_dense_quantized"], row["load_memory"], row["kernel_start"]
    print(f"{name}: max |runtime - dense-quantized| {eq['max_abs_diff']:.2e} over {eq['samples']} test images, argmax "
          f"agreement {eq['argmax_agreement']:.4f}; accuracy baseline {row['test_accuracy']['baseline']}, "
          f"compressed {row['test_accuracy']['runtime']:.4f}; file {row['file_bytes']:,} B", flush=True)
    print(f"{name}: resident {row['resident_bytes']['runtime']:,} B vs dense {row['resident_bytes']['dense_fp32']:,} B; "
          f"load peak +{mem['runtime']['peak_delta_bytes']:,} B vs dense +{mem['dense_fp32']['peak_delta_bytes']:,} B; "
          f"first forward cold cache {start['cold']['first_forward_s']:.2f} s, cached "
          f"{start['cached']['first_forward_s']:.3f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per setting, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=Path, nargs="+", default=None,
                        help="benchmark these .dsz files instead of one-shot compressing --models")
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/runtime-lenets.json, or results/runtime-lenets-trained.json with --files")
    args = parser.parse_args()
    if args.out is None:
        args.out = ROOT / "results" / ("runtime-lenets-trained.json" if args.files else "runtime-lenets.json")
    torch.manual_seed(args.seed)
    env = {"threads": args.threads, "loadavg_start": os.getloadavg(), "seed": args.seed, "torch": torch.__version__, "numba": numba.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    print(f"seed {args.seed}, threads {args.threads} (torch and numba alike), torch {torch.__version__}, "
          f"numba {numba.__version__}", flush=True)
    test = load_dataset("fashion-mnist", "test")
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.files:
            for path in args.files:
                name, meta, baseline = given_file(path)
                models[name] = {"file": str(path), "meta": meta, **run_model(name, path, baseline, args, work, test)}
        else:
            for name in args.models:
                dsz, baseline = one_shot(name, work)
                models[name] = run_model(name, dsz, baseline, args, work, test)
    env["loadavg_end"] = os.getloadavg()
    result = {"benchmark": "runtime-lenets", "env": env, "models": models}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
