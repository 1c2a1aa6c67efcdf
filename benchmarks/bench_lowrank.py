"""Zhang et al. low-rank conv factorisation on the VGG-style CNN (Fashion-MNIST) at 2x / 3x / 4x conv FLOP reduction.

For every speedup the BN-folded baseline is factorised by each method (plain weight SVD, linear, nonlinear,
asymmetric, and the linear-asymmetric ablation) with the same greedy ranks (response PCA energy of the original
network, 3,000 val images x 10 positions), evaluated on the test split without fine-tuning; the asymmetric model is
then fine-tuned briefly. The conv stack's CPU latency (factorised vs. original, interleaved, median of repeats)
is measured beside the MAC ratio. Results merge into the JSON by speedup, so speedups can run separately:

    nice -n 10 .venv/bin/python benchmarks/bench_lowrank.py --speedups 2 3 4   # writes benchmarks/results/lowrank.json
    .venv/bin/python benchmarks/bench_lowrank.py --table                        # prints the markdown table
    (speedups in parallel: --speedups 2 --out results/lowrank_2.json ..., then --merge results/lowrank_*.json)
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.core import atomic_write_text, fold_batchnorm_, recorded_edits, replay_edits
from deepshrink.data import load_dataset
from deepshrink.lowrank import ZhangLowRank, conv_macs, lowrank_conv_
from deepshrink.train import TrainConfig, evaluate, fit, load_checkpoint

ROOT = Path(__file__).resolve().parent
METHODS = ["svd", "linear", "nonlinear", "asymmetric", "linear-asymmetric"]
CACHE: dict[str, Any] = {}
"""The original network's calibration responses, shared by every method and speedup of one run."""


@torch.no_grad()
def latency(stacks: dict[str, nn.Module], batch: int, repeats: int, channels_last: bool = False) -> dict[str, float]:
    """Median seconds per forward of each conv stack on one batch, runs interleaved so load hits all equally."""
    x = torch.randn(batch, 1, 28, 28)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        stacks = {k: copy.deepcopy(v).to(memory_format=torch.channels_last) for k, v in stacks.items()}
    times: dict[str, list[float]] = {k: [] for k in stacks}
    for stack in stacks.values():
        stack.eval()
        for _ in range(3):
            stack(x)
    for _ in range(repeats):
        for name, stack in stacks.items():
            start = time.perf_counter()
            stack(x)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run_speedup(base: nn.Module, speedup: float, args: argparse.Namespace, test: Any, val: Any, train: Any) -> dict:
    example = val.tensors[0][:1]
    row: dict[str, Any] = {"speedup_target": speedup, "methods": {}}
    fitted: dict[str, nn.Module] = {}
    for method in args.methods:
        model = copy.deepcopy(base)
        start = time.perf_counter()
        config = ZhangLowRank(speedup=speedup, method=method, images=args.images, seed=args.seed,
                              decomposition=args.decomposition, rank_rule=args.rank_rule)
        report = lowrank_conv_(model, config, val, cache=CACHE)
        seconds = time.perf_counter() - start
        acc = evaluate(model, test)["accuracy"]
        row["methods"][method] = {"top1": acc, "fit_seconds": round(seconds, 1), "errors": report.errors}
        row.update(ranks=report.ranks, spatial_ranks=report.spatial_ranks, energy=report.energy,
                   macs_before=report.macs_before, macs_after=report.macs_after, edits=recorded_edits(model))
        print(f"  {speedup}x {method:<18} top-1 {acc:.4f}  (fit {seconds:.0f}s)  ranks {list(report.ranks.values())}", flush=True)
        fitted[method] = model
    if args.finetune_epochs > 0:
        for method in args.finetune:
            if method not in fitted:
                continue
            model = fitted[method]
            start = time.perf_counter()
            train_set = torch.utils.data.Subset(train, range(args.finetune_limit)) if args.finetune_limit else train
            fit(model, train_set, TrainConfig(epochs=args.finetune_epochs, lr=args.lr, seed=args.seed), quiet=True)
            acc = evaluate(model, test)["accuracy"]
            row["methods"][method]["top1_finetuned"] = acc
            row["methods"][method]["finetune_seconds"] = round(time.perf_counter() - start, 1)
            print(f"  {speedup}x {method:<18} fine-tuned top-1 {acc:.4f}", flush=True)
    factorised = next(iter(fitted.values()))
    assert conv_macs(factorised, example) == row["macs_after"]
    lat = latency({"original": base.features, "factorised": factorised.features}, args.batch, args.repeats)
    row["latency"] = {"batch": args.batch, "repeats": args.repeats, "original_ms": lat["original"] * 1e3,
                      "factorised_ms": lat["factorised"] * 1e3, "speedup": lat["original"] / lat["factorised"]}
    print(f"  {speedup}x conv MACs {row['macs_before']:,} -> {row['macs_after']:,} "
          f"({row['macs_before'] / row['macs_after']:.2f}x); conv-stack latency {lat['original'] * 1e3:.1f} -> "
          f"{lat['factorised'] * 1e3:.1f} ms ({lat['original'] / lat['factorised']:.2f}x, batch {args.batch}, 1 thread)",
          flush=True)
    return row


def _stacks(base: nn.Module, results: dict, prefix: str = "") -> dict[str, nn.Module]:
    """The factorised conv stacks of a results file, rebuilt from its recorded edits (or ranks, older files)."""
    stacks = {}
    for key, row in sorted(results["speedups"].items(), key=lambda kv: float(kv[0])):
        model = copy.deepcopy(base)
        replay_edits(model, row.get("edits") or [{"op": "lowrank_conv", "layer": n, "rank": r}
                                                 for n, r in row["ranks"].items() if r is not None])
        stacks[prefix + key] = model.features
    return stacks


