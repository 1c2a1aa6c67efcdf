"""Fixed-point numbers (Qiu et al. 2016): an integer times ``2**-frac_len`` in ``bits`` bits, signed (the paper's)
or unsigned (``[0, 2**bits - 1]``: for tensors a clipping activation makes non-negative, where a signed format
would spend its top bit on a sign that never occurs).

Shared by the fixed-point technique (simulation) and the runtime's integer engine, so both use the one
definition of every rounding.

One rounding rule per layer, the same in the float simulation and the integer path, so both agree bit for bit:
**round half up** (``floor(v + 0.5)``, the default and what the C backend computes) or **round half to even**
(``rounding="half_even"``: ONNX's ``QuantizeLinear`` rule, so an ONNX Q/DQ export computes exactly what
deepshrink computes), then **saturate** to ``[-2**(bits-1), 2**(bits-1) - 1]`` (unsigned: ``[0, 2**bits - 1]``).
On integers half up is
``(acc + 2**(s-1)) >> s`` with an arithmetic shift; in floats it is computed in float64, where scaling by a power
of two and adding 0.5 are exact for every value that can survive saturation.
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

ROUNDINGS = ("half_up", "half_even")
"""Rounding rules of a fixed-point layer: deepshrink's (and the paper's) half up, or ONNX's half to even."""


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ConfigError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    return rounding


def round_scaled(scaled: Tensor, rounding: str = "half_up") -> Tensor:
    """``scaled`` (float64, already times ``2**frac_len``) rounded to integers by the rule, as float64."""
    return torch.round(scaled) if rounding == "half_even" else torch.floor(scaled + 0.5)


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bit width; returns it as an int."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what} must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return int(bits)


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-bit integer, signed or unsigned."""
    if not signed:
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class FixedPointFormat:
    """A fixed-point format: value = integer * 2**-frac_len, integer in ``bits`` bits (signed unless ``signed`` is
    False: then ``[0, 2**bits - 1]``)."""

    bits: int
    frac_len: int
    signed: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if isinstance(self.frac_len, bool) or not isinstance(self.frac_len, int) or abs(self.frac_len) > MAX_FRAC_LEN:
            raise ConfigError(f"frac_len must be an integer in [-{MAX_FRAC_LEN}, {MAX_FRAC_LEN}], got {self.frac_len!r}")
        if not isinstance(self.signed, bool):
            raise ConfigError(f"signed must be True or False, got {self.signed!r}")

    @property
    def step(self) -> float:
        return math.ldexp(1.0, -self.frac_len)

    @property
    def range(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the format's integers."""
        return int_range(self.bits, self.signed)

    @property
    def magnitude(self) -> int:
        """The largest absolute integer of the format (what bounds a sum of products)."""
        qmin, qmax = self.range
        return max(-qmin, qmax)

    @property
    def max_value(self) -> float:
        return self.range[1] * self.step

    @property
    def min_value(self) -> float:
        return self.range[0] * self.step

    def __str__(self) -> str:
        return f"{'' if self.signed else 'U'}Q{self.bits}.{self.frac_len}"


FracLen = int | Tensor
"""One fractional length, or one per slice along an axis (an int64 tensor): per output channel for weights, per
row (token) for run-time dynamic activations."""


def pow2(frac_len: FracLen, like: Tensor, axis: int = 0) -> float | Tensor:
    """``2**frac_len`` exactly: a float, or a float64 tensor shaped to broadcast along ``axis`` of ``like``."""
    if not isinstance(frac_len, Tensor):
        return math.ldexp(1.0, int(frac_len))
    if frac_len.dim() == 0:
        return math.ldexp(1.0, int(frac_len))
    values = torch.tensor([math.ldexp(1.0, int(f)) for f in frac_len.reshape(-1).tolist()], dtype=torch.float64)
    shape = [1] * like.dim()
    shape[axis] = -1
    return values.reshape(shape)


def to_int(x: Tensor, bits: int, frac_len: FracLen, axis: int = 0, rounding: str = "half_up",
           signed: bool = True) -> Tensor:
    """Integers (as float64) of ``x`` in the format: ``clamp(floor(x * 2**fl + 0.5))`` (half up; half to even with
    ``rounding="half_even"``), computed exactly (a per-slice ``frac_len`` scales each slice along ``axis``)."""
    qmin, qmax = int_range(bits, signed)
    scaled = x.detach().double() * pow2(frac_len, x, axis)
    return round_scaled(scaled, rounding).clamp_(qmin, qmax)


def from_int(ints: Tensor, frac_len: FracLen, dtype: torch.dtype = torch.float32, axis: int = 0) -> Tensor:
    """``ints * 2**-frac_len`` in ``dtype`` (exact for ``bits <= 16`` in float32)."""
    return (ints.double() / pow2(frac_len, ints, axis)).to(dtype)


