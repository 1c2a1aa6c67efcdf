"""The recipe-stage registry: stage name -> the keys it accepts and a builder that validates options up front.

Each technique (and the training loop and the codec) registers its stages here, next to its own code; the
recipe engine (:mod:`deepshrink.recipes`) only parses YAML, looks stages up and runs them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

__all__ = ["STAGES", "RecipeContext", "StageBuilder", "StageFn", "StageHandler", "register_stage"]


@dataclass
class RecipeContext:
    """What stages share while a recipe runs: the model, the data, the output path and the base lr.

    ``calib_data`` is what calibration-driven stages read (default: ``val_data``); ``teacher`` is what
    ``distill`` stages learn from (a frozen copy of the model at the start, set when a stage distills).
    """

    model: nn.Module
    train_data: Dataset | None
    val_data: Dataset | None = None
    out: Path | None = None
    base_lr: float = 0.05
    seed: int = 0
    quiet: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    encoded: Any = None
    teacher: nn.Module | None = None
    calib_data: Any = None
    upcoming: tuple[str, ...] = ()
    """The names of the stages after the running one (e.g. weight sharing picks its init by whether a fine-tune
    follows)."""

    @property
    def calibration(self) -> Any:
        """Calibration data: ``calib_data`` if given, else the validation split, else the training data."""
        for data in (self.calib_data, self.val_data, self.train_data):
            if data is not None:
                return data
        return None


StageFn = Callable[[RecipeContext], dict[str, Any]]
"""A built stage: runs on the context, returns a JSON-able record of what it did."""

StageBuilder = Callable[[Mapping[str, Any]], StageFn]
"""Validates a stage's options (raising ConfigError naming the key) and returns the stage to run."""


@dataclass(frozen=True)
class StageHandler:
    """How to build one stage kind: the keys it accepts and a builder that validates options up front."""

    name: str
    keys: frozenset[str]
    build: StageBuilder
    doc: str = ""


STAGES: dict[str, StageHandler] = {}
"""Registry: stage name -> handler."""


def register_stage(name: str, keys: set[str] | frozenset[str], build: StageBuilder, doc: str = "") -> StageBuilder:
    """Register ``build(options) -> stage`` as recipe stage ``name`` accepting option ``keys``."""
    STAGES[name] = StageHandler(name, frozenset(keys), build, doc or (build.__doc__ or "").strip())
    return build
