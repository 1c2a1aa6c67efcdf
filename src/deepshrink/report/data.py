"""The facts a report shows, gathered from one ``.dsz`` file (plus an optional baseline and dataset).

Everything is read through the codec (``read_compressed``, ``file_stats``) and the kind registry, never a
technique's code: sizes come from the file's own sections, values from ``StoredWeight``, the technique chain
from the kinds stored per weight and the header's structural edits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..codec.decode import CompressedFile, read_compressed
from ..codec.stats import file_stats
from ..core.errors import ConfigError, FormatError
from ..core.kinds import StoredWeight
from ..core.kinds.fixedpoint import formats
from ..core.kinds.ternary import scales

STAGES = ("fp32", "pruned", "+ shared", "+ entropy", "file")
"""The size waterfall: dense fp32, pruned (sparse fp32 values + fixed-width index), + codebooks / fixed-width
values, + entropy coding, the file (+ header)."""
PARTS = ("weights", "indices", "codebooks", "other")
"""What a stage's bytes are: weight values, position index, codebooks / scales, other tensors + header."""


@dataclass
class Quality:
    """Accuracy on a dataset split (or, without labels, agreement with the baseline)."""

    dataset: str
    split: str
    samples: int
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    agreement: float | None = None
    cosine: float | None = None


@dataclass
class LayerFacts:
    """One stored weight: its ``file_stats`` row, section bytes, values, parameters and baseline weights."""

    name: str
    row: dict[str, Any]
    parts: dict[str, int]
    weight: StoredWeight
    baseline: np.ndarray | None = None
    macs: int | None = None

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def kind(self) -> str:
        return self.weight.kind

    @property
    def values(self) -> np.ndarray:
        """float32 value of every kept weight, as the compressed model computes with it."""
        return self.weight.values()

    @property
    def nonzero(self) -> int:
        return int(np.count_nonzero(self.values))

    def levels(self) -> np.ndarray | None:
        """The distinct values a lookup kind can take (centroids, fixed-point grid, ±scales); None for floats."""
        palette = self.weight.palette()
        return None if palette is None else np.unique(palette.table)

    def baseline_kept(self) -> np.ndarray | None:
        """The baseline's weights at the kept positions (before quantization, as Deep Compression draws them)."""
        if self.baseline is None:
            return None
        return self.baseline.reshape(-1)[self.weight.flat_positions()]

    def error(self) -> dict[str, float] | None:
        """Relative L2 error vs the baseline (whole weight, kept weights) and the kept weights' SQNR in dB."""
        kept = self.baseline_kept()
        if kept is None or self.baseline is None:
            return None
        base = self.baseline.reshape(-1).astype(np.float64)
        dense = self.weight.dense().reshape(-1).astype(np.float64)
        diff = np.linalg.norm(self.values.astype(np.float64) - kept)
        norm_kept = float(np.linalg.norm(kept))
        return {"whole": float(np.linalg.norm(dense - base) / max(float(np.linalg.norm(base)), 1e-30)),
                "kept": float(diff / max(norm_kept, 1e-30)),
                "sqnr_db": float(20 * math.log10(norm_kept / diff)) if diff > 0 and norm_kept > 0 else math.inf}

    def params(self) -> dict[str, str]:
        """The kind's parameters in words: codebook size, fixed-point formats, ternary scales."""
        out = {"kind": self.kind}
        describe = KIND_PARAMS.get(self.kind)
        out.update(describe(self) if describe is not None else {"values": f"float{self.row['weight_bits_fixed']}"})
        err = self.error()
        if err is not None:
            out["change vs baseline"] = (f"{100 * err['kept']:.2f}% on kept weights (SQNR {err['sqnr_db']:.1f} dB), "
                                         f"{100 * err['whole']:.1f}% whole (relative L2)")
        return out

    def waterfall(self) -> dict[str, dict[str, int]]:
        """Bytes per part at each stage of :data:`STAGES` but ``file`` (which adds only the header)."""
        r, numel, kept = self.row, int(self.row["weights"]), int(self.row["kept"])
        index = math.ceil(r["index_entries"] * r["index_bits_fixed"] / 8) if "index_entries" in r else 0
        pruned = 4 * kept if self.weight.positions is not None else 4 * numel
        books = self.parts.get("arrays", 0)
        return {
            "fp32": {"weights": 4 * numel},
            "pruned": {"weights": pruned, "indices": index},
            "+ shared": {"weights": math.ceil(kept * r["weight_bits_fixed"] / 8), "indices": index, "codebooks": books},
            "+ entropy": {"weights": self.parts.get("values", 0) + self.parts.get("values_table", 0),
                          "indices": self.parts.get("index", 0) + self.parts.get("index_table", 0),
                          "codebooks": books},
        }


