"""Discover a model's structure by running it once, not by symbolic tracing.

Real ``forward`` methods have Python control flow, ``*args``/``**kwargs`` and dict inputs, which
torch.fx's symbolic tracer cannot follow. :func:`trace_calls` instead runs the model on an example batch and
records, by tensor identity, every call of a *leaf* module (a module without children of its own: Linear,
Conv, BatchNorm, ReLU, a conv subclass with its own ``forward``, ...) and every torch operation made outside leaf
modules (residual adds, ``F.relu``, ``flatten``, pooling). The recorded :class:`ExecutionGraph` answers what
the compression passes ask: the execution order of layers, which BatchNorm reads only a conv's output, which
layers feed a ReLU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .errors import ConfigError

__all__ = ["Call", "ExecutionGraph", "clip_range", "is_leaf", "is_relu", "run_model", "split_batch", "trace_calls"]


def split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    """``(inputs, labels or None)`` of a batch: a tensor, a feature dict or a list of strings (unlabelled), or
    ``(inputs, labels, ...)`` / ``[inputs]`` as data loaders give them."""
    if isinstance(batch, tuple | list):
        if not batch:
            raise ConfigError("an empty batch")
        if all(isinstance(item, str) for item in batch):
            return list(batch), None
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    return batch, None


def run_model(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on a batch's inputs (see :func:`split_batch`; a feature dict is passed as one argument)."""
    inputs, _ = split_batch(batch)
    return model(dict(inputs) if isinstance(inputs, dict) else inputs)


def is_leaf(module: nn.Module) -> bool:
    """A module whose computation is recorded as one call: no children besides its parametrizations."""
    return all(name == "parametrizations" for name, _ in module.named_children())


Value = tuple[int, int]
"""A tensor value: ``(id of the tensor object, version)``. A call that returns a tensor it was given (in-place ops,
``nn.Identity``) makes a new version, so "who reads this value" stays exact under aliasing."""


@dataclass
class Call:
    """One recorded call: a leaf module (``module`` set, ``name`` its fqn) or a torch operation (``op`` set)."""

    index: int
    name: str
    module: nn.Module | None
    op: Any
    inputs: list[Value]
    outputs: list[Value]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def op_name(self) -> str:
        return getattr(self.op, "__name__", str(self.op))


@dataclass
class ExecutionGraph:
    """The calls of one forward pass in order, with who produced and who consumed each tensor."""

    calls: list[Call]
    producer: dict[Value, int]
    consumers: dict[Value, list[int]]
    values: dict[int, Tensor] = field(default_factory=dict, repr=False)
    versions: dict[int, int] = field(default_factory=dict, repr=False)

    def tensor(self, value: Value) -> Tensor | None:
        """The tensor object of ``value`` (in-place ops after it may have changed its contents)."""
        return self.values.get(value[0])

    def calls_of(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.module is not None and c.name == name]

    def module_calls(self, types: type | tuple[type, ...] = nn.Module) -> list[Call]:
        return [c for c in self.calls if c.module is not None and isinstance(c.module, types)]

    def order(self) -> list[str]:
        """Leaf-module fqns in the order the forward pass first calls them."""
        seen: dict[str, None] = {}
        for call in self.calls:
            if call.module is not None:
                seen.setdefault(call.name, None)
        return list(seen)

    def readers(self, value: Value) -> list[Call]:
        """Every call that reads ``value``."""
        return [self.calls[i] for i in self.consumers.get(value, [])]

    def sole_reader(self, call: Call, passthrough: tuple[type, ...] = ()) -> Call | None:
        """The one call reading ``call``'s output (skipping ``passthrough`` modules), or None when not exactly one."""
        current = call
        while len(current.outputs) == 1:
            readers = self.readers(current.outputs[0])
            if len(readers) != 1:
                return None
            (reader,) = readers
            if reader.module is None or not isinstance(reader.module, passthrough):
                return reader
            current = reader
        return None


class _Recorder(TorchFunctionMode):
    """Records torch operations made outside leaf-module calls."""

    def __init__(self, graph: ExecutionGraph, depth: list[int]) -> None:
        super().__init__()
        self.graph, self.depth = graph, depth

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth[0] == 0:
            outputs = _tensors(out)
            if outputs:
                graph = self.graph
                _add(graph, getattr(func, "__name__", str(func)), None, func, _read(graph, _tensors((args, kwargs))),
                     outputs, args, kwargs)
        return out


def _tensors(obj: Any) -> list[Tensor]:
    return [leaf for leaf in tree_flatten(obj)[0] if isinstance(leaf, Tensor)]


def _read(graph: ExecutionGraph, tensors: list[Tensor]) -> list[Value]:
    """The current values of ``tensors`` (holding the objects keeps their ids unique for the whole pass)."""
    for t in tensors:
        graph.values.setdefault(id(t), t)
        graph.versions.setdefault(id(t), 0)
    return [(id(t), graph.versions[id(t)]) for t in tensors]


