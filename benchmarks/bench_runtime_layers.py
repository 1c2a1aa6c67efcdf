"""Deep Compression's CPU benchmark: AlexNet's FC6/FC7/FC8 shapes, pruned and 5-bit shared, batch 1 and 64.

Each layer: random weights (Gaussian, He scale), magnitude-pruned to the paper's densities (9%, 9%, 25%), the
survivors clustered into 32 shared values (k-means, linear init: ``deepshrink.share.kmeans_1d``). Contenders on
the same input, same thread count, interleaved rounds (median reported):

* ``runtime``       deepshrink's SparseLinear: batch 1 the AVX-512 sliced-window kernel where the host has it
                    (else CSR rows / the zero-skipping column kernel), batch 64 the CSR rows (numba)
* ``dense_fp32``    torch ``nn.Linear`` with the same (dequantized) weights
* ``torch_csr``     torch's CSR sparse matmul (``torch.sparse_csr_tensor`` fp32 values) of the same weights
* ``dynamic_int8``  ``torch.ao.quantization.quantize_dynamic`` of the dense layer

Inputs: ``--inputs gaussian`` (default) as in the paper's dense-input benchmark; ``--inputs relu`` the
activations a real AlexNet feeds these layers, non-negative with EIE's measured non-zero fractions (FC6 35.1%,
FC7 35.3%, FC8 37.5%), where the runtime's column kernel skips the zero inputs (dense and int8 cannot). Run:

    nice -n 10 .venv/bin/python benchmarks/bench_runtime_layers.py --threads 1  # -> results/runtime-layers-1thread.json
    nice -n 10 .venv/bin/python benchmarks/bench_runtime_layers.py --threads 2  # -> results/runtime-layers-2threads.json
    ... --inputs relu  # -> results/runtime-layers-<N>thread(s)-relu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from deepshrink.core import atomic_write_text
from deepshrink.runtime import SparseLinear, from_coo
from deepshrink.runtime.measure import compare, dynamic_int8, set_threads
from deepshrink.share import kmeans_1d

ROOT = Path(__file__).resolve().parent
LAYERS = {"fc6": (9216, 4096, 0.09), "fc7": (4096, 4096, 0.09), "fc8": (4096, 1000, 0.25)}
EIE_INPUT_DENSITY = {"fc6": 0.351, "fc7": 0.353, "fc8": 0.375}
"""Non-zero fraction of AlexNet's FC6/7/8 inputs (ReLU outputs) measured in EIE (Han et al. 2016, Table III)."""
PAPER = "Han et al. 2016 (Deep Compression), CPU: MKL CSRMV vs CBLAS GEMV, pruned AlexNet FC6-8, batch 1: ~3x"


