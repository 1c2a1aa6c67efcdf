"""The symmetric, fixed-scale ternary baseline (Ternary Weight Networks, Li & Liu 2016) for comparison with TTQ.

One scale per layer, never trained: ``delta = 0.7 * mean|w|`` and ``alpha = mean(|w| : |w| > delta)``
are recomputed from the latent at every forward; the latent gets a straight-through gradient. The file form
is the same ternary export with ``wp == wn == alpha``, so files of both methods load and run alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.state import ValueTransform
from .ttq import Ternary

__all__ = ["TWN", "SymmetricTernary", "twn_scale"]


@dataclass(frozen=True)
class TWN:
    """Hyperparameters of the symmetric baseline: ``delta = factor * mean|w|`` (TWN's 0.7), first/last kept."""

    factor: float = 0.7
    keep_first_last: bool = True

    def __post_init__(self) -> None:
        if not self.factor >= 0.0:
            raise ConfigError(f"TWN threshold factor must be >= 0, got {self.factor}")


def twn_scale(latent: Tensor, factor: Tensor | float) -> tuple[Tensor, Tensor]:
    """``(codes int8, alpha)`` of ``latent``: TWN's threshold over the non-zero (unpruned) weights."""
    magnitude = latent.detach().abs()
    live = magnitude > 0
    mean = magnitude.sum() / live.sum().clamp(min=1)
    delta = torch.as_tensor(factor, dtype=latent.dtype, device=latent.device) * mean
    pos, neg = latent.detach() > delta, latent.detach() < -delta
    chosen = pos | neg
    alpha = (magnitude * chosen).sum() / chosen.sum().clamp(min=1)
    return pos.to(torch.int8) - neg.to(torch.int8), alpha


class _STETernary(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, latent: Tensor, factor: Tensor) -> Tensor:
        code, alpha = twn_scale(latent, factor)
        zero = torch.zeros((), dtype=latent.dtype, device=latent.device)
        return torch.where(code > 0, alpha, torch.where(code < 0, -alpha, zero))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class SymmetricTernary(ValueTransform):
    """TWN-style ternary weights ``{-alpha, 0, +alpha}`` with a computed (untrained) scale; buffer ``factor``."""

    kind = "ternary"

    factor: Tensor

    def __init__(self, factor: float = 0.7) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(float(factor), dtype=torch.float32))

    def forward(self, weight: Tensor) -> Tensor:
        out: Tensor = _STETernary.apply(weight, self.factor)
        return out

    @property
    def bits(self) -> float:
        return 2.0

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        code, alpha = twn_scale(masked_latent.detach(), self.factor)
        value = float(alpha)
        return {"kind": "ternary", "code": code.cpu().numpy().astype(np.int8), "wp": value, "wn": value}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> ValueTransform:
        """A file holds only codes and one scale: it comes back as a (frozen-equivalent) TTQ ``Ternary``."""
        return Ternary.from_export(exported)

    @classmethod
    def attach(cls, module: nn.Module, exported: dict[str, Any], name: str = "weight") -> None:
        Ternary.attach(module, exported, name)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> SymmetricTernary:
        return cls(float(tensors["factor"]) if "factor" in tensors else 0.7)

    def extra_repr(self) -> str:
        return f"factor={float(self.factor):g}"
