"""Pruning as a registered technique: configs, handler and recipe stage declared in one place."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.select import Selector
from ..core.techniques import Technique, register_technique
from .base import PruneReport, prune_
from .magnitude import MagnitudePrune, RandomPrune
from .obd import OBDPrune
from .obs import OBSPrune
from .stage import PRUNE_KEYS, build_prune


def apply(model: nn.Module, config: Any, *, select: Selector = None, exclude: Selector = None,
          calib: Any = None) -> PruneReport:
    """``compress_`` handler: :func:`prune_` with ``calib`` as the data of data-driven criteria (OBD)."""
    return prune_(model, config, select, data=calib, exclude=exclude)


TECHNIQUE = register_technique(Technique(
    "prune", (MagnitudePrune, OBDPrune, OBSPrune, RandomPrune), apply, stages={"prune": (PRUNE_KEYS, build_prune)},
    doc="magnitude (Han et al. 2015), Optimal Brain Damage (LeCun et al. 1989), layer-wise OBS, a random control"))
