"""The float graph: ``torch.export`` -> ONNX (the dynamo exporter), graph surgery helpers, and blame for refusals.

Why the dynamo path: ``torch.export`` follows Python control flow that does not depend on tensor values (it runs
the real ``forward``), takes dict inputs as they are, keeps shapes symbolic only where asked (the batch), and
names every initializer after its parameter (``fc1.weight``), so a stored weight finds its initializer by name.
The TorchScript path mis-exports TF-"same" padding (a negative floor division becomes a truncation) and needs
workarounds for dict inputs. The graph is translated unoptimised; :func:`optimize` then runs onnxscript's
optimiser with the compressed weights' decode nodes protected from constant folding (folding them would write
the dense tensor back into the file), so a BatchNorm after a compressed conv stays a ``BatchNormalization`` node
that ONNX Runtime fuses at load, after it has rebuilt the weight.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import logging
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from ...core.errors import ConfigError

PREFIX = "deepshrink/"
"""Name prefix of every node and initializer the exporter adds (the optimiser never folds these nodes)."""


# ------------------------------------------------------------------------------------------------------ inputs
def as_args(example_inputs: Any) -> tuple[Any, ...]:
    """Positional arguments for ``forward``: a tensor or a feature dict is one argument, a tuple/list is several."""
    if isinstance(example_inputs, tuple | list):
        if not example_inputs:
            raise ConfigError("example_inputs is empty: give one input batch (a tensor, a dict or a tuple)")
        return tuple(example_inputs)
    return (example_inputs,)


def tensors_of(args: Any) -> list[Tensor]:
    return [leaf for leaf in tree_flatten(args)[0] if isinstance(leaf, Tensor)]


def widen_batch(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Batch-1 examples repeated to batch 2: ``torch.export`` specialises a size-1 dimension to a constant."""
    leaves = tensors_of(args)
    if leaves and all(t.dim() > 0 and t.shape[0] == 1 for t in leaves):
        return tree_map(lambda t: torch.cat([t, t]) if isinstance(t, Tensor) else t, args)
    return args


def dynamic_shapes(args: tuple[Any, ...], dims: tuple[int, ...]) -> Any:
    """``Dim.AUTO`` on ``dims`` of every tensor input (a dimension the model fixes stays static, silently)."""
    def spec(leaf: Any) -> Any:
        if not isinstance(leaf, Tensor):
            return None
        return {d: torch.export.Dim.AUTO for d in dims if d < leaf.dim()}

    return tree_map(spec, args)


# ---------------------------------------------------------------------------------------------------- exporting
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints and its optional-dependency log lines."""
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def export_program(model: nn.Module, args: tuple[Any, ...], dims: tuple[int, ...]) -> Any:
    """``torch.export.export`` (non-strict) of ``model``; a failure is a ConfigError naming the module and the code."""
    try:
        with _quiet():
            return torch.export.export(model, args, dynamic_shapes=dynamic_shapes(args, dims), strict=False)
    except Exception as exc:  # torch raises many types here; each becomes one readable refusal
        raise ConfigError(f"cannot export {type(model).__name__} to ONNX: {blame_trace(exc, model)}") from exc


def to_proto(program: Any, opset: int) -> onnx.ModelProto:
    """The unoptimised ONNX translation of an ``ExportedProgram``; an op without a translation is a ConfigError."""
    try:
        with _quiet():
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, optimize=False,
                                             verbose=False)
    except Exception as exc:
        raise ConfigError(f"cannot export to ONNX (opset {opset}): {blame_node(exc, program)}") from exc
    assert onnx_program is not None
    return onnx_program.model_proto


def optimize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxscript's optimiser (constant folding, clean-up, fusions) without touching the nodes we added."""
    import onnx_ir as ir
    from onnxscript.optimizer import optimize_ir

    model = ir.from_proto(proto)
    with _quiet():
        optimize_ir(model, should_fold=lambda node: False if (node.name or "").startswith(PREFIX) else None)
    return ir.to_proto(model)


# -------------------------------------------------------------------------------------------------------- blame
def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def _summary(exc: BaseException) -> str:
    """The first meaningful line of the innermost exception."""
    inner = _chain(exc)[-1]
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    text = lines[0] if lines else type(inner).__name__
    if "data-dependent" in text or "GuardOnDataDependent" in type(inner).__name__:
        text = f"Python control flow on a tensor's value ({text})"
    return f"{type(inner).__name__}: {text[:300]}"


