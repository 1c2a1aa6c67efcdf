"""Model specs -> constructors, so checkpoints and ``.dsz`` files rebuild models from ``arch`` + kwargs.

A spec is a zoo name (``lenet5``), ``torchvision:NAME`` or ``timm:NAME`` (built by those libraries when they are
installed), or ``package.module:factory`` (a function of yours returning the model). A file may name the first
three and is rebuilt from them by itself; a ``module:factory`` spec read from a file is refused, since a file must
never make deepshrink import a module it names: the caller passes the model (or ``--model`` again).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import ConfigError, FormatError
from ..core.torchfile import load_torch_file, state_dict_from
from .zoo import LeNet5, LeNet300, ResNet20, VGGSmall

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "vgg": VGGSmall,
    "resnet20": ResNet20,
}


def _torchvision(name: str, **kwargs: Any) -> nn.Module:
    models = importlib.import_module("torchvision.models")
    return models.get_model(name, weights=None, **kwargs)


def _timm(name: str, **kwargs: Any) -> nn.Module:
    timm = importlib.import_module("timm")
    return timm.create_model(name, pretrained=False, **kwargs)


LIBRARIES: dict[str, Callable[..., nn.Module]] = {"torchvision": _torchvision, "timm": _timm}
"""Allow-listed model libraries a spec (and so a file) may name: ``torchvision:NAME``, ``timm:NAME``."""


def register_model(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Add a constructor to the zoo registry (user models can then be saved and rebuilt by name)."""
    MODELS[name] = constructor


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _record(model: nn.Module, spec: str, kwargs: dict[str, Any]) -> nn.Module:
    model.deepshrink_arch = (spec, {k: _jsonable(v) for k, v in kwargs.items()})  # type: ignore[assignment]
    return model


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Construct a zoo model or an allow-listed library model (``torchvision:NAME``, ``timm:NAME``) with ``kwargs``.

    Unknown names or keyword arguments are a ConfigError; a ``package.module:factory`` spec is refused here (it is
    what files are read with) and built only by :func:`build_from_spec`.
    """
    source, sep, name = arch.partition(":")
    if sep:
        if source not in LIBRARIES:
            raise ConfigError(f"{arch!r} names a Python module; deepshrink imports a module only when you name it "
                              f"yourself: pass the model (model=...) or --model {arch}")
        try:
            return _record(LIBRARIES[source](name, **kwargs), arch, kwargs)
        except ImportError as exc:
            raise ConfigError(f"{arch!r} needs the package {source!r}, which is not installed") from exc
    if arch not in MODELS:
        raise ConfigError(f"unknown model {arch!r} (zoo: {', '.join(sorted(MODELS))}; or torchvision:NAME, timm:NAME, "
                          "package.module:factory)")
    constructor = MODELS[arch]
    params = inspect.signature(constructor).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(f"model {arch!r} takes no argument(s) {unknown} (takes: {sorted(params)})")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return _record(constructor(**converted), arch, kwargs)


def _factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in [*module_name.split("."), attr]):
        raise ConfigError(f"model spec {spec!r} is not a zoo name, torchvision:NAME, timm:NAME or "
                          "package.module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: factories next to the user's scripts import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for model spec {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name!r} has no callable {attr!r} (model spec {spec!r})")
    return factory


def build_from_spec(spec: str, kwargs: dict[str, Any] | None = None, *,
                    weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """The model ``spec`` names, built at the user's request (``package.module:factory`` included), with the
    state dict ``weights`` (read with ``weights_only=True``, loaded strictly) when given."""
    kwargs = dict(kwargs or {})
    source, sep, _ = spec.partition(":")
    if sep and source not in LIBRARIES:
        factory = _factory(spec)
        try:
            model = _record(factory(**kwargs), spec, kwargs)
        except TypeError as exc:
            raise ConfigError(f"model spec {spec!r}: {exc}") from exc
    else:
        model = build_model(spec, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a state dict file (a plain state dict, or ``{"state_dict": ...}``) into ``model``, strictly."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}")
    payload = load_torch_file(path, "state dict")  # weights_only=True, size-checked: FormatError naming the file
    state = state_dict_from(payload.get("state_dict", payload) if isinstance(payload, dict) else None, str(path))
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise FormatError(f"{path}: the weights do not fit {type(model).__name__}: {str(exc).splitlines()[0]}") from exc
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
    """``(spec, kwargs)`` recorded by :func:`build_model` / :func:`build_from_spec`, or None for other models."""
    return getattr(model, "deepshrink_arch", None)
