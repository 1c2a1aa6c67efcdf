"""YAML recipes: an ordered list of compression stages run on a trained model.

A recipe file::

    name: deep-compression-lenet300
    seed: 0
    stages:
      - prune: {sparsity: {fc1: 0.92, fc2: 0.91, fc3: 0.74}, rounds: 3, retrain: {epochs: 3}}
      - retrain: {epochs: 4}
      - share: {bits: {fc: 5}, init: linear}
      - finetune: {epochs: 3, lr: 1.0e-4}
      - encode: {entropy: huffman}

``prune``, ``retrain`` and ``finetune`` accept ``distill: {alpha: 0.5, temperature: 4}`` (beyond the paper):
their loss becomes knowledge distillation from the teacher, by default a frozen copy of the model as it was
when the recipe started (:class:`deepshrink.train.loop.DistillationLoss`).

Each stage name maps to a handler in :data:`STAGES` (``prune``, ``retrain``, ``share``, ``finetune``,
``encode`` here; other techniques add theirs with :func:`register_stage`). Parsing validates every stage and
key up front, so a typo fails in a second instead of after an hour of retraining. Handlers call the public
API only.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import yaml
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset

from .core.errors import ConfigError, DeepShrinkError
from .train import TrainConfig
from .train.loop import DistillationLoss

__all__ = [
    "STAGES",
    "Recipe",
    "RecipeContext",
    "Stage",
    "StageHandler",
    "frozen_copy",
    "load_recipe",
    "parse_recipe",
    "register_stage",
    "run_recipe",
]

StageFn = Callable[["RecipeContext"], dict[str, Any]]
"""A built stage: runs on the context, returns a JSON-able record of what it did."""


@dataclass(frozen=True)
class StageHandler:
    """How to build one stage kind: the keys it accepts and a builder that validates options up front."""

    name: str
    keys: frozenset[str]
    build: Callable[[Mapping[str, Any]], StageFn]
    doc: str = ""


STAGES: dict[str, StageHandler] = {}
"""Registry: stage name -> handler. Extend with :func:`register_stage`."""

PLUGINS = ("deepshrink.fixedpoint", "deepshrink.ternary", "deepshrink.lowrank")
"""Technique packages imported (when present) before parsing, so the stages they register are known."""


def register_stage(name: str, keys: set[str] | frozenset[str], doc: str = "") -> Callable[
        [Callable[[Mapping[str, Any]], StageFn]], Callable[[Mapping[str, Any]], StageFn]]:
    """Decorator: register ``build(options) -> stage`` as recipe stage ``name`` accepting option ``keys``."""

    def wrap(build: Callable[[Mapping[str, Any]], StageFn]) -> Callable[[Mapping[str, Any]], StageFn]:
        STAGES[name] = StageHandler(name, frozenset(keys), build, doc or (build.__doc__ or "").strip())
        return build

    return wrap


@dataclass(frozen=True)
class Stage:
    """One parsed stage: its name, options and the built callable."""

    name: str
    options: Mapping[str, Any]
    run: StageFn = field(repr=False, compare=False)


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: ordered stages plus name and seed."""

    name: str
    stages: tuple[Stage, ...]
    seed: int = 0
    description: str = ""


@dataclass
class RecipeContext:
    """What stages share while a recipe runs: the model, the data, the output path and the base lr.

    ``teacher`` is what ``distill`` stages learn from; :func:`run_recipe` sets it (a frozen copy of the model
    at the start) when a stage distills and none was given.
    """

    model: nn.Module
    train_data: Dataset
    val_data: Dataset | None = None
    out: Path | None = None
    base_lr: float = 0.05
    seed: int = 0
    quiet: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    encoded: Any = None
    teacher: nn.Module | None = None


