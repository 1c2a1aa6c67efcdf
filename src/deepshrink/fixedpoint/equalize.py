"""Cross-layer equalisation (Nagel et al. 2019): even out per-channel weight ranges before per-layer quantization.

For two layers in a row, ``y = W2 f(W1 x + b1)`` with ``f`` positively homogeneous (ReLU, or nothing), scaling
channel ``i`` of the first layer's output by ``1/s_i`` and the second layer's input channel ``i`` by ``s_i``
changes nothing the model computes. With ``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: the range of the first layer's
output channel ``i``, ``r2_i``: that of the second layer's input channel ``i``) both ranges become
``sqrt(r1_i r2_i)``, so a per-layer format wastes less on the channels with small weights. Pairs are found by
running the model once (:mod:`deepshrink.core.graph`): the first layer's output must reach only the second, through
an identity, a dropout or a ReLU (not ReLU6: its clip at 6 is not scale-free). Fold BatchNorm first.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from ..core.graph import is_relu, trace_calls
from ..core.layer_call import plain_type
from ..core.state import iter_states

__all__ = ["equalization_pairs", "equalize_"]

_LAYERS = (nn.Conv2d, nn.Linear)


def equalization_pairs(model: nn.Module, example: Any) -> list[tuple[str, str]]:
    """``(first, second)`` layers that can be equalised (see the module doc)."""
    graph = trace_calls(model, example)
    stateful = {fqn for fqn, *_ in iter_states(model)}
    pairs = []
    for call in graph.module_calls(_LAYERS):
        reader = graph.sole_reader(call, passthrough=(nn.Identity, nn.Dropout))
        if reader is not None and is_relu(reader):
            reader = graph.sole_reader(reader, passthrough=(nn.Identity, nn.Dropout))
        if reader is None or reader.module is None or not isinstance(reader.module, _LAYERS):
            continue
        first, second = call.module, reader.module
        assert first is not None
        if call.name in stateful or reader.name in stateful or plain_type(first) is None or plain_type(second) is None:
            continue
        if len(graph.calls_of(call.name)) != 1 or len(graph.calls_of(reader.name)) != 1:
            continue
        if isinstance(second, nn.Conv2d) and second.groups not in (1, second.in_channels):
            continue
        if isinstance(first, nn.Conv2d) and first.groups != 1 and first.groups != first.out_channels:
            continue
        pairs.append((call.name, reader.name))
    return pairs


def _input_ranges(layer: nn.Module) -> Tensor:
    """Per input channel, the largest absolute weight reading it (a depthwise conv: its own channel)."""
    weight = cast(Tensor, layer.weight).detach()
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:  # depthwise: input channel i is output channel i
        return weight.abs().reshape(weight.shape[0], -1).amax(1)
    return weight.abs().transpose(0, 1).reshape(weight.shape[1], -1).amax(1)


@torch.no_grad()
def equalize_(model: nn.Module, example: Any, iterations: int = 4) -> list[tuple[str, str]]:
    """Equalise every pair of :func:`equalization_pairs` in place (a few sweeps: pairs share layers); returns them."""
    pairs = equalization_pairs(model, example)
    for _ in range(iterations):
        for first_name, second_name in pairs:
            first: Any = model.get_submodule(first_name)
            second: Any = model.get_submodule(second_name)
            r1 = first.weight.abs().reshape(first.weight.shape[0], -1).amax(1)
            r2 = _input_ranges(second)
            scale = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp(min=1e-30)), torch.ones_like(r1))
            first.weight.div_(scale.reshape((-1,) + (1,) * (first.weight.dim() - 1)))
            if first.bias is not None:
                first.bias.div_(scale)
            if isinstance(second, nn.Conv2d) and second.groups > 1:
                second.weight.mul_(scale.reshape((-1,) + (1,) * (second.weight.dim() - 1)))
            else:
                second.weight.mul_(scale.reshape((1, -1) + (1,) * (second.weight.dim() - 2)))
    return pairs
