"""The ``quantize`` recipe stage: dynamic fixed point calibrated on the recipe's calibration data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.stages import RecipeContext, StageFn
from ..data import calibration_batches
from .quantize import DynamicFixedPoint, quantize_

__all__ = ["QUANTIZE_KEYS", "build_quantize"]

_CONFIG_KEYS = ("bits", "act_bits", "static", "quantize_outputs", "quantize_last_output", "span", "weight_objective",
                "granularity", "activations", "max_bits_avg", "wide_bits", "mixed_objective", "bias_correction",
                "equalize", "rounding", "weight_rounding", "max_act_bits_avg", "unsigned_activations")
QUANTIZE_KEYS = frozenset({*_CONFIG_KEYS, "calib", "select", "exclude"})


def build_quantize(options: Mapping[str, Any]) -> StageFn:
    """Dynamic fixed point (Qiu et al.): per-layer formats from ``calib`` samples (default 512) of the calibration
    data (the validation split in ``deepshrink compress``)."""
    config = DynamicFixedPoint(**{k: options[k] for k in _CONFIG_KEYS if k in options})
    count = int(options.get("calib", 512))

    def run(ctx: RecipeContext) -> dict[str, Any]:
        batches = calibration_batches(ctx.calibration, count)
        report = quantize_(ctx.model, config, calib=batches, select=options.get("select"),
                           exclude=options.get("exclude"))
        return report.to_dict()

    return run