@dataclass
class FileFacts:
    """A ``.dsz`` file's facts: header, per-layer facts, totals, technique chain, and what was measured."""

    path: str
    compressed: CompressedFile
    stats: dict[str, Any]
    layers: list[LayerFacts]
    quality: Quality | None = None
    input_shape: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def header(self) -> dict[str, Any]:
        return self.compressed.header

    @property
    def total(self) -> dict[str, Any]:
        return dict(self.stats["total"])

    @property
    def model(self) -> str:
        arch = self.header.get("arch")
        if not arch:
            return "(architecture not recorded)"
        kwargs = self.header.get("kwargs") or {}
        return f"{arch}(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"

    @property
    def other_fp32_bytes(self) -> int:
        return int(self.total["fp32_bytes"]) - sum(4 * int(r.row["weights"]) for r in self.layers)

    def stages(self) -> dict[str, dict[str, int]]:
        """The whole file's waterfall: bytes per part at each of :data:`STAGES`."""
        t = self.total
        out: dict[str, dict[str, int]] = {s: dict.fromkeys(PARTS, 0) for s in STAGES}
        for layer in self.layers:
            for stage, parts in layer.waterfall().items():
                for part, n in parts.items():
                    out[stage][part] += n
        out["file"] = dict(out["+ entropy"])
        out["fp32"]["other"] = self.other_fp32_bytes
        for stage in STAGES[1:]:
            out[stage]["other"] = int(t["other_bytes"])
        out["file"]["other"] += int(t["header_bytes"])
        return out

    def chain(self) -> list[str]:
        """The techniques this file shows, in pipeline order: edits, pruning, value kinds, entropy coding."""
        return technique_chain(self.header, self.layers)

    def energy_rows(self) -> list[dict[str, Any]]:
        """``file_stats`` rows with the non-zero count each compressed layer multiplies by."""
        return [{**layer.row, "nonzero": layer.nonzero} for layer in self.layers]

    def macs(self) -> dict[str, int] | None:
        counted = {layer.name: layer.macs for layer in self.layers if layer.macs is not None}
        return counted if counted and len(counted) == len(self.layers) else None


def technique_chain(header: dict[str, Any], layers: list[LayerFacts]) -> list[str]:
    """Readable steps, e.g. ``["pruning: 4 of 4 layers, 7.5% kept", "weight sharing: 5-bit codebooks", ...]``."""
    steps: list[str] = []
    ops = [str(e.get("op")) for e in header.get("edits", []) if isinstance(e, dict)]
    if ops.count("fold_bn"):
        steps.append(f"BatchNorm folded into {ops.count('fold_bn')} layers")
    lowrank = sum(op.startswith("lowrank") for op in ops)
    if lowrank:
        steps.append(f"low-rank factorisation of {lowrank} layers")
    pruned = [x for x in layers if x.weight.positions is not None]
    if pruned:
        kept = sum(x.weight.kept for x in pruned) / max(sum(x.weight.numel for x in pruned), 1)
        steps.append(f"pruning: {len(pruned)} of {len(layers)} tensors, {100 * kept:.1f}% of their weights kept")

    by_kind: dict[str, list[Any]] = {}
    for x in layers:
        by_kind.setdefault(x.kind, []).append(x)

    def bits(kind: str) -> str:
        return "/".join(str(b) for b in sorted({x.row["weight_bits_fixed"] for x in by_kind.get(kind, [])}))

    names = {"codebook": "weight sharing: {b}-bit codebooks", "fixedpoint": "dynamic fixed point: {b}-bit weights",
             "ternary": "ternary weights (Wp, 0, -Wn)"}
    for kind, text in names.items():
        if by_kind.get(kind):
            steps.append(f"{text.format(b=bits(kind))} in {len(by_kind[kind])} tensors")
    codings = set()
    for entry in header.get("weights", {}).values():
        for key in ("values", "index"):
            if isinstance(entry.get(key), dict) and entry[key].get("coding") not in (None, "raw"):
                codings.add(str(entry[key]["coding"]).replace("huffman", "Huffman").replace("ans", "ANS"))
        if isinstance(entry.get("mask"), dict):
            codings.add("context-modelled masks")
    if codings:
        steps.append("entropy coding: " + ", ".join(sorted(codings)))
    if by_kind.get("dense"):
        steps.append(f"{len(by_kind['dense'])} tensors stored dense ({bits('dense')}-bit floats)")
    return steps or ["no compression"]


