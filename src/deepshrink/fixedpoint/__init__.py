"""Dynamic fixed point (Qiu et al. 2016): formats, weight/data search, static baseline, integer inference."""

from .formats import (
    FixedPointFormat,
    fake_quantize,
    overflow_free_frac_len,
    requantize,
    rounding_shift,
    saturate,
)
from .integer import IntegerLayer, IntegerModel, QTensor, swap_integer_layers_
from .quantize import DynamicFixedPoint, FixedPointReport, LayerFormat, parse_bits, quantize_
from .simulate import fixed_point_of, install_all_hooks
from .transform import FixedPoint

__all__ = [
    "DynamicFixedPoint",
    "FixedPoint",
    "FixedPointFormat",
    "FixedPointReport",
    "IntegerLayer",
    "IntegerModel",
    "LayerFormat",
    "QTensor",
    "fake_quantize",
    "fixed_point_of",
    "install_all_hooks",
    "overflow_free_frac_len",
    "parse_bits",
    "quantize_",
    "requantize",
    "rounding_shift",
    "saturate",
    "swap_integer_layers_",
]
