"""ONNX export of compressed models: file sizes, ONNX Runtime vs deepshrink, rounding, load cost and speed.

Models: the zoo's LeNet-300-100 and LeNet-5 (committed Fashion-MNIST baselines; ``--models vgg resnet20`` adds the
others with generic settings) x every technique, plus MiniLM (all-MiniLM-L6-v2: DFP 8, pruned + shared) and
EfficientNet-Lite2 (per-channel DFP 8 with 8.5 average bits, pruned + shared). The zoo's compressed variants:

* ``pruned``: the committed pruning-benchmark checkpoint (``benchmarks/results/pruning-ARCH.pt``: the Deep
  Compression recipe's sparsities, 4 prune/retrain rounds); other models one-shot pruned + ``--epochs`` retrain.
* ``deep-compression``: a ``.dsz`` made by the shipped recipe's share -> fine-tune -> encode stages on that pruned
  checkpoint (as benchmarks/bench_mcu.py does), loaded back from the file; cached under out/bench/onnx.
* ``dfp8`` / ``dfp-conv8-fc4``: post-training dynamic fixed point (256 training images of calibration); each also
  with ``rounding="half_even"`` (``-half-even``), ONNX's rounding rule.
* ``ttq``: every layer ternary (first and last included), ``--ttq-epochs`` of training; cached.
* ``lowrank``: SVD of the Linear layers at half their parameters, Zhang et al. on the convs at 2x; no fine-tuning.

Each is exported with ``deepshrink.export.to_onnx`` (fixed point twice: ``qdq``, ORT's int8 kernels, and
``exact``, float ops rounding like deepshrink; Deep Compression also with each encoding forced) and measured:
``.onnx`` bytes against the fp32 export, ``onnx.checker`` full check, ORT (CPU) session-creation time, ORT's
outputs against the compressed model's own on the whole Fashion-MNIST test set (max |difference| relative to the
logit range, equal arg-max, bit-exact elements): for fixed point, ``qdq`` files of half-up models differ from
deepshrink at rounding ties only, those of half-even models should be bit-exact.
Results: benchmarks/results/onnx.json.

``--speed`` (timing only, on a quiet machine): latency in one process, interleaved rounds, medians, batch 1 and
64, 1 and 2 threads: ORT fp32, ORT compressed, deepshrink's runtime, torch fp32 and torch dynamic int8, plus
ORT session creation per file. Reuses the cached models and files (makes whatever is missing).
Results: benchmarks/results/onnx-speed.json.

    nice -n 10 .venv/bin/python benchmarks/bench_onnx.py        # sizes + fidelity + rounding (~35 min, 2 busy cores)
    .venv/bin/python benchmarks/bench_onnx.py --speed           # latency (quiet machine; ~15 min)
    .venv/bin/python benchmarks/bench_onnx.py --models lenet300 --no-minilm --no-efficientnet --quick   # smoke
    nice .venv/bin/python benchmarks/bench_onnx.py --no-minilm --variants dfp8 dfp8-half-even   # some rows only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import deepshrink.runtime as rt
from deepshrink.data import load_dataset
from deepshrink.export import to_onnx
from deepshrink.fixedpoint import DynamicFixedPoint, fixed_point_of, quantize_
from deepshrink.io import load_model
from deepshrink.lowrank import SVDLinear, ZhangLowRank, lowrank_
from deepshrink.prune import MagnitudePrune, prune_
from deepshrink.recipes import RecipeContext, frozen_copy, load_recipe, parse_recipe, run_recipe
from deepshrink.runtime.measure import compare, dynamic_int8, set_threads
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.ternary import TTQ, ternarize_, ternary_param_groups
from deepshrink.train import TrainConfig, fit, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "out" / "bench" / "onnx"
RESULTS = ROOT / "benchmarks" / "results" / "onnx.json"
SPEED_RESULTS = ROOT / "benchmarks" / "results" / "onnx-speed.json"
ZOO = ("lenet300", "lenet5")
GENERIC_DC = {"conv": 0.6, "fc": 0.9, "bits": 5}  # models without a shipped recipe
# signed activation formats: the figures in BENCHMARKS.md predate unsigned formats as the default
EFFNET_DFP = DynamicFixedPoint(bits=8, granularity="channel", max_bits_avg=8.5, unsigned_activations=False)
MINILM_DFP = DynamicFixedPoint(bits=8, quantize_outputs=False, unsigned_activations=False)
EFFNET_DFP_UNSIGNED = dataclasses.replace(EFFNET_DFP, unsigned_activations=True)  # uint8 Q/DQ for ReLU6 outputs


@dataclass
class Variant:
    model: nn.Module
    source: str
    dsz: Path | None = None


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --------------------------------------------------------------------------------------------- making models
def baseline(arch: str) -> nn.Module:
    return load_checkpoint(ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt")[0].eval()


def base_lr(arch: str) -> float:
    return float(load_checkpoint(ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt")[1]
                 .get("config", {}).get("lr", 0.05))


def recipe_path(arch: str) -> Path:
    return ROOT / "recipes" / f"deep-compression-{arch}.yaml"


def generic_sparsity(model: nn.Module) -> dict[str, float]:
    return {name: GENERIC_DC["conv"] if isinstance(m, nn.Conv2d) else GENERIC_DC["fc"]
            for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def pruned_checkpoint(arch: str, data: dict[str, Any], epochs: int) -> Path:
    """The pruning benchmark's committed checkpoint (the recipe's schedule), else one-shot prune + retrain here."""
    committed = ROOT / "benchmarks" / "results" / f"pruning-{arch}.pt"
    if committed.is_file():
        return committed
    path = OUT / f"{arch}-pruned-{epochs}ep.pt"
    if not path.is_file():
        model = baseline(arch)
        context = RecipeContext(model=model, train_data=data["train"], val_data=data["val"], base_lr=base_lr(arch),
                                seed=0, quiet=True)
        stage = {"prune": {"sparsity": generic_sparsity(model), "rounds": 1, "retrain": {"epochs": epochs}}}
        run_recipe(parse_recipe({"name": "pruned", "stages": [stage]}), context)
        save_checkpoint(path, model.eval(), meta={"dataset": "fashion-mnist"})
    return path


def dc_file(arch: str, data: dict[str, Any], epochs: int) -> Path:
    """Deep Compression ``.dsz``: the recipe's share -> fine-tune -> encode stages on the pruned checkpoint."""
    path = OUT / f"{arch}-dc.dsz"
    if path.is_file():
        return path
    source = pruned_checkpoint(arch, data, epochs)
    model, _ = load_checkpoint(source)
    if recipe_path(arch).is_file():
        recipe = load_recipe(recipe_path(arch))
        stages = [{s.name: dict(s.options)} for s in recipe.stages if s.name in ("share", "finetune", "encode")]
        name = recipe.name
    else:
        name = "deep-compression-generic"
        stages = [{"share": {"bits": GENERIC_DC["bits"], "init": "linear"}},
                  {"finetune": {"epochs": epochs, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0}},
                  {"encode": {"entropy": "ans"}}]
    context = RecipeContext(model=model, train_data=data["train"], val_data=data["val"], out=path, seed=0,
                            quiet=True, base_lr=base_lr(arch), meta={"dataset": "fashion-mnist", "recipe": name},
                            teacher=frozen_copy(baseline(arch)))
    started = time.perf_counter()
    run_recipe(parse_recipe({"name": name, "stages": stages}), context)
    print(f"{arch}: made {rel(path)} ({path.stat().st_size:,} B) in {time.perf_counter() - started:.0f}s", flush=True)
    return path