def make_layer(n_in: int, n_out: int, density: float, bits: int, seed: int) -> tuple[SparseLinear, np.ndarray]:
    """A pruned + shared layer as the runtime module and as its dense float32 equivalent."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((n_out, n_in), dtype=np.float32) * np.sqrt(2.0 / n_in)).astype(np.float32)
    keep = round(density * weight.size)
    threshold = np.partition(np.abs(weight).ravel(), weight.size - keep)[weight.size - keep]
    rows, cols = np.nonzero(np.abs(weight) >= threshold)
    values = weight[rows, cols].astype(np.float64)
    clusters = kmeans_1d(values, 2**bits, "linear", max_iter=20)
    centroids = clusters.centroids.astype(np.float32)
    layout = from_coo((n_out, n_in), rows, cols, clusters.labels, centroids, "fc")
    dense = np.zeros((n_out, n_in), dtype=np.float32)
    dense[rows, cols] = centroids[clusters.labels]
    return SparseLinear(layout, torch.zeros(n_out)), dense


def bench_layer(name: str, args: argparse.Namespace) -> dict[str, Any]:
    n_in, n_out, density = LAYERS[name]
    fast, dense_w = make_layer(n_in, n_out, density, args.bits, args.seed)
    dense = nn.Linear(n_in, n_out)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(dense_w))
        dense.bias.zero_()
    dense.eval()
    w = torch.from_numpy(dense_w)
    csr = w.to_sparse_csr()
    del w, dense_w
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = dynamic_int8(nn.Sequential(dense)).eval()
    layout = fast.weight_layout
    row: dict[str, Any] = {"shape": [n_out, n_in], "density": layout.density, "nnz": layout.nnz,
                           "inputs": args.inputs,
                           "batch1_form": fast.batch1_form,
                           "input_density": EIE_INPUT_DENSITY[name] if args.inputs == "relu" else 1.0,
                           "bytes": {"runtime": fast.nbytes, "runtime_rows_only": layout.nbytes, "dense_fp32": n_out * n_in * 4,
                                     "torch_csr": int(csr.values().nbytes + csr.col_indices().nbytes
                                                      + csr.crow_indices().nbytes)},
                           "batches": {}}
    for batch in args.batches:
        generator = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, n_in, generator=generator)
        if args.inputs == "relu":  # EIE's measured fraction of non-zero activations, the rest exactly 0
            x = x.abs() * (torch.rand(batch, n_in, generator=generator) < EIE_INPUT_DENSITY[name])
        xt = x.T.contiguous()
        with torch.inference_mode():
            t0 = time.perf_counter()
            got = fast(x)
            first_ms = 1e3 * (time.perf_counter() - t0)
            want = dense(x)
        contenders = {"runtime": lambda x=x: fast(x), "dense_fp32": lambda x=x: dense(x),
                      "torch_csr": lambda xt=xt: torch.mm(csr, xt), "dynamic_int8": lambda x=x: int8(x)}
        timings = compare(contenders, repeats=args.repeats if batch == 1 else max(args.repeats // 3, 5),
                          budget_s=args.budget)
        med = {k: v["median_ms"] for k, v in timings.items()}
        cpu = {k: v["cpu_median_ms"] for k, v in timings.items()}
        row["batches"][str(batch)] = {
            "timings": timings, "first_call_ms": first_ms,
            "max_abs_diff": float((got - want).abs().max()),
            "speedup_vs_dense": med["dense_fp32"] / med["runtime"],
            "speedup_vs_csr": med["torch_csr"] / med["runtime"],
            "speedup_vs_int8": med["dynamic_int8"] / med["runtime"],
            "cpu_speedup_vs_dense": cpu["dense_fp32"] / cpu["runtime"],
            "cpu_speedup_vs_csr": cpu["torch_csr"] / cpu["runtime"],
            "cpu_speedup_vs_int8": cpu["dynamic_int8"] / cpu["runtime"],
        }
        print(f"{name} {n_out}x{n_in} @{100 * density:.0f}% batch {batch:>3}: "
              + " | ".join(f"{k} {v:.3f} ms" for k, v in med.items())
              + f" -> {med['dense_fp32'] / med['runtime']:.2f}x vs dense, {med['torch_csr'] / med['runtime']:.2f}x vs CSR,"
              f" {med['dynamic_int8'] / med['runtime']:.2f}x vs int8; thread CPU time: "
              + " | ".join(f"{k} {v:.3f}" for k, v in cpu.items()), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--budget", type=float, default=40.0, help="seconds of timing per layer and batch, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", choices=["gaussian", "relu"], default="gaussian",
                        help="relu: non-negative inputs with EIE's measured non-zero fractions")
    parser.add_argument("--out", type=Path, default=None, help="default: results/runtime-layers-<N>thread(s).json")
    args = parser.parse_args()
    if args.out is None:
        suffix = "-relu" if args.inputs == "relu" else ""
        args.out = ROOT / "results" / f"runtime-layers-{args.threads}thread{'s' if args.threads > 1 else ''}{suffix}.json"
    set_threads(args.threads)
    env = {"threads": args.threads, "inputs": args.inputs, "loadavg_start": os.getloadavg(), "seed": args.seed, "torch": torch.__version__, "numba": numba.__version__,
           "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "numba_threading_layer": None}
    print(f"threads {args.threads} (torch and numba), seed {args.seed}, torch {torch.__version__}, "
          f"numba {numba.__version__}; {PAPER}", flush=True)
    layers = {name: bench_layer(name, args) for name in args.layers}
    env["numba_threading_layer"] = numba.threading_layer() if args.threads > 1 else "serial"
    env["loadavg_end"] = os.getloadavg()
    total: dict[str, Any] = {}
    for batch in map(str, args.batches):
        names = ("runtime", "dense_fp32", "torch_csr", "dynamic_int8")
        sums = {k: sum(layers[n]["batches"][batch]["timings"][k]["median_ms"] for n in layers) for k in names}
        cpu_sums = {k: sum(layers[n]["batches"][batch]["timings"][k]["cpu_median_ms"] for n in layers) for k in names}
        total[batch] = {"sum_of_medians_ms": sums, "sum_of_cpu_medians_ms": cpu_sums,
                        "speedup_vs_dense": sums["dense_fp32"] / sums["runtime"],
                        "speedup_vs_csr": sums["torch_csr"] / sums["runtime"],
                        "speedup_vs_int8": sums["dynamic_int8"] / sums["runtime"]}
        print(f"FC6+7+8 batch {batch}: runtime {sums['runtime']:.2f} ms vs dense {sums['dense_fp32']:.2f} ms "
              f"({total[batch]['speedup_vs_dense']:.2f}x), CSR {total[batch]['speedup_vs_csr']:.2f}x, "
              f"int8 {total[batch]['speedup_vs_int8']:.2f}x")
    result = {"benchmark": "runtime-layers", "paper": PAPER, "env": env, "layers": layers, "total": total}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
