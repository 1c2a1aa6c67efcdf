"""Magnitude pruning (Han, Pool, Tran, Dally 2015) and a random-pruning control.

Han et al. prune every weight whose magnitude is below ``quality x std`` of its layer's weights, then
retrain. ``quality`` is their quality parameter; ``sparsity`` instead asks for a fraction of zeros per layer
(or over all layers with ``scope="global"``). The std is taken over the weights still alive, so applying the
same quality again in a later round prunes further, as in their iterative schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.state import latent_weight
from .base import PerLayer, check_fraction, check_scope, frozen_copy, masks_for_sparsity, per_layer


@dataclass(frozen=True)
class MagnitudePrune:
    """Prune by |w|: ``quality`` (threshold = quality x layer std) or target ``sparsity``; exactly one given.

    Either may be a float or ``{layer fqn or glob: value}``. ``scope="global"`` ranks all selected layers
    together (one threshold for the whole model).
    """

    quality: PerLayer | None = None
    sparsity: PerLayer | None = None
    scope: str = "layer"

    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if (self.quality is None) == (self.sparsity is None):
            raise ConfigError("MagnitudePrune takes exactly one of quality= or sparsity=")
        check_fraction("sparsity", self.sparsity)
        check_scope(self.scope, self.quality if self.quality is not None else self.sparsity,
                    "quality" if self.quality is not None else "sparsity")
        if self.quality is not None:
            values = self.quality.values() if isinstance(self.quality, Mapping) else [self.quality]
            for q in values:
                if not float(q) >= 0:
                    raise ConfigError(f"quality must be >= 0 (a multiple of the layer's weight std), got {q}")
        object.__setattr__(self, "quality", frozen_copy(self.quality))
        object.__setattr__(self, "sparsity", frozen_copy(self.sparsity))

    def scores(self, model: nn.Module, layers: list[tuple[str, nn.Module]], data: Any = None) -> dict[str, Tensor]:
        return {name: latent_weight(module).detach().abs() for name, module in layers}

    def masks(self, layers: dict[str, nn.Module], scores: dict[str, Tensor], alive: dict[str, Tensor]
              ) -> tuple[dict[str, Tensor], dict[str, float | None]]:
        if self.sparsity is not None:
            return masks_for_sparsity(scores, alive, self.sparsity, self.scope)
        assert self.quality is not None
        if self.scope == "global":
            pooled = torch.cat([scores[n][alive[n]] * 1.0 for n in scores])
            signed = torch.cat([latent_weight(layers[n]).detach().cpu()[alive[n]] for n in scores])
            cut = float(self.quality) * float(signed.std()) if pooled.numel() > 1 else 0.0  # type: ignore[arg-type]
            cuts = dict.fromkeys(scores, cut)
        else:
            qualities = per_layer(self.quality, scores, "quality")
            cuts = {}
            for n, q in qualities.items():
                alive_w = latent_weight(layers[n]).detach().cpu()[alive[n]]
                cuts[n] = q * float(alive_w.std()) if alive_w.numel() > 1 else 0.0
        masks = {n: alive[n] & (scores[n] >= cut) for n, cut in cuts.items()}
        return masks, dict(cuts)


@dataclass(frozen=True)
class RandomPrune:
    """Prune a random ``sparsity`` fraction of the weights (the control every criterion must beat)."""

    sparsity: PerLayer = 0.5
    scope: str = "layer"
    seed: int = 0

    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        check_scope(self.scope, self.sparsity, "sparsity")
        object.__setattr__(self, "sparsity", frozen_copy(self.sparsity))

    def scores(self, model: nn.Module, layers: list[tuple[str, nn.Module]], data: Any = None) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        return {name: torch.rand(latent_weight(module).shape, generator=generator) for name, module in layers}