def _load_plugins() -> None:
    for module in PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping (as read from YAML) and build its stages; ConfigError names the bad key."""
    _load_plugins()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a recipe is a mapping with a 'stages' list, got {type(data).__name__}")
    top = {"name", "seed", "description", "stages"}
    for key in data:
        if key not in top:
            raise ConfigError(f"{source}: unknown top-level key {key!r} (allowed: {', '.join(sorted(top))})")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list of {{stage: {{options}}}} entries")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{source}: 'seed' must be an integer, got {seed!r}")
    stages = []
    for position, entry in enumerate(raw_stages, 1):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise ConfigError(f"{source}: stage {position} must be one 'name: {{options}}' entry, got {entry!r}")
        ((name, options),) = entry.items()
        options = {} if options is None else options
        handler = STAGES.get(name)
        if handler is None:
            raise ConfigError(f"{source}: unknown stage {name!r} at position {position} "
                              f"(allowed: {', '.join(sorted(STAGES))})")
        if not isinstance(options, Mapping):
            raise ConfigError(f"{source}: options of stage {position} ({name}) must be a mapping, got {options!r}")
        for key in options:
            if key not in handler.keys:
                raise ConfigError(f"{source}: unknown key {key!r} in stage {position} ({name}) "
                                  f"(allowed: {', '.join(sorted(handler.keys))})")
        try:
            run = handler.build(dict(options))
        except ConfigError as exc:
            raise ConfigError(f"{source}: stage {position} ({name}): {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: stage {position} ({name}): invalid options {dict(options)!r}: {exc}") from exc
        stages.append(Stage(name, dict(options), run))
    return Recipe(str(data.get("name", source)), tuple(stages), seed, str(data.get("description", "")))


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a YAML recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_recipe(data, str(path))


def run_recipe(recipe: Recipe, context: RecipeContext) -> list[dict[str, Any]]:
    """Run every stage of ``recipe`` on ``context.model`` in order; one record per stage (with val accuracy)."""
    from .train import evaluate

    if context.teacher is None and any("distill" in stage.options for stage in recipe.stages):
        context.teacher = frozen_copy(context.model)
    records = []
    for position, stage in enumerate(recipe.stages, 1):
        started = time.perf_counter()
        if not context.quiet:
            print(f"[{position}/{len(recipe.stages)}] {stage.name} {dict(stage.options) or ''}".rstrip())
        try:
            record = stage.run(context)
        except DeepShrinkError as exc:
            raise type(exc)(f"recipe {recipe.name!r}, stage {position} ({stage.name}): {exc}") from exc
        record = {"stage": stage.name, **record, "seconds": round(time.perf_counter() - started, 1)}
        if context.val_data is not None:
            record["val_accuracy"] = evaluate(context.model, context.val_data)["accuracy"]
        if not context.quiet and "val_accuracy" in record:
            print(f"    val top-1 {record['val_accuracy']:.4f} ({record['seconds']}s)")
        records.append(record)
    return records


def frozen_copy(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` computing what it computes now (compression state folded in), frozen, eval mode.

    Parametrized layers become ordinary ones holding their effective tensors: a deep copy alone would share
    torch's parametrized classes with the original, which later parametrizations of the original would alter.
    """
    teacher = copy.deepcopy(model)
    for module in teacher.modules():
        if parametrize.is_parametrized(module):
            names = list(cast(nn.ModuleDict, module.parametrizations).keys())
            values = {name: getattr(module, name).detach().clone() for name in names}
            module.__class__ = module.__class__.__bases__[0]  # the class parametrize derived its class from
            del module._modules["parametrizations"]
            for name, value in values.items():
                module._parameters[name] = nn.Parameter(value)
    return teacher.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------- stages

def _check_distill(options: Mapping[str, Any]) -> dict[str, float] | None:
    """Validate a stage's ``distill: {alpha, temperature}`` option (None when absent)."""
    spec = options.get("distill")
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or set(spec) - {"alpha", "temperature"}:
        raise ConfigError(f"distill must be a mapping with keys alpha and/or temperature, got {spec!r}")
    values = {"alpha": float(spec.get("alpha", 0.5)), "temperature": float(spec.get("temperature", 4.0))}
    if not 0.0 <= values["alpha"] <= 1.0 or not values["temperature"] > 0:
        raise ConfigError(f"distill needs 0 <= alpha <= 1 and temperature > 0, got {dict(spec)!r}")
    return values


