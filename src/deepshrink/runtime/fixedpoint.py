"""Runtime builder for ``fixedpoint`` weights: the integer kernel of :mod:`deepshrink.fixedpoint`.

Each fixed-point Linear/Conv1d/Conv2d read from a ``.dsz`` file becomes an
:class:`~deepshrink.fixedpoint.IntegerLayer` (float in, float out at the layer boundary; inside, the input
is rounded to its stored format, multiplied by the stored integer weights with int32/int64 accumulation
and shifted/saturated to the output format), bit-exact with the simulated model the file was written from.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..core.errors import UnsupportedLayerError
from ..fixedpoint.integer import IntegerLayer
from .registry import FALLBACK_BUILDERS, register_layer_builder

__all__ = ["build_fixedpoint"]


@register_layer_builder("fixedpoint")
def build_fixedpoint(module: nn.Module, exported: dict[str, Any], bias: Tensor | None, name: str) -> nn.Module:
    """``IntegerLayer`` computing from the stored integers; weights without activation formats fall back."""
    supported = isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) and getattr(module, "padding_mode", "zeros") == "zeros"
    if supported and int(exported.get("act_in_bits", 0)):
        return IntegerLayer.from_export(module, exported, bias)
    fallback = FALLBACK_BUILDERS.get("fixedpoint")
    if fallback is None:
        raise UnsupportedLayerError(f"{name}: no integer kernel for {type(module).__name__} without an input format; "
                                    "quantize with calibration data (quantize_(..., calib=...))")
    return fallback(module, exported, bias, name)
