"""Energy per inference and on-chip fit: the argument of Han et al. (2015, 2016), in numbers from one file.

The model (stated in the report and docs/report.md):

* Energy per operation is Han et al.'s 45 nm table (after Horowitz, ISSCC 2014): a 32-bit DRAM access 640 pJ,
  a 32-bit SRAM access 5 pJ, fp32 multiply 3.7 pJ, fp32 add 0.9 pJ, int32 multiply 3.1 pJ, int32 add 0.1 pJ.
* Batch 1: every weight is read once per inference, one 32-bit access per 32 bits of weight storage. All
  weights live in on-chip SRAM when they fit it as a whole (dense: 4 bytes per weight; compressed: the
  fixed-width form an accelerator reads, P weight bits + Q index bits per kept weight plus the codebooks, as
  in EIE), else all of them in DRAM. Entropy coding is for storage and transfer (decoded once at load).
* Arithmetic: one multiply and one add per weight use (per output position for a convolution); the
  compressed model does them only for its non-zero weights (pruned and quantized-to-zero ones are skipped): fp32 for float and codebook weights, int32 for fixed
  point, and an add alone for ternary weights (the two scales are applied once per output). Activations,
  biases' arithmetic and codebook lookups are left out (alike in both, or small).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ConfigError

PJ = {
    "dram": 640.0, "sram": 5.0,
    "fp32_mul": 3.7, "fp32_add": 0.9, "int32_mul": 3.1, "int32_add": 0.1,
}
"""Han et al.'s 45 nm energy table, picojoules per 32-bit operation."""

MAC_PJ = {
    "fp32": PJ["fp32_mul"] + PJ["fp32_add"],
    "int32": PJ["int32_mul"] + PJ["int32_add"],
    "add": PJ["fp32_add"],
}
"""Energy of one weight use by arithmetic: fp32 or int32 multiply-accumulate, or (ternary) one add."""

ARITHMETIC = {"dense": "fp32", "sparse": "fp32", "codebook": "fp32", "fixedpoint": "int32", "ternary": "add"}
"""Which arithmetic a stored kind computes with (other kinds: fp32)."""

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str | int) -> int:
    """``"256KiB"`` -> 262144 bytes (B, kB/KB, KiB, MB, MiB, GB, GiB; a plain number is bytes)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ConfigError(f"--sram takes a size like 256KiB, 2MB or 65536, got {text!r}")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ConfigError(f"the SRAM size must be positive, got {text!r}")
    return value


def format_size(nbytes: float) -> str:
    """``262144`` -> ``256 KiB``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} B"


def format_energy(pj: float) -> str:
    """Picojoules in the readable unit (pJ, nJ, µJ, mJ)."""
    for unit, scale in (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if pj >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


@dataclass
class LayerEnergy:
    """One weight's share: accesses and weight uses, dense fp32 vs compressed, in picojoules."""

    name: str
    kind: str
    dense_accesses: int
    compressed_accesses: int
    dense_macs: int | None
    compressed_macs: int | None
    dense_pj: dict[str, float]
    compressed_pj: dict[str, float]


@dataclass
class Energy:
    """The estimate for one file: per layer and in total, with where the weights live."""

    sram_bytes: int
    dense_bytes: int
    compressed_bytes: int
    file_bytes: int
    dense_in_sram: bool
    compressed_in_sram: bool
    layers: list[LayerEnergy] = field(default_factory=list)
    has_macs: bool = True

    def total(self, which: str) -> dict[str, float]:
        """``{"memory", "arithmetic", "total"}`` pJ of ``"dense"`` or ``"compressed"``."""
        parts = [getattr(r, f"{which}_pj") for r in self.layers]
        memory = sum(p["memory"] for p in parts)
        arithmetic = sum(p["arithmetic"] for p in parts)
        return {"memory": memory, "arithmetic": arithmetic, "total": memory + arithmetic}

    @property
    def ratio(self) -> float | None:
        compressed = self.total("compressed")["total"]
        return self.total("dense")["total"] / compressed if compressed else None

    def to_dict(self) -> dict[str, Any]:
        return {"sram_bytes": self.sram_bytes, "dense_bytes": self.dense_bytes, "compressed_bytes": self.compressed_bytes,
                "dense_in_sram": self.dense_in_sram, "compressed_in_sram": self.compressed_in_sram,
                "dense_pj": self.total("dense"), "compressed_pj": self.total("compressed"), "ratio": self.ratio}


def _words(nbytes: int) -> int:
    return math.ceil(8 * nbytes / 32)


def estimate(layers: Sequence[dict[str, Any]], other_fp32_bytes: int, other_stored_bytes: int, file_bytes: int,
             macs: dict[str, int] | None, sram_bytes: int) -> Energy:
    """The energy estimate from ``file_stats`` rows (``name``, ``kind``, ``weights``, ``kept``, ``fixed_bytes``),
    the bytes of the other tensors (biases, ...) and the dense MACs per weight (None: memory only); a row's
    ``nonzero`` (default ``kept``) is how many weights the compressed model multiplies by."""
    dense_bytes = sum(4 * int(r["weights"]) for r in layers) + other_fp32_bytes
    compressed_bytes = sum(int(r["fixed_bytes"]) for r in layers) + other_stored_bytes
    dense_sram, compressed_sram = dense_bytes <= sram_bytes, compressed_bytes <= sram_bytes
    access = {True: PJ["sram"], False: PJ["dram"]}
    energy = Energy(sram_bytes, dense_bytes, compressed_bytes, file_bytes, dense_sram, compressed_sram,
                    has_macs=macs is not None)
    for r in layers:
        numel, nonzero = int(r["weights"]), int(r.get("nonzero", r["kept"]))
        layer_macs = None if macs is None else macs.get(r["name"])
        per_use = layer_macs // numel if layer_macs is not None and numel else None
        dense_acc, comp_acc = numel, _words(int(r["fixed_bytes"]))
        dense_macs = layer_macs
        comp_macs = None if per_use is None else nonzero * per_use
        energy.layers.append(LayerEnergy(
            r["name"], r["kind"], dense_acc, comp_acc, dense_macs, comp_macs,
            {"memory": dense_acc * access[dense_sram],
             "arithmetic": (dense_macs or 0) * MAC_PJ["fp32"]},
            {"memory": comp_acc * access[compressed_sram],
             "arithmetic": (comp_macs or 0) * MAC_PJ[ARITHMETIC.get(r["kind"], "fp32")]}))
    # the other tensors (biases, norms) are read once per inference in both models
    energy.layers.append(LayerEnergy(
        "other tensors", "-", _words(other_fp32_bytes), _words(other_stored_bytes), None, None,
        {"memory": _words(other_fp32_bytes) * access[dense_sram], "arithmetic": 0.0},
        {"memory": _words(other_stored_bytes) * access[compressed_sram], "arithmetic": 0.0}))
    return energy
