"""Every deepshrink CLI command on the two real models, as a user would run them (issue #14's "done when").

The models come in through ``--model real_models:efficientnet_lite2`` / ``real_models:minilm`` (a factory of the
user's own, here ``benchmarks/real_models.py`` on ``PYTHONPATH``); the data through ``--dataset imagefolder:DIR``
(a flat folder of PNG crops of scikit-image's photographs: unlabelled) and ``textfile:FILE`` (human-written
sentences, one per line). Each command's exit status, wall time and JSON report go to
``benchmarks/results/cli_real_models.json``; the script fails if any command fails.

    nice .venv/bin/python benchmarks/cli_real_models.py [--only effnet|minilm] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cli_real_models.json"
DEEPSHRINK = [sys.executable, "-m", "deepshrink"]


def write_crops(folder: Path, n: int, seed: int) -> None:
    """``n`` 260x260 PNG crops of the photographs (un-normalised back to 0..255)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(HERE))
    import real_models as rm

    folder.mkdir(parents=True, exist_ok=True)
    crops = rm.photo_batch(n, seed) * rm.STD_RGB + rm.MEAN_RGB
    for i, crop in enumerate(crops):
        pixels = crop.clamp(0, 255).round().to(dtype=__import__("torch").uint8).permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"crop{i:03d}.png")


def write_sentences(path: Path, n: int) -> None:
    sys.path.insert(0, str(HERE))
    import real_models as rm

    path.write_text("\n".join(rm.human_sentences("calib", n)) + "\n")


def run(args: list[str], log: dict[str, Any], key: str) -> dict[str, Any] | None:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run([*DEEPSHRINK, *args, "--json"], capture_output=True, text=True, env=env)
    seconds = round(time.perf_counter() - start, 1)
    lines = proc.stdout.strip().splitlines()
    report = None
    if proc.returncode == 0 and lines:
        try:
            report = json.loads(lines[-1])
        except json.JSONDecodeError:
            report = {"stdout": lines[-1][:500]}
    log[key] = {"command": "deepshrink " + " ".join(args), "exit": proc.returncode, "seconds": seconds,
                "report": report, **({"stderr": proc.stderr.strip()[-800:]} if proc.returncode else {})}
    print(f"{key}: exit {proc.returncode} in {seconds}s", flush=True)
    return report


def effnet(work: Path, log: dict[str, Any]) -> None:
    crops = work / "crops"
    write_crops(crops, 48, seed=0)
    model = ["--model", "real_models:efficientnet_lite2"]
    data = ["--dataset", f"imagefolder:{crops}", "--image-size", "260", "--norm", "pm1", "--val-split", "16"]
    run(["quantize", *model, *data, "--bits", "8", "--granularity", "channel", "--max-bits-avg", "8.5",
         "--calib", "16", "--out", str(work / "q.dsz")], log, "quantize")
    run(["eval", str(work / "q.dsz"), *model, "--baseline", model[1], *data], log, "eval_quantized")
    run(["prune", *model, *data, "--method", "obs", "--sparsity", "0.5", "--calib", "16", "--rounds", "1",
         "--retrain-epochs", "0", "--final-epochs", "0", "--out", str(work / "p.dsz")], log, "prune_obs")
    recipe = work / "share.yaml"
    recipe.write_text("name: share8\nstages:\n  - share: {bits: 8, init: optimal}\n  - encode: {entropy: huffman}\n")
    run(["compress", "--recipe", str(recipe), *model, *data, "--out", str(work / "s.dsz")], log, "compress_share")
    run(["lowrank", *model, *data, "--linear-ratio", "0.5", "--linear-response", "--images", "16",
         "--out", str(work / "l.pt")], log, "lowrank")
    run(["ternary", *model, *data, "--epochs", "1", "--batch-size", "8", "--out", str(work / "t.dsz")], log,
        "ternary")
    for written in ("p.dsz", "s.dsz", "l.pt", "t.dsz"):  # every written file reloads and runs
        run(["eval", str(work / written), *model, "--baseline", model[1], *data], log,
            f"eval_{written.split('.')[0]}")
    run(["inspect", str(work / "s.dsz")], log, "inspect")


def minilm(work: Path, log: dict[str, Any]) -> None:
    text = work / "sentences.txt"
    write_sentences(text, 320)
    model = ["--model", "real_models:minilm"]
    data = ["--dataset", f"textfile:{text}", "--val-split", "64"]
    run(["quantize", *model, *data, "--bits", "8", "--granularity", "channel", "--activations", "per_token",
         "--calib", "128", "--select", "encoder.encoder.*", "--out", str(work / "q.dsz")], log, "quantize")
    run(["eval", str(work / "q.dsz"), *model, "--baseline", model[1], *data], log, "eval_quantized")
    run(["prune", *model, *data, "--method", "obs", "--sparsity", "0.5", "--calib", "128",
         "--select", "encoder.encoder.*", "--rounds", "1", "--retrain-epochs", "0", "--final-epochs", "0",
         "--out", str(work / "p.dsz")], log, "prune_obs")
    recipe = work / "share.yaml"
    recipe.write_text("name: share8\nstages:\n  - share: {bits: {fc: 8}, init: optimal}\n"
                      "  - encode: {entropy: huffman}\n")
    run(["compress", "--recipe", str(recipe), *model, *data, "--out", str(work / "s.dsz")], log, "compress_share")
    run(["lowrank", *model, *data, "--linear-ratio", "0.5", "--linear-response", "--images", "128",
         "--out", str(work / "l.pt")], log, "lowrank")
    run(["ternary", *model, *data, "--epochs", "1", "--batch-size", "32", "--out", str(work / "t.dsz")], log,
        "ternary")
    for written in ("p.dsz", "s.dsz", "l.pt", "t.dsz"):  # every written file reloads and runs
        run(["eval", str(work / written), *model, "--baseline", model[1], *data], log,
            f"eval_{written.split('.')[0]}")
    run(["inspect", str(work / "s.dsz")], log, "inspect")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["effnet", "minilm"])
    parser.add_argument("--keep", type=Path, help="keep the written files in this folder")
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    work_root = Path(tempfile.mkdtemp(prefix="ds-cli-")) if args.keep is None else args.keep
    try:
        for name, fn in (("effnet", effnet), ("minilm", minilm)):
            if args.only and name != args.only:
                continue
            log: dict[str, Any] = {}
            work = work_root / name
            work.mkdir(parents=True, exist_ok=True)
            fn(work, log)
            results[name] = log
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        if args.keep is None:
            shutil.rmtree(work_root, ignore_errors=True)
    failed = [f"{m}/{k}" for m, log in results.items() for k, v in log.items() if v["exit"] != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (see {RESULTS})")


if __name__ == "__main__":
    main()
