"""Name -> constructor registry, so checkpoints and ``.dsz`` files rebuild models from ``arch`` + kwargs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..core.errors import ConfigError
from .zoo import LeNet5, LeNet300, ResNet20, VGGSmall

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "vgg": VGGSmall,
    "resnet20": ResNet20,
}


def register_model(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Add a constructor to the registry (user models can then be saved and rebuilt by name)."""
    MODELS[name] = constructor


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Construct ``arch`` with ``kwargs``; unknown names or keyword arguments are a ConfigError."""
    if arch not in MODELS:
        raise ConfigError(f"unknown model {arch!r} (known: {', '.join(sorted(MODELS))})")
    constructor = MODELS[arch]
    params = inspect.signature(constructor).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"model {arch!r} takes no argument(s) {unknown} (takes: {sorted(params)})")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    model = constructor(**converted)
    model.deepshrink_arch = (arch, {k: _jsonable(v) for k, v in kwargs.items()})  # type: ignore[assignment]
    return model


def model_kwargs_for(arch: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Constructor kwargs that fit a dataset's input shape and class count."""
    channels, height = input_shape[0], input_shape[-1]
    if arch == "lenet300":
        return {"in_features": channels * height * input_shape[1], "num_classes": num_classes}
    if arch == "lenet5":
        return {"in_channels": channels, "num_classes": num_classes, "input_size": height}
    if arch in ("vgg", "resnet20"):
        return {"in_channels": channels, "num_classes": num_classes}
    return {"num_classes": num_classes}


def arch_of(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(arch, kwargs)`` recorded by :func:`build_model`, or None for models built elsewhere."""
    return getattr(model, "deepshrink_arch", None)
