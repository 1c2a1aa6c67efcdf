"""Builders of sparse runtime layers: ``codebook`` and ``sparse`` weights, and every other lookup kind.

A codebook weight runs as CSR rows of narrow column indices + codes into its centroids; a pruned-only weight as
CSR rows of float values; any other kind with a palette (fixed point without activation formats, ternary
layers the add/subtract kernel does not cover, kinds added later) through the same codebook kernel, its
palette being the codebook. Linear, Conv1d, Conv2d and Embedding layers are replaced when they are the exact
classes (or registered as equivalent); any other layer is kept.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..core.errors import FormatError
from ..core.kinds import StoredWeight
from ..core.layer_call import plain_type
from . import policy
from .layout import sparse_rows
from .modules import SparseConv1d, SparseConv2d, SparseEmbedding, SparseLinear
from .registry import ANY_LOOKUP, register_layer_builder


def sparse_module_for(module: nn.Module, weight: StoredWeight, bias: Tensor | None, name: str) -> nn.Module | None:
    """The sparse runtime module replacing ``module`` for ``weight``, or None when the runtime has no module that
    reproduces ``module``'s computation (it then keeps the layer)."""
    kind = plain_type(module)
    m: nn.Module = module
    if kind is nn.Linear and isinstance(m, nn.Linear):
        if tuple(weight.shape) != (m.out_features, m.in_features):
            raise FormatError(f"{name}: weight shape {weight.shape} does not fit {module}")
        return SparseLinear(sparse_rows(weight, name), bias, name)
    if kind is nn.Conv2d and isinstance(m, nn.Conv2d):
        if tuple(weight.shape) != tuple(m.weight.shape):
            raise FormatError(f"{name}: weight shape {weight.shape} does not fit {module}")
        return SparseConv2d(sparse_rows(weight, name), m.kernel_size, m.in_channels, stride=m.stride,  # type: ignore[arg-type]
                            padding=m.padding, dilation=m.dilation, groups=m.groups, padding_mode=m.padding_mode,
                            bias=bias, name=name)
    if kind is nn.Conv1d and isinstance(m, nn.Conv1d):
        if tuple(weight.shape) != tuple(m.weight.shape):
            raise FormatError(f"{name}: weight shape {weight.shape} does not fit {module}")
        return SparseConv1d(sparse_rows(weight, name), m.kernel_size[0], m.in_channels, stride=m.stride,
                            padding=m.padding, dilation=m.dilation, groups=m.groups, padding_mode=m.padding_mode,
                            bias=bias, name=name)
    if kind is nn.Embedding and isinstance(m, nn.Embedding) and m.max_norm is None and bias is None:
        if tuple(weight.shape) != (m.num_embeddings, m.embedding_dim):
            raise FormatError(f"{name}: weight shape {weight.shape} does not fit {module}")
        return SparseEmbedding(sparse_rows(weight, name), name)
    return None


def runs_dense_conv(module: nn.Module, weights: int) -> bool:
    """Whether an uncompressed layer becomes a runtime layer: a plain Conv2d of at most
    :data:`~.policy.DIRECT_CONV_MAX_WEIGHTS` weights (the layer a compression method keeps in full precision, the
    first, is often such a conv), which then times the direct kernel against ``F.conv2d`` at small batches."""
    return plain_type(module) is nn.Conv2d and weights <= policy.DIRECT_CONV_MAX_WEIGHTS


@register_layer_builder("dense")
def small_dense_conv_for(module: nn.Module, weight: StoredWeight, bias: Tensor | None, name: str) -> nn.Module | None:
    """A full-density :class:`SparseConv2d` for an uncompressed conv that :func:`runs_dense_conv`; other dense
    layers stay as they are."""
    return sparse_module_for(module, weight, bias, name) if runs_dense_conv(module, weight.numel) else None


register_layer_builder("codebook")(sparse_module_for)
register_layer_builder("sparse")(sparse_module_for)
register_layer_builder(ANY_LOOKUP)(sparse_module_for)
