"""Dynamic fixed point (Qiu et al. 2016): formats, weight/data search and the simulated model.

Integer-only inference of the result lives in :mod:`deepshrink.runtime.integer`.
"""

from ..core.fixed_point import (
    FixedPointFormat,
    fake_quantize,
    overflow_free_frac_len,
    requantize,
    rounding_shift,
    saturate,
)
from .quantize import DynamicFixedPoint, FixedPointReport, LayerFormat, parse_bits, quantize_
from .technique import TECHNIQUE
from .transform import FixedPoint, fixed_point_of, install_all_hooks, install_hooks

__all__ = [
    "TECHNIQUE",
    "DynamicFixedPoint",
    "FixedPoint",
    "FixedPointFormat",
    "FixedPointReport",
    "LayerFormat",
    "fake_quantize",
    "fixed_point_of",
    "install_all_hooks",
    "install_hooks",
    "overflow_free_frac_len",
    "parse_bits",
    "quantize_",
    "requantize",
    "rounding_shift",
    "saturate",
]
