"""The integer forms that value transforms export, and their exact float values."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FormatError

KINDS = ("codebook", "fixedpoint", "ternary")


def dequantize(exported: dict[str, Any]) -> np.ndarray:
    """Float32 weights of an exported integer form; equal bit for bit to the transform's forward output."""
    kind = exported.get("kind")
    if kind == "codebook":
        index = np.asarray(exported["index"])
        centroids = np.asarray(exported["centroids"], dtype=np.float32)
        out = np.zeros(index.shape, dtype=np.float32)
        live = index >= 0
        if live.any() and int(index[live].max()) >= centroids.size:
            raise FormatError(f"codebook index {int(index[live].max())} out of range for {centroids.size} centroids")
        out[live] = centroids[index[live]]
        return out
    if kind == "fixedpoint":
        ints = np.asarray(exported["int"], dtype=np.int64)
        step = np.float32(2.0 ** -int(exported["frac_len"]))
        return (ints.astype(np.float32) * step).astype(np.float32)
    if kind == "ternary":
        code = np.asarray(exported["code"])
        wp, wn = np.float32(exported["wp"]), np.float32(exported["wn"])
        out = np.zeros(code.shape, dtype=np.float32)
        out[code > 0] = wp
        out[code < 0] = -wn
        return out
    raise FormatError(f"unknown quantized kind {kind!r} (known: {', '.join(KINDS)})")