def ttq_model(arch: str, epochs: int, train: Any) -> nn.Module:
    """Every layer ternary (TTQ, first and last too), trained ``epochs`` from the baseline; cached."""
    path = OUT / f"{arch}-ttq-{epochs}ep.pt"
    if path.is_file():
        return load_model(path)[0].eval()
    model = baseline(arch)
    ternarize_(model, TTQ(keep_first_last=False))
    if epochs:
        fit(model, train, TrainConfig(epochs=epochs, lr=1e-4, optimizer="adam", weight_decay=5e-4, seed=0),
            params=ternary_param_groups(model), quiet=True)
    save_checkpoint(path, model.eval(), meta={"dataset": "fashion-mnist", "arch": arch})
    return model.eval()


def lowrank_model(arch: str, calib: torch.Tensor) -> nn.Module:
    path = OUT / f"{arch}-lowrank.pt"
    if path.is_file():
        return load_model(path)[0].eval()
    model = baseline(arch)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    conv = ZhangLowRank(speedup=2.0, images=256, schedule=((0.01, 5), (1.0, 5))) if has_conv else None
    lowrank_(model, calib, conv=conv, linear=SVDLinear(param_ratio=0.5), images=256)
    save_checkpoint(path, model.eval(), meta={"dataset": "fashion-mnist"})
    return model.eval()


