"""Layer builders keyed by export kind: how a compressed weight becomes a module that computes from it.

A builder receives the skeleton layer (usually on the ``meta`` device: it carries the hyperparameters,
never weights), the weight's export dict, the layer's bias (or None) and the weight's name, and returns the
replacement module. Modules in this package register builders at import time and are discovered
automatically, so ``runtime/fixedpoint.py`` or ``runtime/ternary.py`` add kernels without editing a
shared file. A *fallback* builder serves a kind only until a specialised one registers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from ..core.errors import UnsupportedLayerError


class LayerBuilder(Protocol):
    def __call__(
        self, module: nn.Module, exported: dict[str, Any], bias: torch.Tensor | None, name: str
    ) -> nn.Module: ...


LAYER_BUILDERS: dict[str, LayerBuilder] = {}
"""Specialised builders: export kind -> builder."""

FALLBACK_BUILDERS: dict[str, LayerBuilder] = {}
"""Generic builders used for a kind only while no specialised builder is registered."""


def register_layer_builder(kind: str, *, fallback: bool = False) -> Callable[[LayerBuilder], LayerBuilder]:
    """Decorator: build runtime modules for weights exported as ``kind``."""

    def wrap(fn: LayerBuilder) -> LayerBuilder:
        (FALLBACK_BUILDERS if fallback else LAYER_BUILDERS)[kind] = fn
        return fn

    return wrap


def builder_for(kind: str, name: str = "weight") -> LayerBuilder:
    """The builder for ``kind`` (specialised first); UnsupportedLayerError names the weight and the kinds known."""
    builder = LAYER_BUILDERS.get(kind) or FALLBACK_BUILDERS.get(kind)
    if builder is None:
        known = sorted(set(LAYER_BUILDERS) | set(FALLBACK_BUILDERS) | {"dense"})
        raise UnsupportedLayerError(
            f"{name}: the runtime has no kernel for export kind {kind!r} (known: {', '.join(known)}); "
            "import the package that provides it or store the weight dense"
        )
    return builder
