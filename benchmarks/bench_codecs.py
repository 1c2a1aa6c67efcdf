"""Codecs: Huffman vs. ANS vs. the empirical entropy on Deep Compression's LeNet streams, and codec throughput.

For LeNet-300-100 (the pruned + retrained checkpoint of the pruning benchmark when present, else the
baseline pruned to the paper's per-layer densities) and LeNet-5 (baseline pruned to the paper's densities,
not retrained), weights are shared with k-means (deepshrink.share: 6 bits for LeNet-300 as in Table 2,
conv 8 / fc 5 for LeNet-5 as in Table 3), then written with ``save_compressed`` three ways (raw P+Q,
Huffman, ANS). Bits per symbol come from the section bytes of the written files; the entropy is that of the
very symbols stored. Throughput: streams of ``--symbols`` symbols drawn from the LeNet-300 fc1 distributions,
MB/s counted at one byte per symbol, medians over ``--repeats``, one thread, side by side with zlib.

    nice -n 10 .venv/bin/python benchmarks/bench_codecs.py            # writes benchmarks/results/codecs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import constriction
import numba
import numpy as np
import torch

from deepshrink.codec import (
    AnsTable,
    HuffmanTable,
    ans_decode,
    ans_encode,
    encode_positions,
    file_stats,
    huffman_decode,
    huffman_encode,
    load_compressed,
    read_compressed,
    save_compressed,
)
from deepshrink.codec.bits import pack_fixed, unpack_fixed
from deepshrink.core import get_mask, set_mask
from deepshrink.data import load_dataset
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.train import evaluate, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # kept fraction per layer (Han et al. 2015 / Deep Compression Tables 2-3)
    "lenet300": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
    "lenet5": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
}
PAPER_BITS = {  # Table 2/3: weight bits P+Q -> +Huffman, index bits P+Q -> +Huffman, per layer
    "lenet300": {"fc1": (6, 4.4, 5, 3.7), "fc2": (6, 4.4, 5, 4.3), "fc3": (6, 4.3, 5, 3.2)},
    "lenet5": {"conv1": (8, 7.2, 5, 1.5), "conv2": (8, 7.2, 5, 3.9), "fc1": (5, 4.5, 5, 4.5), "fc2": (5, 5.2, 5, 3.7)},
}


def entropy(symbols: np.ndarray) -> float:
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / symbols.size
    return float(-(p * np.log2(p)).sum())


def prune_to(model: torch.nn.Module, kept: dict[str, float]) -> None:
    for name, fraction in kept.items():
        module = model.get_submodule(name)
        w = module.weight.detach().abs()
        threshold = torch.quantile(w.reshape(-1), 1.0 - fraction)
        set_mask(module, w > threshold)


def build(arch: str) -> tuple[torch.nn.Module, str]:
    pruned = ROOT / "benchmarks/results/pruning-lenet300.pt"
    if arch == "lenet300" and pruned.exists():
        model, _ = load_checkpoint(pruned)
        source = f"{pruned.relative_to(ROOT)} (pruned + retrained)"
    else:
        model, _ = load_checkpoint(ROOT / f"benchmarks/baselines/{arch}-fmnist.pt")
        prune_to(model, PAPER[arch])
        source = f"baselines/{arch}-fmnist.pt pruned to the paper's densities (not retrained)"
    share_weights_(model, WeightSharing(bits=6 if arch == "lenet300" else {"conv": 8, "fc": 5}, init="linear"))
    return model, source


def stream_rows(model: torch.nn.Module, files: dict[str, Path], index_bits: dict[str, int]) -> list[dict[str, Any]]:
    """Per layer and stream: count, entropy, fixed width, Huffman and ANS bits per symbol (tables included)."""
    stats = {coding: {r["name"]: r for r in file_stats(path)["layers"]} for coding, path in files.items()}
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        fqn = f"{name}.weight"
        mask = get_mask(module)
        exported = module.parametrizations.weight[-1].export(None)  # type: ignore[index, union-attr, operator]
        index = np.asarray(exported["index"])
        values = index[mask.numpy()] if mask is not None else index.reshape(-1)
        family = "fc" if isinstance(module, torch.nn.Linear) else "conv"
        codes = encode_positions(mask.numpy(), index_bits[family]) if mask is not None else np.zeros(0)
        for stream, symbols, key, fixed in (("weights", values, "weight_bits", "weight_bits_fixed"),
                                            ("index", codes, "index_bits", "index_bits_fixed")):
            if symbols.size == 0:
                continue
            coding_key = "weight_coding" if stream == "weights" else "index_coding"
            rows.append({"layer": fqn, "stream": stream, "count": int(symbols.size),
                         "entropy": round(entropy(symbols), 3), "fixed": stats["raw"][fqn][fixed],
                         "huffman": stats["huffman"][fqn][key], "ans": stats["ans"][fqn][key],
                         "huffman_coding": stats["huffman"][fqn][coding_key],
                         "ans_coding": stats["ans"][fqn][coding_key]})
    return rows


def median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(symbols: np.ndarray, alphabet: int, bits: int, repeats: int) -> dict[str, dict[str, float]]:
    """Encode/decode MB/s (one byte per symbol) of each codec on ``symbols``, plus bits per symbol."""
    counts = np.bincount(symbols, minlength=alphabet)
    htable, atable = HuffmanTable.from_counts(counts), AnsTable.from_counts(counts)
    as_bytes = symbols.astype(np.uint8).tobytes()
    codecs = {
        "raw (fixed width, numba)": (lambda: pack_fixed(symbols, bits), lambda d: unpack_fixed(d, symbols.size, bits)),
        "huffman (numba)": (lambda: huffman_encode(symbols, htable),
                            lambda d: huffman_decode(d, symbols.size, htable)),
        "ans (constriction)": (lambda: ans_encode(symbols, atable), lambda d: ans_decode(d, symbols.size, atable)),
        "zlib-6 (reference)": (lambda: zlib.compress(as_bytes, 6), lambda d: zlib.decompress(d)),
    }
    mb = symbols.size / 1e6
    out = {}
    for name, (enc, dec) in codecs.items():
        data = enc()
        dec(data)  # warm-up (numba dispatch, constriction model)
        t_enc = median_seconds(enc, repeats)
        t_dec = median_seconds(lambda d=data, f=dec: f(d), repeats)
        out[name] = {"bits_per_symbol": round(8 * len(data) / symbols.size, 4),
                     "encode_MBps": round(mb / t_enc, 1), "decode_MBps": round(mb / t_dec, 1)}
    out["entropy"] = {"bits_per_symbol": round(entropy(symbols), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=4_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/codecs.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    torch.manual_seed(args.seed)
    env = {"seed": args.seed, "threads": 1, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "numba": numba.__version__, "constriction": getattr(constriction, "__version__", "0.5"),
           "machine": platform.machine(), "processor": platform.processor() or "unknown"}
    print(json.dumps(env))
    results: dict[str, Any] = {"env": env, "models": {}}
    test = load_dataset("fashion-mnist", "test")
    index_bits = {"conv": 8, "fc": 5}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("lenet300", "lenet5"):
            model, source = build(arch)
            files = {}
            for coding in ("raw", "huffman", "ans"):
                # the Huffman file is kept: `deepshrink inspect benchmarks/results/codecs-<arch>.dsz`
                files[coding] = (args.out.parent / f"codecs-{arch}.dsz" if coding == "huffman"
                                 else Path(tmp) / f"{arch}-{coding}.dsz")
                save_compressed(model, files[coding], entropy=coding, index_bits=index_bits,
                                meta={"dataset": "fashion-mnist"})
            auto = Path(tmp) / f"{arch}-ans-auto.dsz"
            save_compressed(model, auto, entropy="ans", index_bits="auto", meta={"dataset": "fashion-mnist"})
            auto_stats = file_stats(auto)
            best = Path(tmp) / f"{arch}-ans-ctx.dsz"
            save_compressed(model, best, entropy="ans", index_bits="auto", index_coding="auto",
                            meta={"dataset": "fashion-mnist"})
            best_stats = file_stats(best)
            best_loaded = load_compressed(best)
            assert all(torch.equal(a, b) for a, b in zip(best_loaded.state_dict().values(),
                                                         load_compressed(files["huffman"]).state_dict().values(),
                                                         strict=True))
            acc = evaluate(model, test)["accuracy"]
            loaded = load_compressed(files["huffman"])
            acc_loaded = evaluate(loaded, test)["accuracy"]
            load_s = median_seconds(lambda p=files["huffman"]: load_compressed(p), args.repeats)
            read_s = median_seconds(lambda p=files["huffman"]: read_compressed(p), args.repeats)
            stats = {coding: file_stats(path) for coding, path in files.items()}
            rows = stream_rows(model, files, index_bits)
            results["models"][arch] = {
                "source": source, "test_accuracy": acc, "test_accuracy_after_load": acc_loaded,
                "file_bytes": {c: s["total"]["file_bytes"] for c, s in stats.items()},
                "ratio": {c: s["total"]["ratio"] for c, s in stats.items()},
                "fp32_bytes": stats["raw"]["total"]["fp32_bytes"],
                "ans_auto_index": {"file_bytes": auto_stats["total"]["file_bytes"], "ratio": auto_stats["total"]["ratio"],
                                   "index_bits": {r["name"]: r.get("index_bits_fixed") for r in auto_stats["layers"]}},
                "ans_auto_index_ctx": {"file_bytes": best_stats["total"]["file_bytes"],
                                       "ratio": best_stats["total"]["ratio"],
                                       "index": {r["name"]: [r.get("index_coding"), r.get("index_bits_fixed"),
                                                             r.get("index_bits")] for r in best_stats["layers"]}},
                "load_ms": round(1e3 * load_s, 2), "read_ms": round(1e3 * read_s, 2),
                "streams": rows, "layers_huffman": stats["huffman"]["layers"], "total_huffman": stats["huffman"]["total"],
                "paper_bits": PAPER_BITS[arch],
            }
            print(f"\n{arch}: {source}; test acc {acc:.4f} (after load {acc_loaded:.4f})")
            print("  files: " + ", ".join(f"{c} {b:,} B ({stats[c]['total']['ratio']}x)"
                                            for c, b in results["models"][arch]["file_bytes"].items()))
            print(f"  ans + index_bits='auto': {auto_stats['total']['file_bytes']:,} B ({auto_stats['total']['ratio']}x)")
            print(f"  ans + index_bits='auto' + index_coding='auto': {best_stats['total']['file_bytes']:,} B "
                  f"({best_stats['total']['ratio']}x) {results['models'][arch]['ans_auto_index_ctx']['index']}")
            print(f"  {'layer':<14}{'stream':<9}{'count':>8}{'H':>7}{'fixed':>7}{'huff':>7}{'ans':>7}")
            for r in rows:
                print(f"  {r['layer']:<14}{r['stream']:<9}{r['count']:>8}{r['entropy']:>7.3f}{r['fixed']:>7}"
                      f"{r['huffman']:>7.3f}{r['ans']:>7.3f}")
            print(f"  read {1e3 * read_s:.1f} ms, load {1e3 * load_s:.1f} ms")
            if arch == "lenet300":
                fc1 = model.fc1
                mask = get_mask(fc1).numpy()
                value_syms = np.asarray(fc1.parametrizations.weight[-1].export(None)["index"])[mask]
                index_syms = encode_positions(mask, 5)
    rng = np.random.default_rng(args.seed)
    results["throughput"] = {}
    for label, syms, alphabet, bits in (("lenet300 fc1 weight indices (6-bit)", value_syms, 64, 6),
                                        ("lenet300 fc1 relative index (5-bit)", index_syms, 32, 5)):
        p = np.bincount(syms, minlength=alphabet) / syms.size
        stream = rng.choice(alphabet, size=args.symbols, p=p).astype(np.int64)
        results["throughput"][label] = throughput(stream, alphabet, bits, args.repeats)
        print(f"\n{label}, {args.symbols:,} symbols drawn from its distribution (MB/s at 1 byte/symbol):")
        for name, r in results["throughput"][label].items():
            print(f"  {name:<26} {r['bits_per_symbol']:>7.4f} bits/sym"
                  + (f"  enc {r['encode_MBps']:>7.1f} MB/s  dec {r['decode_MBps']:>7.1f} MB/s" if "encode_MBps" in r else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
