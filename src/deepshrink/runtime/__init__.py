"""The compressed-model runtime: CPU kernels that compute straight from the compressed form.

``load(path)`` turns a ``.dsz`` file into an ``nn.Module`` whose compressed layers run numba kernels on
sparse positions + small codebook indices (decoded once, at load time, into a CSR layout with narrow
indices); layers stored dense stay ordinary torch layers. Every module in this package is imported on
first use, so ``runtime/<name>.py`` files register their layer builders (``register_layer_builder``)
without editing this one.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings

from .layout import SparseRows, from_coo, from_export
from .loader import exports_from_model, from_exports, from_model, load, load_with_meta, runtime_layers
from .registry import FALLBACK_BUILDERS, LAYER_BUILDERS, builder_for, register_layer_builder
from .sparse import SparseConv2d, SparseLinear


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except ImportError as exc:  # a half-finished plugin must not take the whole runtime down
            warnings.warn(f"deepshrink.runtime.{info.name} could not be imported: {exc}", RuntimeWarning,
                          stacklevel=2)


_discover()

__all__ = [
    "FALLBACK_BUILDERS",
    "LAYER_BUILDERS",
    "SparseConv2d",
    "SparseLinear",
    "SparseRows",
    "builder_for",
    "exports_from_model",
    "from_coo",
    "from_export",
    "from_exports",
    "from_model",
    "load",
    "load_with_meta",
    "register_layer_builder",
    "runtime_layers",
]
