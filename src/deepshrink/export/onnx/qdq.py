"""Fixed-point layers with activation formats: weights, biases and activations as ONNX ops.

``activations="qdq"`` (default): the integer weight as an ``int8``/``int16`` initializer feeding
``DequantizeLinear(scale = 2**-frac_len, zero_point = 0)`` (per output channel where the model has one), the bias
as ``int32`` at the accumulator's scale, and ``QuantizeLinear``/``DequantizeLinear`` pairs with the searched
formats on the layer's input and output, so ONNX Runtime's QDQ fusion runs int8 ``QLinearConv`` /
``QLinearMatMul`` / ``QGemm`` kernels. ONNX rounds half to even: bit-exact for layers quantized with
``rounding="half_even"``; with deepshrink's default half up, an output whose accumulator lies exactly half-way
between two steps of its format comes out one step lower (measured in docs/onnx.md). Widths other than 8 and 16 bits saturate with a ``Clip`` after the ``DequantizeLinear``. A bias
beyond int32 at the accumulator's scale (a channel of tiny weights) is added after the op in float: left in
the op, ORT's WeightBiasQuantization would re-quantize it to int32 at that scale and overflow.

``activations="exact"``: the same formats computed with float ops (``Mul`` by ``2**frac_len``, ``Add 0.5`` and
``Floor``, or ``Round`` for half to even, ``Clip``, ``Mul`` back): deepshrink's rounding bit for bit while every partial sum of the float
convolution stays below ``2**24`` steps of the accumulator (always, for 8-bit layers of the sizes here), at float
speed. Layers with a per-token input format always take this path (ONNX has no per-row power-of-two quantizer).

``activations="float"``: weights only (``ints`` -> ``Cast`` -> ``Mul``), activations stay float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from ...core.errors import ConfigError
from ...core.fixed_point import FixedPointFormat, int_range
from ...core.kinds import StoredWeight
from ...core.kinds.fixedpoint import Formats, formats
from .encodings import Target, check_exact, encode, full_ints, int_candidates
from .graph import Added, Builder, Graph

MODES = ("qdq", "exact", "float")
_OPS = ("Conv", "Gemm", "MatMul")
_Q_TYPES = {8: (TensorProto.INT8, np.int8), 16: (TensorProto.INT16, np.int16)}
_UNSIGNED_Q_TYPES = {8: np.uint8, 16: np.uint16}


@dataclass
class Use:
    """One op computing with the layer's weight: ``node`` (Conv/Gemm/MatMul), the weight's channel ``axis`` in the
    tensor the op reads (1 when the op reads the transposed weight, ``MatMul`` of a 3-D Linear), and the
    ``Transpose`` in between, which the export absorbs into the stored integers."""

    node: onnx.NodeProto
    axis: int
    transpose: onnx.NodeProto | None


def uses(graph: Graph, name: str, module: str) -> list[Use]:
    """The Conv/Gemm/MatMul nodes reading weight ``name`` (directly or through a 2-D ``Transpose``)."""
    found: list[Use] = []
    for node in graph.consumers(name):
        if node.op_type in ("Conv", "Gemm") and list(node.input).index(name) == 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if node.op_type == "Gemm" and not trans_b:
                raise ConfigError(f"fixed-point layer {module!r}: Gemm reads its weight untransposed; not supported")
            found.append(Use(node, 0, None))
        elif node.op_type == "Transpose" and [list(a.ints) for a in node.attribute if a.name == "perm"] in ([], [[1, 0]]):
            for reader in graph.consumers(node.output[0]):
                if reader.op_type != "MatMul" or list(reader.input).index(node.output[0]) != 1:
                    raise ConfigError(f"fixed-point layer {module!r}: its transposed weight feeds op {reader.op_type}; "
                                      "activation formats need Conv/Gemm/MatMul (export with activations='float')")
                found.append(Use(reader, 1, node))
        else:
            raise ConfigError(f"fixed-point layer {module!r}: its weight feeds op {node.op_type}; activation formats "
                              "need Conv/Gemm/MatMul (export with activations='float')")
    return found


def _pow2(frac: int) -> float:
    return math.ldexp(1.0, frac)


def _acc_steps(fmt: Formats, act_in: FixedPointFormat) -> np.ndarray:
    """``2**-(input frac + weight frac)`` per output channel (or one)."""
    return np.array([_pow2(-(act_in.frac_len + int(f))) for f in fmt.frac_lens], dtype=np.float64)


def rounded_bias(bias: np.ndarray, fmt: Formats, act_in: FixedPointFormat) -> np.ndarray:
    """deepshrink's bias integers at the accumulator's format: ``floor(b * 2**acc_frac + 0.5)`` (float64), or
    rounded half to even for a layer that rounds so."""
    steps = _acc_steps(fmt, act_in)
    scaled = bias.astype(np.float64) / (steps if steps.size > 1 else steps[0])
    return np.rint(scaled) if fmt.rounding == "half_even" else np.floor(scaled + 0.5)


class _Layer:
    """One fixed-point layer being rewritten (weight ``name`` of ``module``)."""

    def __init__(self, graph: Graph, name: str, module: str, weight: StoredWeight, mode: str, opset: int,
                 want: str) -> None:
        self.graph, self.name, self.module, self.weight = graph, name, module, weight
        self.fmt = formats(weight)
        self.mode = "exact" if self.fmt.dynamic_input and mode == "qdq" else mode
        self.opset, self.want = opset, want
        self.b = Builder(name)
        self.report: dict[str, Any] = {"activations": self.mode, "weight_bits": self.fmt.bits,
                                       "in": ("per-token " if self.fmt.dynamic_input else "") + str(self.fmt.act_in),
                                       "out": str(self.fmt.act_out) if self.fmt.act_out else "float"}

    # weights ------------------------------------------------------------------------------------------------
    def _int_weight(self, ints: np.ndarray, to: int) -> tuple[str, str, int]:
        target = Target(self.name, tuple(ints.shape), self.opset, ints.size * 4)
        options = []
        for label, make in int_candidates(ints, target, to):
            b = Builder(f"{self.name}/{label}")
            out = make(b)
            options.append((b.added.bytes + sum(n.ByteSize() for n in b.added.nodes), label, b, out))
        if self.want in ("ints", "gaps"):
            options = [o for o in options if o[1] == self.want] or options
        size, label, b, out = min(options, key=lambda o: o[0])
        check_exact(b.added, out, ints.astype(onnx.helper.tensor_dtype_to_np_dtype(to)), self.name, self.opset)
        self.b.added.extend(b.added)
        return out, label, size

    def dequantized_weight(self, use: Use) -> str:
        """``DequantizeLinear`` of the integer weight in the layout ``use`` reads."""
        ints = full_ints(self.weight)
        if use.transpose is not None:
            ints = ints.T
        bits = 8 if self.fmt.bits <= 8 else 16
        onnx_type, np_type = _Q_TYPES[bits]
        stored, label, size = self._int_weight(np.ascontiguousarray(ints), onnx_type)
        steps = np.array([_pow2(-int(f)) for f in self.fmt.frac_lens], dtype=np.float32)
        b = self.b
        if steps.size > 1:
            out = b.op("DequantizeLinear", [stored, b.const(steps, "w_scale"), b.const(np.zeros(steps.size, np_type),
                                                                                         "w_zp")], axis=use.axis)
        else:
            out = b.op("DequantizeLinear", [stored, b.const(steps[0], "w_scale"), b.const(np_type(0), "w_zp")])
        self.report.update(weight=f"{label} -> {onnx.helper.tensor_dtype_to_np_dtype(onnx_type).name} -> "
                                  "DequantizeLinear" + (" per channel" if steps.size > 1 else ""), bytes=size)
        return out

    # activations --------------------------------------------------------------------------------------------
    def rounds(self, value: str) -> str:
        """``value`` rounded to integers by the layer's rule: ``Floor(x + 0.5)`` (half up) or ``Round`` (half to
        even)."""
        b = self.b
        if self.fmt.rounding == "half_even":
            return b.op("Round", [value])
        return b.op("Floor", [b.op("Add", [value, b.const(np.float32(0.5), "half")])])

    def quantize(self, x: str, fmt: FixedPointFormat, exact: bool, output: str | None = None) -> str:
        """``x`` rounded and saturated to ``fmt``: a Q/DQ pair (half to even), or float ops rounding as the layer
        does."""
        b = self.b
        lo, hi = fmt.range
        if exact:
            scaled = b.op("Mul", [x, b.const(np.float32(_pow2(fmt.frac_len)), "scale")])
            ints = self.rounds(scaled)
            clipped = b.op("Clip", [ints, b.const(np.float32(lo), "lo"), b.const(np.float32(hi), "hi")])
            return b.op("Mul", [clipped, b.const(np.float32(_pow2(-fmt.frac_len)), "step")], output)
        bits = 8 if fmt.bits <= 8 else 16
        np_type = _Q_TYPES[bits][1] if fmt.signed else _UNSIGNED_Q_TYPES[bits]  # zero point 0 in that type
        scale, zp = b.const(np.float32(_pow2(-fmt.frac_len)), "scale"), b.const(np_type(0), "zp")
        narrow = fmt.bits != bits  # narrower than its container: saturate to the format's own range
        out = b.op("DequantizeLinear", [b.op("QuantizeLinear", [x, scale, zp]), scale, zp], None if narrow else output)
        if narrow:
            step = _pow2(-fmt.frac_len)
            out = b.op("Clip", [out, b.const(np.float32(lo * step), "lo"), b.const(np.float32(hi * step), "hi")],
                       output)
        return out

    def per_token(self, x: str) -> tuple[str, str]:
        """deepshrink's per-row (token) input format in float ops: ``(rounded input, per-row 2**frac)``."""
        b, bits = self.b, self.fmt.act_in.bits if self.fmt.act_in else 8
        lo, hi = int_range(bits)
        f32 = lambda v, hint="c": b.const(np.float32(v), hint)  # noqa: E731

        def half_up(value: str) -> str:  # the format choice rounds half up whatever the layer's rule
            return b.op("Floor", [b.op("Add", [value, f32(0.5, "half")])])

        peak = b.op("ReduceMax", [b.op("Abs", [x]), b.i64([-1])], keepdims=1)
        live = b.op("Greater", [peak, f32(0.0)])
        safe = b.op("Where", [live, peak, f32(1.0)])
        log2 = b.op("Div", [b.op("Log", [safe]), f32(math.log(2.0))])
        frac = b.op("Sub", [f32(bits - 1), b.op("Ceil", [log2])])
        for _ in range(2):  # the exact rule, as deepshrink settles a float log2's off-by-one
            up = b.op("Add", [frac, f32(1.0)])
            grow = b.op("LessOrEqual", [half_up(b.op("Mul", [safe, b.op("Pow", [f32(2.0), up])])), f32(hi)])
            frac = b.op("Where", [grow, up, frac])
            shrink = b.op("Greater", [half_up(b.op("Mul", [safe, b.op("Pow", [f32(2.0), frac])])), f32(hi)])
            frac = b.op("Where", [shrink, b.op("Sub", [frac, f32(1.0)]), frac])
        frac = b.op("Clip", [b.op("Where", [live, frac, f32(bits - 1)]), f32(-62.0), f32(62.0)])
        scale = b.op("Pow", [f32(2.0), frac])
        ints = b.op("Clip", [self.rounds(b.op("Mul", [x, scale])), f32(lo), f32(hi)])
        return b.op("Div", [ints, scale]), scale

    # the rewrite --------------------------------------------------------------------------------------------
    def rewrite(self) -> dict[str, Any]:
        found = uses(self.graph, self.name, self.module)
        if not found:
            raise ConfigError(f"fixed-point layer {self.module!r}: its weight is not used by the exported graph")
        if self.mode == "qdq":
            for use in found:
                w = self.dequantized_weight(use)
                self._retarget(use, w)
        else:
            chosen = encode(self.weight, Target(self.name, tuple(self.weight.shape), self.opset,
                                                self.weight.numel * 4), self.want)
            if chosen.added is not None:
                check_exact(chosen.added, self.name, self.weight.dense(), self.name, self.opset)
                self.graph.replace_initializer(self.name, chosen.added)
            self.report.update(weight=chosen.encoding, bytes=chosen.bytes)
        if self.mode != "float":
            for use in found:
                self._activations(use)
        self.graph.add(self.b.added)
        return self.report

    def _retarget(self, use: Use, weight: str) -> None:
        if use.transpose is not None:
            use.node.input[1] = weight
            if not [n for n in self.graph.consumers(use.transpose.output[0]) if n is not use.node]:
                self.graph.remove_node(use.transpose)
        else:
            use.node.input[1] = weight
        if not self.graph.consumers(self.name) and self.graph.initializer(self.name) is not None:
            self.graph.replace_initializer(self.name, Added())

    def _bias(self, use: Use) -> tuple[onnx.NodeProto | None, int, np.ndarray | None]:
        """``(node holding the bias, its input index, bias values)``: the op itself, or an ``Add`` after a MatMul."""
        node = use.node
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            values = self.graph.array(node.input[2])
            return (node, 2, values) if values is not None else (None, -1, None)
        readers = self.graph.consumers(node.output[0])
        if node.op_type == "MatMul" and len(readers) == 1 and readers[0].op_type == "Add":
            add = readers[0]
            for index, name in enumerate(add.input):
                values = self.graph.array(name)
                if values is not None and values.ndim == 1:
                    return add, index, values
        return None, -1, None

    def _activations(self, use: Use) -> None:
        b, fmt = self.b, self.fmt
        assert fmt.act_in is not None
        exact = self.mode == "exact"
        holder, index, bias = self._bias(use)
        last = holder if holder is not None and holder is not use.node else use.node
        result = last.output[0]  # the layer's output, as the rest of the graph reads it
        if fmt.dynamic_input:
            use.node.input[0], row_scale = self.per_token(use.node.input[0])
            if bias is not None and holder is not None:
                self._per_row_bias(use, holder, index, bias, row_scale)
        else:
            use.node.input[0] = self.quantize(use.node.input[0], fmt.act_in, exact)
            if bias is not None and holder is not None:
                self._static_bias(use, holder, index, bias, exact)
        if fmt.act_out is not None:  # round what now produces the output (the op, or a bias Add after it)
            producer = next((n for n in b.added.nodes if result in n.output), last)
            raw = b.name("acc")
            producer.output[list(producer.output).index(result)] = raw
            self.quantize(raw, fmt.act_out, exact, result)

    def _static_bias(self, use: Use, holder: onnx.NodeProto, index: int, bias: np.ndarray, exact: bool) -> None:
        assert self.fmt.act_in is not None
        ints = rounded_bias(bias, self.fmt, self.fmt.act_in)
        steps = _acc_steps(self.fmt, self.fmt.act_in)
        b = self.b
        if not exact and holder is use.node and np.abs(ints).max(initial=0) < 2**31:
            scale = steps.astype(np.float32) if steps.size > 1 else np.float32(steps[0])
            zp = np.zeros(steps.size, np.int32) if steps.size > 1 else np.int32(0)
            attrs: dict[str, Any] = {"axis": 0} if steps.size > 1 else {}
            holder.input[index] = b.op("DequantizeLinear", [b.const(ints.astype(np.int32), "bias_int"),
                                                            b.const(scale, "bias_scale"), b.const(zp, "bias_zp")],
                                       **attrs)
        else:  # the rounded bias as exact float32 values (an Add after a MatMul, or beyond int32)
            values = (ints * (steps if steps.size > 1 else steps[0])).astype(np.float32)
            if exact or holder is not use.node:
                holder.input[index] = b.const(values, "bias")
                return
            # Beyond int32 at the accumulator's scale (channels of tiny weights): not the op's bias, where ORT's
            # WeightBiasQuantization would re-quantize it to int32 at that scale and overflow, but an Add after it.
            del holder.input[index]
            channels = (-1, *[1] * (len(self.weight.shape) - 2)) if use.node.op_type == "Conv" else (-1,)
            out = holder.output[0]
            raw = b.name("acc")
            holder.output[0] = raw
            b.op("Add", [raw, b.const(values.reshape(channels), "bias")], out)

    def _per_row_bias(self, use: Use, holder: onnx.NodeProto, index: int, bias: np.ndarray, row_scale: str) -> None:
        """Per-token layers round the bias per row, at each row's accumulator format (after the op, as an Add)."""
        b = self.b
        w_scale = np.array([_pow2(int(f)) for f in self.fmt.frac_lens], dtype=np.float32)
        acc = b.op("Mul", [row_scale, b.const(w_scale if w_scale.size > 1 else w_scale[0], "w_pow")])
        scaled = b.op("Mul", [b.const(bias.astype(np.float32), "bias"), acc])
        rounded = self.rounds(scaled)
        big = b.op("GreaterOrEqual", [b.op("Abs", [scaled]), b.const(np.float32(2.0**23), "big")])
        per_row = b.op("Div", [b.op("Where", [big, scaled, rounded]), acc])
        if holder is use.node:  # Gemm/Conv: take the bias out of the op, add it per row after it
            holder.input[index] = ""
            out = holder.output[0]
            raw = b.name("acc")
            holder.output[0] = raw
            b.op("Add", [raw, per_row], out)
        else:
            holder.input[index] = per_row


def apply(graph: Graph, layers: dict[str, tuple[str, StoredWeight]], mode: str, opset: int,
          want: str = "auto") -> dict[str, dict[str, Any]]:
    """Rewrite every fixed-point layer with an input format; ``layers``: weight name -> (module, stored weight)."""
    if mode not in MODES:
        raise ConfigError(f"activations must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "qdq" and opset < 21 and any(formats(w).bits > 8 or (formats(w).act_in or FixedPointFormat(8, 0)).bits
                                            > 8 for _, w in layers.values()):
        raise ConfigError("16-bit QuantizeLinear/DequantizeLinear need opset >= 21")
    report = {}
    for name, (module, weight) in layers.items():
        report[name] = _Layer(graph, name, module, weight, mode, opset, want).rewrite()
    return report