def latency_only(args: argparse.Namespace) -> None:
    """Re-time the conv stacks from the recorded structures (timing depends on the structure only).

    Batch 1 and 32, in the default (NCHW) and the channels-last memory layout, original and factorised alike;
    ``--also`` adds the stacks of other result files (e.g. the 3-D decomposition) to the same interleaved runs.
    """
    results = json.loads(args.out.read_text())
    base, _ = load_checkpoint(args.ckpt)
    base.eval()
    fold_batchnorm_(base, torch.zeros(1, 1, 28, 28))
    stacks: dict[str, nn.Module] = {"original": base.features, **_stacks(base, results)}
    macs = {k: r["macs_before"] / r["macs_after"] for k, r in results["speedups"].items()}
    for extra in args.also or []:
        other = json.loads(extra.read_text())
        stacks.update(_stacks(base, other, f"{extra.stem}:"))
        macs.update({f"{extra.stem}:{k}": r["macs_before"] / r["macs_after"] for k, r in other["speedups"].items()})
    out: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats}
    for layout, batch in itertools.product(("contiguous", "channels_last"), (1, 32)):
        lat = latency(stacks, batch, args.repeats, channels_last=layout == "channels_last")
        out[f"{layout}_batch{batch}"] = {k: v * 1e3 for k, v in lat.items()}
        for key in macs:
            print(f"{layout} batch {batch:>2}: {key} MACs ({macs[key]:.2f}x): "
                  f"{lat['original'] * 1e3:.2f} -> {lat[key] * 1e3:.2f} ms ({lat['original'] / lat[key]:.2f}x)")
    results["latency_rerun"] = out
    atomic_write_text(args.out, json.dumps(results, indent=1))


def table(results: dict) -> str:
    methods = METHODS
    head = "| conv MACs | ranks | " + " | ".join(methods) + " | asymmetric + fine-tune | latency speedup |"
    lines = [f"baseline (BN folded) top-1: {results['baseline_top1']:.4f}", "", head,
             "|---|---|" + "---:|" * (len(methods) + 2)]
    for key in sorted(results["speedups"], key=float):
        row = results["speedups"][key]
        cells = [f"{row['methods'][m]['top1']:.4f}" if m in row["methods"] else "-" for m in methods]
        ft = row["methods"].get("asymmetric", {}).get("top1_finetuned")
        ratio = row["macs_before"] / row["macs_after"]
        spatial = row.get("spatial_ranks", {})
        ranks = "/".join("-" if r is None else (f"{spatial[n]}:{r}" if n in spatial else str(r))
                         for n, r in row["ranks"].items())
        lat = row["latency"]
        cells.append(f"{ft:.4f}" if ft is not None else "-")
        cells.append(f"{lat['speedup']:.2f}x ({lat['original_ms']:.1f} -> {lat['factorised_ms']:.1f} ms)")
        lines.append(f"| {ratio:.2f}x (target {float(key):g}x) | {ranks} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=ROOT / "baselines/vgg-fmnist.pt")
    parser.add_argument("--speedups", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--images", type=int, default=3000, help="calibration images (val split)")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune", nargs="+", default=["asymmetric"], help="methods to fine-tune")
    parser.add_argument("--finetune-limit", type=int, default=None, help="fine-tune on the first N train images")
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--batch", type=int, default=32, help="latency batch size")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results/lowrank.json")
    parser.add_argument("--table", action="store_true", help="only print the markdown table from --out")
    parser.add_argument("--latency-only", action="store_true", help="re-time the conv stacks from the ranks in --out")
    parser.add_argument("--decomposition", choices=["channel", "3d"], default="channel",
                        help="3d: the TPAMI k x 1, 1 x k, 1x1 decomposition (write it to its own --out)")
    parser.add_argument("--rank-rule", choices=["energy", "sensitivity"], default="energy",
                        help="sensitivity: ranks by the measured output change (write it to its own --out)")
    parser.add_argument("--also", type=Path, nargs="+", default=None,
                        help="with --latency-only: also time the stacks of these result files in the same runs")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="combine the speedups of these result files into --out and print the table")
    args = parser.parse_args()
    if args.merge:
        merged = json.loads(args.merge[0].read_text())
        for extra in args.merge[1:]:
            merged["speedups"].update(json.loads(extra.read_text())["speedups"])
        atomic_write_text(args.out, json.dumps(merged, indent=1))
    if args.latency_only:
        torch.set_num_threads(args.threads)
        latency_only(args)
        return
    if args.table or args.merge:
        print(table(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"seed {args.seed}, threads {args.threads}, torch {torch.__version__}, python {platform.python_version()}")
    base, meta = load_checkpoint(args.ckpt)
    base.eval()
    fold_batchnorm_(base, torch.zeros(1, 1, 28, 28))
    test, val, train = (load_dataset("fashion-mnist", s) for s in ("test", "val", "train"))
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"speedups": {}}
    results.update(checkpoint=str(args.ckpt.relative_to(ROOT.parent)) if args.ckpt.is_relative_to(ROOT.parent) else str(args.ckpt),
                   threads=args.threads, seed=args.seed, torch=torch.__version__, calib_images=args.images,
                   decomposition=args.decomposition, rank_rule=args.rank_rule,
                   finetune={"epochs": args.finetune_epochs, "lr": args.lr, "limit": args.finetune_limit},
                   baseline_top1=evaluate(base, test)["accuracy"], baseline_recorded=meta.get("test_accuracy"))
    print(f"baseline (BN folded) top-1 {results['baseline_top1']:.4f}")
    for speedup in args.speedups:
        results["speedups"][str(speedup)] = run_speedup(base, speedup, args, test, val, train)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