def dfp_model(arch: str, bits: Any, calib: torch.Tensor, rounding: str = "half_up") -> nn.Module:
    model = baseline(arch)
    quantize_(model, DynamicFixedPoint(bits=bits, rounding=rounding, unsigned_activations=False),
              calib=list(torch.split(calib, 128)))
    return model.eval()


def zoo_variants(arch: str, data: dict[str, Any], args: argparse.Namespace,
                 only: set[str] | None = None) -> dict[str, Variant]:
    """The compressed variants of one baseline (``only``: just these names)."""
    calib = data["train"].tensors[0][:256]
    want = (lambda name: only is None or name in only)  # noqa: E731
    out: dict[str, Variant] = {"fp32": Variant(baseline(arch), rel(ROOT / "benchmarks" / "baselines" /
                                                                   f"{arch}-fmnist.pt"))}
    if want("pruned"):
        path = pruned_checkpoint(arch, data, args.epochs)
        out["pruned"] = Variant(load_checkpoint(path)[0].eval(), rel(path))
    if want("deep-compression"):
        path = dc_file(arch, data, args.epochs)
        out["deep-compression"] = Variant(load_model(path)[0].eval(), rel(path), path)
    for name, bits in (("dfp8", 8), ("dfp-conv8-fc4", {"conv": 8, "fc": 4})):
        for rounding, tag in (("half_up", ""), ("half_even", "-half-even")):
            if want(name + tag):
                out[name + tag] = Variant(dfp_model(arch, bits, calib, rounding),
                                          f"baseline + DynamicFixedPoint(bits={bits!r}, rounding={rounding!r})")
    if want("ttq"):
        out["ttq"] = Variant(ttq_model(arch, args.ttq_epochs, data["train"]),
                             f"baseline + TTQ(keep_first_last=False), {args.ttq_epochs} epochs")
    if want("lowrank") and not args.quick:
        out["lowrank"] = Variant(lowrank_model(arch, calib), "baseline + SVD(param_ratio 0.5) / Zhang 2x convs")
    return out


def minilm_dfp(calib: list[dict[str, torch.Tensor]]) -> nn.Module:
    import real_models as rm

    path = OUT / "minilm-dfp8.pt"
    model = rm.minilm()
    if path.is_file():
        return load_checkpoint(path, model=model)[0].eval()
    started = time.perf_counter()
    quantize_(model, MINILM_DFP, calib=calib)
    print(f"minilm: DFP search {time.perf_counter() - started:.0f}s", flush=True)
    save_checkpoint(path, model, meta={"quantize": repr(MINILM_DFP)})
    return model.eval()


def effnet_dfp(unsigned: bool = False) -> nn.Module:
    import real_models as rm

    config = EFFNET_DFP_UNSIGNED if unsigned else EFFNET_DFP
    path = OUT / f"efficientnet_lite2-dfp8.5{'u' if unsigned else ''}.pt"
    model = rm.efficientnet_lite2()
    if path.is_file():
        return load_checkpoint(path, model=model)[0].eval()
    started = time.perf_counter()
    quantize_(model, config, calib=[rm.photo_batch(16, rm.CALIB_SEED)])
    print(f"efficientnet: DFP search {time.perf_counter() - started:.0f}s", flush=True)
    save_checkpoint(path, model, meta={"quantize": repr(config)})
    return model.eval()


