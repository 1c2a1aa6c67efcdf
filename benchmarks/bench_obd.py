"""One-shot pruning without retraining on LeNet-300-100 (Fashion-MNIST): magnitude vs. OBD vs. OBS vs. random.

From the trained baseline, each criterion prunes to 50..95% sparsity in one shot (per layer, and over the
whole model with one global ranking) and the test top-1 is measured with no retraining. OBD saliencies use
the Gauss-Newton diagonal (exact GGN diagonal, the paper's Levenberg-Marquardt approximation) and a
Hutchinson estimate, both on 2048 training samples. The exact Hessian diagonal (rows of H by double
back-propagation) is too costly for all 266K weights, so it is computed at 64 random positions per layer
on 256 samples and compared with the Gauss-Newton diagonal there (LeNet-300-100 is ReLU, so the two
should agree: the output is piecewise linear in each single weight).

Layer-wise OBS (Hassibi & Stork's successor in SparseGPT's form: per layer ``H = 2 X X^T`` from the layer's
inputs on the same 2,048 training images, prune by ``w^2 / [H^-1]_ii`` and update the surviving weights, layers
in sequence) runs at the same sparsities, per layer and with ``scope="global"`` (per-layer sparsities from
each layer's reconstruction-error curve under one budget). Unlike the other criteria it changes the kept
weights, so it is a different trade: no retraining, but the survivors are re-fitted to the calibration data.

    nice -n 10 .venv/bin/python benchmarks/bench_obd.py    # -> benchmarks/results/pruning-obd.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from deepshrink.core import latent_weight
from deepshrink.data import load_dataset
from deepshrink.prune import OBSPrune, RandomPrune, hessian_diagonal, prune_, saliency
from deepshrink.train import evaluate, load_checkpoint

ROOT = Path(__file__).resolve().parent
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class Precomputed:
    """A criterion whose scores were computed once (so every sparsity reuses one Hessian estimate)."""

    table: dict[str, Tensor]
    sparsity: float
    scope: str = "layer"
    needs_data: ClassVar[bool] = False

    def scores(self, model: nn.Module, layers: list[tuple[str, nn.Module]], data: Any = None) -> dict[str, Tensor]:
        return {n: self.table[n] for n, _ in layers}


def spearman(a: Tensor, b: Tensor) -> float:
    ra = a.flatten().argsort().argsort().float()
    rb = b.flatten().argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def exact_entries(model: nn.Module, data: Any, weights: dict[str, Tensor], positions: int, samples: int,
                  seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer: (flat indices, exact d2L/dw2 there)}`` at ``positions`` random weights of each layer."""
    x = torch.stack([data[i][0] for i in range(samples)])
    y = torch.stack([data[i][1] for i in range(samples)])
    model.eval()
    loss = nn.functional.cross_entropy(model(x), y)
    params = [latent_weight(getattr(model, n)) for n in weights]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, p, g in zip(weights, params, grads, strict=True):
        idx = torch.randperm(p.numel(), generator=generator)[:positions]
        eye = torch.zeros(len(idx), p.numel())
        eye[torch.arange(len(idx)), idx] = 1.0
        (rows,) = torch.autograd.grad(g.flatten(), p, grad_outputs=eye, is_grads_batched=True, retain_graph=True)
        out[name] = (idx, rows.reshape(len(idx), -1)[torch.arange(len(idx)), idx].detach())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2048, help="training samples for the Hessian")
    parser.add_argument("--probes", type=int, default=64, help="Hutchinson probes")
    parser.add_argument("--positions", type=int, default=64, help="exact-diagonal positions per layer")
    parser.add_argument("--exact-samples", type=int, default=256, help="samples for the exact entries")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"seed {args.seed}, threads {args.threads}, torch {torch.__version__}, python {platform.python_version()}")
    model, _ = load_checkpoint(ROOT / "baselines/lenet300-fmnist.pt")
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    hess_data = torch.utils.data.Subset(train, range(args.samples))
    base = evaluate(model, test)["accuracy"]
    weights = {n: latent_weight(getattr(model, n)).detach() for n in ("fc1", "fc2", "fc3")}

    timings: dict[str, float] = {}
    diags: dict[str, dict[str, Tensor]] = {}
    for method, kwargs in (("gauss-newton", {}), ("hutchinson", {"probes": args.probes, "seed": args.seed})):
        started = time.perf_counter()
        diags[method] = hessian_diagonal(model, hess_data, method, max_samples=args.samples, **kwargs)
        timings[method] = round(time.perf_counter() - started, 1)
        print(f"hessian diagonal ({method}): {timings[method]}s")

    # exact Hessian diagonal at sampled positions of every layer (rows of H by double back-propagation)
    started = time.perf_counter()
    exact = exact_entries(model, hess_data, weights, args.positions, args.exact_samples, args.seed)
    gn_same = hessian_diagonal(model, hess_data, "gauss-newton", max_samples=args.exact_samples)
    timings["exact_sampled"] = round(time.perf_counter() - started, 1)
    agreement = {}
    for layer, (idx, values) in exact.items():
        agreement[layer] = {
            "positions": len(idx),
            "gauss_newton_rel_error": round(float((gn_same[layer].flatten()[idx] - values).norm() / values.norm()), 6),
            "hutchinson_rel_error_vs_gn": round(float((diags["hutchinson"][layer] - diags["gauss-newton"][layer]).norm()
                                                      / diags["gauss-newton"][layer].norm()), 4),
            "hutchinson_saliency_rank_corr_vs_gn": round(spearman(
                saliency(diags["hutchinson"][layer], weights[layer]),
                saliency(diags["gauss-newton"][layer], weights[layer])), 4),
        }
    print(f"exact diagonal at sampled positions ({timings['exact_sampled']}s): {agreement}")

    tables = {
        "magnitude": {n: w.abs() for n, w in weights.items()},
        "obd-gauss-newton": {n: saliency(diags["gauss-newton"][n], w) for n, w in weights.items()},
        "obd-hutchinson": {n: saliency(diags["hutchinson"][n], w) for n, w in weights.items()},
    }
    curves: dict[str, dict[str, float]] = {}
    for scope in ("layer", "global"):
        for name, table in tables.items():
            key = f"{name}/{scope}"
            curves[key] = {}
            for s in SPARSITIES:
                pruned = copy.deepcopy(model)
                prune_(pruned, Precomputed(table, s, scope))
                curves[key][f"{s:g}"] = evaluate(pruned, test)["accuracy"]
        key = f"obs/{scope}"
        curves[key] = {}
        calib = [torch.stack([hess_data[i][0] for i in range(j, min(j + 256, len(hess_data)))])
                 for j in range(0, len(hess_data), 256)]
        started = time.perf_counter()
        for s in SPARSITIES:
            pruned = copy.deepcopy(model)
            prune_(pruned, OBSPrune(sparsity=s, scope=scope), data=calib)
            curves[key][f"{s:g}"] = evaluate(pruned, test)["accuracy"]
        timings[key] = round(time.perf_counter() - started, 1)
        key = f"random/{scope}"
        curves[key] = {}
        for s in SPARSITIES:
            pruned = copy.deepcopy(model)
            prune_(pruned, RandomPrune(sparsity=s, scope=scope, seed=args.seed))
            curves[key][f"{s:g}"] = evaluate(pruned, test)["accuracy"]

    print(f"\nbaseline test top-1 {base:.4f}; one-shot, no retraining:")
    print(f"{'criterion':<28}" + "".join(f"{int(100 * s):>8}%" for s in SPARSITIES))
    for key, curve in curves.items():
        print(f"{key:<28}" + "".join(f"{100 * curve[f'{s:g}']:>8.2f}%" for s in SPARSITIES))
    wins = {f"{s:g}": max(curves, key=lambda k, s=s: curves[k][f"{s:g}"]) for s in SPARSITIES}  # type: ignore[misc]
    print(f"best per sparsity: {wins}")
    plot(curves, base, ROOT / "results/pruning-obd.png")
    result = {"model": "lenet300", "dataset": "fashion-mnist", "seed": args.seed, "threads": args.threads,
              "torch": torch.__version__, "baseline_test_top1": base, "hessian_samples": args.samples,
              "hutchinson_probes": args.probes, "timings_s": timings, "exact_agreement": agreement,
              "curves": curves, "best": wins}
    out = ROOT / "results/pruning-obd.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"-> {out}")


def plot(curves: dict[str, dict[str, float]], base: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for key, curve in curves.items():
        xs = [float(s) for s in curve]
        ax.plot([100 * x for x in xs], [100 * v for v in curve.values()], marker="o", markersize=3,
                linestyle="-" if key.endswith("/layer") else "--", label=key)
    ax.axhline(100 * base, color="grey", linestyle=":", linewidth=1, label="unpruned")
    ax.set_xlabel("weights pruned (%)")
    ax.set_ylabel("test top-1 (%), no retraining")
    ax.set_title("LeNet-300-100, Fashion-MNIST: one-shot pruning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
