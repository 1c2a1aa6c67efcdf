"""The ``fixedpoint`` kind (Qiu et al.'s dynamic fixed point): signed integers times ``2**-frac_len``.

Export form ``{"kind": "fixedpoint", "int": int64 array, "bits": int, "frac_len": int, "act_in_bits",
"act_in_frac_len", "act_out_bits", "act_out_frac_len": int}`` (``*_bits == 0``: that activation stays float).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, FormatError
from ..fixed_point import MAX_FRAC_LEN, FixedPointFormat, check_bits
from .base import Palette, StoredWeight, ValueKind, register_kind

ACT_KEYS = ("act_in_bits", "act_in_frac_len", "act_out_bits", "act_out_frac_len")


def _int_field(params: Any, key: str, default: int | None = None) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FormatError(f"fixedpoint field {key!r} must be an integer, got {value!r}")
    return int(value)


def formats(weight: StoredWeight) -> tuple[FixedPointFormat, FixedPointFormat | None, FixedPointFormat | None]:
    """``(weight format, input format or None, output format or None)`` of a fixed-point weight."""
    p = weight.params
    try:
        fmt = FixedPointFormat(_int_field(p, "bits"), _int_field(p, "frac_len"))
        acts = [_int_field(p, key, 0) for key in ACT_KEYS]
        act_in = FixedPointFormat(check_bits(acts[0], "act_in_bits"), acts[1]) if acts[0] else None
        act_out = FixedPointFormat(check_bits(acts[2], "act_out_bits"), acts[3]) if acts[2] else None
    except ConfigError as exc:
        raise FormatError(f"invalid fixed-point format: {exc}") from exc
    return fmt, act_in, act_out


class FixedPointKind(ValueKind):
    name = "fixedpoint"
    symbol_key = "int"
    doc = "signed integers in `bits` bits times 2^-frac_len, plus the layer's activation formats"

    def check(self, weight: StoredWeight) -> None:
        fmt, _, _ = formats(weight)
        if abs(fmt.frac_len) > MAX_FRAC_LEN:
            raise FormatError(f"fixedpoint frac_len {fmt.frac_len} out of range")
        lo, hi = -(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1
        if weight.kept and (int(weight.data.min()) < lo or int(weight.data.max()) > hi):
            raise FormatError(f"fixedpoint integers out of the {fmt.bits}-bit range [{lo}, {hi}]")

    def step(self, weight: StoredWeight) -> np.float32:
        return np.float32(2.0 ** -int(weight.params["frac_len"]))

    def values(self, weight: StoredWeight) -> np.ndarray:
        return (weight.data.astype(np.float32) * self.step(weight)).astype(np.float32)

    def palette(self, weight: StoredWeight) -> Palette:
        """Every integer of the used range as a table entry; exact zeros get code -1."""
        data = np.asarray(weight.data, dtype=np.int64)
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        table = (np.arange(low, high + 1, dtype=np.int64).astype(np.float32) * self.step(weight)).astype(np.float32)
        return Palette(table.reshape(1, -1), np.where(data == 0, -1, data - low))


register_kind(FixedPointKind())