def _summary(obj: Any) -> Any:
    """Arguments with tensors replaced by their ids (what an exporter needs: sizes, strides, dims)."""
    if isinstance(obj, Tensor):
        return ("tensor", id(obj))
    if isinstance(obj, tuple | list):
        return type(obj)(_summary(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _summary(v) for k, v in obj.items()}
    return obj


def _add(graph: ExecutionGraph, name: str, module: nn.Module | None, op: Any, inputs: list[Value],
         outputs: list[Tensor], args: Any, kwargs: Any) -> None:
    """Record one call: it read the values ``inputs``, and each output is a new value."""
    call = Call(len(graph.calls), name, module, op, inputs, [], _summary(args), _summary(kwargs))
    graph.calls.append(call)
    for value in call.inputs:
        graph.consumers.setdefault(value, []).append(call.index)
    for tensor in outputs:
        graph.values.setdefault(id(tensor), tensor)
        version = graph.versions[id(tensor)] + 1 if id(tensor) in graph.versions else 0
        graph.versions[id(tensor)] = version
        call.outputs.append((id(tensor), version))
        graph.producer[(id(tensor), version)] = call.index


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def trace_calls(model: nn.Module, example: Any, leaf: Callable[[nn.Module], bool] = is_leaf) -> ExecutionGraph:
    """Run ``model`` once (eval mode, no grad) on ``example`` and record its calls (see module doc).

    ``example`` is passed as :func:`run_model` passes a batch. Raises :class:`ConfigError` when the model cannot
    run on it (the message names the first module whose call failed).
    """
    graph = ExecutionGraph([], {}, {})
    depth = [0]
    stack: list[tuple[str, nn.Module, list[Value]]] = []
    current: list[str] = []
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            current.append(name)
            if depth[0] == 0 and leaf(module):
                stack.append((name, module, _read(graph, _tensors((args, kwargs)))))
            if leaf(module):
                depth[0] += 1
        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            current.pop()
            if leaf(module):
                depth[0] -= 1
            if depth[0] == 0 and leaf(module) and stack and stack[-1][1] is module:
                fqn, mod, inputs = stack.pop()
                _add(graph, fqn, mod, None, inputs, _tensors(output), args, kwargs)
        return hook

    for fqn, module in model.named_modules():
        if "parametrizations" in fqn.split("."):
            continue
        handles.append(module.register_forward_pre_hook(pre(fqn), with_kwargs=True))
        handles.append(module.register_forward_hook(post(fqn), with_kwargs=True))
    try:
        with _eval_mode(model), _Recorder(graph, depth):
            run_model(model, example)
    except Exception as exc:
        where = f" in {current[-1]!r}" if current and current[-1] else ""
        raise ConfigError(f"cannot run {type(model).__name__} on the example input to discover its structure"
                          f"{where}: {type(exc).__name__}: {exc}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return graph


RELU_OPS = {torch.relu, torch.relu_, F.relu}
"""Functional forms of ReLU recognised after a layer (``Tensor.relu`` / ``relu_`` are matched by name)."""


def is_relu(call: Call) -> bool:
    """Whether ``call`` applies a plain ReLU (module or function)."""
    if call.module is not None:
        return isinstance(call.module, nn.ReLU)
    return call.op in RELU_OPS or call.op_name in ("relu", "relu_")


def clip_range(call: Call) -> tuple[float, float] | None:
    """``(low, high)`` when ``call`` clips its input to a fixed interval (ReLU, ReLU6, Hardtanh, ``clamp`` with
    constant bounds), else None: error beyond those bounds never reaches the rest of the network."""
    inf = float("inf")
    module = call.module
    if module is not None:
        if isinstance(module, nn.ReLU6):
            return 0.0, 6.0
        if isinstance(module, nn.Hardtanh):
            return float(module.min_val), float(module.max_val)
        if isinstance(module, nn.ReLU):
            return 0.0, inf
        return None
    if is_relu(call):
        return 0.0, inf
    name = call.op_name
    if name in ("relu6", "relu6_"):
        return 0.0, 6.0
    if name in ("hardtanh", "hardtanh_"):
        low = call.kwargs.get("min_val", call.args[1] if len(call.args) > 1 else -1.0)
        high = call.kwargs.get("max_val", call.args[2] if len(call.args) > 2 else 1.0)
        return (float(low), float(high)) if isinstance(low, int | float) and isinstance(high, int | float) else None
    if name in ("clamp", "clamp_", "clip", "clip_"):
        low = call.kwargs.get("min", call.args[1] if len(call.args) > 1 else None)
        high = call.kwargs.get("max", call.args[2] if len(call.args) > 2 else None)
        if (low is None or isinstance(low, int | float)) and (high is None or isinstance(high, int | float)):
            return (-inf if low is None else float(low)), (inf if high is None else float(high))
    return None
