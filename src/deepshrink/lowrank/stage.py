"""The ``lowrank`` recipe stage: fold BatchNorm, factorise convs (Zhang et al.) and/or Linear layers (SVD).

    stages:
      - lowrank: {speedup: 3, method: asymmetric}      # convs; calibration = the recipe's val data
      - lowrank: {linear_ratio: 0.25, response: true}  # Linear layers, response PCA on the val data
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn
from .api import lowrank_
from .svd import SVDLinear
from .zhang import ZhangLowRank

__all__ = ["LOWRANK_KEYS", "build_lowrank"]

_CONV_KEYS = {"speedup", "method", "images", "positions", "select", "decomposition", "rank_rule"}
_LINEAR_KEYS = {"linear_energy", "linear_ratio", "response", "linear_select"}
LOWRANK_KEYS = frozenset(_CONV_KEYS | _LINEAR_KEYS)


def build_lowrank(options: Mapping[str, Any]) -> StageFn:
    """Low-rank: convs to a conv-FLOP ``speedup`` by ``method`` (asymmetric default); Linear layers by SVD."""
    conv = None
    if "speedup" in options:
        conv = ZhangLowRank(speedup=float(options["speedup"]), method=str(options.get("method", "asymmetric")),
                            images=int(options.get("images", 3000)), positions=int(options.get("positions", 10)),
                            decomposition=str(options.get("decomposition", "channel")),
                            rank_rule=str(options.get("rank_rule", "energy")))
    elif set(options) & (_CONV_KEYS - {"speedup"}):
        raise ConfigError("method/images/positions/select/decomposition/rank_rule need speedup")
    linear = None
    if "linear_energy" in options or "linear_ratio" in options:
        linear = SVDLinear(energy=options.get("linear_energy"), param_ratio=options.get("linear_ratio"))
    if conv is None and linear is None:
        raise ConfigError("give speedup (convs) and/or linear_energy / linear_ratio (Linear layers)")

    def run(ctx: RecipeContext) -> dict[str, Any]:
        return lowrank_(ctx.model, ctx.calibration, conv=conv, linear=linear,
                        linear_response=bool(options.get("response", False)),
                        select=options.get("select", nn.Conv2d), linear_select=options.get("linear_select", nn.Linear),
                        seed=ctx.seed)

    return run
