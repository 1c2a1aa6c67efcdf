"""Fold BatchNorm into the layer before it (before fixed point, low-rank or export), found by running the model.

A BatchNorm folds into a Linear/Conv when it reads that layer's output and nothing else does. Layers of the
user's own classes fold too when their output is linear in their weight per output channel (checked on the
example: a conv subclass computing TF-"same" padding in ``forward`` folds; one that standardises its weight does
not). A BatchNorm that cannot fold stays float and is listed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from .edits import record_edit, register_edit, set_submodule
from .errors import UnsupportedLayerError
from .graph import Call, ExecutionGraph, trace_calls
from .layer_call import layer_call, plain_type
from .state import get_value_transform, latent_weight

__all__ = ["FoldReport", "find_bn_pairs", "fold_batchnorm_"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass
class FoldReport:
    """Pairs folded ``(layer, bn)`` and BatchNorms left float with the reason."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)

    def __iter__(self):  # unpacks like the list of pairs it used to be
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


def _channel_linear(module: nn.Module, x: Tensor) -> bool:
    """Whether scaling output channel ``c``'s weights and bias by ``s_c`` scales that output channel by ``s_c``."""
    weight = cast(Tensor, module.weight).detach().double()
    bias = getattr(module, "bias", None)
    bias = bias.detach().double() if isinstance(bias, Tensor) else torch.zeros(weight.shape[0], dtype=torch.float64)
    scale = torch.linspace(0.5, 2.0, weight.shape[0], dtype=torch.float64)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    try:
        base = layer_call(module, x.double(), weight, bias)
        scaled = layer_call(module, x.double(), weight * scale.reshape(shape), bias * scale)
    except (UnsupportedLayerError, RuntimeError):
        return False
    expected = base * scale.reshape((1, -1) + (1,) * (base.dim() - 2))
    return bool(torch.allclose(scaled, expected, rtol=1e-9, atol=1e-9 * float(base.abs().max() or 1.0)))


def _pairs(graph: ExecutionGraph) -> FoldReport:
    report = FoldReport()
    for call in graph.calls:
        if call.module is None or not isinstance(call.module, _BN):
            continue
        producer = graph.producer.get(call.inputs[0]) if call.inputs else None
        source: Call | None = graph.calls[producer] if producer is not None else None
        if source is None or source.module is None or not isinstance(source.module, _FOLDABLE):
            report.kept.append((call.name, "its input is not the output of a Linear/Conv layer"))
        elif len(graph.readers(source.outputs[0])) != 1 or len(graph.calls_of(source.name)) != 1:
            report.kept.append((call.name, f"the output of {source.name!r} is also used elsewhere"))
        elif plain_type(source.module) is None and not _channel_linear(source.module, _input_of(graph, source)):
            report.kept.append((call.name, f"{type(source.module).__name__} {source.name!r} is not linear in its weight"))
        else:
            report.pairs.append((source.name, call.name))
    return report


def _input_of(graph: ExecutionGraph, call: Call) -> Tensor:
    tensor = graph.tensor(call.inputs[0])
    assert tensor is not None
    return tensor


def find_bn_pairs(model: nn.Module, example: Any) -> FoldReport:
    """``(layer_fqn, bn_fqn)`` pairs where a BatchNorm reads only a Linear/Conv layer's output, found on ``example``."""
    return _pairs(trace_calls(model, example))


@register_edit("fold_bn")
def _replay_fold(model: nn.Module, params: dict[str, Any]) -> None:
    layer: Any = model.get_submodule(params["layer"])
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
    set_submodule(model, params["bn"], nn.Identity())


@torch.no_grad()
def fold_batchnorm_(model: nn.Module, example: Any, *, skip_unfoldable: bool = False) -> FoldReport:
    """Fold every foldable BatchNorm into its layer in place (the BN becomes Identity); returns what was folded.

    ``example`` is one input batch (a tensor, a feature dict, ...) the model is run on to find the pairs. Uses the
    running statistics, so the model must be in its trained state. A mask is kept (pruned weights stay zero); a
    value transform must absorb the per-channel scale itself (``scale_channels_``, e.g. ternary weights) or the
    fold is refused (fold before quantizing), or, with ``skip_unfoldable``, that BatchNorm stays float.
    """
    report = find_bn_pairs(model, example)
    folded = []
    for layer_name, bn_name in report.pairs:
        layer: Any = model.get_submodule(layer_name)
        transform = get_value_transform(layer)
        absorb = getattr(transform, "scale_channels_", None)
        if transform is not None and absorb is None:
            why = f"{layer_name!r} carries {type(transform).__name__}, which cannot absorb a per-channel scale"
            if not skip_unfoldable:
                raise UnsupportedLayerError(f"fold BatchNorm before quantizing: {why}")
            report.kept.append((bn_name, why))
            continue
        bn: Any = model.get_submodule(bn_name)
        mean, var = bn.running_mean, bn.running_var
        inv_std = 1.0 / torch.sqrt(var + bn.eps)
        scale = bn.weight * inv_std if bn.affine else inv_std
        shift = bn.bias if bn.affine else torch.zeros_like(mean)
        if absorb is not None:
            absorb(scale)
        else:
            weight = latent_weight(layer)
            weight.mul_(scale.reshape((-1,) + (1,) * (weight.dim() - 1)))
        old_bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        new_bias = (old_bias - mean) * scale + shift
        layer.bias = nn.Parameter(new_bias.detach().clone())
        set_submodule(model, bn_name, nn.Identity())
        record_edit(model, "fold_bn", layer=layer_name, bn=bn_name)
        folded.append((layer_name, bn_name))
    report.pairs = folded
    return report
