"""Factorised layers as plain modules, and the replayable structural edits that create them.

A conv with ``d`` filters of ``k x k x c`` becomes ``nn.Sequential(conv k x k: c -> d', conv 1x1: d' -> d)``
(3-D: ``nn.Sequential(conv k x 1: c -> s, conv 1 x k: s -> d', conv 1x1: d' -> d)``);
a Linear ``in -> out`` becomes ``nn.Sequential(Linear in -> r (no bias), Linear r -> out)``. Both are ordinary
``nn.Conv2d``/``nn.Linear`` modules, so they train, trace, save, export and compose with every other technique.
The edits ``lowrank_conv`` / ``lowrank_conv3d`` / ``lowrank_linear`` record ``{layer, rank}`` (3-D: and
``spatial_rank``) so checkpoints and ``.dsz`` files
rebuild the factorised structure before loading the weights.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.edits import record_edit, register_edit, set_submodule
from ..core.errors import UnsupportedLayerError
from ..core.layer_call import plain_type
from .spatial import empty_spatial_pair


def _check_plain(module: nn.Module, fqn: str, kind: type[nn.Module]) -> None:
    if not isinstance(module, kind):
        raise UnsupportedLayerError(f"{fqn!r} is a {type(module).__name__}, not an nn.{kind.__name__}")
    if plain_type(module) is not kind:
        raise UnsupportedLayerError(f"{fqn!r} is a {type(module).__name__} with a forward of its own: its factors "
                                    f"would lose what that forward does (register_equivalent it if it adds nothing)")
    if parametrize.is_parametrized(module):
        raise UnsupportedLayerError(
            f"{fqn!r} already carries compression state: apply low-rank before pruning, sharing or quantisation"
        )


def check_conv(conv: nn.Module, fqn: str) -> nn.Conv2d:
    """``conv`` as a plain ``nn.Conv2d`` that can be factorised (groups == 1, no compression state)."""
    _check_plain(conv, fqn, nn.Conv2d)
    assert isinstance(conv, nn.Conv2d)
    if conv.groups != 1:
        raise UnsupportedLayerError(
            f"{fqn!r} has groups={conv.groups}: low-rank factorisation needs groups=1 (exclude this layer)"
        )
    return conv


def empty_conv_pair(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """The factorised structure of ``conv`` at ``rank`` (weights uninitialised; same device/dtype)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    device, dtype = conv.weight.device, conv.weight.dtype
    first = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
                      padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
                      bias=False, padding_mode=conv.padding_mode, device=device, dtype=dtype)
    second = nn.Conv2d(rank, conv.out_channels, 1, bias=True, device=device, dtype=dtype)
    return nn.Sequential(first, second)


