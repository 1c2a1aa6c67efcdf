"""Codebooks and biases in the smallest exact form: float values rounded to a 2-byte float the file can hold.

A ``.dsz`` file (version 2) stores a float32 array in 2 bytes per value when every value is exactly a bfloat16 or
float16. Rounding the shared values and the plain biases to float16 (relative change at most 2**-11) after the last
training step makes that so: the file then holds exactly what the model computes, in half the bytes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.errors import ConfigError
from .sharing import SharedWeights

__all__ = ["DTYPES", "round_biases_", "round_codebooks_", "round_to"]

DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Names a recipe may give; ``float32`` leaves values as they are."""


def round_to(values: torch.Tensor, dtype: str) -> torch.Tensor:
    """``values`` rounded to ``dtype`` and back to their own dtype (values that would overflow stay as they are)."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} (allowed: {', '.join(DTYPES)})")
    target = DTYPES[dtype]
    if target is None:
        return values
    rounded = values.to(target).to(values.dtype)
    return torch.where(torch.isfinite(rounded), rounded, values)


def round_codebooks_(model: nn.Module, dtype: str = "float16") -> int:
    """Round every codebook's shared values to ``dtype`` in place; returns the number of codebooks."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SharedWeights):
                module.centroids.copy_(round_to(module.centroids, dtype))
                count += 1
    return count


def round_biases_(model: nn.Module, dtype: str = "float16") -> int:
    """Round every plain (uncompressed) ``bias`` parameter to ``dtype`` in place; returns how many."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            bias = module._parameters.get("bias") if not parametrize.is_parametrized(module, "bias") else None
            if isinstance(bias, torch.Tensor) and bias.is_floating_point():
                bias.copy_(round_to(bias, dtype))
                count += 1
    return count
