"""Dynamic vs. static fixed point (Qiu et al. 2016) on the Fashion-MNIST LeNets: top-1 per bit width.

For every model and setting (16, 8, 6, 4 bits for weights and activations, and conv 8 / fc 4 weights with
8-bit activations) the float model is quantized once with one global fractional length (static), once per layer
with signed activation formats (dynamic-signed, the paper's) and once per layer with unsigned formats for
non-negative activations (dynamic, the default), calibrated on the first N images of the validation split. Top-1 is that of the
integer engine (int64 weights/activations/accumulators) on the whole test split; on the first
``--check`` test images its logits must equal the simulated model's bit for bit (the script fails if not).

    nice -n 10 .venv/bin/python benchmarks/bench_fixedpoint.py   # writes benchmarks/results/fixedpoint.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from deepshrink.data import load_dataset, make_loader
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.runtime import IntegerModel
from deepshrink.train import evaluate, load_checkpoint

ROOT = Path(__file__).resolve().parent
MODELS = {"LeNet-300-100": ROOT / "baselines/lenet300-fmnist.pt", "LeNet-5": ROOT / "baselines/lenet5-fmnist.pt"}
SETTINGS: list[tuple[str, int | dict[str, int], int]] = [
    ("16", 16, 16), ("8", 8, 8), ("6", 6, 6), ("4", 4, 4), ("conv 8 / fc 4", {"conv": 8, "fc": 4}, 8),
]


def dsz_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model written as a .dsz file (Huffman-coded integers), read back and checked by the codec."""
    from deepshrink.codec import load_compressed, save_compressed
    from deepshrink.core import FormatError

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.dsz"
        for attempt in range(4):
            save_compressed(model, path, meta={"pad": "_" * attempt})
            try:  # padding works around the codec's header-size fixed point missing (as cli/quantize.py does)
                load_compressed(path)
                break
            except FormatError as exc:
                if "truncated or padded" not in str(exc) or attempt == 3:
                    raise
        return path.stat().st_size


@torch.no_grad()
def integer_top1(model: torch.nn.Module, test: torch.utils.data.Dataset, check: int) -> tuple[float, bool]:
    """Top-1 of the integer engine, and whether its logits equal the simulation's on the first ``check`` images."""
    engine = IntegerModel(model)
    correct = total = 0
    exact = True
    for inputs, labels in make_loader(test, 1000):
        ints = engine(inputs)
        if total < check:
            exact &= torch.equal(model(inputs), ints)
        correct += int((ints.argmax(1) == labels).sum())
        total += labels.numel()
    return correct / total, exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=512, help="calibration images (validation split)")
    parser.add_argument("--check", type=int, default=2000, help="test images on which integer == simulation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results/fixedpoint.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"seed 0, threads {args.threads}, torch {torch.__version__}, python {platform.python_version()}")
    test = load_dataset("fashion-mnist", "test")
    val = load_dataset("fashion-mnist", "val")
    calib = [x for x, _ in make_loader(torch.utils.data.Subset(val, range(args.calib)), 256)]
    results: dict = {"calib_images": args.calib, "check_images": args.check, "threads": args.threads, "torch": torch.__version__, "models": {}}
    for model_name, path in MODELS.items():
        base, _ = load_checkpoint(path)
        fp32 = evaluate(base, test)["accuracy"]
        rows: dict = {"fp32": fp32, "fp32_checkpoint_bytes": path.stat().st_size, "settings": {}}
        print(f"\n{model_name}: fp32 top-1 {fp32:.4f}, checkpoint {path.stat().st_size:,} bytes")
        for label, bits, act_bits in SETTINGS:
            for scheme in ("static", "dynamic-signed", "dynamic"):  # dynamic: the default, unsigned formats
                model = copy.deepcopy(base)
                started = time.perf_counter()
                config = DynamicFixedPoint(bits=bits, act_bits=act_bits, static=scheme == "static",
                                           unsigned_activations=scheme == "dynamic")
                report = quantize_(model, config, calib=calib)
                seconds = time.perf_counter() - started
                top1, exact = integer_top1(model, test, args.check)
                size = dsz_bytes(model)
                if not exact:
                    raise SystemExit(f"integer engine differs from the simulation: {model_name} {label} {scheme}")
                rows["settings"].setdefault(label, {})[scheme] = {
                    "top1": top1, "dsz_bytes": size, "bit_exact_checked": args.check, "search_seconds": round(seconds, 2),
                    "act_bits": act_bits, "layers": report.to_dict()["layers"]}
                print(f"  {label:>14} {scheme:>8}: top-1 {top1:.4f} (integer engine; bit-exact with the simulation "
                      f"on {args.check} images), .dsz {size:,} bytes [search {seconds:.1f}s]")
                if label == "8" and scheme == "dynamic":
                    print(report)
        results["models"][model_name] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
