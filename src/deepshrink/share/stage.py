"""The ``share`` (k-means weight sharing), ``finetune`` (centroid fine-tuning) and ``soft_share`` (soft weight-sharing)
recipe stages."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError
from ..core.stages import RecipeContext, StageFn
from ..train.stage import TRAIN_KEYS, check_distill, check_train, distill_loss, train_config
from .allocate import DEFAULT_SWEEP_BITS, bits_sweep, choose_bits
from .finetune import finetune_centroids
from .kmeans import INITS
from .precision import DTYPES, round_biases_, round_codebooks_
from .sharing import WeightSharing, share_weights_
from .soft import SoftSharing, soft_share_

__all__ = ["FINETUNE_KEYS", "SHARE_KEYS", "SOFT_SHARE_KEYS", "build_finetune", "build_share", "build_soft_share"]

_CONFIG_KEYS = ("bits", "init", "max_iter", "bias_bits", "groups")
_ROUND_KEYS = ("centroid_dtype", "bias_dtype")
_AUTO_KEYS = ("budget_bytes", "max_drop", "sweep_bits", "sweep_init")
SHARE_KEYS = frozenset({*_CONFIG_KEYS, *_ROUND_KEYS, *_AUTO_KEYS, "select", "exclude"})
FINETUNE_KEYS = TRAIN_KEYS | {"train_others", "distill", *_ROUND_KEYS}
_SOFT_KEYS = tuple(f.name for f in dataclasses.fields(SoftSharing))
SOFT_SHARE_KEYS = TRAIN_KEYS | {*_SOFT_KEYS, *_ROUND_KEYS, "distill", "select", "exclude"}


def _check_round(options: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key in _ROUND_KEYS:
        if key in options:
            if options[key] not in DTYPES:
                raise ConfigError(f"{key} must be one of {', '.join(DTYPES)}, got {options[key]!r}")
            out[key] = str(options[key])
    return out


def _round(ctx: RecipeContext, rounding: dict[str, str]) -> dict[str, Any]:
    """Round codebooks / plain biases as the stage's options say (so the file holds them in 2 bytes a value)."""
    record: dict[str, Any] = {}
    if "centroid_dtype" in rounding:
        record["codebooks_rounded"] = round_codebooks_(ctx.model, rounding["centroid_dtype"])
    if "bias_dtype" in rounding:
        record["biases_rounded"] = round_biases_(ctx.model, rounding["bias_dtype"])
    return record


def build_share(options: Mapping[str, Any]) -> StageFn:
    """Weight sharing: per-layer (or per channel-group) k-means into 2^bits shared values (defaults conv 8, fc 5;
    ``init: auto`` is linear when a ``finetune`` stage follows, the paper's pipeline, else the exact k-means).

    ``bits: auto`` chooses each layer's width from a bits sensitivity sweep on the validation split
    (:mod:`deepshrink.share.allocate`; widths ``sweep_bits``, clustering ``sweep_init``) under ``budget_bytes``
    (estimated bytes of the codes, codebooks and masks of the selected layers) and/or ``max_drop`` (per layer).
    ``centroid_dtype`` / ``bias_dtype``: round the codebooks / plain biases to float16 or bfloat16 afterwards."""
    auto = options.get("bits") == "auto"
    config_options = {k: options[k] for k in _CONFIG_KEYS if k in options and not (auto and k == "bits")}
    config = WeightSharing(**config_options)
    rounding = _check_round(options)
    if auto:
        if "budget_bytes" not in options and "max_drop" not in options:
            raise ConfigError("bits: auto needs budget_bytes and/or max_drop")
        choose_bits_args = {"budget_bytes": options.get("budget_bytes"), "max_drop": options.get("max_drop")}
        for key, value in choose_bits_args.items():
            if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool) and value >= 0):
                raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
        sweep_bits = options.get("sweep_bits", list(DEFAULT_SWEEP_BITS))
        if not isinstance(sweep_bits, list) or not sweep_bits or not all(
                isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16 for b in sweep_bits):
            raise ConfigError(f"sweep_bits must be a list of widths in 1..16, got {sweep_bits!r}")
        sweep_init = options.get("sweep_init", "optimal")
        if sweep_init not in INITS:
            raise ConfigError(f"sweep_init must be one of {', '.join(INITS)}, got {sweep_init!r}")
    elif any(k in options for k in _AUTO_KEYS):
        raise ConfigError(f"{', '.join(k for k in _AUTO_KEYS if k in options)} go with bits: auto")

    def run(ctx: RecipeContext) -> dict[str, Any]:
        init = ("linear" if "finetune" in ctx.upcoming else "optimal") if config.init == "auto" else config.init
        sharing = dataclasses.replace(config, seed=ctx.seed, init=init)
        record: dict[str, Any] = {}
        if auto:
            if ctx.val_data is None:
                raise ConfigError("bits: auto sweeps bits on the validation split; this run has none")
            sweep = bits_sweep(ctx.model, ctx.val_data, sweep_bits, options.get("select"),
                               exclude=options.get("exclude"), init=sweep_init, quiet=True)
            choice = choose_bits(sweep, **choose_bits_args)
            sharing = dataclasses.replace(sharing, bits=dict(choice.bits))
            record["auto"] = {"sweep": sweep.to_dict(), "choice": choice.to_dict()}
        report = share_weights_(ctx.model, sharing, select=options.get("select"), exclude=options.get("exclude"))
        return {"layers": report.to_dict(), **record, **_round(ctx, rounding)}

    return run