def pruned_shared(make: Callable[[], nn.Module], sparsity: float, bits: int) -> nn.Module:
    model = make()
    prune_(model, MagnitudePrune(sparsity=sparsity))
    share_weights_(model, WeightSharing(bits=bits))
    return model.eval()


# --------------------------------------------------------------------------------------------- rounding
@torch.no_grad()
def engine_outputs(model: nn.Module, batches: list[Any]) -> np.ndarray | None:
    """deepshrink's integer engine on ``batches``; None when it cannot take the model."""
    try:
        engine = rt.IntegerModel(model)
        return np.concatenate([engine(b).numpy() for b in batches])
    except Exception as exc:  # the integer tracer refuses some graphs; the measurement then says so
        print(f"  (integer engine unavailable: {type(exc).__name__}: {str(exc)[:120]})", flush=True)
        return None


# ----------------------------------------------------------------------------------------------- measuring
def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_ms(path: Path, n: int = 5) -> float:
    """Median wall time of creating an ORT session on ``path`` (1 thread): parsing, constant folding, fusions."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        session(path, 1)
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 2)


def agreement(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """``got`` (ORT) against ``ref`` (rows = samples)."""
    diff = np.abs(got.astype(np.float64) - ref)
    span = float(ref.max() - ref.min()) or 1.0
    row = {"max_abs_diff": float(diff.max()), "relative_to_range": float(diff.max()) / span,
           "argmax_equal": float((got.argmax(1) == ref.argmax(1)).mean()),
           "elements_bit_exact": float((got == ref).mean()), "rows_bit_exact": float((got == ref).all(1).mean())}
    if labels is not None:
        row.update(top1_ort=float((got.argmax(1) == labels).mean()),
                   top1_deepshrink=float((ref.argmax(1) == labels).mean()))
    return row


def feeds_for(s: ort.InferenceSession, batch: Any) -> dict[str, np.ndarray]:
    """ORT feeds of one batch (a tensor, or a feature dict whose inputs the exporter named ``batch_<key>``)."""
    if isinstance(batch, dict):
        return {i.name: batch[i.name.removeprefix("batch_")].numpy() for i in s.get_inputs()}
    return {s.get_inputs()[0].name: batch.numpy()}


def ort_outputs(path: Path, batches: list[Any]) -> np.ndarray:
    s = session(path)
    return np.concatenate([s.run(None, feeds_for(s, b))[0] for b in batches])


@torch.no_grad()
def torch_outputs(model: nn.Module, batches: list[Any]) -> np.ndarray:
    return np.concatenate([model(b).numpy() for b in batches])


def export_row(model: nn.Module, example: Any, path: Path, fp32_bytes: int | None, **options: Any) -> dict[str, Any]:
    started = time.perf_counter()
    report = to_onnx(model, example, path, verify=False, **options)
    seconds = time.perf_counter() - started
    onnx.checker.check_model(onnx.load(path), full_check=True)
    encodings: dict[str, int] = {}
    for w in report["weights"].values():
        encodings[w["encoding"]] = encodings.get(w["encoding"], 0) + 1
    return {"file": rel(path), "bytes": report["bytes"], "export_seconds": round(seconds, 1),
            "ratio_vs_fp32_onnx": round(fp32_bytes / report["bytes"], 2) if fp32_bytes else 1.0,
            "checker_full_check": "passed", "session_create_ms": session_ms(path), "encodings": encodings,
            "compressed_weight_bytes": report["compressed_weight_bytes"],
            "fp32_weight_bytes": report["fp32_weight_bytes"]}


def exports_of(name: str, family: str) -> list[tuple[str, dict[str, Any]]]:
    """(label suffix, exporter options) per variant."""
    if name.startswith("dfp"):
        out = [("qdq", {}), ("exact", {"activations": "exact"})]
        if name == "dfp8" and family == "zoo":  # (not for the half-even variants: the same weights)
            out.append(("weights-only", {"activations": "float"}))
        return out
    if name == "deep-compression":
        return [("", {}), ("codes", {"encoding": "codes"}), ("gaps", {"encoding": "gaps"})]
    return [("", {})]


def show(prefix: str, label: str, row: dict[str, Any]) -> None:
    extra = f"cos min {row['cosine_min']:.6f}" if "cosine_min" in row else f"argmax {row['argmax_equal']:.4f}"
    print(f"  {prefix} {label:26s} {row['bytes']:>12,} B  x{row['ratio_vs_fp32_onnx']:<6} rel "
          f"{row['relative_to_range']:.1e}  {extra}  bit-exact {row['elements_bit_exact']:.4f}  load "
          f"{row['session_create_ms']} ms", flush=True)


def fixed_point_rows(model: nn.Module, batches: list[Any], ref: np.ndarray, row: dict[str, Any],
                     engine: dict[str, np.ndarray | None]) -> None:
    """The variant's rounding rule, and whether its integer engine equals its simulation (``engine`` caches it)."""
    roundings = {t.rounding for m in model.modules() if (t := fixed_point_of(m)) is not None}
    row["rounding"] = ",".join(sorted(roundings))
    if "out" not in engine:
        engine["out"] = engine_outputs(model, batches)
    if engine["out"] is not None:
        row["simulation_equals_integer_engine"] = bool(np.array_equal(engine["out"], ref))


