"""Centroid initialisation (linear / density / random / optimal) at 2-8 bits: accuracy before fine-tuning.

Starts from the pruned + retrained model that ``bench_deep_compression.py`` leaves in ``out/bench`` (or prunes
one with the recipe's stages before ``share`` when it is missing), shares every layer's weights at ``b`` bits
with each initialisation, and reports test top-1 (no fine-tuning) and the clustering's mean squared error.
Random (Forgy) init is repeated over seeds; the median is reported.

    nice -n 10 .venv/bin/python benchmarks/bench_centroid_init.py [--models lenet300 lenet5]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from deepshrink.data import load_dataset
from deepshrink.recipes import RecipeContext, load_recipe, run_recipe
from deepshrink.share import INITS, WeightSharing, share_weights_
from deepshrink.train import evaluate, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench"


def pruned_model(arch: str) -> tuple[torch.nn.Module, str]:
    path = OUT / f"{arch}-pruned.pt"
    if path.is_file():
        return load_checkpoint(path)[0], str(path.relative_to(ROOT))
    model, meta = load_checkpoint(ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt")
    recipe = load_recipe(ROOT / "recipes" / f"deep-compression-{arch}.yaml")
    split = [s.name for s in recipe.stages].index("share")
    context = RecipeContext(model=model, train_data=load_dataset("fashion-mnist", "train"),
                            val_data=load_dataset("fashion-mnist", "val"),
                            base_lr=float(meta.get("config", {}).get("lr", 0.05)), quiet=True)
    run_recipe(type(recipe)(recipe.name, recipe.stages[:split], recipe.seed), context)
    save_checkpoint(path, model, meta={"dataset": "fashion-mnist"})
    return model, str(path.relative_to(ROOT))


def bench_model(arch: str, bits: list[int], seeds: int) -> dict[str, Any]:
    model, source = pruned_model(arch)
    test = load_dataset("fashion-mnist", "test")
    result: dict[str, Any] = {"arch": arch, "source": source, "pruned_test_top1": evaluate(model, test)["accuracy"],
                              "bits": bits, "accuracy": {}, "mse": {}}
    for init in INITS:
        result["accuracy"][init], result["mse"][init] = {}, {}
        for b in bits:
            accs, mses = [], []
            for seed in range(seeds if init == "random" else 1):
                shared = copy.deepcopy(model)
                report = share_weights_(shared, WeightSharing(bits=b, init=init, seed=seed))
                accs.append(evaluate(shared, test)["accuracy"])
                layers = report.layers.values()
                mses.append(sum(r["mse"] * r["shared"] for r in layers) / max(sum(r["shared"] for r in layers), 1))
            result["accuracy"][init][b] = statistics.median(accs)
            result["mse"][init][b] = statistics.median(mses)
        print(f"{arch} {init:<8} " + " ".join(f"{b}b {result['accuracy'][init][b]:.4f}" for b in bits), flush=True)
    return result


def table(result: dict[str, Any]) -> str:
    bits = result["bits"]
    lines = [f"{result['arch']}: test top-1 before fine-tuning (pruned model {result['pruned_test_top1']:.4f})",
             "| init | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---:|" * len(bits)]
    for init in INITS:
        lines.append(f"| {init} | " + " | ".join(f"{result['accuracy'][init][b]:.4f}" for b in bits) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--seeds", type=int, default=3, help="repeats of random (Forgy) init")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "centroid_init.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"threads {args.threads}, torch {torch.__version__}, python {platform.python_version()}, "
          f"random-init seeds 0..{args.seeds - 1}")
    results = {}
    for arch in args.models:
        results[arch] = bench_model(arch, args.bits, args.seeds)
        print(table(results[arch]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    env = {"threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
           "seeds": args.seeds}
    existing = json.loads(args.json.read_text()).get("models", {}) if args.json.is_file() else {}
    args.json.write_text(json.dumps({"env": env, "models": {**existing, **results}}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
