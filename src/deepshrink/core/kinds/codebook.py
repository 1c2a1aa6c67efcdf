"""The ``codebook`` kind (Deep Compression's weight sharing): a cluster index per weight into shared values.

Export form ``{"kind": "codebook", "index": int64 array (-1 = zero), "centroids": float32 (K,) or (G, K)}``;
with ``G`` rows of centroids the output channels are split into ``G`` equal groups, each with its own codebook.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError
from .base import Palette, StoredWeight, ValueKind, register_kind


def centroid_table(weight: StoredWeight) -> np.ndarray:
    """The centroids as a ``(groups, K)`` float32 table."""
    centroids = np.asarray(weight.params["centroids"], dtype=np.float32)
    return centroids.reshape(1, -1) if centroids.ndim == 1 else centroids


class CodebookKind(ValueKind):
    name = "codebook"
    symbol_key = "index"
    filler = -1
    doc = "cluster index per kept weight into per-layer (or per channel-group) shared float32 values"

    def check(self, weight: StoredWeight) -> None:
        if "centroids" not in weight.params:
            raise FormatError("a codebook weight has no centroids")
        centroids = np.asarray(weight.params["centroids"])
        if centroids.ndim not in (1, 2) or centroids.size == 0:
            raise FormatError(f"codebook centroids must be a non-empty (K,) or (G, K) array, got {centroids.shape}")
        table = centroid_table(weight)
        if weight.shape and (weight.shape[0] % table.shape[0] or table.shape[0] > weight.shape[0]):
            raise FormatError(f"{table.shape[0]} codebooks do not split {weight.shape[0]} output channels evenly")
        if weight.kept and (int(weight.data.max()) >= table.shape[1] or int(weight.data.min()) < -1):
            raise FormatError(f"codebook index {int(weight.data.max())} out of range for {table.shape[1]} centroids")

    def palette(self, weight: StoredWeight) -> Palette:
        return Palette(centroid_table(weight), np.asarray(weight.data, dtype=np.int64))

    def values(self, weight: StoredWeight) -> np.ndarray:
        codes, table = self.palette(weight).flat(weight)
        out = np.zeros(codes.shape, dtype=np.float32)
        live = codes >= 0
        out[live] = table[codes[live]]
        return out


register_kind(CodebookKind())
