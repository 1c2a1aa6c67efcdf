"""Choosing which layers a technique acts on: by type, by name glob, or by a callable."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import ConfigError

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
"""Layer types every technique handles (grouped and depthwise convolutions included; an Embedding's weight is a
matrix of one row per token, handled as a Linear layer's: ``layer_kind`` "fc")."""

TYPE_ALIASES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "fc": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d),
    "conv1d": (nn.Conv1d,),
    "conv2d": (nn.Conv2d,),
    "embedding": (nn.Embedding,),
}
"""Names usable as ``"type:<alias>"`` in string selectors (recipes and the CLI cannot pass Python types)."""

Selector = (
    None
    | type[nn.Module]
    | tuple[type[nn.Module], ...]
    | str
    | Sequence[str]
    | Callable[[nn.Module, str], bool]
)


@dataclass
class Selection:
    """Layers chosen (``fqn, module``) and layers matched but skipped (``fqn, reason``)."""

    layers: list[tuple[str, nn.Module]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def names(self) -> list[str]:
        return [name for name, _ in self.layers]


def layer_type_name(module: nn.Module) -> str:
    """``Linear``, ``Conv2d``, ...: the user's class name, also for parametrized modules."""
    cls = type(module)
    if cls.__name__.startswith("Parametrized") and len(cls.__mro__) > 1:
        cls = cls.__mro__[1]
    return cls.__name__


def layer_kind(module: nn.Module) -> str:
    """``"conv"`` or ``"fc"``: the paper's two families, used for per-kind defaults (bits, index width).
    Embeddings count as ``"fc"`` (a matrix read a row at a time)."""
    return "fc" if isinstance(module, nn.Linear | nn.Embedding) else "conv"


def _matcher(select: Selector) -> Callable[[nn.Module, str], bool]:
    if select is None:
        return lambda module, fqn: True
    if isinstance(select, type) or (isinstance(select, tuple) and all(isinstance(t, type) for t in select)):
        classes: Any = select
        return lambda module, fqn: isinstance(module, classes)
    if isinstance(select, str):
        select = [select]
    if isinstance(select, Sequence):
        patterns = list(select)
        types: list[tuple[type[nn.Module], ...]] = []
        globs: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ConfigError(f"layer selector entries must be strings, got {pattern!r}")
            if pattern.startswith("type:"):
                alias = pattern[5:].lower()
                if alias not in TYPE_ALIASES:
                    raise ConfigError(f"unknown layer type {alias!r} in selector (known: {sorted(TYPE_ALIASES)})")
                types.append(TYPE_ALIASES[alias])
            else:
                globs.append(pattern)
        return lambda module, fqn: any(isinstance(module, t) for t in types) or any(
            fnmatch.fnmatchcase(fqn, g) for g in globs
        )
    if callable(select):
        return select
    raise ConfigError(f"cannot select layers with {select!r}: use a type, a name glob or a callable")


def _has_weight(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), nn.Parameter) or hasattr(module, "parametrizations")


def select_layers(
    model: nn.Module,
    select: Selector = None,
    *,
    exclude: Selector = None,
    supported: tuple[type[nn.Module], ...] = SUPPORTED_LAYERS,
) -> Selection:
    """Layers of ``model`` that carry a weight and match ``select`` (and not ``exclude``).

    Matched layers of unsupported types (Embedding, LayerNorm, Conv3d, ...) land in ``skipped`` with a reason,
    never in an exception deep inside a technique.
    """
    include = _matcher(select)
    drop = _matcher(exclude) if exclude is not None else (lambda module, fqn: False)
    selection = Selection()
    for fqn, module in model.named_modules():
        if not fqn or not _has_weight(module) or not include(module, fqn) or drop(module, fqn):
            continue
        if isinstance(module, supported):
            selection.layers.append((fqn, module))
        elif select is None or not isinstance(select, type | tuple):
            selection.skipped.append((fqn, f"unsupported layer type {type(module).__name__}"))
    return selection
