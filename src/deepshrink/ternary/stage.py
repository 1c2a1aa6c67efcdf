"""The ``ternarize`` recipe stage: TTQ (or TWN) on the selected layers, then training of codes and scales."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn
from ..train import fit
from ..train.stage import TRAIN_KEYS, check_distill, check_train, distill_loss, train_config
from .api import ternarize_, ternary_layers, ternary_param_groups
from .ttq import TTQ
from .twn import TWN

__all__ = ["TERNARIZE_KEYS", "build_ternarize"]

TERNARIZE_KEYS = TRAIN_KEYS | {"method", "t", "init", "factor", "keep_first_last", "select", "exclude", "distill"}


def build_ternarize(options: Mapping[str, Any]) -> StageFn:
    """Ternarize (``method: ttq`` with threshold ``t``, or ``twn``) and train ``epochs`` (Adam, lr 1e-4 by default:
    per-parameter steps keep the Wp/Wn updates stable in layers without BatchNorm)."""
    method = options.get("method", "ttq")
    keep = bool(options.get("keep_first_last", True))
    if method == "ttq":
        config: TTQ | TWN = TTQ(t=float(options.get("t", 0.05)), keep_first_last=keep, init=str(options.get("init", "mean")))
    elif method == "twn":
        config = TWN(factor=float(options.get("factor", 0.7)), keep_first_last=keep)
    else:
        raise ConfigError(f"method must be ttq or twn, got {method!r}")
    training = {"optimizer": "adam", "lr": 1e-4, **{k: v for k, v in options.items() if k in TRAIN_KEYS}}
    check_train(training)
    distill = check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        layers = ternarize_(ctx.model, config, options.get("select"), exclude=options.get("exclude"))
        record: dict[str, Any] = {"method": method, "layers": layers}
        train = train_config(training, ctx)
        if train.epochs:
            if ctx.train_data is None:
                raise ConfigError("training ternary weights needs training data (or epochs: 0)")
            history = fit(ctx.model, ctx.train_data, train, params=ternary_param_groups(ctx.model), quiet=ctx.quiet,
                          loss_fn=distill_loss(ctx, distill))
            record.update(epochs=train.epochs, lr=train.lr, train_loss=history.last.get("train_loss"))
        record["scales"] = [row.to_dict() for row in ternary_layers(ctx.model)]
        return record

    return run
