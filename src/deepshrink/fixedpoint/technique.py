"""Dynamic fixed point as a registered technique: config, handler, state, restored kind and stage in one place."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.select import Selector
from ..core.techniques import Technique, register_technique
from .quantize import DynamicFixedPoint, FixedPointReport, quantize_
from .stage import QUANTIZE_KEYS, build_quantize
from .transform import FixedPoint


def apply(model: nn.Module, config: DynamicFixedPoint, *, select: Selector = None, exclude: Selector = None,
          calib: Any = None) -> FixedPointReport:
    """``compress_`` handler: :func:`quantize_` on the calibration data."""
    return quantize_(model, config, calib=calib, select=select, exclude=exclude)


TECHNIQUE = register_technique(Technique(
    "fixedpoint", (DynamicFixedPoint,), apply, states=(FixedPoint,), restores={"fixedpoint": FixedPoint},
    stages={"quantize": (QUANTIZE_KEYS, build_quantize)}, needs_calib=True,
    doc="dynamic fixed point with greedy per-layer formats (Qiu et al. 2016); integer-only inference"))
