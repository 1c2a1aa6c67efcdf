"""The ``prune`` recipe stage: magnitude pruning, one shot or ``rounds`` of prune -> retrain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn
from ..train.stage import check_distill, check_train, distill_loss, train_config
from .base import PerLayer, prune_
from .magnitude import MagnitudePrune
from .schedule import PRUNE_METHODS, iterative_prune_, method_config, rising_schedule

__all__ = ["PRUNE_KEYS", "build_prune"]

_METHOD_KEYS = ("pattern", "block_size", "damp", "max_samples", "hessian")
PRUNE_KEYS = frozenset({"method", "quality", "sparsity", "scope", "select", "exclude", "rounds", "power", "retrain",
                        "final_retrain", "distill", *_METHOD_KEYS})


def build_prune(options: Mapping[str, Any]) -> StageFn:
    """Pruning (``method``: magnitude, the default, Han et al. 2015; obs, layer-wise OBS from the calibration data,
    with ``pattern``; obd; random): one shot, or ``rounds`` of prune -> retrain with rising sparsity.

    ``power`` shapes the schedule (``final * (1 - (1 - r/R)^power)``; 3 = big steps first) and
    ``final_retrain`` (training options merged over ``retrain``) replaces the last round's retraining;
    ``distill`` retrains every round with knowledge distillation.
    """
    method = options.get("method", "magnitude")
    if method not in PRUNE_METHODS:
        raise ConfigError(f"prune method {method!r} is unknown (allowed: {', '.join(PRUNE_METHODS)})")
    extra = {k: options[k] for k in _METHOD_KEYS if k in options}
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
    if "quality" in options and (rounds > 1 or method != "magnitude"):
        raise ConfigError("quality= is Han's magnitude threshold, one round; use sparsity= otherwise")
    scope = str(options.get("scope", "layer"))
    quality, sparsity = options.get("quality"), options.get("sparsity")
    if method == "magnitude":
        MagnitudePrune(quality=quality, sparsity=sparsity, scope=scope)  # validates now
    else:
        method_config(method, sparsity if sparsity is not None else 0.5, scope, **extra)
    power = float(options.get("power", 1.0))
    distill = check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        select, exclude = options.get("select"), options.get("exclude")
        if rounds == 1 and not retrain and final is None:
            config = (MagnitudePrune(quality=quality, sparsity=sparsity, scope=scope) if method == "magnitude"
                      else method_config(method, cast(PerLayer, sparsity), scope, **extra))
            report = prune_(ctx.model, config, select, exclude=exclude, data=ctx.calibration)
            return {"sparsity": round(report.sparsity, 6), "layers": report.to_dict()["layers"]}
        if ctx.train_data is None:
            raise ConfigError("pruning with retraining needs training data")
        schedule = ([MagnitudePrune(quality=quality, scope=scope)] if quality is not None
                    else rising_schedule(cast(PerLayer, sparsity), rounds, method, scope=scope, power=power, **extra))
        records = iterative_prune_(ctx.model, ctx.train_data, ctx.val_data, schedule, train_config(retrain, ctx),
                                   select=select, quiet=ctx.quiet, prune_data=ctx.calibration,
                                   final_retrain=train_config(final, ctx) if final is not None else None,
                                   loss_fn=distill_loss(ctx, distill))
        last = records[-1]["prune"]
        return {"sparsity": last["sparsity"], "layers": last["layers"], "rounds": len(records)}

    return run

