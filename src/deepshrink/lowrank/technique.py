"""Low-rank approximation as a registered technique: configs, handler, stage in one place (it changes the graph,
so it records structural edits rather than per-weight state)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.errors import ConfigError
from ..core.select import Selector
from ..core.techniques import Technique, register_technique
from .api import lowrank_
from .stage import LOWRANK_KEYS, build_lowrank
from .svd import SVDLinear
from .zhang import ZhangLowRank


def apply(model: nn.Module, config: ZhangLowRank | SVDLinear, *, select: Selector = None, exclude: Selector = None,
          calib: Any = None) -> dict[str, Any]:
    """``compress_`` handler: convs by :class:`ZhangLowRank` (needs calibration images), Linear layers by SVD."""
    if exclude is not None:
        raise ConfigError("low-rank selects layers with select=; exclude= is not supported")
    if isinstance(config, ZhangLowRank):
        if calib is None:
            raise ConfigError("ZhangLowRank fits responses: pass calib=<dataset or tensor of images>")
        return lowrank_(model, calib, conv=config, select=select or nn.Conv2d, seed=config.seed)
    return lowrank_(model, calib, linear=config, linear_response=calib is not None, linear_select=select or nn.Linear)


TECHNIQUE = register_technique(Technique(
    "lowrank", (ZhangLowRank, SVDLinear), apply, stages={"lowrank": (LOWRANK_KEYS, build_lowrank)},
    doc="response-fitted conv factorisation (Zhang, Zou, He, Sun 2015) and truncated SVD of Linear layers"))
