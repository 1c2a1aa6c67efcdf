"""The ``share`` (k-means weight sharing) and ``finetune`` (centroid fine-tuning) recipe stages."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn
from ..train.stage import TRAIN_KEYS, check_distill, check_train, distill_loss, train_config
from .finetune import finetune_centroids
from .sharing import WeightSharing, share_weights_

__all__ = ["FINETUNE_KEYS", "SHARE_KEYS", "build_finetune", "build_share"]

_CONFIG_KEYS = ("bits", "init", "max_iter", "bias_bits", "groups")
SHARE_KEYS = frozenset({*_CONFIG_KEYS, "select", "exclude"})
FINETUNE_KEYS = TRAIN_KEYS | {"train_others", "distill"}


def build_share(options: Mapping[str, Any]) -> StageFn:
    """Weight sharing: per-layer (or per channel-group) k-means into 2^bits shared values (defaults conv 8, fc 5;
    ``init: auto`` is linear when a ``finetune`` stage follows, the paper's pipeline, else the exact k-means)."""
    config = WeightSharing(**{k: options[k] for k in _CONFIG_KEYS if k in options})

    def run(ctx: RecipeContext) -> dict[str, Any]:
        init = ("linear" if "finetune" in ctx.upcoming else "optimal") if config.init == "auto" else config.init
        sharing = dataclasses.replace(config, seed=ctx.seed, init=init)
        report = share_weights_(ctx.model, sharing, select=options.get("select"), exclude=options.get("exclude"))
        return {"layers": report.to_dict()}

    return run


def build_finetune(options: Mapping[str, Any]) -> StageFn:
    """Centroid fine-tuning (eq. 3): codebooks (and biases unless ``train_others: false``), indices fixed."""
    check_train({k: v for k, v in options.items() if k in TRAIN_KEYS})
    distill = check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        if ctx.train_data is None:
            raise ConfigError("the 'finetune' stage needs training data")
        config = train_config(options, ctx, default_lr=1e-4)
        history = finetune_centroids(ctx.model, ctx.train_data, config,
                                     train_others=bool(options.get("train_others", True)), quiet=ctx.quiet,
                                     loss_fn=distill_loss(ctx, distill))
        return {"epochs": config.epochs, "lr": config.lr, "train_loss": history.last.get("train_loss")}

    return run
