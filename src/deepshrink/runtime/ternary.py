"""Runtime builder for ``ternary`` weights: the add/subtract kernel (``y = Wp * sum_+ x - Wn * sum_- x``).

Registered as the specialised builder for export kind ``ternary``; layers the kernel does not cover
(grouped or non-zero-padded convolutions, Conv1d) go to the generic fallback builder.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..core.errors import UnsupportedLayerError
from ..ternary.kernel import TernaryConv2d, TernaryLinear
from .registry import FALLBACK_BUILDERS, register_layer_builder

__all__ = ["build_ternary"]


@register_layer_builder("ternary")
def build_ternary(module: nn.Module, exported: dict[str, Any], bias: Tensor | None, name: str) -> nn.Module:
    """``TernaryLinear`` / ``TernaryConv2d`` computing from the codes with additions and subtractions."""
    if isinstance(module, nn.Linear):
        return TernaryLinear.from_export(exported, bias)
    plain_conv = isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
    if plain_conv and isinstance(module, nn.Conv2d) and not isinstance(module.padding, str):
        return TernaryConv2d.from_conv(module, exported, bias)
    fallback = FALLBACK_BUILDERS.get("ternary")
    if fallback is None:
        raise UnsupportedLayerError(f"{name}: no ternary kernel for {type(module).__name__} with these settings "
                                    "(the add/subtract kernel covers Linear and groups=1 zero-padded Conv2d)")
    return fallback(module, exported, bias, name)
