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
when the recipe started (:class:`deepshrink.train.DistillationLoss`); ``features: [block1, block2]`` also matches
those modules' outputs (``feature_weight``, default 1).

Each stage name maps to a handler in :data:`~deepshrink.core.stages.STAGES`, registered next to the code it runs:
``prune`` (:mod:`deepshrink.prune.stage`), ``share`` and ``finetune`` (:mod:`deepshrink.share.stage`), ``quantize``
(:mod:`deepshrink.fixedpoint.stage`), ``ternarize`` (:mod:`deepshrink.ternary.stage`), ``lowrank``
(:mod:`deepshrink.lowrank.stage`), ``retrain`` (:mod:`deepshrink.train.stage`) and ``encode``
(:mod:`deepshrink.codec.stage`). This module is only the engine: it parses, validates every stage and key up
front (a typo fails in a second instead of after an hour of retraining) and runs the stages in order.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .codec import stage as _encode_stage  # noqa: F401  (registers the encode stage)
from .core.errors import ConfigError, DeepShrinkError
from .core.plugins import load_technique_plugins
from .core.stages import STAGES, RecipeContext, StageFn, StageHandler, register_stage
from .train import stage as _train_stage  # noqa: F401  (registers the retrain stage)
from .train.resume import RunDir, digest, model_digest
from .train.stage import frozen_copy

__all__ = [
    "STAGES",
    "Recipe",
    "RecipeContext",
    "Stage",
    "StageHandler",
    "compress_checkpoint",
    "frozen_copy",
    "load_compression_recipe",
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


def run_recipe(recipe: Recipe, context: RecipeContext, run: RunDir | None = None) -> list[dict[str, Any]]:
    """Run every stage of ``recipe`` on ``context.model`` in order; one record per stage (with val accuracy).

    With ``run`` (a :class:`~deepshrink.train.resume.RunDir` opened for this recipe), the model is checkpointed
    after every stage but the last and every training epoch, and a stopped run continues from its last
    checkpoint: ``context.model`` must then be the model the run started from (fresh, as loaded).
    """
    from .train import evaluate

    if context.teacher is None and any("distill" in stage.options or stage.name == "bias_correct"
                                       for stage in recipe.stages):
        context.teacher = frozen_copy(context.model)  # the starting model, also when resuming
    records: list[dict[str, Any]] = []
    done = 0
    if run is not None:
        done, records = run.restore_stage(context.model)
        if done and not context.quiet:
            names = ", ".join(s.name for s in recipe.stages[:done])
            print(f"resuming from {run.path}: {done} of {len(recipe.stages)} stages done ({names})")
    with run.active() if run is not None else contextlib.nullcontext():
        for position, stage in enumerate(recipe.stages[done:], done + 1):
            context.upcoming = tuple(s.name for s in recipe.stages[position:])
            if run is not None:
                run.begin_stage(position, len(recipe.stages), stage.name)
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
            if run is not None and position < len(recipe.stages):
                run.save_stage(position, context.model, records)
    return records


def load_compression_recipe(path: Path) -> Recipe:
    """A recipe that writes a file: validated, its last stage ``encode``."""
    recipe = load_recipe(path)
    if recipe.stages[-1].name != "encode":
        raise ConfigError(f"{path}: the last stage must be 'encode' to write the compressed file "
                          f"(stages: {', '.join(s.name for s in recipe.stages)})")
    return recipe


def compress_checkpoint(
    checkpoint: Path | None,
    recipe_path: Path,
    out: Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    quiet: bool = False,
    *,
    model: nn.Module | None = None,
    meta: dict[str, Any] | None = None,
    data_options: Any = None,
    workdir: Path | None = None,
    resume: str = "auto",
    command: str = "",
) -> dict[str, Any]:
    """Run the recipe on a checkpoint (or on ``model`` with its ``meta``), write ``out``; returns a JSON-able report
    (stages, sizes, ratio).

    Choices inside the recipe see only the training and validation splits; the test split is never touched here.
    On data without labels, training stages need ``distill`` (their loss then needs no labels).
    With ``workdir`` the run is resumable (:mod:`deepshrink.train.resume`): checkpoints after every stage and
    epoch, fingerprinted by the recipe, the starting model and the options; ``resume`` is ``auto`` (continue a
    stopped run of the same fingerprint), ``resume`` (insist) or ``restart``; ``command`` is recorded in the run
    directory. The directory is removed when the run completes.
    """
    from dataclasses import asdict, is_dataclass

    from .data import DataOptions, open_data
    from .train import load_checkpoint

    recipe = load_compression_recipe(recipe_path)
    if model is None:
        if checkpoint is None:
            raise ConfigError("give a checkpoint or a model to compress")
        model, meta = load_checkpoint(checkpoint)
    meta = dict(meta or {})
    name = dataset or meta.get("dataset")
    if not name:
        raise ConfigError(f"{checkpoint or 'the model'}: no dataset given and the model records none")
    options = data_options or DataOptions(data_dir=data_dir)
    run_seed = recipe.seed if seed is None else seed
    run = None
    if workdir is not None:
        data = ({f"data.{k}": v for k, v in asdict(options).items() if k != "data_dir"}
                if is_dataclass(options) and not isinstance(options, type) else {})
        run = RunDir.open(workdir, {
            "recipe": digest([recipe.name, [[s.name, dict(s.options)] for s in recipe.stages]]),
            "model": digest([model_digest(model), meta]),
            "options": {"dataset": str(name), "limit": limit, "seed": run_seed, **data},
        }, resume, command)
        if run.resumed:
            for leftover in out.parent.glob(f".{out.name}.*.tmp"):  # the file's write was stopped before its rename
                leftover.unlink(missing_ok=True)
    source = open_data(str(name), options)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    config = meta.get("config")
    base_lr = float(config.get("lr", 0.05)) if isinstance(config, dict) else 0.05
    context = RecipeContext(
        model=model,
        train_data=source.split("train", limit),
        val_data=source.split("val") if source.labelled else None,
        calib_data=source.split("val"),
        out=out,
        base_lr=base_lr,
        seed=run_seed,
        quiet=quiet,
        meta={"dataset": str(name), "recipe": recipe.name, "source": str(checkpoint or meta.get("arch"))},
    )
    started = time.perf_counter()
    stages = run_recipe(recipe, context, run)
    size = out.stat().st_size
    if run is not None:
        run.finish()
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "recipe": recipe.name,
        "dataset": str(name),
        "out": str(out),
        "bytes": size,
        "fp32_bytes": fp32_bytes,
        "ratio": round(fp32_bytes / size, 2),
        "seconds": round(time.perf_counter() - started, 1),
        "baseline_test_accuracy": meta.get("test_accuracy"),
        "stages": stages,
    }