# ---------------------------------------------------------------------------------------------- benchmarks
def zoo_bench(arch: str, data: dict[str, Any], test: Any, args: argparse.Namespace) -> dict[str, Any]:
    x_all, labels = test.tensors[0], test.tensors[1].numpy()
    started = time.perf_counter()
    variants = zoo_variants(arch, data, args, None if not args.variants else {"fp32", *args.variants})
    print(f"{arch}: variants ready in {time.perf_counter() - started:.0f}s", flush=True)
    batches = list(torch.split(x_all, 1000))
    rows: dict[str, Any] = {}
    fp32_bytes: int | None = None
    for name, variant in variants.items():
        ref = torch_outputs(variant.model, batches)
        engine: dict[str, np.ndarray | None] = {}
        for suffix, options in exports_of(name, "zoo"):
            label = f"{name}-{suffix}" if suffix else name
            path = OUT / f"{arch}-{label}.onnx"
            row = {"source": variant.source, **export_row(variant.model, x_all[:1], path, fp32_bytes, **options)}
            if variant.dsz is not None:
                row["dsz_bytes"] = variant.dsz.stat().st_size
            fp32_bytes = fp32_bytes or row["bytes"]
            got = ort_outputs(path, batches)
            row.update(agreement(ref, got, labels))
            if name.startswith("dfp"):
                fixed_point_rows(variant.model, batches, ref, row, engine)
            rows[label] = row
            show(arch, label, row)
    return rows


def minilm_bench(args: argparse.Namespace) -> dict[str, Any]:
    import real_models as rm

    calib_texts = rm.human_sentences("calib", 64)
    calib = [rm.tokenize(calib_texts[i:i + 32]) for i in range(0, 64, 32)]
    eval_texts = rm.human_sentences("eval", args.minilm_sentences)
    evals = [rm.tokenize(eval_texts[i:i + 64]) for i in range(0, len(eval_texts), 64)]
    variants = {"fp32": Variant(rm.minilm(), "all-MiniLM-L6-v2"),
                "dfp8": Variant(minilm_dfp(calib), f"{MINILM_DFP!r}, 64 calibration sentences"),
                "pruned-shared": Variant(pruned_shared(rm.minilm, 0.5, 6), "magnitude 50% + 6-bit sharing")}
    rows: dict[str, Any] = {}
    fp32_bytes: int | None = None
    for name, variant in variants.items():
        ref = torch_outputs(variant.model, evals)
        engine: dict[str, np.ndarray | None] = {}
        for suffix, options in exports_of(name, "minilm"):
            label = f"{name}-{suffix}" if suffix else name
            path = OUT / f"minilm-{label}.onnx"
            row = {"source": variant.source,
                   **export_row(variant.model, calib[0], path, fp32_bytes, dynamic_dims="0,1", **options)}
            fp32_bytes = fp32_bytes or row["bytes"]
            got = ort_outputs(path, evals)
            row.update(agreement(ref, got))
            cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
            row.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()), sentences=len(eval_texts))
            if name in ("dfp8", "dfp8u"):
                fixed_point_rows(variant.model, evals, ref, row, engine)
            rows[label] = row
            show("minilm", label, row)
    return rows


