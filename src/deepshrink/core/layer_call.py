"""How a weight layer computes with a weight and bias it is handed, for models with layers of their own.

The fixed-point simulation, the integer engine and the runtime all need "this layer's computation, with
*these* weights" (integers, decoded values). For ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``/``nn.Embedding``
and subclasses that do not override ``forward`` that is the functional op with the layer's geometry. A subclass
with a ``forward`` of its own (TF-"same" padding computed from the input size, weight standardisation, ...)
runs that ``forward``, with the weight and bias it passes to its one linear/conv/embedding call swapped for the
given ones; a subclass known to compute exactly like its base can say so with :func:`register_equivalent`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import UnsupportedLayerError

BASE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)

EQUIVALENT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {}
"""Subclasses registered as computing exactly like a base layer (their ``forward`` adds nothing)."""

_CALLS: dict[str, Callable[..., Tensor]] = {"linear": F.linear, "conv1d": F.conv1d, "conv2d": F.conv2d,
                                           "embedding": F.embedding}


def register_equivalent(cls: type[nn.Module], base: type[nn.Module]) -> type[nn.Module]:
    """Declare that ``cls`` (a subclass of ``base``) computes exactly what ``base`` computes with its weights."""
    if base not in BASE_LAYERS or not issubclass(cls, base):
        raise TypeError(f"{cls.__name__} must subclass one of {[b.__name__ for b in BASE_LAYERS]}")
    EQUIVALENT_LAYERS[cls] = base
    return cls


def user_class(module: nn.Module) -> type[nn.Module]:
    """The module's own class (the one torch's parametrize derived its ``Parametrized...`` class from)."""
    cls = type(module)
    if cls.__name__.startswith("Parametrized") and len(cls.__mro__) > 1:
        cls = cls.__mro__[1]
    return cls


def plain_type(module: nn.Module) -> type[nn.Module] | None:
    """The base layer ``module`` computes exactly like, or None when its class has a ``forward`` of its own."""
    cls = user_class(module)
    if cls in BASE_LAYERS:
        return cls
    if cls in EQUIVALENT_LAYERS:
        return EQUIVALENT_LAYERS[cls]
    for base in BASE_LAYERS:
        if issubclass(cls, base):
            own = [name for name in ("forward", "_conv_forward") if getattr(cls, name, None) is not getattr(base, name, None)]
            return None if own else base
    return None


def channel_axis(module: nn.Module) -> int:
    """The output-channel axis of the layer's output: last for Linear (and Embedding), 1 for convolutions."""
    return -1 if isinstance(module, nn.Linear | nn.Embedding) else 1


def functional_call(kind: type[nn.Module], module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``kind``'s functional op with ``module``'s geometry (stride, padding, groups, ...)."""
    m: Any = module
    if kind is nn.Linear:
        return F.linear(x, weight, bias)
    if kind is nn.Embedding:
        return F.embedding(x, weight, m.padding_idx, m.max_norm, m.norm_type, m.scale_grad_by_freq, m.sparse)
    if m.padding_mode != "zeros":
        raise UnsupportedLayerError(f"{type(module).__name__}: padding_mode={m.padding_mode!r} (zeros only here)")
    conv = F.conv1d if kind is nn.Conv1d else F.conv2d
    return conv(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)


class _Swap(TorchFunctionMode):
    """Replaces the weight/bias of the single linear/conv/embedding call a layer's own ``forward`` makes."""

    def __init__(self, module: nn.Module, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.module, self.weight, self.bias, self.calls = module, weight, bias, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name in _CALLS and func in (_CALLS[name], getattr(torch, name, None)):
            self.calls += 1
            if self.calls > 1:
                raise UnsupportedLayerError(
                    f"{type(self.module).__name__}.forward makes more than one {name} call; its computation cannot be "
                    "re-run with other weights (register_equivalent it, or keep the layer uncompressed)")
            if name == "embedding":
                args = (args[0], self.weight, *args[2:])
            else:
                args = (args[0], self.weight, self.bias, *args[3:])
                kwargs.pop("bias", None)
            kwargs.pop("weight", None)
        return func(*args, **kwargs)


_ARGS = {"linear": ("input", "weight", "bias"),
         "conv1d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
         "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups")}


class _Record(TorchFunctionMode):
    """Records the arguments of the first linear/conv call a layer's ``forward`` makes."""

    def __init__(self) -> None:
        super().__init__()
        self.call: tuple[str, dict[str, Any]] | None = None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if self.call is None and name in _ARGS and func in (_CALLS[name], getattr(torch, name, None)):
            self.call = (name, {**dict(zip(_ARGS[name], args, strict=False)), **(kwargs or {})})
        return func(*args, **(kwargs or {}))


def op_call(module: nn.Module, x: Tensor) -> tuple[str, Tensor, dict[str, Any]]:
    """``(op, op input, geometry)`` of the linear/conv call ``module`` makes on ``x``: what the weight multiplies
    (after any padding the layer's own ``forward`` applies), with the op's stride/padding/dilation/groups."""
    record = _Record()
    with record:
        type(module).forward(module, x)
    if record.call is None:
        raise UnsupportedLayerError(f"{type(module).__name__}.forward made no linear/conv call")
    name, arguments = record.call
    geometry = {k: v for k, v in arguments.items() if k not in ("input", "weight", "bias")}
    return name, arguments["input"], geometry


def layer_call(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``module``'s computation on ``x`` with ``weight`` and ``bias`` in place of its own (any dtype the op takes)."""
    kind = plain_type(module)
    if kind is not None:
        return functional_call(kind, module, x, weight, bias)
    swap = _Swap(module, weight, bias)
    with swap:
        out = type(module).forward(module, x)  # not module(x): the layer's own hooks must not run again
    if swap.calls != 1:
        raise UnsupportedLayerError(f"{type(module).__name__}.forward made no linear/conv call to re-run")
    return out
