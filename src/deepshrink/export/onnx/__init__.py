"""ONNX export: the float graph from PyTorch's dynamo exporter, each compressed weight in its compressed form.

``deepshrink.export.to_onnx(model, example_inputs, "model.onnx")`` (or ``deepshrink export FILE --format onnx``)
writes a file that stock ONNX Runtime runs. The mapping of each deepshrink state to ONNX nodes, and what ORT does
with it at load, is in docs/onnx.md. Options (``--option key=value`` on the command line):

* ``opset`` (21): ONNX opset; 21 allows ``UINT4``/``INT4`` tensors and 16-bit Q/DQ (18 is the lowest accepted).
* ``activations`` ("qdq"): fixed-point layers with activation formats as Q/DQ pairs (int8 kernels in ORT; bit-exact
  for layers quantized with ``rounding="half_even"``), or "exact" (float ops rounding like the layer: bit-exact,
  float kernels), or "float" (weights only).
* ``encoding`` ("auto"): the smallest candidate per weight, or one by name (codes, gaps, ints, float).
* ``dynamic_dims`` ("0"): input dimensions left symbolic (comma-separated; "0,1" for batch and sequence).
* ``metadata`` (False): keep the exporter's per-node metadata (source stack traces, module names: a few KB,
  and paths of this machine) and intermediate shape annotations.
* ``verify`` (True): run the written graph in ONNX Runtime on the example and report the difference from the
  model's own output.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ...core.atomic import atomic_write_bytes
from ...core.errors import ConfigError
from ...core.kinds import FixedPointKind, StoredWeight, kind_of
from ...core.kinds.fixedpoint import formats
from ...core.state import plain_copy
from ...runtime.loader import stored_from_model
from .. import register_exporter
from . import qdq
from .encodings import ENCODERS, ENCODING_NAMES, Target, check_exact, describe, encode, register_encoder
from .graph import Graph, as_args, export_program, optimize, tensors_of, to_proto, widen_batch

__all__ = ["ENCODERS", "MIN_OPSET", "export_onnx", "register_encoder"]

MIN_OPSET = 18
"""The dynamo exporter's lowest opset (``BitwiseAnd`` of the bit-field unpacking is opset 18 too)."""
MAX_PROTO = 2**31 - 1