def efficientnet_bench(args: argparse.Namespace) -> dict[str, Any]:
    import real_models as rm

    evals = list(torch.split(rm.photo_batch(args.efficientnet_images, rm.EVAL_SEED), 16))
    makers: dict[str, Callable[[], Variant]] = {
        "fp32": lambda: Variant(rm.efficientnet_lite2(), "EfficientNet-Lite2 (ImageNet)"),
        "dfp8": lambda: Variant(effnet_dfp(), f"{EFFNET_DFP!r}, 16 calibration crops"),
        "dfp8u": lambda: Variant(effnet_dfp(True), f"{EFFNET_DFP_UNSIGNED!r}, 16 calibration crops"),
        "pruned-shared": lambda: Variant(pruned_shared(rm.efficientnet_lite2, 0.3, 7), "magnitude 30% + 7-bit sharing")}
    variants = {name: make() for name, make in makers.items()
                if not args.variants or name == "fp32" or name in args.variants}
    rows: dict[str, Any] = {}
    fp32_bytes: int | None = None
    fp32_ref = torch_outputs(variants["fp32"].model, evals)
    for name, variant in variants.items():
        ref = torch_outputs(variant.model, evals)
        engine: dict[str, np.ndarray | None] = {}
        for suffix, options in exports_of(name, "efficientnet"):
            label = f"{name}-{suffix}" if suffix else name
            path = OUT / f"efficientnet_lite2-{label}.onnx"
            row = {"source": variant.source, **export_row(variant.model, evals[0][:1], path, fp32_bytes, **options)}
            fp32_bytes = fp32_bytes or row["bytes"]
            got = ort_outputs(path, evals)
            row.update(agreement(ref, got), images=args.efficientnet_images)
            row.update({f"vs_deepshrink_{k}": v for k, v in rm.cnn_agreement(torch.from_numpy(ref),
                                                                             torch.from_numpy(got)).items()})
            row["vs_fp32_top1"] = float((got.argmax(1) == fp32_ref.argmax(1)).mean())  # what a user sees
            if name in ("dfp8", "dfp8u"):
                fixed_point_rows(variant.model, evals, ref, row, engine)
            rows[label] = row
            show("efficientnet", label, row)
    return rows