def _loss_fn(ctx: RecipeContext, distill: dict[str, float] | None) -> DistillationLoss | None:
    if distill is None:
        return None
    if ctx.teacher is None:
        ctx.teacher = frozen_copy(ctx.model)
    return DistillationLoss(ctx.teacher, **distill)


_TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


def _train_config(options: Mapping[str, Any], context: RecipeContext, default_lr: float | None = None) -> TrainConfig:
    """A TrainConfig from recipe options; lr defaults to ``default_lr`` (else 1/10 of the baseline lr)."""
    values = {k: options[k] for k in _TRAIN_KEYS if k in options}
    values.setdefault("lr", default_lr if default_lr is not None else context.base_lr / 10)
    values.setdefault("seed", context.seed)
    for key in ("lr", "momentum", "weight_decay"):
        if key in values:
            values[key] = float(values[key])
    return TrainConfig(**values)


def _check_train(options: Mapping[str, Any]) -> None:
    """Validate training options now (lr placeholder when omitted) so typos fail before any work."""
    values = {k: options[k] for k in _TRAIN_KEYS if k in options}
    values.setdefault("lr", 1.0)
    for key in ("lr", "momentum", "weight_decay"):
        if key in values:
            values[key] = float(values[key])
    TrainConfig(**values)


def _prune_api() -> Any:
    try:
        return importlib.import_module("deepshrink.prune")
    except ModuleNotFoundError as exc:
        raise ConfigError("the 'prune' stage needs deepshrink.prune, which is not installed") from exc


@register_stage("prune", {"method", "quality", "sparsity", "scope", "select", "exclude", "rounds", "power",
                          "retrain", "final_retrain", "distill"})
def _build_prune(options: Mapping[str, Any]) -> StageFn:
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
    unknown = set(retrain) - _TRAIN_KEYS
    if unknown:
        raise ConfigError(f"unknown retrain key(s) {sorted(unknown)} (allowed: {', '.join(sorted(_TRAIN_KEYS))})")
    _check_train(retrain)
    final = options.get("final_retrain")
    if final is not None:
        if not isinstance(final, Mapping):
            raise ConfigError(f"final_retrain must be a mapping of training options, got {final!r}")
        unknown = set(final) - _TRAIN_KEYS
        if unknown:
            raise ConfigError(f"unknown final_retrain key(s) {sorted(unknown)} "
                              f"(allowed: {', '.join(sorted(_TRAIN_KEYS))})")
        final = {**retrain, **final}
        _check_train(final)
    if "quality" in options and rounds > 1:
        raise ConfigError("quality= prunes by threshold; use sparsity= with rounds > 1")
    scope = str(options.get("scope", "layer"))
    quality, sparsity = options.get("quality"), options.get("sparsity")
    prune = _prune_api()
    prune.MagnitudePrune(quality=quality, sparsity=sparsity, scope=scope)  # validates now
    power = float(options.get("power", 1.0))
    distill = _check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        select, exclude = options.get("select"), options.get("exclude")
        if rounds == 1 and not retrain and final is None:
            report = prune.prune_(ctx.model, prune.MagnitudePrune(quality=quality, sparsity=sparsity, scope=scope),
                                  select, exclude=exclude)
            return {"sparsity": round(report.sparsity, 6), "layers": report.to_dict()["layers"]}
        if quality is not None:
            schedule = [prune.MagnitudePrune(quality=quality, scope=scope)]
        else:
            schedule = prune.rising_schedule(sparsity, rounds, "magnitude", scope=scope, power=power)
        records = prune.iterative_prune_(ctx.model, ctx.train_data, ctx.val_data, schedule,
                                         _train_config(retrain, ctx), select=select, quiet=ctx.quiet,
                                         final_retrain=_train_config(final, ctx) if final is not None else None,
                                         loss_fn=_loss_fn(ctx, distill))
        last = records[-1]["prune"]
        return {"sparsity": last["sparsity"], "layers": last["layers"], "rounds": len(records)}

    return run


