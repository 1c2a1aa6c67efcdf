"""Long fuzzing run over every reader of untrusted bytes: ``.dsz`` (``read_compressed``, ``load_compressed``,
``runtime.load`` plus one forward pass), IDX (raw and gzip), checkpoints (``load_checkpoint``) and ``--weights``
state dicts (``load_weights``).

With atheris installed (``pip install -e '.[fuzz]'``), each target runs under libFuzzer, coverage-guided over
deepshrink's own code, with the format-aware mutations of ``tests/reliability/fuzzing.py`` as its custom mutator
(half of the time; libFuzzer's own byte mutations the other half). Without it (``--engine random``), that engine
alone. Targets run one after another in their own processes, ``--seconds`` shared among them. Only deepshrink's
own errors are acceptable: anything else is counted as "other" and its input saved under ``--out``; a crash,
hang or memory blow-up stops libFuzzer, which leaves its artifact there too.

    .venv/bin/python benchmarks/fuzz.py --seconds 600            # prints a markdown table, writes --out/summary.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from random import Random
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
TARGETS = ["read_compressed", "load_compressed", "runtime.load", "idx", "checkpoint", "weights"]
NUMBA_MODULES = ["deepshrink.codec.bits", "deepshrink.codec.huffman", "deepshrink.runtime.ternary",
                 "deepshrink.runtime.kernels", "deepshrink.runtime.simd", "deepshrink.runtime.columns",
                 "deepshrink.runtime.batched", "deepshrink.share.kmeans"]
"""Modules with numba kernels: numba compiles a function from its bytecode, so atheris must not instrument them."""


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- worker: one target in this process


def _worker(name: str, seconds: float, engine: str, out: Path, seed: int) -> None:
    stats_path = out / f"{name}.json"
    if engine == "random":
        import fuzzing

        with tempfile.TemporaryDirectory() as tmp:
            target = fuzzing.make_targets(Path(tmp))[name]
            outcome = fuzzing.fuzz(target, seconds, seed, out / "findings", max_findings=10**9)
        stats_path.write_text(json.dumps({**outcome.to_dict(), "engine": "random", "seed": seed}))
        return
    import atheris

    with atheris.instrument_imports(include=["deepshrink"], exclude=NUMBA_MODULES):
        import fuzzing  # imports the readers: instrumented for coverage

        from deepshrink.codec import load_compressed, read_compressed  # noqa: F401
        from deepshrink.runtime import load  # noqa: F401
        from deepshrink.train import load_checkpoint  # noqa: F401
    corpus = out / f"corpus-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    target = fuzzing.make_targets(out / "seeds")[name]
    for i, data in enumerate(target.seeds):
        (corpus / f"seed{i}").write_bytes(data)
    outcome = fuzzing.Outcome(name)
    started = last_write = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dsfuzz-"))

    def write_stats(final: bool = False) -> None:
        outcome.seconds = time.perf_counter() - started
        stats_path.write_text(json.dumps({**outcome.to_dict(), "engine": "atheris", "seed": seed, "final": final}))

    def test_one_input(data: bytes) -> None:
        nonlocal last_write
        fuzzing.check_one(target, data, workdir, outcome, out / "findings", limit=30.0)
        now = time.perf_counter()
        if now - started >= seconds:
            write_stats(final=True)
            os._exit(0)
        if now - last_write > 1.0:
            write_stats()
            last_write = now

    def custom_mutator(data: bytes, max_size: int, mutation_seed: int) -> bytes:
        rng = Random(mutation_seed)
        if rng.random() < 0.5:
            mutated = atheris.Mutate(data, max_size)
        else:
            mutated = target.structured(data, rng) if rng.random() < 0.7 else fuzzing.mutate_bytes(data, rng)
        return mutated[:max_size]

    atheris.Setup([sys.argv[0], str(corpus), f"-seed={seed}", "-timeout=60", "-rss_limit_mb=6144",
                   f"-max_len={4 << 20}", f"-max_total_time={int(seconds) + 60}", f"-artifact_prefix={out}/{name}-",
                   "-print_final_stats=1"], test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


# ---------------------------------------------------------------- parent: every target, then the table


def _coverage(log: Path) -> str:
    """The last ``cov: N ft: M`` libFuzzer printed."""
    found = re.findall(r"cov: (\d+) ft: (\d+)", log.read_text(errors="replace")) if log.is_file() else []
    return f"{found[-1][0]} edges / {found[-1][1]} features" if found else "-"


def run(seconds: float, targets: list[str], engine: str, out: Path, seed: int) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    per_target = seconds / len(targets)
    results = []
    for i, name in enumerate(targets):
        log = out / f"{name}.log"
        with log.open("w") as handle:
            process = subprocess.run([sys.executable, __file__, "--worker", name, "--seconds", str(per_target),
                                      "--engine", engine, "--out", str(out), "--seed", str(seed + i)],
                                     stdout=handle, stderr=subprocess.STDOUT, cwd=out, check=False,
                                     timeout=per_target + 600)
        stats_path = out / f"{name}.json"
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {"target": name, "tried": 0}
        artifacts = sorted(str(p) for p in out.glob(f"{name}-*") if p.is_file())
        stats.update(exit_code=process.returncode, artifacts=artifacts, coverage=_coverage(log))
        results.append(stats)
        print(f"{name}: {stats.get('tried', 0)} inputs, {stats.get('clean_errors', 0)} deepshrink errors, "
              f"{stats.get('other', 0)} other, exit {process.returncode}, {len(artifacts)} artifacts", flush=True)
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    return results


def markdown(results: list[dict[str, Any]], seconds: float, engine: str) -> str:
    lines = [f"| target | seconds | inputs tried | read cleanly | deepshrink errors | anything else | coverage ({engine}) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        other = r.get("other", 0) + len(r.get("artifacts", []))
        lines.append(f"| `{r['target']}` | {r.get('seconds', 0):.0f} | {r.get('tried', 0):,} | {r.get('accepted', 0):,} "
                     f"| {r.get('clean_errors', 0):,} | {other} | {r.get('coverage', '-')} |")
    total = sum(r.get("tried", 0) for r in results)
    lines.append(f"| all | {seconds:.0f} | {total:,} | {sum(r.get('accepted', 0) for r in results):,} | "
                 f"{sum(r.get('clean_errors', 0) for r in results):,} | "
                 f"{sum(r.get('other', 0) + len(r.get('artifacts', [])) for r in results)} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600, help="total wall-clock budget, shared by the targets")
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    parser.add_argument("--engine", choices=["atheris", "random"], default=None,
                        help="default: atheris when installed, else random")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "fuzz")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    engine = args.engine or ("atheris" if _have_atheris() else "random")
    seed = args.seed if args.seed is not None else time.time_ns() % 2**31
    if args.worker:
        _worker(args.worker, args.seconds, engine, args.out, seed)
        return
    print(f"fuzzing {', '.join(args.targets)} for {args.seconds:.0f} s with {engine}, seed {seed}, into {args.out}",
          flush=True)
    results = run(args.seconds, args.targets, engine, args.out, seed)
    print()
    print(markdown(results, args.seconds, engine))


if __name__ == "__main__":
    main()