def blame_trace(exc: BaseException, model: nn.Module) -> str:
    """Which module's ``forward`` (and which line of it) a tracing failure happened in, and why."""
    names = {id(m): (fqn, type(m).__name__) for fqn, m in model.named_modules()}
    culprit: tuple[str, str, str, int, str] | None = None
    for link in _chain(exc):
        for frame, lineno in traceback.walk_tb(link.__traceback__):
            owner = frame.f_locals.get("self")
            in_dispatch = frame.f_code.co_filename.endswith("torch/nn/modules/module.py")
            if isinstance(owner, nn.Module) and id(owner) in names and not in_dispatch:
                fqn, cls = names[id(owner)]
                line = linecache.getline(frame.f_code.co_filename, lineno).strip()
                culprit = (fqn, cls, frame.f_code.co_filename, lineno, line)
    if culprit is None:
        return _summary(exc)
    fqn, cls, path, lineno, line = culprit
    where = f"module {fqn!r} ({cls})" if fqn else f"the model's own forward ({cls})"
    return f"{where}, op `{line}` ({path.rsplit('/', 1)[-1]}:{lineno}): {_summary(exc)}"


_NODE = re.compile(r"translating node %(\w+) .*?target=([\w.:]+)")


def blame_node(exc: BaseException, program: Any) -> str:
    """The op the ONNX translation failed on, and the module it belongs to (from the exported graph's metadata)."""
    found = next((m for m in (_NODE.search(str(link)) for link in _chain(exc)) if m), None)
    if found is None:
        return _summary(exc)
    node_name, target = found.groups()
    op = target.removeprefix("torch.ops.")
    module = "the model's own forward"
    for node in program.graph.nodes:
        if node.name == node_name:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                fqn, cls = list(stack.values())[-1]
                cls = str(cls).rsplit(".", 1)[-1]
                module = f"module {fqn!r} ({cls})" if fqn else f"{module} ({cls})"
            break
    return f"{module} uses op {op}, which has no ONNX translation ({_summary(exc)})"


# ---------------------------------------------------------------------------------------------- graph surgery
@dataclass
class Added:
    """Initializers and nodes one encoding adds (its output keeps the name of the tensor it replaces)."""

    initializers: list[TensorProto] = field(default_factory=list)
    nodes: list[onnx.NodeProto] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Serialized size of the added initializers (what the encoding costs in the file)."""
        return sum(t.ByteSize() for t in self.initializers)

    def extend(self, other: Added) -> None:
        self.initializers += other.initializers
        self.nodes += other.nodes


class Builder:
    """Adds uniquely named initializers and nodes under one prefix (``deepshrink/<tensor>/...``)."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"{PREFIX}{tag}/"
        self.added = Added()
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}{self._count}"

    def const(self, array: Any, hint: str = "c") -> str:
        """A new initializer holding ``array`` (numpy, incl. ml_dtypes 4-bit arrays, which onnx packs)."""
        name = self.name(hint)
        self.added.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def i64(self, values: Any, hint: str = "i") -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """Append a node; returns its (single) output name (``output`` to give it a fixed name)."""
        out = output or self.name(op_type.lower())
        self.added.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out


class Graph:
    """Index over a ModelProto's main graph: initializers by name, consumers of each tensor."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.g = proto.graph

    def initializer(self, name: str) -> TensorProto | None:
        return next((t for t in self.g.initializer if t.name == name), None)

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.initializer(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if name in n.input]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.g.node if name in n.output), None)

    def replace_initializer(self, name: str, added: Added) -> None:
        """Drop initializer ``name``; ``added``'s nodes now produce a tensor of that name."""
        keep = [t for t in self.g.initializer if t.name != name]
        del self.g.initializer[:]
        self.g.initializer.extend(keep + added.initializers)
        self.add(Added(nodes=added.nodes))

    def add(self, added: Added) -> None:
        self.g.initializer.extend(added.initializers)
        self.g.node.extend(added.nodes)

    def remove_node(self, node: onnx.NodeProto) -> None:
        self.g.node.remove(node)

    def find_by_value(self, array: np.ndarray) -> str | None:
        """The initializer holding exactly ``array`` (the exporter may rename a parameter)."""
        for t in self.g.initializer:
            if (tuple(t.dims) == array.shape and t.data_type == TensorProto.FLOAT
                    and np.array_equal(numpy_helper.to_array(t), array)):
                return t.name
        return None

    def sort(self) -> None:
        """Order nodes topologically (the ONNX rule; surgery appends decode nodes after their consumers)."""
        nodes = list(self.g.node)
        ready = {i.name for i in self.g.input} | {t.name for t in self.g.initializer} | {""}
        ordered: list[onnx.NodeProto] = []
        pending = nodes
        while pending:
            rest = []
            for node in pending:
                if all(i in ready for i in node.input):
                    ordered.append(node)
                    ready.update(node.output)
                else:
                    rest.append(node)
            if len(rest) == len(pending):
                missing = sorted({i for n in rest for i in n.input if i not in ready})[:5]
                raise ConfigError(f"internal error: the exported graph has unresolved inputs {missing}")
            pending = rest
        del self.g.node[:]
        self.g.node.extend(ordered)
