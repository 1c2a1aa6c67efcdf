"""Open any model file deepshrink writes: a training checkpoint or a compressed ``.dsz`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .core.errors import FormatError
from .core.version import DSZ_MAGIC

__all__ = ["DSZ_MAGIC", "is_compressed_file", "load_model"]


def is_compressed_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts with the ``.dsz`` magic."""
    with open(path, "rb") as handle:
        return handle.read(len(DSZ_MAGIC)) == DSZ_MAGIC


def load_model(path: str | os.PathLike[str], model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` from a checkpoint or a ``.dsz`` file: rebuilt from its recorded arch, or loaded into
    ``model`` (a fresh instance of the architecture) when given."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"model file not found: {path}")
    if is_compressed_file(path):
        import importlib

        codec = importlib.import_module("deepshrink.codec")
        return codec.load_compressed_with_meta(path, model)
    from .train.checkpoint import load_checkpoint

    return load_checkpoint(path, model)