def fake_quantize(x: Tensor, bits: int, frac_len: FracLen, axis: int = 0, rounding: str = "half_up",
                  signed: bool = True) -> Tensor:
    """``x`` rounded and saturated to the format, same dtype; straight-through gradient (identity)."""
    q = from_int(to_int(x, bits, frac_len, axis, rounding, signed), frac_len, x.dtype, axis)
    return q + (x - x.detach())


def rounding_shift(acc: Tensor, shift: int | Tensor, rounding: str = "half_up") -> Tensor:
    """Integer ``acc * 2**-shift`` rounded half up: ``(acc + 2**(shift-1)) >> shift`` (or half to even); a left shift
    when shift <= 0. ``shift`` may be an integer tensor broadcasting against ``acc`` (per channel or per row)."""
    if rounding == "half_even":
        right, left = (shift.clamp(min=0), (-shift).clamp(min=0)) if isinstance(shift, Tensor) else (
            max(shift, 0), max(-shift, 0))
        q = torch.bitwise_right_shift(acc, right)  # floor
        rest = acc - torch.bitwise_left_shift(q, right)
        half = (torch.bitwise_left_shift(torch.ones_like(right), (right - 1).clamp(min=0)) * (right > 0)
                if isinstance(right, Tensor) else (1 << (right - 1) if right else 0))
        up = (rest > half) | ((rest == half) & (q % 2 == 1) & (torch.as_tensor(right) > 0))
        return torch.bitwise_left_shift(q + up.to(acc.dtype), left)
    if isinstance(shift, Tensor):
        right, left = shift.clamp(min=0), (-shift).clamp(min=0)
        one = torch.ones_like(right)
        half = torch.where(right > 0, torch.bitwise_left_shift(one, (right - 1).clamp(min=0)), 0)
        return torch.bitwise_left_shift(torch.bitwise_right_shift(acc + half, right), left)
    if shift > 0:
        return (acc + (1 << (shift - 1))) >> shift
    if shift < 0:
        return acc << (-shift)
    return acc


def saturate(ints: Tensor, bits: int, signed: bool = True) -> Tensor:
    """Clamp integers to the ``bits``-bit range (signed, or unsigned)."""
    qmin, qmax = int_range(bits, signed)
    return ints.clamp(qmin, qmax)


def requantize(ints: Tensor, frac_from: int | Tensor, bits: int, frac_to: int | Tensor,
               rounding: str = "half_up", signed: bool = True) -> Tensor:
    """Integers at ``frac_from`` re-expressed at ``frac_to`` in ``bits`` bits (rounding shift, then saturation)."""
    return saturate(rounding_shift(ints, frac_from - frac_to, rounding), bits, signed)


def overflow_free_frac_len(max_abs: float, bits: int, signed: bool = True) -> int:
    """The largest fractional length at which ``max_abs`` does not saturate (the paper's range analysis)."""
    qmax = int_range(bits, signed)[1]
    top = bits - 1 if signed else bits
    if not math.isfinite(max_abs) or max_abs <= 0:
        return top
    frac_len = top - math.ceil(math.log2(max_abs))
    while frac_len < MAX_FRAC_LEN and math.floor(math.ldexp(max_abs, frac_len + 1) + 0.5) <= qmax:
        frac_len += 1
    while frac_len > -MAX_FRAC_LEN and math.floor(math.ldexp(max_abs, frac_len) + 0.5) > qmax:
        frac_len -= 1
    return max(-MAX_FRAC_LEN, min(MAX_FRAC_LEN, frac_len))


def bias_int(bias: Tensor | None, acc_frac_len: FracLen, rounding: str = "half_up") -> Tensor | None:
    """The bias rounded (by the layer's rule) to the accumulator's fractional length (one per output channel, or one
    for all), as float64 integers (no saturation)."""
    if bias is None:
        return None
    return round_scaled(bias.detach().double() * pow2(acc_frac_len, bias, 0), rounding)


def row_frac_lens(x: Tensor, bits: int) -> Tensor:
    """Per row (last axis reduced) the overflow-free fractional length of :func:`overflow_free_frac_len`, vectorised:
    the run-time choice of a per-token activation format."""
    qmax = int_range(bits)[1]
    peak = x.detach().double().abs().amax(dim=-1)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    frac = bits - 1 - torch.ceil(torch.log2(safe)).to(torch.int64)
    for _ in range(2):  # log2 of a float can be off by one at powers of two: settle on the exact rule
        grow = torch.floor(safe * torch.pow(2.0, (frac + 1).double()) + 0.5) <= qmax
        frac = torch.where(grow, frac + 1, frac)
        shrink = torch.floor(safe * torch.pow(2.0, frac.double()) + 0.5) > qmax
        frac = torch.where(shrink, frac - 1, frac)
    frac = torch.where(peak > 0, frac, torch.full_like(frac, bits - 1))
    return frac.clamp(-MAX_FRAC_LEN, MAX_FRAC_LEN)