def rounding_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The qdq (ONNX rounds half to even) and exact (float ops rounding like the layer) files of every fixed-point
    model, side by side."""
    families = list(result.get("zoo", {}).items())
    families += [("minilm", result.get("minilm", {})), ("efficientnet_lite2", result.get("efficientnet_lite2", {}))]
    out: dict[str, Any] = {}
    for family, rows in families:
        for label, row in rows.items():
            if not label.endswith("-qdq"):
                continue
            exact = rows.get(label.removesuffix("-qdq") + "-exact", {})
            out[f"{family}: {label.removesuffix('-qdq')}"] = {
                "qdq_vs_deepshrink_elements_bit_exact": row["elements_bit_exact"],
                "qdq_vs_deepshrink_rows_bit_exact": row["rows_bit_exact"],
                "qdq_vs_deepshrink_argmax_equal": row["argmax_equal"],
                "qdq_vs_deepshrink_relative_to_range": row["relative_to_range"],
                "rounding": row.get("rounding"),
                "exact_vs_deepshrink_elements_bit_exact": exact.get("elements_bit_exact"),
                "exact_vs_deepshrink_argmax_equal": exact.get("argmax_equal"),
                "bytes_qdq": row["bytes"], "bytes_exact": exact.get("bytes"),
                "session_create_ms_qdq": row["session_create_ms"], "session_create_ms_exact": exact.get("session_create_ms"),
            }
    return out


# ------------------------------------------------------------------------------------------------- speed
def ensure_file(path: Path, model: nn.Module, example: Any, **options: Any) -> Path:
    if not path.is_file():
        to_onnx(model, example, path, verify=False, **options)
    return path


def time_engines(engines: dict[str, Any], inputs: dict[int, Any], threads: list[int], repeats: int,
                 budget_s: float) -> dict[str, Any]:
    """``engines``: name -> torch module or ONNX path; ``inputs``: batch -> one input batch. Interleaved rounds in
    one process (:func:`deepshrink.runtime.measure.compare`), medians in ms."""
    out: dict[str, Any] = {}
    for t in threads:
        set_threads(t)
        sessions = {name: session(e, t) for name, e in engines.items() if isinstance(e, Path)}
        for batch, x in inputs.items():
            calls: dict[str, Callable[[], Any]] = {}
            for name, engine in engines.items():
                if isinstance(engine, Path):
                    s = sessions[name]
                    calls[name] = lambda s=s, f=feeds_for(s, x): s.run(None, f)
                else:
                    calls[name] = lambda e=engine, a=x: e(a)
            timings = compare(calls, repeats=repeats, warmup=2, budget_s=budget_s)
            key = f"threads={t} batch={batch}"
            out[key] = {name: {k: round(v, 4) for k, v in row.items()} for name, row in timings.items()}
            print(f"  {key}: " + ", ".join(f"{k} {v['median_ms']:.3f}" for k, v in out[key].items()) + " (ms)",
                  flush=True)
    return out


def speed_zoo(arch: str, data: dict[str, Any], test: Any, args: argparse.Namespace) -> dict[str, Any]:
    variants = zoo_variants(arch, data, args, only={"deep-compression", "dfp8", "lowrank"})
    x = test.tensors[0]
    files = {label: ensure_file(OUT / f"{arch}-{label}.onnx", variants[name].model, x[:1], **options)
             for label, name, options in (("fp32", "fp32", {}), ("deep-compression", "deep-compression", {}),
                                          ("dfp8-qdq", "dfp8", {}), ("dfp8-exact", "dfp8", {"activations": "exact"}),
                                          ("lowrank", "lowrank", {})) if name in variants}
    dsz = variants["deep-compression"].dsz
    assert dsz is not None
    engines: dict[str, Any] = {f"ORT {label}": path for label, path in files.items()}
    engines["deepshrink runtime deep-compression (runtime.load .dsz)"] = rt.load(dsz)
    engines["deepshrink runtime dfp8 (runtime.from_model)"] = rt.from_model(variants["dfp8"].model)
    engines["torch fp32"] = variants["fp32"].model
    engines["torch dynamic int8"] = dynamic_int8(copy.deepcopy(variants["fp32"].model))
    return {"latency_ms": time_engines(engines, {b: x[:b].contiguous() for b in args.batches}, args.threads,
                                       args.repeats, args.budget),
            "session_create_ms": {label: session_ms(path, 21) for label, path in files.items()}}


def speed_minilm(args: argparse.Namespace) -> dict[str, Any]:
    import real_models as rm

    calib_texts = rm.human_sentences("calib", 64)
    calib = [rm.tokenize(calib_texts[i:i + 32]) for i in range(0, 64, 32)]
    base, dfp = rm.minilm(), minilm_dfp(calib)
    files = {"fp32": ensure_file(OUT / "minilm-fp32.onnx", base, calib[0], dynamic_dims="0,1"),
             "dfp8-qdq": ensure_file(OUT / "minilm-dfp8-qdq.onnx", dfp, calib[0], dynamic_dims="0,1"),
             "dfp8-exact": ensure_file(OUT / "minilm-dfp8-exact.onnx", dfp, calib[0], dynamic_dims="0,1",
                                       activations="exact")}
    engines: dict[str, Any] = {f"ORT {label}": path for label, path in files.items()}
    engines["deepshrink runtime dfp8 (runtime.from_model)"] = rt.from_model(dfp)
    engines["torch fp32"] = base
    engines["torch dynamic int8"] = dynamic_int8(copy.deepcopy(base))
    texts = rm.human_sentences("eval", max(args.batches))
    inputs = {b: rm.tokenize(texts[:b]) for b in args.batches}
    return {"latency_ms": time_engines(engines, inputs, args.threads, max(5, args.repeats // 4), args.budget),
            "tokens_per_sentence_padded": {b: int(v["input_ids"].shape[1]) for b, v in inputs.items()},
            "session_create_ms": {label: session_ms(path, 7) for label, path in files.items()}}


def speed_efficientnet(args: argparse.Namespace) -> dict[str, Any]:
    import real_models as rm

    base, dfp, dfpu = rm.efficientnet_lite2(), effnet_dfp(), effnet_dfp(True)
    x = rm.photo_batch(max(args.effnet_batches), rm.EVAL_SEED)
    files = {"fp32": ensure_file(OUT / "efficientnet_lite2-fp32.onnx", base, x[:1]),
             "dfp8-qdq": ensure_file(OUT / "efficientnet_lite2-dfp8-qdq.onnx", dfp, x[:1]),
             "dfp8u-qdq": ensure_file(OUT / "efficientnet_lite2-dfp8u-qdq.onnx", dfpu, x[:1]),
             "dfp8-exact": ensure_file(OUT / "efficientnet_lite2-dfp8-exact.onnx", dfp, x[:1], activations="exact")}
    engines: dict[str, Any] = {f"ORT {label}": path for label, path in files.items()}
    engines["deepshrink runtime dfp8 (runtime.from_model)"] = rt.from_model(dfp)
    engines["torch fp32"] = base
    engines["torch dynamic int8"] = dynamic_int8(copy.deepcopy(base))
    return {"latency_ms": time_engines(engines, {b: x[:b].contiguous() for b in args.effnet_batches}, args.threads,
                                       max(5, args.repeats // 10), args.budget * 3),
            "session_create_ms": {label: session_ms(path, 5) for label, path in files.items()}}


# --------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO), help="zoo models (default: the LeNets)")
    parser.add_argument("--epochs", type=int, default=1, help="retraining epochs where a model is pruned here")
    parser.add_argument("--ttq-epochs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="no retraining, no low-rank (a smoke run)")
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--no-efficientnet", action="store_true")
    parser.add_argument("--minilm-sentences", type=int, default=512)
    parser.add_argument("--efficientnet-images", type=int, default=64)
    parser.add_argument("--speed", action="store_true", help="time inference instead (run on a quiet machine)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--effnet-batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=200, help="rounds per setting (fewer for the big models)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per setting before rounds stop early")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--variants", nargs="*", default=None,
                        help="only these zoo variants (fp32 always), e.g. dfp8 dfp8-half-even; the rest of the results file is kept")
    args = parser.parse_args()
    if args.quick:
        args.epochs = args.ttq_epochs = 0
    torch.manual_seed(0)
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    target = args.json or (SPEED_RESULTS if args.speed else RESULTS)
    result: dict[str, Any] = json.loads(target.read_text()) if target.is_file() else {}
    result["env"] = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                     "loadavg_start": os.getloadavg(), "opset": 21, "epochs": args.epochs,
                     "ttq_epochs": args.ttq_epochs, "argv": sys.argv[1:],
                     "session_create_ms": "median of InferenceSession() calls on the file, 1 thread"}

    def save() -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=1, default=str))

    data: dict[str, Any] = {}
    if args.models:
        test = load_dataset("fashion-mnist", "test")
        data = {"train": load_dataset("fashion-mnist", "train"), "val": load_dataset("fashion-mnist", "val")}
    for arch in args.models:
        if args.speed:
            print(f"{arch}: speed", flush=True)
            result.setdefault("zoo", {})[arch] = speed_zoo(arch, data, test, args)
        else:
            result.setdefault("zoo", {}).setdefault(arch, {}).update(zoo_bench(arch, data, test, args))
        save()
    if not args.no_minilm:
        result["minilm"] = speed_minilm(args) if args.speed else minilm_bench(args)
        save()
    if not args.no_efficientnet:
        if args.speed:
            result["efficientnet_lite2"] = speed_efficientnet(args)
        else:
            result.setdefault("efficientnet_lite2", {}).update(efficientnet_bench(args))
        save()
    if not args.speed:
        result["rounding"] = rounding_summary(result)
    result["env"]["loadavg_end"] = os.getloadavg()
    save()
    print(f"wrote {rel(target)}")


if __name__ == "__main__":
    main()