def read_file(path: str | os.PathLike[str]) -> tuple[CompressedFile, dict[str, Any]]:
    """The decoded file and its ``file_stats`` (FormatError naming the file on anything malformed)."""
    compressed = read_compressed(path)
    return compressed, file_stats(compressed)


def load_baseline(path: str | os.PathLike[str]) -> nn.Module:
    """The uncompressed model of ``--baseline`` (a checkpoint or any model file deepshrink writes)."""
    from ..io import load_model

    if not Path(path).is_file():
        raise ConfigError(f"--baseline {path}: no such file")
    return load_model(path)[0].eval()


def baseline_weights(baseline: nn.Module, layers: list[LayerFacts], what: str) -> dict[str, np.ndarray]:
    """The baseline's effective weight for each file layer of the same name and shape (ConfigError if none)."""
    modules = dict(baseline.named_modules())
    found: dict[str, np.ndarray] = {}
    for layer in layers:
        module_name, _, attr = layer.name.rpartition(".")
        value = getattr(modules.get(module_name), attr, None)
        if isinstance(value, torch.Tensor) and tuple(value.shape) == layer.weight.shape:
            found[layer.name] = value.detach().float().cpu().numpy()
    if layers and not found:
        raise ConfigError(f"the baseline is not the model of {what}: none of its weights "
                          f"({', '.join(x.name for x in layers[:4])}, ...) has the file's name and shape")
    return found


