"""TTQ vs. the symmetric TWN baseline vs. fp32: top-1, per-layer Wp/Wn/sparsity, .dsz bytes, batch-1 latency.

    nice -n 10 .venv/bin/python benchmarks/bench_ternary.py --model lenet5 --method ttq --epochs 2
    nice -n 10 .venv/bin/python benchmarks/bench_ternary.py --model lenet5 --method twn --epochs 2

Each run fine-tunes one method from the fp32 baseline in ``benchmarks/baselines/`` with the common loop,
writes the compressed model with the codec (.dsz, ANS-coded codes), checks that the file's weights equal
the trained model's bit for bit, times batch-1 inference of the add/subtract runtime against the dense
fp32 baseline (same process, interleaved, medians, 1 thread), prints everything and merges it into
``benchmarks/results/ternary-<model>.json`` under the method's key.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.codec import load_compressed, save_compressed
from deepshrink.core import get_value_transform
from deepshrink.data import load_dataset
from deepshrink.runtime import from_model
from deepshrink.ternary import TTQ, TWN, ternarize_, ternary_layers, ternary_param_groups
from deepshrink.train import TrainConfig, evaluate, fit, load_checkpoint

ROOT = Path(__file__).resolve().parent
BASELINES = {"lenet5": ROOT / "baselines" / "lenet5-fmnist.pt", "resnet20": ROOT / "baselines" / "resnet20-fmnist.pt"}


def _median_ms(fn: Any, x: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def latency(dense: nn.Module, runtime: nn.Module, shape: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Batch-1 medians (ms), the two models interleaved in rounds so load changes hit both alike."""
    dense.eval()
    x = torch.randn(1, *shape)
    for _ in range(5):  # warm-up (numba compiles on first call)
        dense(x)
        runtime(x)
    dense_ms, runtime_ms = [], []
    for _ in range(5):
        dense_ms.append(_median_ms(dense, x, repeats))
        runtime_ms.append(_median_ms(runtime, x, repeats))
    d, r = statistics.median(dense_ms), statistics.median(runtime_ms)
    return {"dense_fp32_ms": round(d, 3), "ternary_runtime_ms": round(r, 3), "speedup": round(d / r, 3),
            "repeats": 5 * repeats, "batch": 1}