def build_finetune(options: Mapping[str, Any]) -> StageFn:
    """Centroid fine-tuning (eq. 3): codebooks (and biases unless ``train_others: false``), indices fixed;
    ``centroid_dtype`` / ``bias_dtype`` round the codebooks / plain biases after training."""
    check_train({k: v for k, v in options.items() if k in TRAIN_KEYS})
    distill = check_distill(options)
    rounding = _check_round(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        if ctx.train_data is None:
            raise ConfigError("the 'finetune' stage needs training data")
        config = train_config(options, ctx, default_lr=1e-4)
        history = finetune_centroids(ctx.model, ctx.train_data, config,
                                     train_others=bool(options.get("train_others", True)), quiet=ctx.quiet,
                                     loss_fn=distill_loss(ctx, distill))
        return {"epochs": config.epochs, "lr": config.lr, "train_loss": history.last.get("train_loss"),
                **_round(ctx, rounding)}

    return run


def build_soft_share(options: Mapping[str, Any]) -> StageFn:
    """Soft weight-sharing (Ullrich et al. 2017): retrain with a Gaussian-mixture prior on the selected layers
    (``components``, ``tau``, ``pi_zero``, ...; :class:`~deepshrink.share.soft.SoftSharing`), then prune the zero
    component's weights and share the others' means (Mask + codebook, as k-means sharing writes). Training options
    as ``retrain`` (default Adam, lr 5e-4, no weight decay); ``distill`` makes the data term distillation."""
    train_options = {k: v for k, v in options.items() if k in TRAIN_KEYS}
    train_options.setdefault("optimizer", "adam")
    train_options.setdefault("weight_decay", 0.0)
    check_train(train_options)
    distill = check_distill(options)
    rounding = _check_round(options)
    config = SoftSharing(**{k: options[k] for k in _SOFT_KEYS if k in options})

    def run(ctx: RecipeContext) -> dict[str, Any]:
        if ctx.train_data is None:
            raise ConfigError("the 'soft_share' stage needs training data")
        train = train_config(train_options, ctx, default_lr=5e-4)
        report = soft_share_(ctx.model, ctx.train_data, config, train, select=options.get("select"),
                             exclude=options.get("exclude"), quiet=ctx.quiet, loss_fn=distill_loss(ctx, distill))
        last = report.history[-1] if report.history else {}
        return {"layers": report.layers, "epochs": train.epochs, "lr": train.lr,
                "train_loss": last.get("train_loss"), **_round(ctx, rounding)}

    return run
