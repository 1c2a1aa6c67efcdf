"""``deepshrink report``: one self-contained HTML page that shows what compression did to a model.

One file: the technique chain, Deep Compression's per-layer table, the size waterfall, weight distributions
before and after, sensitivity curves (``sensitivity``), latency (``bench``) and Han et al.'s energy and on-chip
fit argument. Several files of one model: side by side, accuracy vs bytes with the Pareto front. The page needs
nothing else to be viewed (inline SVG, CSS and JS) and is written atomically: on any error nothing is left at
``out``. The report reads files and results; it never imports a technique.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write_bytes
from ..core.errors import ConfigError
from . import compare, page
from .data import FileFacts, gather, load_baseline
from .energy import Energy, estimate, parse_size
from .latency import Latency
from .sweep import check_sweep, read_sweep

__all__ = ["render_html", "write_html"]

PathLike = str | os.PathLike[str]


def _energy(facts: FileFacts, sram_bytes: int) -> Energy:
    t = facts.total
    return estimate(facts.energy_rows(), facts.other_fp32_bytes, int(t["other_bytes"]), int(t["file_bytes"]),
                    facts.macs(), sram_bytes)


def _bench(path: PathLike, facts: FileFacts, model: Any, dataset: str | None, data_dir: str | None) -> list[Latency]:
    from .latency import inputs_for, measure

    if model is None:
        raise ConfigError(f"--bench needs the model of {facts.name}, and the file records no architecture")
    if facts.input_shape is None:
        raise ConfigError("--bench needs an input shape: pass --dataset (or --input-shape)")
    inputs = inputs_for(facts.input_shape, dataset, data_dir)
    return measure(path, model, list(dict.fromkeys(x.module for x in facts.layers)), inputs)


def render_html(files: PathLike | Sequence[PathLike], *, baseline: PathLike | None = None,
                sensitivity: PathLike | None = None, bench: bool = False, dataset: str | None = None,
                data_dir: str | None = None, limit: int | None = None, sram: str | int = "256KiB",
                input_shape: Sequence[int] | None = None, threads: int = 1) -> str:
    """The report page of one file, or the comparison page of several files of one model, as a string.

    ``baseline``: the uncompressed checkpoint (distributions before, accuracy vs it); ``sensitivity``: a sweep
    folder of the same model (one file only); ``bench``: latency, with torch's and numba's threads set to
    ``threads`` first (left so, as ``deepshrink bench`` does); ``dataset``: top-1 on its test split (first
    ``limit`` samples); ``sram``: the on-chip memory of the fit and energy estimate; ``input_shape``: per-sample
    shape for MACs and latency when no dataset tells it.
    """
    paths = [files] if isinstance(files, str | os.PathLike) else list(files)
    if not paths:
        raise ConfigError("give at least one .dsz file")
    if sensitivity is not None and len(paths) > 1:
        raise ConfigError("--sensitivity goes with a report of one file, not a comparison")
    sram_bytes = parse_size(sram)
    if bench:
        from ..runtime.measure import set_threads

        set_threads(threads)  # before any model is loaded: resizing the pools later slows every contender
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    sweep = read_sweep(sensitivity) if sensitivity is not None else None
    base = load_baseline(baseline) if baseline is not None else None
    gathered = [gather(p, baseline=base, dataset=dataset, data_dir=data_dir, limit=limit, input_shape=shape,
                       need_model=bench)
                for p in paths]
    facts = [f for f, _ in gathered]
    energies = [_energy(f, sram_bytes) for f in facts]
    if len(paths) > 1:
        compare.same_model(facts)
        runs = [_bench(p, f, m, dataset, data_dir) for p, (f, m) in zip(paths, gathered, strict=True)] \
            if bench else None
        return compare.render(facts, energies, runs)
    one, model = gathered[0]
    matched = (sweep, check_sweep(sweep, one)) if sweep is not None else None
    measured = None
    if bench:
        inputs = f"the first {dataset} test samples as" if dataset else "Gaussian"
        measured = (_bench(paths[0], one, model, dataset, data_dir), threads, inputs)
    return page.render(one, energies[0], sweep=matched, bench=measured)


def write_html(files: PathLike | Sequence[PathLike], out: PathLike, **options: Any) -> dict[str, Any]:
    """Write the report (see :func:`render_html` for the options) to ``out`` atomically; returns what it wrote."""
    target = Path(out)
    if target.is_dir():
        raise ConfigError(f"--out {target} is a folder; give the HTML file to write")
    text = render_html(files, **options)
    data = text.encode("utf-8")
    atomic_write_bytes(target, data)
    return {"out": str(target), "bytes": len(data), "figures": text.count("<figure "),
            "files": [str(f) for f in ([files] if isinstance(files, str | os.PathLike) else files)]}
