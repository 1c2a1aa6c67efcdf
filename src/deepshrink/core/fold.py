"""Fold BatchNorm into the preceding convolution/linear layer (before fixed point, ternary or export)."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from .edits import record_edit, register_edit, set_submodule
from .errors import UnsupportedLayerError
from .state import iter_states

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def find_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer_fqn, bn_fqn)`` pairs where a BatchNorm reads only the output of a conv/linear layer."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing fails on data-dependent control flow
        raise UnsupportedLayerError(f"cannot trace {type(model).__name__} to find conv+BatchNorm pairs: {exc}") from exc
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), _FOLDABLE)
            and len(source.users) == 1
        ):
            pairs.append((str(source.target), str(node.target)))
    return pairs


@register_edit("fold_bn")
def _replay_fold(model: nn.Module, params: dict[str, Any]) -> None:
    layer: Any = model.get_submodule(params["layer"])
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
    set_submodule(model, params["bn"], nn.Identity())


@torch.no_grad()
def fold_batchnorm_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every foldable BatchNorm into its layer in place (BN becomes Identity); returns the pairs.

    Uses the running statistics, so the model must be in its trained state; call before attaching
    compression state (a layer already carrying state is refused to keep masks and codebooks exact).
    """
    pairs = find_bn_pairs(model)
    stateful = {fqn for fqn, *_ in iter_states(model)}
    for layer_name, bn_name in pairs:
        if layer_name in stateful:
            raise UnsupportedLayerError(f"fold BatchNorm before compressing: {layer_name!r} already carries state")
        layer: Any = model.get_submodule(layer_name)
        bn: Any = model.get_submodule(bn_name)
        mean, var = bn.running_mean, bn.running_var
        inv_std = 1.0 / torch.sqrt(var + bn.eps)
        scale = bn.weight * inv_std if bn.affine else inv_std
        shift = bn.bias if bn.affine else torch.zeros_like(mean)
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(scale.reshape(shape))
        old_bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        new_bias = (old_bias - mean) * scale + shift
        layer.bias = nn.Parameter(new_bias.detach().clone())
        set_submodule(model, bn_name, nn.Identity())
        record_edit(model, "fold_bn", layer=layer_name, bn=bn_name)
    return pairs
