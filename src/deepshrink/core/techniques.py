"""The technique registry: each technique declares, in one call at import, its configs and handler, the state
classes it puts on weights, the value kinds it restores from files, and its recipe stages.

``compress_(model, config, ...)`` dispatches on the config's type, in the shape of torchao's ``quantize_``::

    compress_(model, MagnitudePrune(sparsity=0.9))
    compress_(model, DynamicFixedPoint(bits=8), calib=batches)

Technique packages are imported on demand from one allow-list (:data:`~deepshrink.core.plugins.TECHNIQUE_PACKAGES`):
the only way a name read from a checkpoint or a ``.dsz`` file can cause an import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import ConfigError
from .plugins import TECHNIQUE_PACKAGES, load_technique_plugins
from .select import Selector
from .stages import StageBuilder, register_stage
from .state import ValueTransform, WeightState, register_state_class

__all__ = [
    "TECHNIQUES",
    "TECHNIQUE_PACKAGES",
    "Technique",
    "compress_",
    "load_technique_plugins",
    "register_technique",
    "restorer_for",
    "technique_for",
]

Handler = Callable[..., Any]
"""``apply(model, config, *, select, exclude, calib) -> report``."""


@dataclass(frozen=True)
class Technique:
    """One technique: its configs -> ``apply``; its state classes; kind -> the transform restoring it; its stages."""

    name: str
    configs: tuple[type, ...]
    apply: Handler
    states: tuple[type[WeightState], ...] = ()
    restores: Mapping[str, type[ValueTransform]] = field(default_factory=dict)
    stages: Mapping[str, tuple[frozenset[str], StageBuilder]] = field(default_factory=dict)
    needs_calib: bool = False
    doc: str = ""


TECHNIQUES: dict[str, Technique] = {}
_BY_CONFIG: dict[type, Technique] = {}
_RESTORERS: dict[str, type[ValueTransform]] = {}


def register_technique(technique: Technique) -> Technique:
    """Make ``technique`` known: dispatch of its configs, its state classes (allow-list), restorers and stages."""
    TECHNIQUES[technique.name] = technique
    for config in technique.configs:
        _BY_CONFIG[config] = technique
    for cls in technique.states:
        register_state_class(cls)
    _RESTORERS.update(technique.restores)
    for stage, (keys, build) in technique.stages.items():
        register_stage(stage, keys, build)
    return technique


def technique_for(config: object) -> Technique:
    """The technique handling ``config`` (by its type); ConfigError lists the known config types."""
    load_technique_plugins()
    for cls in type(config).__mro__:
        if cls in _BY_CONFIG:
            return _BY_CONFIG[cls]
    known = sorted(c.__name__ for c in _BY_CONFIG)
    raise ConfigError(f"no technique takes a {type(config).__name__} config (known: {', '.join(known)})")


def restorer_for(kind: str) -> type[ValueTransform] | None:
    """The value transform that restores weights of ``kind`` read from a file (None: the kind has none)."""
    if kind not in _RESTORERS:
        load_technique_plugins()
    return _RESTORERS.get(kind)


def compress_(model: nn.Module, config: object, *, select: Selector = None, exclude: Selector = None,
              calib: Any = None) -> Any:
    """Apply the technique ``config`` belongs to, in place; returns that technique's report.

    ``calib`` is calibration data (a tensor, a feature dict, batches or a dataset), needed by data-driven
    techniques (fixed point, OBD/OBS pruning, low-rank).
    """
    technique = technique_for(config)
    if technique.needs_calib and calib is None:
        raise ConfigError(f"{type(config).__name__} ({technique.name}) needs calibration data: pass calib=...")
    return technique.apply(model, config, select=select, exclude=exclude, calib=calib)