def _dims(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    try:
        return tuple(int(v) for v in str(value).replace(" ", "").split(",") if v != "")
    except ValueError as exc:
        raise ConfigError(f"dynamic_dims must be comma-separated dimension indices, got {value!r}") from exc


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"expected a boolean option, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def _locate(graph: Graph, name: str, weight: StoredWeight) -> str | None:
    """The initializer holding stored weight ``name`` (by its parameter name, else by value); None when the graph
    has none (the translation drops parameters that no output depends on)."""
    dense = weight.dense()
    held = graph.array(name)
    if held is not None:
        if held.shape == dense.shape and np.array_equal(held, dense):
            return name
        module = name.rpartition(".")[0] or "the model"
        raise ConfigError(f"module {module!r}: the exported initializer {name!r} differs from the compressed weight "
                          "(the exporter transformed it); cannot keep it compressed")
    return graph.find_by_value(dense)


def _with_act_formats(weight: StoredWeight) -> bool:
    return isinstance(kind_of(weight.kind), FixedPointKind) and formats(weight).act_in is not None


@torch.no_grad()
def _reference(model: nn.Module, args: tuple[Any, ...]) -> list[np.ndarray]:
    out = model(*args)
    return [t.detach().float().cpu().numpy() for t in tensors_of(out)]


def _verify(data: bytes, model: nn.Module, args: tuple[Any, ...]) -> dict[str, Any]:
    """ORT (CPU) outputs on ``args`` against the model's own: max |difference| and its ratio to the output range."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), tensors_of(args), strict=False)}
    got = session.run(None, feeds)
    ref = _reference(model, args)
    diff = max((float(np.abs(g.astype(np.float64) - r).max()) for g, r in zip(got, ref, strict=False) if r.size),
               default=0.0)
    span = max((float(r.max() - r.min()) for r in ref if r.size), default=0.0)
    return {"max_abs_diff": diff, "relative_to_range": diff / span if span else diff,
            "bit_exact": all(np.array_equal(g, r) for g, r in zip(got, ref, strict=False))}


@register_exporter("onnx")
def export_onnx(model: nn.Module, example_inputs: Any, out: str | os.PathLike[str], *, opset: int = 21,
                activations: str = "qdq", encoding: str = "auto", dynamic_dims: Any = "0", verify: Any = True,
                metadata: Any = False, **unknown: Any) -> dict[str, Any]:
    """Write ``model`` (carrying deepshrink compression state) to ``out`` as ONNX; returns a JSON-able report.

    Nothing is written when the model cannot be exported (a ConfigError names the module and the op).
    """
    if unknown:
        raise ConfigError(f"unknown onnx export option(s) {sorted(unknown)} (known: opset, activations, encoding, "
                          "dynamic_dims, verify, metadata)")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if activations not in qdq.MODES:
        raise ConfigError(f"activations must be one of {', '.join(qdq.MODES)}, got {activations!r}")
    if encoding not in ENCODING_NAMES:
        raise ConfigError(f"encoding must be one of {', '.join(sorted(ENCODING_NAMES))}, got {encoding!r}")
    dims = _dims(dynamic_dims)
    model = model.eval()
    weights, _ = stored_from_model(model)
    for stored in weights.values():
        kind_of(stored.kind).check(stored)

    args = as_args(example_inputs)
    plain = plain_copy(model).eval()
    trace_args = widen_batch(args)
    proto = to_proto(export_program(plain, trace_args, dims), opset)
    graph = Graph(proto)

    report_weights: dict[str, dict[str, Any]] = {}
    layers: dict[str, tuple[str, StoredWeight]] = {}
    for name, stored in weights.items():
        held = _locate(graph, name, stored)
        if held is None:  # dead code the exporter dropped (e.g. a pooler whose output nothing reads)
            report_weights[name] = {"kind": stored.kind, "encoding": "absent (not used by the outputs)", "bytes": 0,
                                    "fp32_bytes": 0, "shape": list(stored.shape)}
            continue
        module = name.rpartition(".")[0]
        if activations != "float" and _with_act_formats(stored):
            if held != name:
                raise ConfigError(f"fixed-point layer {module!r}: its weight was renamed by the exporter")
            layers[name] = (module, stored)
            continue
        initializer = graph.initializer(held)
        assert initializer is not None
        chosen = encode(stored, Target(held, tuple(stored.shape), opset, initializer.ByteSize()), encoding)
        if chosen.added is not None:
            check_exact(chosen.added, held, stored.dense(), name, opset)
            graph.replace_initializer(held, chosen.added)
        report_weights[name] = describe(chosen, stored)
    fixed = qdq.apply(graph, layers, activations, opset, encoding)
    for name, entry in fixed.items():
        stored = layers[name][1]
        report_weights[name] = {"kind": stored.kind, "encoding": entry.pop("weight"), "bytes": entry.pop("bytes"),
                                "fp32_bytes": stored.numel * 4, "shape": list(stored.shape), **entry}
    graph.sort()
    proto = optimize(proto)
    if not _flag(metadata):
        strip(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ConfigError(f"internal error: the exported graph fails onnx.checker: {exc}") from exc
    data = proto.SerializeToString()
    if len(data) > MAX_PROTO:
        raise ConfigError(f"the graph is {len(data):,} bytes, past protobuf's 2 GiB limit for one ONNX file")
    checked = _verify(data, model, trace_args) if _flag(verify) else None
    atomic_write_bytes(out, data)
    report: dict[str, Any] = {
        "format": "onnx", "path": str(out), "bytes": len(data), "opset": opset, "activations": activations,
        "exporter": f"torch.export + torch.onnx (dynamo) {torch.__version__}, onnxscript optimizer",
        "inputs": [{"name": i.name, "shape": _shape(i)} for i in proto.graph.input],
        "outputs": [{"name": o.name, "shape": _shape(o)} for o in proto.graph.output],
        "weights": report_weights,
        "compressed_weight_bytes": sum(w["bytes"] for w in report_weights.values()),
        "fp32_weight_bytes": sum(w["fp32_bytes"] for w in report_weights.values()),
        "checker": "full_check passed",
    }
    if checked is not None:
        report["verify"] = checked
    return report


def strip(proto: onnx.ModelProto) -> None:
    """Drop per-node metadata and intermediate shape annotations (ORT needs neither; they cost bytes)."""
    del proto.graph.value_info[:]
    for node in proto.graph.node:
        del node.metadata_props[:]


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

