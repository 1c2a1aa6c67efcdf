"""Layer builders keyed by value kind: how a stored weight becomes a module that computes from it.

A builder receives the skeleton layer (usually on the ``meta`` device: it carries the hyperparameters, never
weights), the :class:`~deepshrink.core.kinds.StoredWeight`, the layer's bias (or None) and the weight's name, and
returns the replacement module, or None to keep the layer as it is, fed its decoded weight. A kind without a
builder of its own runs through the generic palette builder (every lookup kind has a palette), and a kind
without a palette (a float kind) keeps its layer.

Only layers whose computation the runtime reproduces exactly are replaced: the exact ``nn.Linear``/``nn.Conv2d``
classes and subclasses registered as equivalent (:func:`deepshrink.core.register_equivalent`). Any other layer
(a subclass with its own ``forward``) keeps its class and gets its decoded weight; :func:`from_stored` lists it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor, nn

from ..core.kinds import StoredWeight


class LayerBuilder(Protocol):
    def __call__(self, module: nn.Module, weight: StoredWeight, bias: Tensor | None, name: str) -> nn.Module | None: ...


LAYER_BUILDERS: dict[str, LayerBuilder] = {}
"""Builders by kind name, and under :data:`ANY_LOOKUP` the generic builder of lookup kinds."""

ANY_LOOKUP = "*lookup*"
"""Key of the builder serving every kind that has a palette but no builder of its own."""


def register_layer_builder(kind: str) -> Callable[[LayerBuilder], LayerBuilder]:
    """Decorator: build runtime modules for weights stored as ``kind``."""

    def wrap(fn: LayerBuilder) -> LayerBuilder:
        LAYER_BUILDERS[kind] = fn
        return fn

    return wrap


def build_layer(module: nn.Module, weight: StoredWeight, bias: Tensor | None, name: str) -> nn.Module | None:
    """The runtime module for ``weight`` on ``module``: its kind's builder, else the palette builder, else None."""
    builder = LAYER_BUILDERS.get(weight.kind)
    if builder is None and weight.palette() is not None:
        builder = LAYER_BUILDERS.get(ANY_LOOKUP)
    return builder(module, weight, bias, name) if builder is not None else None