def count_macs(model: nn.Module, names: list[str], example: Any) -> dict[str, int]:
    """Multiply-accumulates of each weight (``fc1.weight``) for one forward of ``example`` (batch 1)."""
    modules = dict(model.named_modules())
    counts: dict[str, int] = {}
    hooks = []
    for name in names:
        module = modules.get(name.rpartition(".")[0])
        if module is None:
            continue

        def hook(mod: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() == 0:
                return
            attr = name.rpartition(".")[2]
            numel = int(getattr(mod, attr).numel())
            if isinstance(mod, nn.Embedding) or attr == "bias":  # a lookup, an add: no multiply-accumulates
                counts[name] = 0
            elif isinstance(mod, nn.modules.conv._ConvNd):
                counts[name] = numel * (output.numel() // max(output.shape[1], 1))
            else:
                counts[name] = counts.get(name, 0) + numel * (output.numel() // max(output.shape[-1], 1))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:  # a wrong input shape surfaces here: say so in one line
        raise ConfigError(f"cannot run the model on an input of shape {tuple(example.shape)}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        for handle in hooks:
            handle.remove()
    return counts


def measure_quality(model: nn.Module, baseline: nn.Module | None, dataset: str, data_dir: str | None,
                    limit: int | None) -> Quality:
    """Top-1 of the file's model (and of the baseline) on the test split; agreement without labels."""
    from ..data import DataOptions, open_data
    from ..train import agreement, evaluate

    data = open_data(dataset, DataOptions(data_dir=data_dir)).split("test", limit)
    result = evaluate(model, data)
    quality = Quality(dataset, "test", int(result["samples"]), result["accuracy"])
    if baseline is not None:
        if result["accuracy"] is not None:
            quality.baseline_accuracy = evaluate(baseline, data)["accuracy"]
        else:
            agreed = agreement(baseline, model, data)
            quality.agreement, quality.cosine = agreed["top1_agreement"], agreed["cosine"]
    return quality


def input_shape_of(meta: dict[str, Any], dataset: str | None, given: tuple[int, ...] | None,
                   data_dir: str | None) -> tuple[int, ...] | None:
    """Per-sample input shape: given, else the dataset's (given or recorded in the file), else None."""
    from ..data import INFO, DataOptions, open_data

    if given is not None:
        return tuple(given)
    if dataset is not None:
        return open_data(dataset, DataOptions(data_dir=data_dir)).input_shape
    recorded = meta.get("dataset")
    return tuple(INFO[recorded].input_shape) if recorded in INFO else None


def gather(path: str | os.PathLike[str], *, baseline: nn.Module | None = None, dataset: str | None = None,
           data_dir: str | None = None, limit: int | None = None,
           input_shape: tuple[int, ...] | None = None, need_model: bool = False) -> tuple[FileFacts, nn.Module | None]:
    """The facts of one file and its model (rebuilt through the codec when MACs, accuracy or ``need_model`` ask
    for it; None when the file records no architecture)."""
    compressed, stats = read_file(path)
    rows = {r["name"]: r for r in stats["layers"]}
    layers = [LayerFacts(name, rows[name], compressed.section_bytes.get(name, {}), weight)
              for name, weight in compressed.weights.items()]
    facts = FileFacts(str(path), compressed, stats, layers)
    if baseline is not None:
        found = baseline_weights(baseline, layers, facts.name)
        for layer in layers:
            layer.baseline = found.get(layer.name)
        missing = [x.name for x in layers if x.baseline is None]
        if missing:
            facts.notes.append(f"the baseline has no weight of the same shape for {', '.join(missing)}")
    facts.input_shape = input_shape_of(compressed.meta, dataset, input_shape, data_dir)
    model = None
    if not compressed.header.get("arch"):
        facts.notes.append("the file records no architecture: accuracy, MACs and latency need a zoo model")
    elif facts.input_shape is not None or dataset is not None or need_model:
        from ..io import load_model

        try:
            model = load_model(path)[0].eval()
        except ConfigError as exc:
            raise FormatError(f"{path}: {exc}") from exc
    if model is not None and facts.input_shape is not None:
        try:
            macs = count_macs(model, [x.name for x in layers], torch.zeros((1, *facts.input_shape)))
        except ConfigError as exc:
            if input_shape is not None:  # the caller's shape: say it is wrong
                raise
            facts.notes.append(f"MACs not counted ({exc}); pass --input-shape")
            macs = {}
        for layer in layers:
            layer.macs = macs.get(layer.name)
    elif facts.input_shape is None:
        facts.notes.append("no input shape known (no dataset): the energy estimate counts memory accesses only")
    if model is not None and dataset is not None:
        facts.quality = measure_quality(model, baseline, dataset, data_dir, limit)
    return facts, model


def _codebook_params(layer: Any) -> dict[str, str]:
    palette = layer.weight.palette()
    assert palette is not None
    text = f"{palette.table.shape[1]} values ({layer.row['weight_bits_fixed']} bits)"
    return {"codebook": text + (f" x {palette.groups} channel groups" if palette.groups > 1 else "")}


def _fixedpoint_params(layer: Any) -> dict[str, str]:
    fmt = formats(layer.weight)
    fl = fmt.frac_lens
    act_in, act_out = fmt.act_in, fmt.act_out
    return {"bits": str(fmt.bits),
            "fl_w": str(int(fl[0])) if fl.size == 1 else f"{int(fl.min())}..{int(fl.max())} per channel",
            "fl_a in": "float" if act_in is None else (
                f"{act_in.bits} bits, per token" if fmt.dynamic_input else f"{act_in.bits} bits, fl {act_in.frac_len}"),
            "fl_a out": "float" if act_out is None else f"{act_out.bits} bits, fl {act_out.frac_len}"}


def _ternary_params(layer: Any) -> dict[str, str]:
    w = layer.weight
    wp, wn = scales(w)
    return {"Wp": f"{float(wp[0]):.4g}" if wp.size == 1 else f"{float(wp.mean()):.4g} (mean of {wp.size})",
            "Wn": f"{float(wn[0]):.4g}" if wn.size == 1 else f"{float(wn.mean()):.4g} (mean of {wn.size})",
            "zeros": f"{100.0 * (1 - layer.nonzero / max(w.numel, 1)):.1f}%"}


KIND_PARAMS: dict[str, Callable[[Any], dict[str, str]]] = {
    "codebook": _codebook_params, "fixedpoint": _fixedpoint_params, "ternary": _ternary_params}
"""How the report describes a kind's parameters (a kind without an entry shows its float width)."""
