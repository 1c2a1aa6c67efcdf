"""The float kinds: ``dense`` (every position, float values) and ``sparse`` (pruned only: kept float values)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import FormatError
from .base import StoredWeight, ValueKind, register_kind


class DenseKind(ValueKind):
    """A weight without compression state; export form ``{"kind": "dense", "array": float32 array}``."""

    name = "dense"
    doc = "every weight as a float (stored fp32 or fp16, widened exactly)"

    def check(self, weight: StoredWeight) -> None:
        if weight.positions is not None:
            raise FormatError("a dense weight cannot have kept positions (an index or a mask)")

    def values(self, weight: StoredWeight) -> np.ndarray:
        return np.asarray(weight.data, dtype=np.float32)

    def from_export(self, exported: Mapping[str, Any], mask: np.ndarray | None = None) -> StoredWeight:
        array = np.asarray(exported["array"], dtype=np.float32)
        return StoredWeight(self.name, tuple(int(d) for d in array.shape), array.reshape(-1))

    def to_export(self, weight: StoredWeight) -> dict[str, Any]:
        return {"kind": self.name, "array": self.dense(weight)}


class SparseKind(ValueKind):
    """A pruned weight without a value transform; export form ``{"kind": "sparse", "mask", "values"}``."""

    name = "sparse"
    doc = "kept weights (relative index) with their float32 values"

    def check(self, weight: StoredWeight) -> None:
        if weight.positions is None:
            raise FormatError("a sparse weight needs kept positions (an index or a mask)")

    def values(self, weight: StoredWeight) -> np.ndarray:
        return np.asarray(weight.data, dtype=np.float32)

    def from_export(self, exported: Mapping[str, Any], mask: np.ndarray | None = None) -> StoredWeight:
        mask = np.asarray(exported.get("mask", mask), dtype=bool)
        positions = np.flatnonzero(mask)
        values = np.asarray(exported["values"], dtype=np.float32)
        if values.shape == mask.shape and values.size != positions.size:
            values = values.reshape(-1)[positions]
        if values.size != positions.size:
            raise FormatError(f"{values.size} sparse values for {positions.size} kept weights")
        return StoredWeight(self.name, tuple(int(d) for d in mask.shape), values.reshape(-1), positions)

    def to_export(self, weight: StoredWeight) -> dict[str, Any]:
        return {"kind": self.name, "mask": weight.mask(), "values": self.values(weight)}


register_kind(DenseKind())
register_kind(SparseKind())
