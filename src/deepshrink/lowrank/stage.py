"""The ``lowrank`` recipe stage: fold BatchNorm, factorise convs (Zhang et al.) and/or Linear layers (SVD).

    stages:
      - lowrank: {speedup: 3, method: asymmetric}      # convs; calibration = the recipe's val data
      - lowrank: {linear_ratio: 0.25, response: true}  # Linear layers, response PCA on the val data
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError, UnsupportedLayerError
from ..core.fold import find_bn_pairs, fold_batchnorm_
from ..recipes import RecipeContext, StageFn, register_stage
from .svd import SVDLinear, svd_linear_
from .zhang import ZhangLowRank, calibration_images, lowrank_conv_

_CONV_KEYS = {"speedup", "method", "images", "positions", "select"}
_LINEAR_KEYS = {"linear_energy", "linear_ratio", "response", "linear_select"}


@register_stage("lowrank", _CONV_KEYS | _LINEAR_KEYS)
def _build_lowrank(options: Mapping[str, Any]) -> StageFn:
    """Low-rank: convs to a conv-FLOP ``speedup`` by ``method`` (asymmetric default); Linear layers by SVD."""
    conv = None
    if "speedup" in options:
        conv = ZhangLowRank(speedup=float(options["speedup"]), method=str(options.get("method", "asymmetric")),
                            images=int(options.get("images", 3000)), positions=int(options.get("positions", 10)))
    elif set(options) & (_CONV_KEYS - {"speedup"}):
        raise ConfigError("method/images/positions/select need speedup")
    linear = None
    if "linear_energy" in options or "linear_ratio" in options:
        linear = SVDLinear(energy=options.get("linear_energy"), param_ratio=options.get("linear_ratio"))
    if conv is None and linear is None:
        raise ConfigError("give speedup (convs) and/or linear_energy / linear_ratio (Linear layers)")

    def run(ctx: RecipeContext) -> dict[str, Any]:
        calib = ctx.val_data if ctx.val_data is not None else ctx.train_data
        record: dict[str, Any] = {}
        if conv is not None:
            try:
                if find_bn_pairs(ctx.model):
                    record["folded_bn"] = [list(p) for p in fold_batchnorm_(ctx.model)]
            except UnsupportedLayerError:
                pass
            config = ZhangLowRank(**{**conv.__dict__, "seed": ctx.seed})
            record["conv"] = lowrank_conv_(ctx.model, config, calib, options.get("select", nn.Conv2d)).to_dict()
        if linear is not None:
            run_calib = None
            if options.get("response", False):
                images = calibration_images(calib, conv.images if conv else 3000, ctx.seed)
                device = next(ctx.model.parameters()).device

                def run_calib(model: nn.Module) -> None:
                    for chunk in torch.split(images, 256):
                        model(chunk.to(device))

            report = svd_linear_(ctx.model, linear, options.get("linear_select", nn.Linear), calib=run_calib)
            record["linear"] = {"ranks": report.ranks, "skipped": report.skipped,
                                "params_before": report.params_before, "params_after": report.params_after}
        return record

    return run
