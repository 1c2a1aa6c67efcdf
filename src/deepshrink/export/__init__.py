"""Deployment: a compressed model -> files a stock runtime (ONNX Runtime) or a microcontroller (C99) runs.

Each exporter registers a format under a name; :func:`export` dispatches on it. The exporters read the model's
compression state through the kind registry (:mod:`deepshrink.core.kinds`), so a weight leaves in its compressed
form. Exporters load on first use from a fixed list (their dependencies, e.g. ``onnx``, are optional extras).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from ..core.errors import ConfigError

__all__ = ["EXPORTERS", "Exporter", "export", "register_exporter", "to_c", "to_onnx"]

Exporter = Callable[..., dict[str, Any]]
"""``exporter(model, example_inputs, out, **options) -> report`` (a JSON-able dict: files written, sizes, ...)."""

EXPORTERS: dict[str, Exporter] = {}
MODULES = {"onnx": "deepshrink.export.onnx", "c": "deepshrink.export.c"}
"""Where each format's exporter lives (imported on first use; this list is the only way a name causes an import)."""


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator: make ``fn`` the exporter of format ``name``."""

    def wrap(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        return fn

    return wrap


def export(model: nn.Module, example_inputs: Any, out: str | os.PathLike[str], format: str, **options: Any) -> dict[str, Any]:
    """Write ``model`` (carrying its compression state) in ``format`` to ``out``; returns the exporter's report."""
    if format not in EXPORTERS and format in MODULES:
        try:
            importlib.import_module(MODULES[format])
        except ImportError as exc:
            raise ConfigError(f"the {format} exporter needs a package that is not installed ({exc}); "
                              f"pip install 'deepshrink[{format}]'") from exc
    if format not in EXPORTERS:
        raise ConfigError(f"unknown export format {format!r} (known: {', '.join(sorted(MODULES))})")
    return EXPORTERS[format](model, example_inputs, out, **options)


def to_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Write ``model`` as an ONNX file whose compressed weights stay compressed (see docs/onnx.md)."""
    return export(model, example_inputs, path, "onnx", **options)


def to_c(model: nn.Module, example_inputs: Any, out_dir: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Write ``model`` as a dependency-free C99 library (``model.h``, ``model.c``; see docs/c.md)."""
    return export(model, example_inputs, out_dir, "c", **options)
