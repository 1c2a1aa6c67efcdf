"""Fixed-point numbers (Qiu et al. 2016): an integer times ``2**-frac_len`` in ``bits`` signed bits.

Shared by the fixed-point technique (simulation) and the runtime's integer engine, so both use the one
definition of every rounding.

One rounding rule everywhere, so the float simulation and the integer path agree bit for bit:
**round half up** (``floor(v + 0.5)``), then **saturate** to ``[-2**(bits-1), 2**(bits-1) - 1]``.
On integers this is ``(acc + 2**(s-1)) >> s`` with an arithmetic shift; in floats it is computed in float64,
where scaling by a power of two and adding 0.5 are exact for every value that can survive saturation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError

MIN_BITS, MAX_BITS = 2, 16
"""Supported widths: up to 16 bits keeps every value exact in float32 and every product well inside int64."""

MAX_FRAC_LEN = 62


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bit width; returns it as an int."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return int(bits)


def int_range(bits: int) -> tuple[int, int]:
    """``(qmin, qmax)`` of a signed ``bits``-bit integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class FixedPointFormat:
    """A signed fixed-point format: value = integer * 2**-frac_len, integer in ``bits`` bits."""

    bits: int
    frac_len: int

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if isinstance(self.frac_len, bool) or not isinstance(self.frac_len, int) or abs(self.frac_len) > MAX_FRAC_LEN:
            raise ConfigError(f"frac_len must be an integer in [-{MAX_FRAC_LEN}, {MAX_FRAC_LEN}], got {self.frac_len!r}")

    @property
    def step(self) -> float:
        return math.ldexp(1.0, -self.frac_len)

    @property
    def max_value(self) -> float:
        return int_range(self.bits)[1] * self.step

    @property
    def min_value(self) -> float:
        return int_range(self.bits)[0] * self.step

    def __str__(self) -> str:
        return f"Q{self.bits}.{self.frac_len}"


def to_int(x: Tensor, bits: int, frac_len: int) -> Tensor:
    """Integers (as float64) of ``x`` in the format: ``clamp(floor(x * 2**fl + 0.5))``, computed exactly."""
    qmin, qmax = int_range(bits)
    scaled = x.detach().double() * math.ldexp(1.0, frac_len)
    return torch.floor(scaled + 0.5).clamp_(qmin, qmax)


def from_int(ints: Tensor, frac_len: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``ints * 2**-frac_len`` in ``dtype`` (exact for ``bits <= 16`` in float32)."""
    return (ints.double() * math.ldexp(1.0, -frac_len)).to(dtype)


def fake_quantize(x: Tensor, bits: int, frac_len: int) -> Tensor:
    """``x`` rounded and saturated to the format, same dtype; straight-through gradient (identity)."""
    q = from_int(to_int(x, bits, frac_len), frac_len, x.dtype)
    return q + (x - x.detach())


def rounding_shift(acc: Tensor, shift: int) -> Tensor:
    """Integer ``acc * 2**-shift`` rounded half up: ``(acc + 2**(shift-1)) >> shift``; a left shift when shift <= 0."""
    if shift > 0:
        return (acc + (1 << (shift - 1))) >> shift
    if shift < 0:
        return acc << (-shift)
    return acc


def saturate(ints: Tensor, bits: int) -> Tensor:
    """Clamp integers to the signed ``bits``-bit range."""
    qmin, qmax = int_range(bits)
    return ints.clamp(qmin, qmax)


def requantize(ints: Tensor, frac_from: int, bits: int, frac_to: int) -> Tensor:
    """Integers at ``frac_from`` re-expressed at ``frac_to`` in ``bits`` bits (rounding shift, then saturation)."""
    return saturate(rounding_shift(ints, frac_from - frac_to), bits)


def overflow_free_frac_len(max_abs: float, bits: int) -> int:
    """The largest fractional length at which ``max_abs`` does not saturate (the paper's range analysis)."""
    qmax = int_range(bits)[1]
    if not math.isfinite(max_abs) or max_abs <= 0:
        return bits - 1
    frac_len = bits - 1 - math.ceil(math.log2(max_abs))
    while frac_len < MAX_FRAC_LEN and math.floor(math.ldexp(max_abs, frac_len + 1) + 0.5) <= qmax:
        frac_len += 1
    while frac_len > -MAX_FRAC_LEN and math.floor(math.ldexp(max_abs, frac_len) + 0.5) > qmax:
        frac_len -= 1
    return max(-MAX_FRAC_LEN, min(MAX_FRAC_LEN, frac_len))


def bias_int(bias: Tensor | None, acc_frac_len: int) -> Tensor | None:
    """The bias rounded (half up) to the accumulator's fractional length, as float64 integers (no saturation)."""
    if bias is None:
        return None
    return torch.floor(bias.detach().double() * math.ldexp(1.0, acc_frac_len) + 0.5)
