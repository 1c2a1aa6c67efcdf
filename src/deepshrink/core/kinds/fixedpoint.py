"""The ``fixedpoint`` kind (Qiu et al.'s dynamic fixed point): signed integers times ``2**-frac_len``.

Export form ``{"kind": "fixedpoint", "int": int64 array, "bits": int, "frac_len": int, "act_in_bits",
"act_in_frac_len", "act_out_bits", "act_out_frac_len": int}`` (``*_bits == 0``: that activation stays float).
``frac_len`` may instead be an int64 array with one fractional length per output channel (per-channel weights);
``act_in_dynamic: 1`` means the input's fractional length is chosen per row (token) at run time from its own
range (``act_in_frac_len`` is then unused). ``act_in_unsigned: 1`` / ``act_out_unsigned: 1``: that activation's
integers are unsigned (``[0, 2**bits - 1]``, a tensor a ReLU-like clip makes non-negative); absent: signed.
``round_half_even: 1`` means the layer rounds half to even (ONNX's rule) instead of half up; absent in files of
layers that round half up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, FormatError
from ..fixed_point import MAX_FRAC_LEN, FixedPointFormat, check_bits
from .base import Palette, StoredWeight, ValueKind, register_kind

ACT_KEYS = ("act_in_bits", "act_in_frac_len", "act_out_bits", "act_out_frac_len")
UNSIGNED_KEYS = ("act_in_unsigned", "act_out_unsigned")
"""Optional flags (written only when 1): the input's / output's integers are unsigned."""


@dataclass(frozen=True)
class Formats:
    """A fixed-point layer's formats: weight bits and fractional length(s), input and output formats."""

    bits: int
    frac_lens: np.ndarray  # int64, shape (1,) or (output channels,)
    act_in: FixedPointFormat | None
    act_out: FixedPointFormat | None
    dynamic_input: bool = False
    rounding: str = "half_up"

    @property
    def per_channel(self) -> bool:
        return self.frac_lens.size > 1

    @property
    def weight(self) -> FixedPointFormat:
        """The weight format of a per-layer weight (FormatError for a per-channel one)."""
        if self.per_channel:
            raise FormatError("a per-channel fixed-point weight has no single weight format")
        return FixedPointFormat(self.bits, int(self.frac_lens[0]))


def _int_field(params: Any, key: str, default: int | None = None) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FormatError(f"fixedpoint field {key!r} must be an integer, got {value!r}")
    return int(value)


def formats(weight: StoredWeight) -> Formats:
    """The formats of a fixed-point weight (FormatError when a field is missing or out of range)."""
    p = weight.params
    raw = p.get("frac_len")
    try:
        bits = check_bits(_int_field(p, "bits"), "bits")
        if isinstance(raw, np.ndarray):
            if raw.ndim != 1 or raw.size == 0 or not np.issubdtype(raw.dtype, np.integer):
                raise FormatError(f"per-channel frac_len must be a 1-D integer array, got {raw.dtype} {raw.shape}")
            frac_lens = raw.astype(np.int64)
        else:
            frac_lens = np.array([_int_field(p, "frac_len")], dtype=np.int64)
        if np.abs(frac_lens).max() > MAX_FRAC_LEN:
            raise FormatError(f"fixedpoint frac_len beyond +-{MAX_FRAC_LEN}")
        acts = [_int_field(p, key, 0) for key in ACT_KEYS]
        unsigned = [_int_field(p, key, 0) for key in UNSIGNED_KEYS]
        if any(flag not in (0, 1) for flag in unsigned) or (unsigned[0] and not acts[0]) or (unsigned[1] and not acts[2]):
            raise FormatError(f"fixedpoint unsigned flags must be 0 or 1 and need a width, got {unsigned}")
        act_in = (FixedPointFormat(check_bits(acts[0], "act_in_bits"), acts[1], signed=not unsigned[0])
                  if acts[0] else None)
        act_out = (FixedPointFormat(check_bits(acts[2], "act_out_bits"), acts[3], signed=not unsigned[1])
                   if acts[2] else None)
        dynamic = bool(_int_field(p, "act_in_dynamic", 0))
        rounding = "half_even" if _int_field(p, "round_half_even", 0) else "half_up"
    except ConfigError as exc:
        raise FormatError(f"invalid fixed-point format: {exc}") from exc
    if dynamic and (act_in is None or act_out is not None or not act_in.signed):
        raise FormatError("a per-token (dynamic) input format needs a signed input width and a float output")
    return Formats(bits, frac_lens, act_in, act_out, dynamic, rounding)


def _groups(weight: StoredWeight, frac_lens: np.ndarray) -> np.ndarray:
    """Per kept weight, the index of its fractional length."""
    if frac_lens.size == 1:
        return np.zeros(weight.kept, dtype=np.int64)
    return weight.flat_positions() // max(weight.numel // frac_lens.size, 1)


class FixedPointKind(ValueKind):
    name = "fixedpoint"
    symbol_key = "int"
    doc = "signed integers in `bits` bits times 2^-frac_len (per layer or per output channel), plus the layer's " \
          "activation formats"

    def check(self, weight: StoredWeight) -> None:
        fmt = formats(weight)
        rows = weight.shape[0] if weight.shape else 1
        if fmt.per_channel and fmt.frac_lens.size != rows:
            raise FormatError(f"{fmt.frac_lens.size} fractional lengths for {rows} output channels")
        lo, hi = -(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1
        if weight.kept and (int(weight.data.min()) < lo or int(weight.data.max()) > hi):
            raise FormatError(f"fixedpoint integers out of the {fmt.bits}-bit range [{lo}, {hi}]")

    @staticmethod
    def steps(frac_lens: np.ndarray) -> np.ndarray:
        return np.array([2.0 ** -int(f) for f in frac_lens], dtype=np.float32)

    def values(self, weight: StoredWeight) -> np.ndarray:
        frac_lens = formats(weight).frac_lens
        if frac_lens.size == 1:
            return (weight.data.astype(np.float32) * self.steps(frac_lens)[0]).astype(np.float32)
        return (weight.data.astype(np.float32) * self.steps(frac_lens)[_groups(weight, frac_lens)]).astype(np.float32)

    def palette(self, weight: StoredWeight) -> Palette:
        """Every integer of the used range as a table entry (one table per fractional length); exact zeros get -1."""
        data = np.asarray(weight.data, dtype=np.int64)
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        ints = np.arange(low, high + 1, dtype=np.int64).astype(np.float32)
        table = (ints[None, :] * self.steps(formats(weight).frac_lens)[:, None]).astype(np.float32)
        return Palette(table, np.where(data == 0, -1, data - low))


register_kind(FixedPointKind())
