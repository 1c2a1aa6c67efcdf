"""The ``ternary`` kind (TTQ / TWN): codes in {-1, 0, +1} with a positive and a negative scale.

Export form ``{"kind": "ternary", "code": int8 array, "wp", "wn"}``: a weight is ``+wp``, ``-wn`` or 0. The scales
are floats (one per layer) or float32 arrays of ``G`` entries (``G`` equal groups of output channels, e.g. one
per channel after a BatchNorm was folded in).
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError
from .base import Palette, StoredWeight, ValueKind, register_kind


def scales(weight: StoredWeight) -> tuple[np.ndarray, np.ndarray]:
    """``(wp, wn)`` as float32 arrays of one entry per group (the values ``+wp`` and ``-wn`` the codes stand for)."""
    wp = np.asarray(weight.params["wp"], dtype=np.float32).reshape(-1)
    wn = np.asarray(weight.params["wn"], dtype=np.float32).reshape(-1)
    return wp, wn


class TernaryKind(ValueKind):
    name = "ternary"
    symbol_key = "code"
    symbol_dtype = np.int8
    doc = "codes in {-1, 0, +1}; +1 stands for wp, -1 for -wn"

    def check(self, weight: StoredWeight) -> None:
        sizes = set()
        for key in ("wp", "wn"):
            value = weight.params.get(key)
            if isinstance(value, np.ndarray):
                if value.ndim != 1 or value.dtype != np.float32 or value.size == 0:
                    raise FormatError(f"ternary scale {key!r} must be a float32 vector, got {value.dtype} "
                                      f"{value.shape}")
                sizes.add(value.size)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise FormatError(f"ternary scale {key!r} must be a number or a vector, got {value!r}")
            else:
                sizes.add(1)
        groups = max(sizes)
        rows = weight.shape[0] if weight.shape else 1
        if sizes - {1, groups} or rows % groups:
            raise FormatError(f"ternary scales of {sorted(sizes)} entries do not split {rows} output channels evenly")
        if weight.kept and (int(weight.data.min()) < -1 or int(weight.data.max()) > 1):
            raise FormatError("ternary codes must lie in {-1, 0, 1}")

    def values(self, weight: StoredWeight) -> np.ndarray:
        codes, table = self.palette(weight).flat(weight)
        out = np.zeros(codes.shape, dtype=np.float32)
        live = codes >= 0
        out[live] = table[codes[live]]
        return out

    def palette(self, weight: StoredWeight) -> Palette:
        wp, wn = scales(weight)
        groups = max(wp.size, wn.size)
        table = np.stack([-np.broadcast_to(wn, (groups,)), np.broadcast_to(wp, (groups,))], axis=1)
        codes = np.where(weight.data > 0, 1, np.where(weight.data < 0, 0, -1)).astype(np.int64)
        return Palette(table.astype(np.float32), codes)


register_kind(TernaryKind())
