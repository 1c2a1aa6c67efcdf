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

Each stage name maps to a handler in :data:`~deepshrink.core.stages.STAGES`, registered next to the code it runs:
``prune`` (:mod:`deepshrink.prune.stage`), ``share`` and ``finetune`` (:mod:`deepshrink.share.stage`), ``quantize``
(:mod:`deepshrink.fixedpoint.stage`), ``ternarize`` (:mod:`deepshrink.ternary.stage`), ``lowrank``
(:mod:`deepshrink.lowrank.stage`), ``retrain`` (:mod:`deepshrink.train.stage`) and ``encode``
(:mod:`deepshrink.codec.stage`). This module is only the engine: it parses, validates every stage and key up
front (a typo fails in a second instead of after an hour of retraining) and runs the stages in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .codec import stage as _encode_stage  # noqa: F401  (registers the encode stage)
from .core.errors import ConfigError, DeepShrinkError
from .core.plugins import load_technique_plugins
from .core.stages import STAGES, RecipeContext, StageFn, StageHandler, register_stage
from .train import stage as _train_stage  # noqa: F401  (registers the retrain stage)
from .train.stage import frozen_copy

__all__ = [
    "STAGES",
    "Recipe",
    "RecipeContext",
    "Stage",
    "StageHandler",
    "compress_checkpoint",
    "frozen_copy",
    "load_recipe",
    "parse_recipe",
    "register_stage",
    "run_recipe",
]

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


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping (as read from YAML) and build its stages; ConfigError names the bad key."""
    load_technique_plugins()
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


def compress_checkpoint(
    checkpoint: Path,
    recipe_path: Path,
    out: Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Load ``checkpoint``, run the recipe, write ``out``; returns a JSON-able report (stages, sizes, ratio).

    Choices inside the recipe see only the validation split; the test split is never touched here.
    """
    from .data import load_dataset
    from .train import load_checkpoint

    recipe = load_recipe(recipe_path)
    if recipe.stages[-1].name != "encode":
        raise ConfigError(f"{recipe_path}: the last stage must be 'encode' to write {out} "
                          f"(stages: {', '.join(s.name for s in recipe.stages)})")
    model, meta = load_checkpoint(checkpoint)
    name = dataset or meta.get("dataset")
    if not name:
        raise ConfigError(f"{checkpoint}: no dataset given and the checkpoint records none")
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    base_lr = float(meta.get("config", {}).get("lr", 0.05))
    context = RecipeContext(
        model=model,
        train_data=load_dataset(name, "train", data_dir, limit=limit),
        val_data=load_dataset(name, "val", data_dir),
        out=out,
        base_lr=base_lr,
        seed=recipe.seed if seed is None else seed,
        quiet=quiet,
        meta={"dataset": name, "recipe": recipe.name, "source": str(checkpoint)},
    )
    started = time.perf_counter()
    stages = run_recipe(recipe, context)
    size = out.stat().st_size
    return {
        "checkpoint": str(checkpoint),
        "recipe": recipe.name,
        "dataset": name,
        "out": str(out),
        "bytes": size,
        "fp32_bytes": fp32_bytes,
        "ratio": round(fp32_bytes / size, 2),
        "seconds": round(time.perf_counter() - started, 1),
        "baseline_test_accuracy": meta.get("test_accuracy"),
        "stages": stages,
    }
