"""The compressed-model runtime: CPU kernels that compute straight from the compressed form.

``load(path)`` turns a ``.dsz`` file into an ``nn.Module`` whose compressed layers run numba kernels on
sparse positions + small codebook codes (decoded once, at load time, into a CSR layout with narrow indices),
integer kernels (fixed point) or add/subtract kernels (ternary); layers stored dense stay ordinary torch
layers, and layers of the user's own classes keep their class, fed their decoded weights. Every inference
code path of deepshrink lives in this package; builders are registered per value kind (:mod:`.registry`).
"""

from __future__ import annotations

from . import builders, integer, measure, ternary  # builders, integer, ternary register the layer builders
from .integer import IntegerLayer, IntegerModel, QTensor, swap_integer_layers_
from .layout import SparseRows, from_coo, sparse_rows
from .loader import (
    RuntimeReport,
    from_model,
    from_stored,
    load,
    load_with_meta,
    meta_skeleton,
    runtime_layers,
    stored_from_model,
)
from .modules import SparseConv1d, SparseConv2d, SparseEmbedding, SparseLinear
from .registry import ANY_LOOKUP, LAYER_BUILDERS, build_layer, register_layer_builder
from .ternary import TernaryConv2d, TernaryLinear, TernaryRows, ternary_matmul

__all__ = [
    "ANY_LOOKUP",
    "LAYER_BUILDERS",
    "IntegerLayer",
    "IntegerModel",
    "QTensor",
    "RuntimeReport",
    "SparseConv1d",
    "SparseConv2d",
    "SparseEmbedding",
    "SparseLinear",
    "SparseRows",
    "TernaryConv2d",
    "TernaryLinear",
    "TernaryRows",
    "build_layer",
    "builders",
    "from_coo",
    "from_model",
    "from_stored",
    "integer",
    "load",
    "load_with_meta",
    "measure",
    "meta_skeleton",
    "register_layer_builder",
    "runtime_layers",
    "sparse_rows",
    "stored_from_model",
    "swap_integer_layers_",
    "ternary",
    "ternary_matmul",
]
