"""ONNX export of compressed models: file sizes, ONNX Runtime vs deepshrink, load cost and speed side by side.

For every zoo model (committed Fashion-MNIST baselines) x every technique (pruned; Deep Compression's prune +
share, with the shipped recipe's sparsities and bits for the LeNets; dynamic fixed point 8 and conv8/fc4; TTQ;
low-rank), plus MiniLM (DFP 8, pruned + shared) and EfficientNet-Lite2 (DFP 8, pruned + shared): the ``.onnx``
bytes next to the fp32 export's, ``onnx.checker`` (full check), ORT's session-creation time, and ORT's outputs
against the compressed model's own on the whole Fashion-MNIST test set (max |difference| relative to the logit
range, equal arg-max, bit-exact elements). Fixed point is exported twice: ``qdq`` (int8 kernels) and ``exact``.
The compressed models are made here in minutes (one pruning round and ``--epochs`` of retraining/fine-tuning;
post-training fixed point and low-rank): their accuracy is not the point, the ONNX files' fidelity and size are.

``--timing`` adds inference latency in one process, batch 1 and 64, each of ``--threads``: ORT fp32, ORT
compressed, deepshrink's runtime, torch fp32 and torch dynamic int8 (medians of ``--repeats``; run it on a quiet
machine). Results merge into benchmarks/results/onnx.json.

    nice -n 10 .venv/bin/python benchmarks/bench_onnx.py                     # sizes + fidelity (~15 min, 2 cores)
    .venv/bin/python benchmarks/bench_onnx.py --timing --threads 1 2 --repeats 200   # + latency (quiet machine)
    .venv/bin/python benchmarks/bench_onnx.py --models lenet300 --no-minilm --no-efficientnet --quick   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import deepshrink.runtime as rt
import deepshrink.runtime.integer as integer
from deepshrink.core import fixed_point as fp
from deepshrink.data import load_dataset
from deepshrink.export import to_onnx
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.lowrank import SVDLinear, ZhangLowRank, lowrank_
from deepshrink.prune import MagnitudePrune, prune_
from deepshrink.recipes import RecipeContext, load_recipe, parse_recipe, run_recipe
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.train import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench" / "onnx"
RESULTS = ROOT / "benchmarks" / "results" / "onnx.json"
ZOO = ("lenet300", "lenet5", "vgg", "resnet20")
GENERIC_DC = {"conv": 0.6, "fc": 0.9, "bits": 5}  # models without a shipped recipe


# --------------------------------------------------------------------------------------------- making models
def dc_settings(arch: str, model: nn.Module) -> tuple[dict[str, float], Any, int | None]:
    """(per-layer sparsity, share bits, bias bits): the shipped recipe's, else :data:`GENERIC_DC`."""
    recipe = ROOT / "recipes" / f"deep-compression-{arch}.yaml"
    if recipe.is_file():
        stages = {s.name: dict(s.options) for s in load_recipe(recipe).stages}
        return dict(stages["prune"]["sparsity"]), stages["share"]["bits"], stages["share"].get("bias_bits")
    sparsity = {name: GENERIC_DC["conv"] if isinstance(m, nn.Conv2d) else GENERIC_DC["fc"]
                for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    return sparsity, GENERIC_DC["bits"], None


def stages(context: RecipeContext, entries: list[dict[str, Any]], name: str) -> None:
    run_recipe(parse_recipe({"name": name, "stages": entries}), context)


def make_zoo_variants(arch: str, epochs: int, calib: torch.Tensor, data: dict[str, Any],
                      quick: bool) -> dict[str, nn.Module]:
    """The compressed variants of one baseline (each its own model: parametrized deep copies share classes)."""
    base_path = ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt"
    fresh: Callable[[], nn.Module] = lambda: load_checkpoint(base_path)[0].eval()  # noqa: E731
    base = fresh()
    sparsity, bits, bias_bits = dc_settings(arch, base)
    out: dict[str, nn.Module] = {"fp32": base}
    lr = float(load_checkpoint(base_path)[1].get("config", {}).get("lr", 0.05))

    def context(model: nn.Module) -> RecipeContext:
        return RecipeContext(model=model, train_data=data["train"], val_data=data["val"], base_lr=lr, quiet=True)

    pruned = fresh()
    stages(context(pruned), [{"prune": {"sparsity": sparsity, "rounds": 1, "retrain": {"epochs": epochs}}}], "pruned")
    OUT.mkdir(parents=True, exist_ok=True)
    save_checkpoint(OUT / f"{arch}-pruned.pt", pruned.eval(), meta={"dataset": "fashion-mnist"})
    out["pruned"] = pruned.eval()

    dc = load_checkpoint(OUT / f"{arch}-pruned.pt")[0]
    share: dict[str, Any] = {"bits": bits, "init": "linear" if epochs else "auto"}
    if bias_bits:
        share["bias_bits"] = bias_bits
    plan: list[dict[str, Any]] = [{"share": share}]
    if epochs:
        plan.append({"finetune": {"epochs": epochs, "lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0}})
    stages(context(dc), plan, "deep-compression")
    out["deep-compression"] = dc.eval()

    for name, dfp_bits in (("dfp8", 8), ("dfp-conv8-fc4", {"conv": 8, "fc": 4})):
        if name == "dfp-conv8-fc4" and not any(isinstance(m, nn.Conv2d) for m in base.modules()):
            continue
        model = fresh()
        quantize_(model, DynamicFixedPoint(bits=dfp_bits), calib=list(torch.split(calib, 128)))
        out[name] = model.eval()

    ttq = fresh()
    stages(context(ttq), [{"ternarize": {"method": "ttq", "epochs": epochs}}], "ttq")
    out["ttq"] = ttq.eval()

    if not quick:
        factorised = fresh()
        has_conv = any(isinstance(m, nn.Conv2d) for m in factorised.modules())
        conv = ZhangLowRank(speedup=2.0, images=300, schedule=((0.01, 5), (1.0, 5))) if has_conv else None
        lowrank_(factorised, calib, conv=conv, linear=SVDLinear(param_ratio=0.5))
        out["lowrank"] = factorised.eval()
    return out


@contextlib.contextmanager
def half_even_rounding() -> Iterator[None]:
    """deepshrink's integer engine with ONNX's rounding (half to even) at every activation rounding: what a
    ``rounding="half_even"`` option of the fixed-point transform would compute (weights and biases unchanged)."""
    def to_int(x: torch.Tensor, bits: int, frac_len: Any, axis: int = 0) -> torch.Tensor:
        return torch.round(x.detach().double() * fp.pow2(frac_len, x, axis)).clamp_(*fp.int_range(bits))

    def shift(acc: torch.Tensor, s: Any) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=torch.int64)
        right, left = s.clamp(min=0), (-s).clamp(min=0)
        q = torch.bitwise_right_shift(acc, right)
        r = acc - torch.bitwise_left_shift(q, right)
        half = torch.where(right > 0, torch.bitwise_left_shift(torch.ones_like(right), (right - 1).clamp(min=0)), 0)
        up = (r > half) | ((r == half) & (right > 0) & (q % 2 == 1))
        return torch.bitwise_left_shift(q + up.to(acc.dtype), left)

    saved = integer.to_int, integer.rounding_shift, integer.requantize
    integer.to_int, integer.rounding_shift = to_int, shift
    integer.requantize = lambda ints, a, bits, b: fp.saturate(shift(ints, a - b), bits)
    try:
        yield
    finally:
        integer.to_int, integer.rounding_shift, integer.requantize = saved


def half_even_reference(model: nn.Module, batches: list[torch.Tensor]) -> np.ndarray | None:
    """The integer engine's outputs with half-even rounding (None when its tracer cannot take the model)."""
    try:
        engine = rt.IntegerModel(model)
    except Exception:
        return None
    with half_even_rounding(), torch.no_grad():
        return np.concatenate([engine(b).numpy() for b in batches])


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
    times = []
    for _ in range(n):
        started = time.perf_counter()
        session(path, 1)
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 2)


def agreement(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """ORT outputs ``got`` against the compressed model's ``ref`` (rows = samples)."""
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    span = float(ref.max() - ref.min()) or 1.0
    row = {"max_abs_diff": diff, "relative_to_range": diff / span,
           "argmax_equal": float((got.argmax(1) == ref.argmax(1)).mean()),
           "elements_bit_exact": float((got == ref).mean())}
    if labels is not None:
        row.update(top1_ort=float((got.argmax(1) == labels).mean()), top1_deepshrink=float((ref.argmax(1) == labels).mean()))
    return row


def ort_outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    s = session(path)
    return np.concatenate([s.run(None, f)[0] for f in feeds])


def export_row(model: nn.Module, example: Any, path: Path, fp32_bytes: int | None, **options: Any) -> dict[str, Any]:
    started = time.perf_counter()
    report = to_onnx(model, example, path, **options)
    seconds = time.perf_counter() - started
    onnx.checker.check_model(onnx.load(path), full_check=True)
    encodings: dict[str, int] = {}
    for w in report["weights"].values():
        encodings[w["encoding"]] = encodings.get(w["encoding"], 0) + 1
    return {"file": str(path.relative_to(ROOT)), "bytes": report["bytes"], "export_seconds": round(seconds, 1),
            "ratio_vs_fp32_onnx": round(fp32_bytes / report["bytes"], 2) if fp32_bytes else 1.0,
            "checker_full": True, "session_create_ms": session_ms(path), "encodings": encodings,
            "compressed_weight_bytes": report["compressed_weight_bytes"], "fp32_weight_bytes": report["fp32_weight_bytes"]}


@torch.no_grad()
def zoo_bench(arch: str, epochs: int, test: Any, data: dict[str, Any], quick: bool) -> tuple[dict[str, Any], dict]:
    x_all, labels = test.tensors[0], test.tensors[1].numpy()
    calib = data["train"].tensors[0][:256] if hasattr(data["train"], "tensors") else x_all[:256]
    started = time.perf_counter()
    variants = make_zoo_variants(arch, epochs, calib, data, quick)
    print(f"{arch}: variants made in {time.perf_counter() - started:.0f}s", flush=True)
    batches = list(torch.split(x_all, 1000))
    feeds = [{"x": b.numpy()} for b in batches]
    rows: dict[str, Any] = {}
    fp32_bytes = None
    files: dict[str, Path] = {}
    for name, model in variants.items():
        ref = np.concatenate([model(b).numpy() for b in batches])
        exports: list[tuple[str, dict[str, Any]]] = [("", {})]
        if name.startswith("dfp"):
            exports = [("qdq", {}), ("exact", {"activations": "exact"})]
        elif name == "deep-compression" and arch.startswith("lenet"):
            exports = [("", {}), ("codes", {"encoding": "codes"}), ("gaps", {"encoding": "gaps"})]
        for suffix, options in exports:
            label = f"{name}-{suffix}" if suffix else name
            path = OUT / f"{arch}-{label}.onnx"
            row = export_row(model, x_all[:1], path, fp32_bytes, **options)
            if name == "fp32":
                fp32_bytes = row["bytes"]
            got = ort_outputs(path, feeds)
            row.update(agreement(ref, got, labels))
            if name.startswith("dfp"):
                engine = rt.IntegerModel(model)
                ints = np.concatenate([engine(b).numpy() for b in batches])
                row["simulation_equals_integer_engine"] = bool(np.array_equal(ints, ref))
                if suffix == "qdq":
                    even = half_even_reference(model, batches)
                    row["vs_half_even_engine"] = None if even is None else agreement(even, got)
            rows[label] = row
            files[label] = path
            print(f"  {label:28s} {row['bytes']:>10,} B  x{row['ratio_vs_fp32_onnx']:<6} rel {row['relative_to_range']:.1e}"
                  f"  argmax {row['argmax_equal']:.4f}  bit-exact {row['elements_bit_exact']:.3f}"
                  f"  load {row['session_create_ms']} ms", flush=True)
    return rows, {"variants": variants, "files": files}


@torch.no_grad()
def minilm_bench(calib_n: int, eval_n: int) -> tuple[dict[str, Any], dict]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_models as rm

    base = rm.minilm()
    calib = [rm.tokenize(rm.human_sentences("calib", calib_n)[i:i + 32]) for i in range(0, calib_n, 32)]
    evals = [rm.tokenize(rm.human_sentences("eval", eval_n)[i:i + 64]) for i in range(0, eval_n, 64)]
    variants: dict[str, nn.Module] = {"fp32": base}
    dfp = rm.minilm()
    started = time.perf_counter()
    quantize_(dfp, DynamicFixedPoint(bits=8, quantize_outputs=False), calib=calib)
    print(f"minilm: DFP search {time.perf_counter() - started:.0f}s", flush=True)
    variants["dfp8"] = dfp
    shared = rm.minilm()
    prune_(shared, MagnitudePrune(sparsity=0.5))
    share_weights_(shared, WeightSharing(bits=6))
    variants["pruned-shared"] = shared
    rows: dict[str, Any] = {}
    files: dict[str, Path] = {}
    fp32_bytes = None
    for name, model in variants.items():
        ref = torch.cat([model(b) for b in evals]).numpy()
        exports = [("qdq", {}), ("exact", {"activations": "exact"})] if name == "dfp8" else [("", {})]
        for suffix, options in exports:
            label = f"{name}-{suffix}" if suffix else name
            path = OUT / f"minilm-{label}.onnx"
            row = export_row(model, calib[0], path, fp32_bytes, dynamic_dims="0,1", **options)
            fp32_bytes = fp32_bytes or row["bytes"]
            s = session(path)
            got = np.concatenate([s.run(None, {i.name: b[k].numpy() for i, k in zip(s.get_inputs(), b, strict=True)})[0]
                                  for b in evals])
            cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
            row.update(max_abs_diff=float(np.abs(got - ref).max()), cosine_mean=float(cos.mean()),
                       cosine_min=float(cos.min()), elements_bit_exact=float((got == ref).mean()))
            rows[label] = row
            files[label] = path
            print(f"  minilm {label:20s} {row['bytes']:>12,} B  x{row['ratio_vs_fp32_onnx']:<6} cos min "
                  f"{row['cosine_min']:.6f}  max|d| {row['max_abs_diff']:.2e}  load {row['session_create_ms']} ms",
                  flush=True)
    return rows, {"variants": variants, "files": files, "evals": evals}


@torch.no_grad()
def efficientnet_bench(calib_n: int, eval_n: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_models as rm

    calib = rm.photo_batch(calib_n, rm.CALIB_SEED)
    evals = list(torch.split(rm.photo_batch(eval_n, rm.EVAL_SEED), 16))
    variants: dict[str, nn.Module] = {"fp32": rm.efficientnet_lite2()}
    dfp = rm.efficientnet_lite2()
    started = time.perf_counter()
    quantize_(dfp, DynamicFixedPoint(bits=8), calib=[calib])
    print(f"efficientnet: DFP search {time.perf_counter() - started:.0f}s", flush=True)
    variants["dfp8"] = dfp
    shared = rm.efficientnet_lite2()
    prune_(shared, MagnitudePrune(sparsity=0.3))
    share_weights_(shared, WeightSharing(bits=7))
    variants["pruned-shared"] = shared
    rows: dict[str, Any] = {}
    fp32_bytes = None
    for name, model in variants.items():
        ref = torch.cat([model(b) for b in evals]).numpy()
        exports = [("qdq", {}), ("exact", {"activations": "exact"})] if name == "dfp8" else [("", {})]
        for suffix, options in exports:
            label = f"{name}-{suffix}" if suffix else name
            path = OUT / f"efficientnet_lite2-{label}.onnx"
            row = export_row(model, calib[:1], path, fp32_bytes, **options)
            fp32_bytes = fp32_bytes or row["bytes"]
            got = ort_outputs(path, [{"x": b.numpy()} for b in evals])
            row.update(agreement(ref, got))
            if suffix == "qdq":
                even = half_even_reference(model, evals)
                row["vs_half_even_engine"] = None if even is None else agreement(even, got)
            row.update({f"vs_deepshrink_{k}": v for k, v in rm.cnn_agreement(torch.from_numpy(ref),
                                                                             torch.from_numpy(got)).items()})
            rows[label] = row
            print(f"  efficientnet {label:16s} {row['bytes']:>12,} B  x{row['ratio_vs_fp32_onnx']:<6} rel "
                  f"{row['relative_to_range']:.1e}  top1 agree {row['argmax_equal']:.4f}  load "
                  f"{row['session_create_ms']} ms", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------- timing
def median_us(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(1e6 * statistics.median(times), 1)


@torch.no_grad()
def timing(engines: dict[str, Any], inputs: dict[int, Any], threads: list[int], repeats: int) -> dict[str, Any]:
    """``engines``: name -> torch module or ONNX path; ``inputs``: batch -> (torch input, ORT feeds)."""
    out: dict[str, Any] = {}
    for t in threads:
        torch.set_num_threads(t)
        for batch, (x, feeds) in inputs.items():
            key = f"threads={t} batch={batch}"
            out[key] = {}
            for name, engine in engines.items():
                if isinstance(engine, Path):
                    s = session(engine, t)
                    out[key][name] = median_us(lambda s=s, f=feeds: s.run(None, f), repeats)
                else:
                    arg = dict(x) if isinstance(x, dict) else x
                    out[key][name] = median_us(lambda e=engine, a=arg: e(a), repeats)
            print(f"  {key}: " + ", ".join(f"{k} {v:.0f} us" for k, v in out[key].items()), flush=True)
    return out


def dynamic_int8(model: nn.Module) -> nn.Module:
    """torch's dynamic int8 quantization of every Linear (the peer most users reach for)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def zoo_engines(made: dict[str, Any]) -> dict[str, Any]:
    variants, files = made["variants"], made["files"]
    engines: dict[str, Any] = {"ORT fp32": files["fp32"]}
    for label in ("deep-compression", "pruned", "dfp8-qdq", "dfp8-exact", "ttq"):
        if label in files:
            engines[f"ORT {label}"] = files[label]
    engines["deepshrink runtime (deep-compression)"] = rt.from_model(variants["deep-compression"])
    engines["deepshrink runtime (dfp8)"] = rt.from_model(variants["dfp8"])
    engines["torch fp32"] = variants["fp32"]
    engines["torch dynamic int8"] = dynamic_int8(variants["fp32"])
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO))
    parser.add_argument("--epochs", type=int, default=1, help="retraining / fine-tuning epochs per variant")
    parser.add_argument("--quick", action="store_true", help="no retraining, no low-rank (a smoke run)")
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--no-efficientnet", action="store_true")
    parser.add_argument("--minilm-sentences", type=int, default=256)
    parser.add_argument("--efficientnet-images", type=int, default=64)
    parser.add_argument("--timing", action="store_true", help="also time inference (run on a quiet machine)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    epochs = 0 if args.quick else args.epochs
    torch.manual_seed(0)
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    result["env"] = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "python": platform.python_version(), "machine": platform.machine(), "epochs": epochs,
                     "opset": 21, "session_create_ms": "median of 5 InferenceSession() calls, 1 thread"}
    timings = result.setdefault("timing", {})
    if args.models:
        test = load_dataset("fashion-mnist", "test")
        data = {"train": load_dataset("fashion-mnist", "train"), "val": load_dataset("fashion-mnist", "val")}
        for arch in args.models:
            rows, made = zoo_bench(arch, epochs, test, data, args.quick)
            result.setdefault("zoo", {})[arch] = rows
            if args.timing:
                x = test.tensors[0]
                inputs = {b: (x[:b], {"x": x[:b].numpy()}) for b in (1, 64)}
                timings[arch] = timing(zoo_engines(made), inputs, args.threads, args.repeats)
            args.json.write_text(json.dumps(result, indent=1, default=str))
    if not args.no_minilm:
        rows, made = minilm_bench(64, args.minilm_sentences)
        result["minilm"] = rows
        if args.timing:
            variants, files = made["variants"], made["files"]
            engines = {"ORT fp32": files["fp32"], "ORT dfp8-qdq": files["dfp8-qdq"],
                       "ORT dfp8-exact": files["dfp8-exact"], "ORT pruned-shared": files["pruned-shared"],
                       "deepshrink runtime (dfp8)": rt.swap_integer_layers_(copy.deepcopy(variants["dfp8"])),
                       "torch fp32": variants["fp32"],
                       "torch dynamic int8": dynamic_int8(variants["fp32"])}
            sys.path.insert(0, str(ROOT / "benchmarks"))
            import real_models as rm

            texts = rm.human_sentences("eval", 64)
            inputs = {}
            for b in (1, 64):
                batch = rm.tokenize(texts[:b])
                inputs[b] = (batch, {f"batch_{k}": v.numpy() for k, v in batch.items()})
            timings["minilm"] = timing(engines, inputs, args.threads, max(10, args.repeats // 10))
        args.json.write_text(json.dumps(result, indent=1, default=str))
    if not args.no_efficientnet:
        result["efficientnet_lite2"] = efficientnet_bench(8, args.efficientnet_images)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