def empty_conv_triple(conv: nn.Conv2d, spatial_rank: int, rank: int) -> nn.Sequential:
    """The 3-D factorised structure of ``conv``: ``k x 1`` (``s`` filters), ``1 x k`` (``rank``), 1x1 with bias."""
    vertical, horizontal = empty_spatial_pair(conv, spatial_rank, rank)
    pointwise = nn.Conv2d(rank, conv.out_channels, 1, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    return nn.Sequential(vertical, horizontal, pointwise)


def empty_linear_pair(linear: nn.Linear, rank: int) -> nn.Sequential:
    """The factorised structure of ``linear`` at ``rank``; the bias (if any) sits on the second layer."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    device, dtype = linear.weight.device, linear.weight.dtype
    first = nn.Linear(linear.in_features, rank, bias=False, device=device, dtype=dtype)
    second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, device=device, dtype=dtype)
    return nn.Sequential(first, second)


_M = TypeVar("_M", bound=nn.Module)


def _halves(pair: nn.Sequential, kind: type[_M]) -> tuple[_M, _M]:
    first, second = pair[0], pair[1]
    assert isinstance(first, kind) and isinstance(second, kind)
    return first, second


@torch.no_grad()
def conv_pair(conv: nn.Conv2d, first: Tensor, second: Tensor, bias: Tensor) -> nn.Sequential:
    """``conv(first) -> conv1x1(second) + bias`` in ``conv``'s geometry (no edit recorded: see :func:`replace_conv_`).

    ``first`` is ``(r, c, k, k)`` (the ``r`` reduced filters), ``second`` is ``(d, r)`` (the matrix ``P``) and
    ``bias`` has ``d`` entries; the pair computes ``second @ (first * x) + bias``.
    """
    pair = empty_conv_pair(conv, first.shape[0])
    reduce, expand = _halves(pair, nn.Conv2d)
    reduce.weight.copy_(first.reshape(reduce.weight.shape))
    expand.weight.copy_(second.reshape(expand.weight.shape))
    assert expand.bias is not None
    expand.bias.copy_(bias)
    return pair.train(conv.training)


def replace_conv_(model: nn.Module, fqn: str, first: Tensor, second: Tensor, bias: Tensor) -> nn.Sequential:
    """Swap the conv at ``fqn`` for :func:`conv_pair` of it and record the edit."""
    conv = check_conv(model.get_submodule(fqn), fqn)
    pair = conv_pair(conv, first, second, bias)
    set_submodule(model, fqn, pair)
    record_edit(model, "lowrank_conv", layer=fqn, rank=int(first.shape[0]))
    return pair


@torch.no_grad()
def replace_conv3d_(model: nn.Module, fqn: str, conv: nn.Conv2d, vertical: Tensor, horizontal: Tensor,
                    pointwise: Tensor, bias: Tensor) -> nn.Sequential:
    """Put the 3-D factorisation of ``conv`` (the original layer at ``fqn``) in its place and record the edit.

    ``vertical`` is ``(s, c, kh, 1)``, ``horizontal`` ``(r, s, 1, kw)``, ``pointwise`` ``(d, r)``; the triple
    computes ``pointwise @ (horizontal * (vertical * x)) + bias``.
    """
    check_conv(conv, fqn)
    triple = empty_conv_triple(conv, vertical.shape[0], horizontal.shape[0])
    for layer, weight in zip(triple, (vertical, horizontal, pointwise), strict=True):
        assert isinstance(layer, nn.Conv2d)
        layer.weight.copy_(weight.reshape(layer.weight.shape))
    last = triple[2]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    last.bias.copy_(bias)
    triple.train(conv.training)
    set_submodule(model, fqn, triple)
    record_edit(model, "lowrank_conv3d", layer=fqn, spatial_rank=int(vertical.shape[0]), rank=int(horizontal.shape[0]))
    return triple


@torch.no_grad()
def replace_linear_(
    model: nn.Module, fqn: str, first: Tensor, second: Tensor, bias: Tensor | None = None
) -> nn.Sequential:
    """Swap the Linear at ``fqn`` for ``Linear(first) -> Linear(second) + bias`` and record the edit.

    ``bias`` defaults to the layer's own; a layer without bias stays without one.
    """
    linear = model.get_submodule(fqn)
    _check_plain(linear, fqn, nn.Linear)
    assert isinstance(linear, nn.Linear)
    pair = empty_linear_pair(linear, first.shape[0])
    reduce, expand = _halves(pair, nn.Linear)
    reduce.weight.copy_(first)
    expand.weight.copy_(second)
    if linear.bias is not None and expand.bias is not None:
        expand.bias.copy_(linear.bias if bias is None else bias)
    pair.train(linear.training)
    set_submodule(model, fqn, pair)
    record_edit(model, "lowrank_linear", layer=fqn, rank=int(first.shape[0]))
    return pair


def _bounded(params: dict, key: str, limit: int) -> int:
    """``params[key]`` as a rank in ``[1, limit]`` (a file's edit never allocates more than the layer it replaces)."""
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{key} {value!r} is not an integer in [1, {limit}]")
    return value


@register_edit("lowrank_conv")
def _replay_conv(model: nn.Module, params: dict) -> None:
    fqn = str(params["layer"])
    conv = check_conv(model.get_submodule(fqn), fqn)
    set_submodule(model, fqn, empty_conv_pair(conv, _bounded(params, "rank", conv.out_channels)))


@register_edit("lowrank_conv3d")
def _replay_conv3d(model: nn.Module, params: dict) -> None:
    fqn = str(params["layer"])
    conv = check_conv(model.get_submodule(fqn), fqn)
    kh, kw = conv.kernel_size
    spatial = _bounded(params, "spatial_rank", min(conv.in_channels * kh, conv.out_channels * kw))
    set_submodule(model, fqn, empty_conv_triple(conv, spatial, _bounded(params, "rank", conv.out_channels)))


@register_edit("lowrank_linear")
def _replay_linear(model: nn.Module, params: dict) -> None:
    fqn = str(params["layer"])
    linear = model.get_submodule(fqn)
    _check_plain(linear, fqn, nn.Linear)
    assert isinstance(linear, nn.Linear)
    limit = max(linear.in_features, linear.out_features)
    set_submodule(model, fqn, empty_linear_pair(linear, _bounded(params, "rank", limit)))