@register_stage("retrain", _TRAIN_KEYS | {"distill"})
def _build_retrain(options: Mapping[str, Any]) -> StageFn:
    """Retrain the (pruned) model with masks kept; lr defaults to 1/10 of the baseline's (the paper's rule)."""
    _check_train(options)
    distill = _check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        from .train import fit

        config = _train_config(options, ctx)
        history = fit(ctx.model, ctx.train_data, config, quiet=ctx.quiet, loss_fn=_loss_fn(ctx, distill))
        return {"epochs": config.epochs, "lr": config.lr, "train_loss": history.last.get("train_loss")}

    return run


@register_stage("share", {"bits", "init", "max_iter", "bias_bits", "select"})
def _build_share(options: Mapping[str, Any]) -> StageFn:
    """Weight sharing: per-layer k-means into 2^bits shared values (defaults conv 8, fc 5; linear init)."""
    from .share import WeightSharing, share_weights_

    config = WeightSharing(**{k: options[k] for k in ("bits", "init", "max_iter", "bias_bits") if k in options})

    def run(ctx: RecipeContext) -> dict[str, Any]:
        sharing = dataclasses.replace(config, seed=ctx.seed)
        report = share_weights_(ctx.model, sharing, select=options.get("select"))
        return {"layers": report.to_dict()}

    return run


@register_stage("finetune", _TRAIN_KEYS | {"train_others", "distill"})
def _build_finetune(options: Mapping[str, Any]) -> StageFn:
    """Centroid fine-tuning (eq. 3): codebooks (and biases unless ``train_others: false``), indices fixed."""
    _check_train(options)
    distill = _check_distill(options)

    def run(ctx: RecipeContext) -> dict[str, Any]:
        from .share import finetune_centroids

        config = _train_config(options, ctx, default_lr=1e-4)
        history = finetune_centroids(ctx.model, ctx.train_data, config,
                                     train_others=bool(options.get("train_others", True)), quiet=ctx.quiet,
                                     loss_fn=_loss_fn(ctx, distill))
        return {"epochs": config.epochs, "lr": config.lr, "train_loss": history.last.get("train_loss")}

    return run


@register_stage("encode", {"entropy", "index_bits", "index_coding"})
def _build_encode(options: Mapping[str, Any]) -> StageFn:
    """Write the ``.dsz`` file: relative sparse index (or, with ``index_coding: auto``, the context-modelled mask
    where smaller) + codebook indices, Huffman or ANS coded; ``index_bits: auto`` picks each layer's index width."""
    entropy = options.get("entropy", "huffman")
    if entropy not in ("huffman", "ans", "raw"):
        raise ConfigError(f"entropy must be one of huffman, ans, raw; got {entropy!r}")
    index_bits = options.get("index_bits")
    if index_bits is not None and index_bits != "auto" and (
            not isinstance(index_bits, Mapping) or set(index_bits) - {"conv", "fc"}):
        raise ConfigError(f"index_bits must be 'auto' or a mapping with keys conv and/or fc, got {index_bits!r}")
    index_coding = options.get("index_coding", "relative")
    if index_coding not in ("relative", "auto"):
        raise ConfigError(f"index_coding must be relative (the paper's index) or auto (per layer the smaller of it "
                          f"and the context-modelled mask), got {index_coding!r}")

    def run(ctx: RecipeContext) -> dict[str, Any]:
        if ctx.out is None:
            raise ConfigError("the 'encode' stage needs an output path (--out FILE.dsz)")
        codec = importlib.import_module("deepshrink.codec")
        kwargs: dict[str, Any] = {"entropy": entropy, "index_coding": index_coding}
        if "index_bits" in options:
            kwargs["index_bits"] = options["index_bits"]
        if ctx.meta and "meta" in inspect.signature(codec.save_compressed).parameters:
            kwargs["meta"] = dict(ctx.meta)
        ctx.encoded = codec.save_compressed(ctx.model, ctx.out, **kwargs)
        size = ctx.out.stat().st_size
        return {"file": str(ctx.out), "bytes": size}

    return run
