"""Re-measure the runtime's dense-fallback rule (``runtime.policy.DENSE_FROM``): sparse kernel vs dense torch op by
density and batch size, per layer kind.

For each shape, density and batch: a random 5-bit codebook weight at that density, run as a SparseLinear /
SparseConv2d with ``dense_fallback=False`` (the sparse kernels always) against ``F.linear`` / ``F.conv2d`` on the
decoded weight (interleaved rounds, medians, the threads given). The printed ``dense/sparse`` ratio is the speedup
of the sparse kernel (< 1: dense wins); the suggested threshold per batch is the lowest density from which dense
wins on every shape. Compare it with ``DENSE_FROM`` (printed alongside). About 2 minutes per thread count:

    nice -n 10 .venv/bin/python benchmarks/bench_runtime_policy.py --threads 1 2  # -> results/runtime-policy.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deepshrink.core import atomic_write_text
from deepshrink.runtime import SparseConv2d, SparseLinear, from_coo, policy
from deepshrink.runtime.layout import SparseRows
from deepshrink.runtime.measure import compare, set_threads

ROOT = Path(__file__).resolve().parent
LINEAR = {"alexnet-fc8-ish": (1000, 4096), "lenet300-fc1": (300, 784), "mid": (1024, 2048)}
CONV = {"resnet20-16x16": (16, 16, 32, 1), "resnet20-32x64-s2": (64, 32, 16, 2), "lenet5-conv2": (16, 6, 14, 1),
        "vgg-64x64": (64, 64, 28, 1), "vgg-128x128": (128, 128, 14, 1), "vgg-256x256": (256, 256, 7, 1)}
"""(out channels, in channels, input size, stride), 3x3 kernels padded 1 (LeNet-5's conv2: 5x5, no padding)."""
DENSITIES = [0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0]


def _weight(rng: np.random.Generator, rows: int, cols: int, density: float) -> SparseRows:
    r, c = np.nonzero(rng.random((rows, cols)) < density)
    return from_coo((rows, cols), r, c, rng.integers(0, 32, r.size), rng.standard_normal(32).astype(np.float32))


def _cases(rng: np.random.Generator, density: float, batch: int) -> dict[str, tuple[Any, Any]]:
    """``{shape name: (sparse call, dense call)}``."""
    cases: dict[str, tuple[Any, Any]] = {}
    for name, (n_out, n_in) in LINEAR.items():
        w = _weight(rng, n_out, n_in, density)
        layer, dense = SparseLinear(w, dense_fallback=False), torch.from_numpy(w.to_dense())
        x = torch.randn(batch, n_in)
        cases[f"linear {name}"] = (lambda layer=layer, x=x: layer(x), lambda x=x, d=dense: F.linear(x, d))
    for name, (c_out, c_in, size, stride) in CONV.items():
        k, pad = (5, 0) if name.startswith("lenet5") else (3, 1)
        w = _weight(rng, c_out, c_in * k * k, density)
        conv = SparseConv2d(w, (k, k), c_in, stride=stride, padding=pad, dense_fallback=False)
        dense = torch.from_numpy(w.to_dense()).reshape(c_out, c_in, k, k)
        x = torch.randn(batch, c_in, size, size)
        cases[f"conv {name}"] = (lambda conv=conv, x=x: conv(x),
                                 lambda x=x, d=dense, s=stride, p=pad: F.conv2d(x, d, None, s, p))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--densities", type=float, nargs="+", default=DENSITIES)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "runtime-policy.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        set_threads(threads)
        for batch in args.batches:
            dense_wins: dict[str, list[float]] = {}
            for density in args.densities:
                for case, (sparse, dense) in _cases(rng, density, batch).items():
                    t = compare({"sparse": sparse, "dense": dense}, repeats=args.repeats, budget_s=3.0)
                    ratio = t["dense"]["median_ms"] / t["sparse"]["median_ms"]
                    rows.append({"threads": threads, "batch": batch, "density": density, "case": case,
                                 "sparse_ms": t["sparse"]["median_ms"], "dense_ms": t["dense"]["median_ms"],
                                 "dense_over_sparse": ratio})
                    if ratio < 1.0:
                        dense_wins.setdefault(case.split()[0], []).append(density)
                    print(f"threads {threads} batch {batch:>3} density {density:.2f} {case:<28} sparse "
                          f"{t['sparse']['median_ms']:.4f} ms dense {t['dense']['median_ms']:.4f} ms "
                          f"dense/sparse {ratio:.2f}", flush=True)
            for kind in ("linear", "conv"):
                print(f"threads {threads} batch {batch}: {kind} dense wins at densities {dense_wins.get(kind, [])}; "
                      f"DENSE_FROM says dense from {policy.dense_from(kind, batch)}"
                      + (f" (convs from density {policy.MEASURED_FROM_DENSITY} time both kernels at this batch)"
                         if policy.measures(kind, 1.0, batch) else ""), flush=True)
    result = {"benchmark": "runtime-policy", "dense_from": policy.DENSE_FROM, "loadavg": os.getloadavg(),
              "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
