"""Training options shared by every recipe stage that trains, and the ``retrain`` stage itself.

Stages that train accept the :class:`TrainConfig` keys (``epochs``, ``lr``, ``optimizer``, ...) and
``distill: {alpha, temperature}``: their loss then becomes knowledge distillation from the recipe's teacher (by
default a frozen copy of the model as it was when the recipe started). Options are validated when the recipe is
parsed, so a typo fails in a second instead of after an hour of retraining.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from torch import nn

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn, register_stage
from ..core.state import plain_copy
from ..data import calibration_batches
from .distill import DistillationLoss
from .loop import TrainConfig, fit
from .recovery import bias_correction_, recalibrate_batchnorm_

__all__ = ["TRAIN_KEYS", "check_distill", "check_train", "distill_loss", "frozen_copy", "train_config"]

TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


def frozen_copy(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` computing what it computes now (compression state folded in), frozen, eval mode."""
    return plain_copy(model).eval().requires_grad_(False)


def check_distill(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """Validate a stage's ``distill: {alpha, temperature, target, features, feature_weight}`` option (None when
    absent)."""
    spec = options.get("distill")
    if spec is None:
        return None
    keys = {"alpha", "temperature", "target", "features", "feature_weight"}
    if not isinstance(spec, Mapping) or set(spec) - keys:
        raise ConfigError(f"distill must be a mapping with keys {', '.join(sorted(keys))}, got {spec!r}")
    alpha, temperature = float(spec.get("alpha", 0.5)), float(spec.get("temperature", 4.0))
    target = str(spec.get("target", "logits"))
    if not 0.0 <= alpha <= 1.0 or not temperature > 0 or target not in ("logits", "outputs"):
        raise ConfigError(f"distill needs 0 <= alpha <= 1, temperature > 0 and target logits|outputs, got {dict(spec)!r}")
    features = spec.get("features", [])
    if not isinstance(features, list | tuple) or not all(isinstance(f, str) for f in features):
        raise ConfigError(f"distill features must be a list of module names, got {features!r}")
    feature_weight = float(spec.get("feature_weight", 1.0))
    if not feature_weight >= 0:
        raise ConfigError(f"distill feature_weight must be >= 0, got {feature_weight}")
    return {"alpha": alpha, "temperature": temperature, "target": target, "features": tuple(features),
            "feature_weight": feature_weight}


def distill_loss(ctx: RecipeContext, distill: dict[str, Any] | None) -> DistillationLoss | None:
    """The distillation loss from the recipe's teacher (made on first use), or None without ``distill``."""
    if distill is None:
        return None
    if ctx.teacher is None:
        ctx.teacher = frozen_copy(ctx.model)
    return DistillationLoss(ctx.teacher, **distill)


def train_config(options: Mapping[str, Any], context: RecipeContext, default_lr: float | None = None) -> TrainConfig:
    """A TrainConfig from stage options; lr defaults to ``default_lr`` (else 1/10 of the baseline lr)."""
    values = {k: options[k] for k in TRAIN_KEYS if k in options}
    values.setdefault("lr", default_lr if default_lr is not None else context.base_lr / 10)
    values.setdefault("seed", context.seed)
    for key in ("lr", "momentum", "weight_decay"):
        if key in values:
            values[key] = float(values[key])
    return TrainConfig(**values)


def check_train(options: Mapping[str, Any], what: str = "training") -> None:
    """Validate training options now (lr placeholder when omitted); unknown keys are named."""
    unknown = set(options) - TRAIN_KEYS
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {sorted(unknown)} (allowed: {', '.join(sorted(TRAIN_KEYS))})")
    values = dict(options)
    values.setdefault("lr", 1.0)
    for key in ("lr", "momentum", "weight_decay"):
        if key in values:
            values[key] = float(values[key])
    TrainConfig(**values)


def _build_retrain(options: Mapping[str, Any]) -> StageFn:
    """Retrain the (pruned) model with masks kept; lr defaults to 1/10 of the baseline's (the paper's rule)."""
    check_train({k: v for k, v in options.items() if k != "distill"})
    distill = check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        if ctx.train_data is None:
            raise ConfigError("the 'retrain' stage needs training data")
        config = train_config(options, ctx)
        history = fit(ctx.model, ctx.train_data, config, quiet=ctx.quiet, loss_fn=distill_loss(ctx, distill))
        return {"epochs": config.epochs, "lr": config.lr, "train_loss": history.last.get("train_loss")}

    return run


register_stage("retrain", TRAIN_KEYS | {"distill"}, _build_retrain)


def _build_recalibrate_bn(options: Mapping[str, Any]) -> StageFn:
    """Re-estimate BatchNorm statistics on the calibration data (``batches`` of ``batch_size``): a cheap recovery
    after one-shot pruning or low-rank."""
    batches, batch_size = int(options.get("batches", 50)), int(options.get("batch_size", 64))
    if batches < 1 or batch_size < 1:
        raise ConfigError("batches and batch_size must be >= 1")

    def run(ctx: RecipeContext) -> dict[str, Any]:
        recalibrate_batchnorm_(ctx.model, ctx.calibration, batches=batches, batch_size=batch_size)
        return {"batches": batches, "batch_size": batch_size}

    return run


def _build_bias_correct(options: Mapping[str, Any]) -> StageFn:
    """Fold each layer's mean output shift against the model the recipe started from into its bias
    (``samples`` calibration samples; ``select`` the layers)."""
    samples = int(options.get("samples", 256))
    if samples < 1:
        raise ConfigError("samples must be >= 1")

    def run(ctx: RecipeContext) -> dict[str, Any]:
        if ctx.teacher is None:
            raise ConfigError("bias_correct compares with the model the recipe started from: run_recipe keeps it "
                              "when a stage needs it (a recipe context without a teacher cannot correct)")
        removed = bias_correction_(ctx.model, ctx.teacher, calibration_batches(ctx.calibration, samples),
                                   options.get("select"))
        return {"layers": len(removed), "mean_shift_removed": removed}

    return run


register_stage("recalibrate_bn", {"batches", "batch_size"}, _build_recalibrate_bn)
register_stage("bias_correct", {"samples", "select"}, _build_bias_correct)
