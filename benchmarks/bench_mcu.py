"""Compressed LeNets on a Cortex-M4: flash, RAM, host latency and the memory maps each fits, per technique.

Every model is exported with ``deepshrink.export.to_c`` and measured, not estimated:

* **flash** = the one-inference program (``fit_main.c``: startup, model, no printf) linked for the M4
  (``.isr_vector + .text`` (code and ``.rodata``) ``+ .data`` image), of which ``weights`` are the model's const
  arrays; **RAM** = that image's ``.data + .bss`` (arena, input and output arrays, the C library's state) plus the
  model's stack peak, measured by stack painting in the QEMU harness;
* **fits**: the same program linked against each memory map (256K/64K ... 16K/4K) with that stack and no heap:
  the link succeeding is the proof;
* **exact**: integer (DFP) models vs. deepshrink's integer engine on ``--images`` test images, bit for bit; float
  models vs. the runtime (max |diff|, equal argmax); **M4**: 100 images on QEMU's ``mps2-an386`` print exactly
  what the host build prints; integer images are built ``-mfloat-abi=soft`` and must link no float routine;
* **latency**: the host build (gcc -O2), mean per image over ``--latency-images`` images.

``--unroll N`` (2, 4, 8) exports with ``unroll=N`` (the dense dot products N elements per iteration into N
accumulators, docs/c.md) to compare host latency with the plain loops (1, the default); its rows are kept apart
(``ARCH/TECHNIQUE/unrollN`` in the JSON, ``out/bench/mcu/ARCH-TECHNIQUE-uN``).

Techniques: ``int8-dense`` (8-bit per-channel weights stored dense, int32-class biases: what TensorFlow Lite Micro
stores), ``dfp8``, ``dfp-conv8-fc4`` (Qiu et al.'s 8/4), ``dc`` (Deep Compression, float: pruned + shared, the
recipe's bits, from a ``.dsz`` file), ``dc-act8`` (the same file with 8-bit DFP activations: integer-only, the
shared values kept as 16-bit fixed point), ``ttq`` (all layers ternary, fine-tuned ``--ttq-epochs``). DC files
come from ``out/bench/ARCH-recipe-ans.dsz`` (bench_deep_compression.py) when present, else are made here from the
committed pruned checkpoints (``benchmarks/results/pruning-ARCH.pt``) by the recipe's share/finetune/encode stages.

    nice -n 10 .venv/bin/python benchmarks/bench_mcu.py --models lenet300 lenet5 --images 10000 \\
        --latency-images 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepshrink.core.fixed_point import to_int
from deepshrink.core.state import iter_states, latent_weight
from deepshrink.data import load_dataset
from deepshrink.export import to_c
from deepshrink.export.c import toolchain
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.io import load_model
from deepshrink.recipes import RecipeContext, frozen_copy, load_recipe, parse_recipe, run_recipe
from deepshrink.runtime import IntegerModel, from_model
from deepshrink.ternary import TTQ, ternarize_, ternary_param_groups
from deepshrink.train import TrainConfig, fit, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench" / "mcu"
TECHNIQUES = ("int8-dense", "dfp8", "dfp-conv8-fc4", "dc", "dc-act8", "ttq")
LABELS = {"int8-dense": "dense int8 (TFLite Micro storage)", "dfp8": "DFP 8", "dfp-conv8-fc4": "DFP conv8/fc4",
          "dc": "Deep Compression (float)", "dc-act8": "Deep Compression + 8-bit DFP activations",
          "ttq": "TTQ (all layers)"}
N_QEMU = 100


def calibration() -> torch.Tensor:
    return load_dataset("fashion-mnist", "train", limit=512).tensors[0][:256]


def dc_file(arch: str) -> Path:
    """The Deep Compression ``.dsz`` of ``arch``: bench_deep_compression's, else made from the pruned checkpoint."""
    for path in (ROOT / "out" / "bench" / f"{arch}-recipe-ans.dsz", OUT / f"{arch}-dc.dsz"):
        if path.is_file():
            return path
    recipe = load_recipe(ROOT / "recipes" / f"deep-compression-{arch}.yaml")
    stages = [{s.name: dict(s.options)} for s in recipe.stages if s.name in ("share", "finetune", "encode")]
    model, meta = load_checkpoint(ROOT / "benchmarks" / "results" / f"pruning-{arch}.pt")
    baseline, _ = load_checkpoint(ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt")
    path = OUT / f"{arch}-dc.dsz"
    path.parent.mkdir(parents=True, exist_ok=True)
    context = RecipeContext(model=model, train_data=load_dataset("fashion-mnist", "train"),
                            val_data=load_dataset("fashion-mnist", "val"), out=path, seed=0, quiet=True,
                            base_lr=float(meta.get("config", {}).get("lr", 0.05)),
                            meta={"dataset": "fashion-mnist", "recipe": recipe.name}, teacher=frozen_copy(baseline))
    started = time.perf_counter()
    run_recipe(parse_recipe({"name": recipe.name, "stages": stages}), context)
    print(f"{arch}: made {path.relative_to(ROOT)} ({path.stat().st_size} bytes) in {time.perf_counter() - started:.0f}s")
    return path


def ttq_model(arch: str, epochs: int) -> nn.Module:
    """Every layer ternary (TTQ), fine-tuned from the baseline; cached under out/bench/mcu."""
    path = OUT / f"{arch}-ttq-{epochs}ep.pt"
    if path.is_file():
        return load_model(path)[0]
    model, _ = load_checkpoint(ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt")
    ternarize_(model, TTQ(keep_first_last=False))
    fit(model, load_dataset("fashion-mnist", "train"), TrainConfig(epochs=epochs, lr=1e-4, optimizer="adam",
                                                                   weight_decay=5e-4, seed=0),
        params=ternary_param_groups(model), quiet=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, meta={"dataset": "fashion-mnist", "arch": arch})
    return model.eval()


def build(arch: str, technique: str, ttq_epochs: int) -> tuple[nn.Module, dict[str, Any]]:
    """The compressed model of ``technique`` and what it came from."""
    torch.manual_seed(0)
    baseline = ROOT / "benchmarks" / "baselines" / f"{arch}-fmnist.pt"
    if technique in ("int8-dense", "dfp8", "dfp-conv8-fc4"):
        model, _ = load_checkpoint(baseline)
        # signed activation formats: the figures in BENCHMARKS.md predate unsigned formats as the default
        signed = {"unsigned_activations": False}
        config = {"int8-dense": DynamicFixedPoint(bits=8, granularity="channel", **signed),
                  "dfp8": DynamicFixedPoint(bits=8, **signed),
                  "dfp-conv8-fc4": DynamicFixedPoint(bits={"conv": 8, "fc": 4}, act_bits=8, **signed)}[technique]
        quantize_(model, config, calib=calibration())
        return model.eval(), {"source": str(baseline.relative_to(ROOT)), "quantize": repr(config)}
    if technique == "ttq":
        return ttq_model(arch, ttq_epochs), {"source": f"{baseline.relative_to(ROOT)} + TTQ {ttq_epochs} epochs"}
    path = dc_file(arch)
    model, _ = load_model(path)
    info = {"source": str(path.relative_to(ROOT))}
    if technique == "dc-act8":
        with torch.no_grad():  # the shared values become the latent the fixed-point formats are searched on
            for _, module, name, _ in iter_states(model):
                if name == "weight":
                    latent_weight(module, name).copy_(getattr(module, name))
        config = DynamicFixedPoint(bits=16, act_bits=8, unsigned_activations=False)
        quantize_(model, config, calib=calibration())
        info["quantize"] = repr(config)
    return model.eval(), info


def reference(model: nn.Module, x: torch.Tensor, integer: bool) -> np.ndarray:
    """What deepshrink computes: the integer engine (DFP) or the compressed runtime (float)."""
    engine = IntegerModel(model) if integer else from_model(model, x[:1])
    with torch.no_grad():
        return torch.cat([engine(x[i : i + 1000]) for i in range(0, x.shape[0], 1000)]).reshape(x.shape[0], -1).numpy()


def measure(arch: str, technique: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            args: argparse.Namespace) -> dict[str, Any]:
    folder = OUT / (f"{arch}-{technique}" + (f"-u{args.unroll}" if args.unroll > 1 else ""))
    shutil.rmtree(folder, ignore_errors=True)
    report = to_c(model, x[:1], folder / "c", layout="dense" if technique == "int8-dense" else "auto",
                  source=f"{arch} {technique}", unroll=args.unroll)
    integer = report["arithmetic"] == "integer"
    header = (folder / "c" / "model.h").read_text()
    in_t, out_t = (header.split("typedef ")[k].split()[0] for k in (1, 2))
    inputs = to_int(x, 8 if in_t == "int8_t" else 16, report["input_frac_len"]).numpy() if integer else x.numpy()
    exe = toolchain.build_host(folder / "c", folder / "host")
    outputs, _ = toolchain.run_host(exe, inputs, in_t, out_t, report["output_size"])
    n_lat = min(args.latency_images, inputs.shape[0])
    _, ns = toolchain.run_host(exe, inputs[:n_lat], in_t, out_t, report["output_size"], repeat=args.latency_repeat)
    ref = reference(model, x, integer)
    label = LABELS[technique] + (f", unroll {args.unroll}" if args.unroll > 1 else "")
    row: dict[str, Any] = {"arch": arch, "technique": technique, "label": label, "unroll": args.unroll,
                           "arithmetic": report["arithmetic"], "weights": report["weight_bytes"],
                           "arena": report["arena_bytes"], "layers": report["layers"], "images": int(x.shape[0]),
                           "top1_c": float((outputs.argmax(1) == y.numpy()).mean()),
                           "top1_deepshrink": float((ref.argmax(1) == y.numpy()).mean()),
                           "host_us_per_image": round(ns / 1000, 2), "latency_images": n_lat}
    if integer:
        got = (outputs.astype(np.float64) / 2.0 ** report["output_frac_len"]).astype(np.float32)
        row["bit_exact_images"] = int(np.all(got == ref, axis=1).sum())
    else:
        row["max_abs_diff"] = float(np.abs(outputs - ref).max())
        row["max_rel_diff"] = float((np.abs(outputs - ref) / np.maximum(np.abs(ref), 1.0)).max())
        row["argmax_equal"] = float((outputs.argmax(1) == ref.argmax(1)).mean())
    row.update(emulated(folder, inputs[:N_QEMU], in_t, integer))
    return row


def emulated(folder: Path, inputs: np.ndarray, in_t: str, integer: bool) -> dict[str, Any]:
    """QEMU run of N_QEMU images vs. the host build, float-routine check, flash/RAM and the fit links."""
    abi = "soft" if integer else "hard"
    arm = folder / "m4"
    arm.mkdir()
    toolchain.write_images(arm / "ds_images.h", inputs, in_t)
    image = toolchain.link_arm(toolchain.compile_arm(folder / "c", arm, float_abi=abi), arm / "model.axf",
                               float_abi=abi)
    assert isinstance(image, toolchain.ArmImage), image
    status, stdout, stderr = toolchain.run_qemu(image.axf, timeout=1800)
    host = toolchain.build_host(folder / "c", arm / "host", embedded=True, extra=(f"-I{arm}",))
    lines = [line for line in stdout.splitlines() if not line.startswith("[ds]")]
    host_lines = [line for line in toolchain.run_host_text(host).splitlines() if not line.startswith("[ds]")]
    same = status == 0 and len(lines) == inputs.shape[0] and lines == host_lines
    stack = toolchain.stack_peak(stdout) or 0
    fit = toolchain.fit_maps(folder / "c", folder / "fit", stack, float_abi=abi)
    flash, static = int(fit.pop("flash")), int(fit.pop("static_ram"))  # type: ignore[call-overload]
    fit.pop("stack")
    out: dict[str, Any] = {"qemu_images": len(lines), "qemu_identical": bool(same), "qemu_status": status,
                           "stack_peak": stack, "flash": flash, "ram": static + stack, "static_ram": static,
                           "fits": {k: v is True for k, v in fit.items()},
                           "fit_failures": {k: v for k, v in fit.items() if v is not True},
                           "float_abi": abi}
    if integer:
        out["float_routines"] = toolchain.float_routines(image.axf)
    if status:
        out["qemu_stderr"] = stderr[-500:]
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | technique | flash (weights) | RAM (arena + stack) | host µs/img | top-1 C (deepshrink) | exact "
            "| M4 = host | fits |\n|---|---|---:|---:|---:|---:|---|---|---|")
    lines = [head]
    for r in rows:
        exact = (f"{r['bit_exact_images']}/{r['images']} bit-exact" if "bit_exact_images" in r
                 else f"rel. diff ≤ {r['max_rel_diff']:.1e}, argmax {r['argmax_equal']:.2%} equal")
        fits = ", ".join(k for k, v in r["fits"].items() if v) or "none"
        lines.append(f"| {r['arch']} | {r['label']} | {r['flash']:,} ({r['weights']:,}) | {r['ram']:,} "
                     f"({r['arena']:,} + {r['stack_peak']}) | {r['host_us_per_image']} | {r['top1_c']:.4f} "
                     f"({r['top1_deepshrink']:.4f}) | {exact} | {r['qemu_identical']} ({r['qemu_images']}) | {fits} |")
    return "\n".join(lines)


def key(row: dict[str, Any]) -> str:
    """A row's key in the JSON: ``ARCH/TECHNIQUE``, plus ``/unrollN`` for unrolled kernels."""
    n = int(row.get("unroll", 1))
    return f"{row['arch']}/{row['technique']}" + (f"/unroll{n}" if n > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--techniques", nargs="+", default=list(TECHNIQUES), choices=TECHNIQUES)
    parser.add_argument("--images", type=int, default=10000, help="test images for accuracy and exactness")
    parser.add_argument("--latency-images", type=int, default=1000)
    parser.add_argument("--latency-repeat", type=int, default=1)
    parser.add_argument("--ttq-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unroll", type=int, default=1, choices=(1, 2, 4, 8),
                        help="the C exporter's unroll option (dense inner loops, N accumulators)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "mcu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tools = toolchain.arm_tools()
    if tools is None or tools.qemu is None:
        raise SystemExit("needs arm-none-eabi-gcc and qemu-system-arm: make mcu-tools")
    test = load_dataset("fashion-mnist", "test", limit=args.images)
    x, y = test.tensors
    versions = {name: subprocess.run([cmd, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
                for name, cmd in (("gcc", toolchain.host_compiler() or "gcc"), ("arm-none-eabi-gcc", tools.gcc),
                                  ("qemu", tools.qemu))}
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "threads": args.threads, **versions, "memory_maps": toolchain.MEMORY_MAPS}
    rows = []
    for arch in args.models:
        for technique in args.techniques:
            started = time.perf_counter()
            model, info = build(arch, technique, args.ttq_epochs)
            row = {**measure(arch, technique, copy.deepcopy(model), x, y, args), **info,
                   "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))
    existing = json.loads(args.json.read_text()) if args.json.is_file() else {}
    keyed = {key(r): r for r in existing.get("rows", [])}
    keyed.update({key(r): r for r in rows})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"env": env, "rows": list(keyed.values())}, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