@torch.no_grad()
def layer_latency(model: nn.Module, runtime: nn.Module, shape: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Per ternary layer: the add/subtract module vs. the same layer's dense fp32 op on its real input."""
    inputs: dict[str, torch.Tensor] = {}
    names = [r.name for r in ternary_layers(model)]
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach())) for n in names]
    model.eval()(torch.randn(1, *shape))
    for h in hooks:
        h.remove()
    out = {}
    for name in names:
        layer, fast = model.get_submodule(name), runtime.get_submodule(name)
        weight = layer.weight.detach().clone()
        if isinstance(layer, nn.Linear):
            dense = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
        else:
            assert isinstance(layer, nn.Conv2d)
            dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                              layer.dilation, layer.groups, bias=layer.bias is not None)
        dense.weight.data.copy_(weight)
        if layer.bias is not None:
            dense.bias.data.copy_(layer.bias.detach())
        out[name] = latency(dense, fast, tuple(inputs[name].shape[1:]), repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(BASELINES), default="lenet5")
    parser.add_argument("--method", choices=["ttq", "twn"], default="ttq")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="adam")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--t", type=float, default=0.05)
    parser.add_argument("--init", choices=["mean", "paper"], default="mean")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N training samples")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key", default=None, help="JSON key for this run (default: the method)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"seed {args.seed}, threads {args.threads}, torch {torch.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}")

    baseline = BASELINES[args.model]
    fp32_model, meta = load_checkpoint(baseline)
    dataset = meta.get("dataset", "fashion-mnist")
    test = load_dataset(dataset, "test")
    shape = tuple(test[0][0].shape)
    fp32_acc = evaluate(fp32_model, test)["accuracy"]
    model, _ = load_checkpoint(baseline)
    config = TTQ(t=args.t, init=args.init) if args.method == "ttq" else TWN()
    layers = ternarize_(model, config)
    before = evaluate(model, test)["accuracy"]
    start = time.perf_counter()
    history = fit(model, load_dataset(dataset, "train", limit=args.limit),
                  TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
                              batch_size=args.batch_size, seed=args.seed),
                  params=ternary_param_groups(model), quiet=True)
    train_s = time.perf_counter() - start
    after = evaluate(model, test)["accuracy"]
    rows = [r.to_dict() for r in ternary_layers(model)]
    print(f"{args.model} {args.method}: fp32 {fp32_acc:.4f} -> ternary {before:.4f} untrained -> {after:.4f} after "
          f"{args.epochs} epochs ({train_s:.0f}s); delta {100 * (after - fp32_acc):+.2f} pp")
    print(f"{'layer':<22} {'Wp':>9} {'Wn':>9} {'zeros':>7} {'params':>8}")
    for row in rows:
        print(f"{row['name']:<22} {row['wp']:>9.5f} {row['wn']:>9.5f} {row['sparsity']:>7.1%} {row['params']:>8}")

    with tempfile.TemporaryDirectory() as tmp:
        fp32_file, ternary_file = Path(tmp) / "fp32.dsz", Path(tmp) / "ternary.dsz"
        fp32_report = save_compressed(fp32_model, fp32_file)
        report = save_compressed(model, ternary_file, entropy="ans")
        loaded = load_compressed(ternary_file)
        exact = all(torch.equal(model.get_submodule(n).weight, loaded.get_submodule(n).weight) for n in layers)
        assert all(get_value_transform(loaded.get_submodule(n)) is not None for n in layers)
        ternary_params = sum(r["params"] for r in rows)
        ternary_bytes = sum(report.tensors[f"{n}.weight"] for n in layers)
        sizes = {
            "fp32_checkpoint_bytes": baseline.stat().st_size,
            "fp32_dsz_bytes": fp32_report.file_bytes,
            "ternary_dsz_bytes": report.file_bytes,
            "file_ratio_vs_fp32_dsz": round(fp32_report.file_bytes / report.file_bytes, 2),
            "ternary_layers_fp32_bytes": 4 * ternary_params,
            "ternary_layers_stored_bytes": ternary_bytes,
            "ternary_layers_ratio": round(4 * ternary_params / ternary_bytes, 2),
            "ternary_layers_bits_per_weight": round(8 * ternary_bytes / ternary_params, 3),
            "file_weights_equal_model_bit_for_bit": exact,
        }
    print(json.dumps(sizes, indent=1))
    runtime = from_model(model, example=torch.zeros(1, *shape))  # BatchNorms fold into per-channel Wp/Wn
    runtime_acc = evaluate(runtime, test)["accuracy"]
    speed = latency(fp32_model, runtime, shape, args.repeats)
    per_layer = layer_latency(model, runtime, shape, args.repeats)
    print(f"batch-1 latency ({args.threads} thread): dense fp32 {speed['dense_fp32_ms']} ms, ternary add/subtract "
          f"runtime {speed['ternary_runtime_ms']} ms ({speed['speedup']}x); runtime top-1 {runtime_acc:.4f}")
    for name, lat in per_layer.items():
        print(f"  {name:<20} dense {lat['dense_fp32_ms']:.3f} ms   add/subtract {lat['ternary_runtime_ms']:.3f} ms "
              f"({lat['speedup']}x)")

    result = {
        "command": f"nice -n 10 .venv/bin/python benchmarks/bench_ternary.py --model {args.model} --method {args.method} "
                   f"--epochs {args.epochs} --lr {args.lr} --optimizer {args.optimizer}"
                   + (f" --limit {args.limit}" if args.limit else "") + (" --init paper" if args.init == "paper" else ""),
        "seed": args.seed, "threads": args.threads, "torch": torch.__version__, "dataset": dataset,
        "epochs": args.epochs, "lr": args.lr, "optimizer": args.optimizer, "weight_decay": args.weight_decay, "t": args.t, "init": args.init, "limit": args.limit,
        "fp32_accuracy": fp32_acc, "untrained_accuracy": before, "accuracy": after,
        "delta_pp": round(100 * (after - fp32_acc), 2), "runtime_accuracy": runtime_acc,
        "train_seconds": round(train_s, 1), "history": history.epochs, "layers": rows, "sizes": sizes,
        "latency": speed, "layer_latency": per_layer,
    }
    out = ROOT / "results" / f"ternary-{args.model}.json"
    out.parent.mkdir(exist_ok=True)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged[args.key or args.method] = result
    out.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
