"""The ``prune`` recipe stage: magnitude pruning, one shot or ``rounds`` of prune -> retrain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn
from ..train.stage import check_distill, check_train, distill_loss, train_config
from .base import PerLayer, prune_
from .magnitude import MagnitudePrune
from .schedule import iterative_prune_, rising_schedule

__all__ = ["PRUNE_KEYS", "build_prune"]

PRUNE_KEYS = frozenset({"method", "quality", "sparsity", "scope", "select", "exclude", "rounds", "power", "retrain",
                        "final_retrain", "distill"})


def build_prune(options: Mapping[str, Any]) -> StageFn:
    """Magnitude pruning (Han et al. 2015): one shot, or ``rounds`` of prune -> retrain with rising sparsity.

    ``power`` shapes the schedule (``final * (1 - (1 - r/R)^power)``; 3 = big steps first) and
    ``final_retrain`` (training options merged over ``retrain``) replaces the last round's retraining;
    ``distill`` retrains every round with knowledge distillation.
    """
    method = options.get("method", "magnitude")
    if method != "magnitude":
        raise ConfigError(f"prune method {method!r} is not available in recipes (allowed: magnitude)")
    rounds = int(options.get("rounds", 1))
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    retrain = dict(options.get("retrain") or {})
    check_train(retrain, "retrain")
    final = options.get("final_retrain")
    if final is not None:
        if not isinstance(final, Mapping):
            raise ConfigError(f"final_retrain must be a mapping of training options, got {final!r}")
        check_train(dict(final), "final_retrain")
        final = {**retrain, **final}
    if "quality" in options and rounds > 1:
        raise ConfigError("quality= prunes by threshold; use sparsity= with rounds > 1")
    scope = str(options.get("scope", "layer"))
    quality, sparsity = options.get("quality"), options.get("sparsity")
    MagnitudePrune(quality=quality, sparsity=sparsity, scope=scope)  # validates now
    power = float(options.get("power", 1.0))
    distill = check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        select, exclude = options.get("select"), options.get("exclude")
        if rounds == 1 and not retrain and final is None:
            report = prune_(ctx.model, MagnitudePrune(quality=quality, sparsity=sparsity, scope=scope), select,
                            exclude=exclude)
            return {"sparsity": round(report.sparsity, 6), "layers": report.to_dict()["layers"]}
        if ctx.train_data is None:
            raise ConfigError("pruning with retraining needs training data")
        schedule = ([MagnitudePrune(quality=quality, scope=scope)] if quality is not None
                    else rising_schedule(cast(PerLayer, sparsity), rounds, "magnitude", scope=scope, power=power))
        records = iterative_prune_(ctx.model, ctx.train_data, ctx.val_data, schedule, train_config(retrain, ctx),
                                   select=select, quiet=ctx.quiet,
                                   final_retrain=train_config(final, ctx) if final is not None else None,
                                   loss_fn=distill_loss(ctx, distill))
        last = records[-1]["prune"]
        return {"sparsity": last["sparsity"], "layers": last["layers"], "rounds": len(records)}

    return run

