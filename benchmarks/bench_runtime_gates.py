"""Issue 20's ternary and fixed-point gates, side by side in one run, without training (latency does not need it).

* ``ternary``: the committed LeNet-5 / ResNet-20 Fashion-MNIST baselines ternarized one-shot with TTQ (the
  method's initial Wp/Wn and threshold; BatchNorms folded into per-channel scales by ``from_model``) run through
  the runtime against the dense fp32 baseline; ``lenet5-trained``: LeNet-5 with every layer ternary, trained one
  epoch (``out/bench/onnx/lenet5-ttq-1ep.pt``, made by benchmarks/bench_onnx.py). Gate: >= 1.5x dense fp32 at
  batch 1.
* ``dfp``: LeNet-300-100 and LeNet-5 in 8-bit dynamic fixed point (post-training, calibrated on 256 test images)
  run through the integer engine (``IntegerModel``: the fused int8 plan, VNNI where the host has it) against
  torch's dynamic int8 of the float model; the engine's outputs must equal the simulation's bit for bit on 512
  test images. Gate: >= 1.0x torch dynamic int8 at batch 1, bit-exact.
* ``minilm``: all-MiniLM-L6-v2 in 8-bit DFP (``out/bench/onnx/minilm-dfp8.pt``, made by benchmarks/bench_onnx.py)
  through ``runtime.from_model`` (integer Linears, float ops between them) against torch's dynamic int8 of the
  float model, the two alone in the interleaved rounds (a run that also interleaves 90 MB fp32 models evicts
  their weights from the caches between calls: benchmarks/bench_onnx.py --speed); one human-written sentence
  per batch row, outputs compared with the simulation on 64 sentences. Needs ``.[real]``.

Every row: medians of interleaved rounds, the threads stated, the kernel each runtime layer ran. About one
minute per thread count and part:

    nice -n 10 .venv/bin/python benchmarks/bench_runtime_gates.py --threads 1 2  # -> results/runtime-gates.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

import numba
import torch
from torch import nn

from deepshrink.core import atomic_write_text
from deepshrink.data import load_dataset
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.io import load_model
from deepshrink.runtime import IntegerModel, from_model
from deepshrink.runtime.measure import compare, dynamic_int8, layer_kernels, set_threads
from deepshrink.ternary import TTQ, ternarize_
from deepshrink.train import load_checkpoint

ROOT = Path(__file__).resolve().parent
TERNARY = ["lenet5", "resnet20", "lenet5-trained"]
DFP = ["lenet300", "lenet5"]


def _time(contenders: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> dict[str, Any]:
    with torch.inference_mode():
        for model in contenders.values():
            model(x)  # compile / build plans
        timings = compare({k: (lambda m=m: m(x)) for k, m in contenders.items()}, repeats=repeats, budget_s=15.0)
    return {k: round(v["median_ms"], 4) for k, v in timings.items()}


def ternary_part(name: str, batches: list[int], repeats: int, images: torch.Tensor) -> dict[str, Any]:
    dense, _ = load_checkpoint(ROOT / "baselines" / f"{name.removesuffix('-trained')}-fmnist.pt")
    dense.eval()
    trained = ROOT.parent / "out" / "bench" / "onnx" / f"{name.removesuffix('-trained')}-ttq-1ep.pt"
    if name.endswith("-trained"):  # every layer ternary, trained one epoch (benchmarks/bench_onnx.py makes it)
        model = load_model(trained)[0]
    else:
        model = copy.deepcopy(dense)
        ternarize_(model, TTQ())
    model.eval()
    runtime = from_model(model, example=images[:1])
    with torch.inference_mode():
        agreement = float((runtime(images).argmax(1) == model(images).argmax(1)).float().mean())
    rows: dict[str, Any] = {"argmax_agreement_runtime_vs_ternary_model": agreement}
    for batch in batches:
        t = _time({"runtime": runtime, "dense_fp32": dense}, images[:batch].contiguous(), repeats)
        rows[f"batch{batch}"] = {"timings_ms": t, "speedup_vs_dense": t["dense_fp32"] / t["runtime"],
                                 "kernels": layer_kernels(runtime)}
    return rows


def dfp_part(name: str, batches: list[int], repeats: int, images: torch.Tensor) -> dict[str, Any]:
    dense, _ = load_checkpoint(ROOT / "baselines" / f"{name}-fmnist.pt")
    dense.eval()
    model = copy.deepcopy(dense)
    quantize_(model, DynamicFixedPoint(bits=8, unsigned_activations=False), calib=images[:256])  # as measured
    model.eval()
    engine, int8 = IntegerModel(model), dynamic_int8(copy.deepcopy(dense))
    check = images[256:768]
    with torch.inference_mode():
        exact = bool(torch.equal(engine(check), model(check)))
    rows: dict[str, Any] = {"bit_exact_vs_simulation": exact, "checked_images": int(check.shape[0])}
    for batch in batches:
        t = _time({"integer_engine": engine, "dynamic_int8": int8, "dense_fp32": dense}, images[:batch].contiguous(),
                  repeats)
        rows[f"batch{batch}"] = {"timings_ms": t, "speedup_vs_int8": t["dynamic_int8"] / t["integer_engine"],
                                 "kernels": layer_kernels(engine)}
    return rows


def minilm_part(name: str, batches: list[int], repeats: int, images: torch.Tensor) -> dict[str, Any]:
    import bench_onnx as bo  # the cached DFP model and torch's dynamic int8, as the ONNX benchmark makes them
    import real_models as rm

    calib_texts = rm.human_sentences("calib", 64)
    base = rm.minilm()
    model = bo.minilm_dfp([rm.tokenize(calib_texts[i:i + 32]) for i in range(0, 64, 32)])
    runtime, int8 = from_model(model), dynamic_int8(copy.deepcopy(base))
    texts = rm.human_sentences("eval", 64)
    check = rm.tokenize(texts)
    with torch.inference_mode():
        diff = float((runtime(check) - model(check)).abs().max())
    rows: dict[str, Any] = {"max_abs_diff_vs_simulation": diff, "checked_sentences": len(texts)}
    for batch in batches:
        x = rm.tokenize(texts[:batch])
        with torch.inference_mode():
            for m in (runtime, int8):
                m(x)
            timings = compare({"runtime": lambda x=x: runtime(x), "dynamic_int8": lambda x=x: int8(x)}, repeats=repeats,
                              budget_s=30.0)
        t = {k: round(v["median_ms"], 4) for k, v in timings.items()}
        rows[f"batch{batch}"] = {"timings_ms": t, "speedup_vs_int8": t["dynamic_int8"] / t["runtime"],
                                 "tokens": int(x["input_ids"].shape[1])}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--parts", nargs="+", default=["ternary", "dfp"], choices=["ternary", "dfp", "minilm"])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "runtime-gates.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = load_dataset("fashion-mnist", "test").tensors[0][:1024].contiguous()
    parts = {"ternary": (TERNARY, ternary_part), "dfp": (DFP, dfp_part), "minilm": (["minilm"], minilm_part)}
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result: dict[str, Any] = {"benchmark": "runtime-gates", "loadavg_start": os.getloadavg(),
                              "torch": torch.__version__, "numba": numba.__version__,
                              "runs": previous.get("runs", {})}  # rows of parts not rerun are kept
    for threads in args.threads:
        set_threads(threads)
        for part in args.parts:
            names, run = parts[part]
            for name in names:
                row = run(name, args.batches, args.repeats, images)
                result["runs"][f"{part}/{name}/threads{threads}"] = row
                print(f"{part} {name} threads {threads}: {json.dumps(row)}", flush=True)
    result["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
