"""Deep Compression on Fashion-MNIST: file sizes and accuracy next to what a user gets without deepshrink.

For each model: the committed baseline; ``torch.save`` + xz; torch's dynamic int8 quantization + xz; and the
shipped recipe (prune -> retrain -> share -> fine-tune -> encode) written as ``.dsz`` with Huffman and with ANS,
plus the paper's bit widths (conv 8 / fc 5) on the same pruned model. Every deepshrink accuracy is measured
by ``deepshrink eval`` (a subprocess) on the written file; every size is the byte count of a written file.

    nice -n 10 .venv/bin/python benchmarks/bench_deep_compression.py [--models lenet300 lenet5]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import lzma
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.data import load_dataset
from deepshrink.recipes import RecipeContext, frozen_copy, load_recipe, parse_recipe, run_recipe
from deepshrink.train import evaluate, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench"
PAPER_BITS = {"conv": 8, "fc": 5}


def xz_size(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def deepshrink_eval(path: Path) -> float:
    """Top-1 of the written file as ``deepshrink eval`` reports it (a separate process: nothing shared)."""
    cmd = [sys.executable, "-m", "deepshrink", "eval", str(path), "--dataset", "fashion-mnist", "--json",
           "--threads", "1"]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["accuracy"])


def run_stages(context: RecipeContext, stages: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return run_recipe(parse_recipe({"name": name, "stages": stages}), context)


def bench_model(arch: str, seed: int, paper_bits: bool = True, reuse_pruned: bool = False,
                prune_only: bool = False) -> dict[str, Any] | None:
    baseline_path = ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt"
    recipe_path = ROOT / "recipes" / f"deep-compression-{arch}.yaml"
    model, meta = load_checkpoint(baseline_path)
    test = load_dataset("fashion-mnist", "test")
    params = sum(p.numel() for p in model.parameters())
    fp32 = 4 * params
    base_acc = evaluate(model, test)["accuracy"]
    rows: list[dict[str, Any]] = [
        {"method": "fp32 weights (params x 4)", "bytes": fp32, "test_top1": base_acc},
        {"method": "torch.save + xz", "bytes": xz_size(model.state_dict()), "test_top1": base_acc},
    ]
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    rows.append({"method": "dynamic int8 (Linear) + xz", "bytes": xz_size(quantized.state_dict()),
                 "test_top1": evaluate(quantized, test, device="cpu")["accuracy"]})

    recipe = load_recipe(recipe_path)
    names = [s.name for s in recipe.stages]
    split = names.index("share")
    data = {"train": load_dataset("fashion-mnist", "train"), "val": load_dataset("fashion-mnist", "val")}
    context = RecipeContext(model=model, train_data=data["train"], val_data=data["val"],
                            base_lr=float(meta.get("config", {}).get("lr", 0.05)), seed=seed, quiet=True,
                            meta={"dataset": "fashion-mnist", "recipe": recipe.name},
                            teacher=frozen_copy(model))  # stages with `distill` learn from the dense baseline
    started = time.perf_counter()
    pruned_path = OUT / f"{arch}-pruned.pt"
    if reuse_pruned and pruned_path.is_file():  # the same recipe prefix, written by an earlier run
        model, pruned_meta = load_checkpoint(pruned_path)
        prefix = pruned_meta["stages"]
    else:
        prefix = run_recipe(type(recipe)(recipe.name, recipe.stages[:split], seed), context)
        save_checkpoint(pruned_path, model, meta={"dataset": "fashion-mnist", "recipe": recipe.name,
                                                  "stages": prefix})
    if prune_only:  # stop before sharing; a later --reuse-pruned run continues from the checkpoint
        print(f"{arch}: wrote {pruned_path.relative_to(ROOT)}, val top-1 {prefix[-1]['val_accuracy']:.4f}")
        return None
    pruned_acc = evaluate(model, test)["accuracy"]
    rows.append({"method": "pruned + retrained (fp32 values, not a file)", "bytes": None, "test_top1": pruned_acc,
                 "val_top1": prefix[-1]["val_accuracy"]})
    stages = {s.name: dict(s.options) for s in recipe.stages[split:]}
    variants = {
        "deepshrink (recipe bits)": stages["share"],
        "deepshrink (paper bits conv 8 / fc 5)": {**stages["share"], "bits": PAPER_BITS},
    }
    if not paper_bits:
        del variants["deepshrink (paper bits conv 8 / fc 5)"]
    for label, share in variants.items():
        val = None
        # a fresh model per variant: deep copies of parametrized modules share their class in torch
        context.model = load_checkpoint(pruned_path)[0]
        for entropy in ("huffman", "ans"):
            path = OUT / f"{arch}-{'paper' if 'paper' in label else 'recipe'}-{entropy}.dsz"
            context.out = path
            encode = {**stages["encode"], "entropy": entropy}
            if entropy == "huffman":  # share + fine-tune once, then encode with each coder
                tail = run_stages(context, [{"share": share}, {"finetune": stages["finetune"]}, {"encode": encode}],
                                  label)
                val = tail[-1]["val_accuracy"]
            else:  # same model, re-encoded
                run_stages(context, [{"encode": encode}], label)
            rows.append({"method": f"{label}, {entropy}", "bytes": path.stat().st_size,
                         "test_top1": deepshrink_eval(path), "val_top1": val, "file": str(path.relative_to(ROOT))})
    seconds = time.perf_counter() - started
    for row in rows:
        row["ratio"] = round(fp32 / row["bytes"], 2) if row["bytes"] else None
        row["delta_pp"] = round(100 * (row["test_top1"] - base_acc), 2)
    return {"arch": arch, "params": params, "fp32_bytes": fp32, "baseline_test_top1": base_acc,
            "recipe": str(recipe_path.relative_to(ROOT)), "pipeline_seconds": round(seconds, 1),
            "prefix_stages": prefix, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['arch']} ({result['params']:,} params, baseline test top-1 {result['baseline_test_top1']:.4f})",
             "| method | bytes | ratio | test top-1 | delta pp |", "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        size = f"{r['bytes']:,}" if r["bytes"] else "-"
        ratio = f"{r['ratio']}x" if r["ratio"] else "-"
        lines.append(f"| {r['method']} | {size} | {ratio} | {r['test_top1']:.4f} | {r['delta_pp']:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-pruned", action="store_true", help="start from out/bench/ARCH-pruned.pt")
    parser.add_argument("--prune-only", action="store_true",
                        help="run only the stages before 'share' and write out/bench/ARCH-pruned.pt")
    parser.add_argument("--no-paper-bits", action="store_true", help="skip the conv 8 / fc 5 variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "deep_compression.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    env = {"seed": args.seed, "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine()}
    print(f"seed {args.seed}, threads {args.threads}, torch {torch.__version__}, python {env['python']}")
    results = []
    for arch in args.models:
        result = bench_model(arch, args.seed, paper_bits=not args.no_paper_bits,
                             reuse_pruned=args.reuse_pruned, prune_only=args.prune_only)
        if result is None:
            continue
        print(table(result), flush=True)
        results.append(result)
    if not results:
        return
    existing: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    models = {**existing.get("models", {}), **{r["arch"]: r for r in results}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"env": env, "models": models}, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
