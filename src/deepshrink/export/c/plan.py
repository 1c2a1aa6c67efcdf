"""Trace a compressed model into the list of C operations it runs, with shapes, number formats and an arena.

The model (BatchNorms folded on a copy) is run once on one example sample with the hook tracer
(:func:`deepshrink.core.graph.trace_calls`); every recorded call becomes an :class:`Op` through :data:`MODULE_OPS`
(leaf module classes) or :data:`FUNCTION_OPS` (torch functions and methods between them). Anything else is a
:class:`~deepshrink.core.errors.ConfigError` naming the module or op, raised before a file is written.

Two arithmetics:

* **float** (dense, pruned, codebook, ternary weights): float32 activations.
* **integer** (every Linear/Conv in dynamic fixed point with activation formats): the integer engine of
  :mod:`deepshrink.runtime.integer`, operation for operation. Each activation carries its fractional length and
  the range its integers can take; a layer requantizes its input to its input format (a separate ``requant`` op
  when the formats differ), accumulates in int32 or int64 exactly as :class:`~deepshrink.runtime.IntegerLayer`
  decides, then shifts (round half up) and saturates. Ops the engine computes in float (a residual add, ReLU6)
  are accepted only where export proves the float32 result exact, i.e. an integer below 2**24 at a common
  fractional length; otherwise a ConfigError.

The arena: every value that is not an alias (flatten, view) gets a buffer, live from its producer to its last
reader; elementwise ops and unpadded pools run in place when their input dies there; buffers are then placed
greedily (largest first, lowest offset free for its whole lifetime). The model's input and output are the
caller's arrays, never copied.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ...core.errors import ConfigError
from ...core.fixed_point import FixedPointFormat
from ...core.fold import fold_batchnorm_
from ...core.graph import Call, ExecutionGraph, split_batch, trace_calls
from ...core.kinds import StoredWeight
from ...core.kinds.fixedpoint import formats
from ...core.layer_call import plain_type
from ...runtime.integer import IntegerLayer, fixed_point_weight
from ...runtime.loader import stored_from_model
from .weights import CTYPE_BYTES, EncodedWeight, encode_matrix, entry_form, int_ctype, vector_form

ALIGN = 8
FLOAT32_EXACT = 1 << 24


@dataclass(eq=False)
class Value:
    """One activation: per-sample ``shape``, C element type, and for integers ``frac`` and the range ``[lo, hi]``.
    ``pending``: the model input before the first integer layer fixes its format."""

    shape: tuple[int, ...]
    ctype: str
    frac: int | None = None
    lo: int = 0
    hi: int = 0
    pending: bool = False
    storage: Storage | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * CTYPE_BYTES[self.ctype]

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "1"
        if self.frac is None:
            return f"{dims} {self.ctype}"
        return f"{dims} {self.ctype} Q.{self.frac}"


@dataclass(eq=False)
class Storage:
    """A buffer: in the arena (``offset``), or the caller's ``input``/``output`` array. ``segments``: the
    ``(first op, last op, bytes)`` of each value living in it (an in-place op adds one, often smaller)."""

    place: str = "arena"
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return max((seg[2] for seg in self.segments), default=0)


@dataclass(eq=False)
class Layer:
    """A Linear or Conv2d/Conv1d layer: its C name, stored weight as encoded for C, and its bias (float32 values
    for a float layer, the engine's integers at the accumulator's format for an integer one)."""

    cname: str
    module: nn.Module
    weight: StoredWeight
    encoded: EncodedWeight
    bias: EncodedWeight | None


@dataclass(eq=False)
class Op:
    """One C operation: kernel ``kind``, the module or op ``name`` it comes from, inputs and output."""

    kind: str
    name: str
    inputs: list[Value]
    output: Value
    attrs: dict[str, Any] = field(default_factory=dict)
    layer: Layer | None = None
    inplace: bool = False
    scratch: Storage | None = None


@dataclass
class Plan:
    """Everything the emitter needs: ops in order, the input and output values, arena size and mode."""

    ops: list[Op]
    input: Value
    output: Value
    integer: bool
    arena_bytes: int
    model_name: str
    folded: list[tuple[str, str]]


class _Context:
    """State of one trace walk: graph value -> :class:`Value`, the ops so far, the model's stored weights."""

    def __init__(self, model: nn.Module, graph: ExecutionGraph, integer: bool, layout: str) -> None:
        self.model, self.graph, self.integer, self.layout = model, graph, integer, layout
        self.values: dict[tuple[int, int], Value] = {}
        self.ops: list[Op] = []
        self.weights, self.tensors = stored_from_model(model)
        self.input: Value | None = None
        self.names: set[str] = set()

    def cname(self, name: str) -> str:
        """A unique C identifier for a module or op name (``layers.0.conv1`` -> ``layers_0_conv1``)."""
        base = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "op"
        base = f"l_{base}" if base[0].isdigit() else base
        out, n = base, 1
        while out in self.names:
            n += 1
            out = f"{base}_{n}"
        self.names.add(out)
        return out

    def shape_of(self, value: tuple[int, int], where: str) -> tuple[int, ...]:
        tensor = self.graph.tensor(value)
        assert tensor is not None
        if tensor.dim() == 0 or tensor.shape[0] != 1:
            raise ConfigError(f"{where}: the C backend runs one sample at a time; this op mixes the batch axis")
        return tuple(int(d) for d in tensor.shape[1:])

    def get(self, value: tuple[int, int], where: str) -> Value:
        found = self.values.get(value)
        if found is not None:
            return found
        if self.graph.producer.get(value) is None and self.input is None:
            shape = self.shape_of(value, where)
            self.input = Value(shape, "float", pending=self.integer)
            self.values[value] = self.input
            return self.input
        raise ConfigError(f"{where}: reads a tensor the C backend cannot produce (a second model input, a "
                          "parameter or a constant)")

    def tensor_inputs(self, call: Call) -> list[Value]:
        return [self.get(v, describe(call)) for v in call.inputs]

    def emit(self, call: Call, op: Op) -> Value:
        self.ops.append(op)
        self.bind(call, op.output)
        return op.output

    def bind(self, call: Call, value: Value) -> None:
        if len(call.outputs) != 1:
            raise ConfigError(f"{describe(call)}: the C backend handles ops with one tensor output only")
        self.values[call.outputs[0]] = value

    def out_shape(self, call: Call) -> tuple[int, ...]:
        return self.shape_of(call.outputs[0], describe(call))


def describe(call: Call) -> str:
    """How an error names a call: the module's name and class, or the op and its place in the trace."""
    if call.module is not None:
        return f"module {call.name!r} ({type(call.module).__name__.removeprefix('Parametrized')})"
    return f"operation {call.op_name!r} (call {call.index})"


def _unsupported(call: Call, why: str = "") -> ConfigError:
    return ConfigError(f"the C backend has no kernel for {describe(call)}{': ' + why if why else ''}")


# ---- integer formats ----------------------------------------------------------------------------------------


def _value_ctype(lo: int, hi: int) -> str:
    """An activation's C type: the narrowest signed one, or ``uint8_t``/``uint16_t`` where only an unsigned type
    of that width holds ``[lo, hi]`` (an unsigned format's ``[0, 2**bits - 1]``)."""
    signed = int_ctype(lo, hi)
    if lo >= 0:
        for bits, name in ((8, "uint8_t"), (16, "uint16_t")):
            if hi < 1 << bits and CTYPE_BYTES[signed] > bits // 8:
                return name
    return signed


def _int_value(shape: tuple[int, ...], frac: int, lo: int, hi: int) -> Value:
    return Value(shape, _value_ctype(lo, hi), frac, lo, hi)


def _fix_input(ctx: _Context, value: Value, fmt: FixedPointFormat, where: str) -> None:
    """The model input feeds an integer layer: its C type and format become the layer's input format."""
    (lo, hi), frac = fmt.range, fmt.frac_len
    if value.frac is not None and (value.frac, value.lo, value.hi) != (frac, lo, hi):
        raise ConfigError(f"{where}: the model input feeds integer layers with different input formats")
    pending = [v for v in ctx.values.values() if v.pending]
    for v in pending:
        v.ctype, v.frac, v.lo, v.hi, v.pending = _value_ctype(lo, hi), frac, lo, hi, False


def _requant(ctx: _Context, x: Value, fmt: FixedPointFormat, name: str) -> Value:
    """``x`` in the format ``fmt``: itself when already there, else a ``requant`` op (round, saturate)."""
    (lo, hi), frac = fmt.range, fmt.frac_len
    assert x.frac is not None
    if x.frac == frac and lo <= x.lo and x.hi <= hi:
        return x
    shift = x.frac - frac
    scale = 1 << max(-shift, 0)
    if max(abs(x.lo), abs(x.hi)) * scale >= 1 << 62:
        raise ConfigError(f"{name}: requantizing Q.{x.frac} to Q.{frac} overflows 64 bits")
    out = _int_value(x.shape, frac, lo, hi)
    ctx.ops.append(Op("requant", f"{name}.requant", [x], out, {"shift": shift, "lo": lo, "hi": hi},
                      inplace=out.ctype == x.ctype))
    return out


def _exact_float(value: Value, where: str) -> None:
    """The engine holds this value as float32: it must be an exact integer times a power of two."""
    if max(abs(value.lo), abs(value.hi)) >= FLOAT32_EXACT:
        raise ConfigError(f"{where}: deepshrink's integer engine computes this op in float32, and export cannot "
                          f"prove the result exact (integers up to {max(abs(value.lo), abs(value.hi))} at Q.{value.frac})")


# ---- weight layers --------------------------------------------------------------------------------------------


def _float_bias(ctx: _Context, fqn: str) -> np.ndarray | None:
    name = f"{fqn}.bias"
    if name in ctx.weights:
        return ctx.weights[name].dense().astype(np.float32).reshape(-1)
    if name in ctx.tensors:
        return ctx.tensors[name].detach().cpu().numpy().astype(np.float32).reshape(-1)
    return None


def _stored_weight(ctx: _Context, fqn: str, module: nn.Module) -> StoredWeight:
    name = f"{fqn}.weight"
    if name in ctx.weights:
        return ctx.weights[name]
    weight = cast(Tensor, module.weight).detach().cpu().numpy().astype(np.float32)
    return StoredWeight("dense", tuple(int(d) for d in weight.shape), weight.reshape(-1))


def _geometry(module: nn.Module, call: Call) -> dict[str, Any]:
    m: Any = module
    if getattr(m, "padding_mode", "zeros") != "zeros":
        raise _unsupported(call, f"padding_mode {m.padding_mode!r} (only zeros)")
    if isinstance(m.padding, str):
        raise _unsupported(call, f"padding={m.padding!r}; give the padding as numbers")
    two = (lambda t: (1, int(t[0]))) if isinstance(module, nn.Conv1d) else (lambda t: (int(t[0]), int(t[1])))
    return {"kernel": two(m.kernel_size), "stride": two(m.stride), "padding": (0, int(m.padding[0])) if
            isinstance(module, nn.Conv1d) else two(m.padding), "dilation": two(m.dilation), "groups": int(m.groups)}


def _layer(ctx: _Context, call: Call) -> None:
    module = call.module
    assert module is not None
    base = plain_type(module)
    if base is None:
        raise _unsupported(call, "its class has a forward of its own")
    (x,) = ctx.tensor_inputs(call)
    fqn = call.name
    shape = ctx.out_shape(call)
    weight = _stored_weight(ctx, fqn, module)
    attrs: dict[str, Any]
    if base is nn.Linear:
        if len(x.shape) != 1:
            raise _unsupported(call, f"a Linear on a {len(x.shape)}-D sample; flatten first")
        kind, attrs = "linear", {"in": x.shape[0], "out": shape[0]}
    elif base in (nn.Conv2d, nn.Conv1d):
        geo = _geometry(module, call)
        in_shape = (x.shape[0], 1, x.shape[1]) if base is nn.Conv1d else x.shape
        out_shape = (shape[0], 1, shape[1]) if base is nn.Conv1d else shape
        kind, attrs = "conv2d", {"in_shape": in_shape, "out_shape": out_shape, **geo}
    else:
        raise _unsupported(call)
    fp = fixed_point_weight(module)
    integer_layer = fp is not None and formats(fp).act_in is not None
    if integer_layer != ctx.integer:
        raise ConfigError(f"{describe(call)} computes in {'integers' if integer_layer else 'float'} but other "
                          "layers do not: the C backend exports a model either all in fixed point with activation "
                          "formats (integer-only) or all in float")
    cname = ctx.cname(fqn)
    if not ctx.integer:
        try:
            encoded = encode_matrix(f"{cname}_w", entry_form(weight, False), ctx.layout,
                                    sparse_ram=_plane_bytes(attrs, "float"))
        except ConfigError as exc:
            raise ConfigError(f"{describe(call)}: {exc}") from exc
        bias = _float_bias(ctx, fqn)
        bias_enc = None if bias is None else encode_matrix(f"{cname}_b", vector_form(bias), "dense")
        attrs["acc_ctype"] = "float"
        _scatter(attrs, kind, encoded, "float")
        layer = Layer(cname, module, weight, encoded, bias_enc)
        ctx.emit(call, Op(kind, fqn, [x], Value(shape, "float"), attrs, layer))
        return
    assert fp is not None
    engine = IntegerLayer.from_module(module)
    if engine.rounding != "half_up":
        raise ConfigError(f"{describe(call)}: the C backend rounds half up; this layer rounds {engine.rounding} "
                          "(quantize with rounding='half_up' for C)")
    if engine.dynamic_input:
        raise ConfigError(f"{describe(call)}: a per-token (run-time) input format needs float arithmetic; "
                          "quantize with static activations for the C backend")
    if x.pending:
        _fix_input(ctx, x, engine.act_in, describe(call))
    x = _requant(ctx, x, engine.act_in, fqn)
    w_frac = np.asarray(engine.w_frac.cpu().numpy() if isinstance(engine.w_frac, Tensor) else [engine.w_frac],
                        dtype=np.int64).reshape(-1)
    rows = int(fp.shape[0])
    acc_frac = np.broadcast_to(engine.act_in.frac_len + w_frac, (rows,)).astype(np.int64)
    ints = np.zeros(fp.numel, dtype=np.int64)
    ints[fp.flat_positions()] = np.asarray(fp.data, dtype=np.int64)
    row_sum = np.abs(ints.reshape(rows, -1)).sum(1)
    bias = engine.bias_int.cpu().numpy().astype(np.int64) if engine.bias_int is not None else None
    bound = engine.act_in.magnitude * row_sum + (np.abs(bias) if bias is not None else 0)
    acc_ctype = "int32_t" if engine.acc_dtype == torch.int32 else "int64_t"
    encoded = encode_matrix(f"{cname}_w", entry_form(fp, True), ctx.layout, sparse_ram=_plane_bytes(attrs, acc_ctype))
    bias_enc = None if bias is None else encode_matrix(f"{cname}_b", vector_form(bias), "dense")
    attrs.update(acc_ctype=acc_ctype, acc_frac=acc_frac)
    _scatter(attrs, kind, encoded, acc_ctype)
    if engine.act_out is not None:
        lo, hi = engine.act_out.range
        attrs.update(shift=acc_frac - engine.act_out.frac_len, lo=lo, hi=hi)
        out = _int_value(shape, engine.act_out.frac_len, lo, hi)
    else:  # the accumulator is the output, every channel brought to the finest fractional length exactly
        top = int(acc_frac.max())
        align = top - acc_frac
        peak = int((bound * np.left_shift(np.ones(rows, np.int64), align)).max())
        if peak >= 1 << 62:
            raise ConfigError(f"{describe(call)}: its per-channel outputs cannot share one fractional length in "
                              "64 bits")
        attrs.update(align=align)
        out = _int_value(shape, top, -peak, peak)
    ctx.emit(call, Op(kind, fqn, [x], out, attrs, Layer(cname, module, fp, encoded, bias_enc)))


def _plane_bytes(attrs: dict[str, Any], acc_ctype: str) -> int:
    """RAM of a sparse conv's accumulator plane (one output channel); 0 for a Linear."""
    if "out_shape" not in attrs:
        return 0
    oh, ow = attrs["out_shape"][1:]
    return int(oh * ow * CTYPE_BYTES[acc_ctype])


def _scatter(attrs: dict[str, Any], kind: str, encoded: EncodedWeight, acc_ctype: str) -> None:
    """A sparse conv scatters each kept weight over an accumulator plane of one output channel (arena scratch)."""
    if kind == "conv2d" and encoded.layout == "sparse":
        attrs.update(scatter=True, scratch_bytes=_plane_bytes(attrs, acc_ctype))


# ---- the ops between layers ----------------------------------------------------------------------------------


def _alias(ctx: _Context, call: Call) -> None:
    """Flatten, view, reshape, dropout (eval), identity: the same buffer under another shape."""
    x = ctx.tensor_inputs(call)[0]
    shape = ctx.out_shape(call)
    out = Value(shape, x.ctype, x.frac, x.lo, x.hi, x.pending)
    if out.numel != x.numel:
        raise _unsupported(call, "changes the number of elements")
    ctx.bind(call, out)
    ctx.ops.append(Op("alias", f"{call.op_name if call.module is None else call.name}", [x], out))


def _elementwise(kind: str) -> Callable[[_Context, Call], None]:
    def handler(ctx: _Context, call: Call) -> None:
        (x,) = ctx.tensor_inputs(call)[:1]
        name = _op_name(call)
        if kind == "relu6":
            _check_hardtanh(call)
        if ctx.integer and not x.pending:
            assert x.frac is not None
            lo, hi = max(x.lo, 0), max(x.hi, 0)
            attrs: dict[str, Any] = {}
            if kind == "relu6":
                if x.frac < -1:
                    raise ConfigError(f"{describe(call)}: 6 is not an integer at Q.{x.frac}")
                six = 6 << x.frac if x.frac >= 0 else 3
                lo, hi, attrs = min(lo, six), min(hi, six), {"six": six}
            out = Value(x.shape, x.ctype, x.frac, lo, hi)
            if kind == "relu6":
                _exact_float(out, describe(call))
            # 6 beyond every integer the input can hold: ReLU6 is a ReLU here (no comparison that is always true)
            op_kind = "relu" if kind == "relu6" and attrs["six"] >= x.hi else kind
            ctx.emit(call, Op(op_kind, name, [x], out, attrs, inplace=True))
            return
        if kind == "relu6" and x.pending:
            raise ConfigError(f"{describe(call)} on the model input: the integer engine computes it in float")
        ctx.emit(call, Op(kind, name, [x], Value(x.shape, x.ctype, pending=x.pending), inplace=True))

    return handler


def _check_hardtanh(call: Call) -> None:
    """ReLU6 (or a hardtanh to [0, 6]) only."""
    if call.module is not None:
        m: Any = call.module
        bounds = (float(m.min_val), float(m.max_val))
    elif call.op_name.startswith("relu6"):
        bounds = (0.0, 6.0)
    else:
        given = dict(zip(("min_val", "max_val"), call.args[1:3], strict=False)) | call.kwargs
        bounds = (float(given.get("min_val", -1.0)), float(given.get("max_val", 1.0)))
    if bounds != (0.0, 6.0):
        raise _unsupported(call, f"a clamp to {bounds} (only ReLU6's [0, 6])")


def _pool_args(call: Call, kind: str) -> dict[str, Any]:
    """Kernel, stride, padding, dilation, ceil_mode of a max/avg pool module or functional call."""
    if call.module is not None:
        m: Any = call.module
        k, s, p = m.kernel_size, m.stride, m.padding
        d, ceil = getattr(m, "dilation", 1), m.ceil_mode
        extra = {"count_include_pad": getattr(m, "count_include_pad", True),
                 "divisor_override": getattr(m, "divisor_override", None)}
    else:
        names = ["kernel_size", "stride", "padding", "dilation" if kind == "maxpool2d" else "ceil_mode",
                 "ceil_mode" if kind == "maxpool2d" else "count_include_pad"]
        given = dict(zip(names, call.args[1:], strict=False)) | call.kwargs
        k, s, p = given["kernel_size"], given.get("stride"), given.get("padding", 0)
        d, ceil = given.get("dilation", 1), bool(given.get("ceil_mode", False))
        extra = {"count_include_pad": given.get("count_include_pad", True),
                 "divisor_override": given.get("divisor_override")}
        if given.get("return_indices"):
            raise _unsupported(call, "return_indices")

    def two(v: Any) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    k2 = two(k)
    return {"kernel": k2, "stride": two(s) if s not in (None, ()) and s != [] else k2, "padding": two(p),
            "dilation": two(d), "ceil_mode": bool(ceil), **extra}


def _pool(kind: str) -> Callable[[_Context, Call], None]:
    def handler(ctx: _Context, call: Call) -> None:
        (x,) = ctx.tensor_inputs(call)[:1]
        shape = ctx.out_shape(call)
        if len(x.shape) != 3:
            raise _unsupported(call, f"pooling a {len(x.shape)}-D sample (only C x H x W)")
        attrs: dict[str, Any] = {"in_shape": x.shape, "out_shape": shape}
        if kind != "adaptive_avgpool2d":
            attrs.update(_pool_args(call, kind))
        if kind != "maxpool2d" and ctx.integer:
            raise ConfigError(f"{describe(call)}: average pooling is a float op in deepshrink's integer engine "
                              "(rounded in float32), so an integer-only C model cannot reproduce it bit for bit")
        if kind == "avgpool2d" and (attrs["divisor_override"] or attrs["ceil_mode"] or (
                any(attrs["padding"]) and not attrs["count_include_pad"])):
            raise _unsupported(call, "ceil_mode, divisor_override or count_include_pad=False with padding")
        # an unpadded max pool reads each window at or after the element it writes: safe in place
        inplace = kind == "maxpool2d" and not attrs["ceil_mode"] and not any(attrs["padding"])
        out = Value(shape, x.ctype, x.frac, x.lo, x.hi, x.pending)
        ctx.emit(call, Op(kind, _op_name(call), [x], out, attrs, inplace=inplace))

    return handler


def _add(ctx: _Context, call: Call) -> None:
    if len(call.inputs) != 2 or call.kwargs.get("alpha", 1) != 1 or len(call.args) > 2:
        raise _unsupported(call, "only the sum of two tensors")
    a, b = ctx.tensor_inputs(call)
    if a.shape != b.shape:
        raise _unsupported(call, f"broadcasting {a.shape} + {b.shape}")
    name = _op_name(call)
    if not ctx.integer:
        ctx.emit(call, Op("add", name, [a, b], Value(a.shape, "float"), inplace=True))
        return
    if a.pending or b.pending:
        raise ConfigError(f"{describe(call)} adds the float model input: not integer-only")
    assert a.frac is not None and b.frac is not None
    top = max(a.frac, b.frac)
    ma, mb = 1 << (top - a.frac), 1 << (top - b.frac)
    lo, hi = a.lo * ma + b.lo * mb, a.hi * ma + b.hi * mb
    out = _int_value(a.shape, top, lo, hi)
    _exact_float(out, describe(call))
    ctx.emit(call, Op("add", name, [a, b], out, {"scale_a": ma, "scale_b": mb},
                      inplace=out.ctype == a.ctype))


def _batchnorm(ctx: _Context, call: Call) -> None:
    module: Any = call.module
    if ctx.integer:
        raise ConfigError(f"{describe(call)} could not be folded into the layer before it; an integer-only C model "
                          "has no float op for it (fold before quantizing)")
    (x,) = ctx.tensor_inputs(call)
    inv_std = 1.0 / torch.sqrt(module.running_var.double() + module.eps)
    scale = module.weight.double() * inv_std if module.affine else inv_std
    shift = (module.bias.double() if module.affine else torch.zeros_like(scale)) - module.running_mean.double() * scale
    attrs = {"scale": scale.float().numpy(), "shift": shift.float().numpy(), "channels": x.shape[0],
             "inner": int(np.prod(x.shape[1:], dtype=np.int64))}
    ctx.emit(call, Op("affine", call.name, [x], Value(x.shape, "float"), attrs, inplace=True))


def _op_name(call: Call) -> str:
    return call.name if call.module is not None else f"{call.op_name.strip('_')}_{call.index}"


Handler = Callable[[_Context, Call], None]

MODULE_OPS: dict[type[nn.Module], Handler] = {
    nn.Linear: _layer, nn.Conv2d: _layer, nn.Conv1d: _layer,
    nn.ReLU: _elementwise("relu"), nn.ReLU6: _elementwise("relu6"), nn.Hardtanh: _elementwise("relu6"),
    nn.MaxPool2d: _pool("maxpool2d"), nn.AvgPool2d: _pool("avgpool2d"),
    nn.AdaptiveAvgPool2d: _pool("adaptive_avgpool2d"),
    nn.Flatten: _alias, nn.Identity: _alias, nn.Dropout: _alias, nn.Unflatten: _alias,
    nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm,
}
"""Leaf module class -> handler (subclasses match their nearest listed base)."""

FUNCTION_OPS: dict[str, Handler] = {
    **dict.fromkeys(("relu", "relu_"), _elementwise("relu")),
    **dict.fromkeys(("relu6", "hardtanh", "hardtanh_"), _elementwise("relu6")),
    **dict.fromkeys(("flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze", "dropout"), _alias),
    "max_pool2d": _pool("maxpool2d"), "avg_pool2d": _pool("avgpool2d"),
    "adaptive_avg_pool2d": _pool("adaptive_avgpool2d"),
    **dict.fromkeys(("add", "__add__", "__radd__", "add_", "__iadd__"), _add),
}
"""Torch function or method name (as the hook tracer records it) -> handler."""


def _handler(call: Call) -> Handler:
    if call.module is not None:
        for cls in type(call.module).__mro__:
            if cls in MODULE_OPS:
                return MODULE_OPS[cls]
        raise _unsupported(call)
    handler = FUNCTION_OPS.get(call.op_name)
    if handler is None:
        raise _unsupported(call)
    return handler


# ---- the whole model -------------------------------------------------------------------------------------------


def _first_sample(example: Any) -> Tensor:
    inputs = split_batch(example)[0]
    if isinstance(inputs, tuple | list) and inputs and isinstance(inputs[0], Tensor):
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise ConfigError("the C backend needs one input tensor as the example (a batch of samples)")
    return inputs[:1].float()


def _is_integer(model: nn.Module) -> bool:
    for module in model.modules():
        fp = fixed_point_weight(module) if hasattr(module, "parametrizations") else None
        if fp is not None and formats(fp).act_in is not None:
            return True
    return False


@torch.no_grad()
def plan_model(model: nn.Module, example: Any, layout: str = "auto") -> Plan:
    """The ops, formats, encoded weights and arena of ``model`` (not modified: BatchNorms are folded on a copy).
    ``layout``: the weight position layouts allowed (:data:`~.weights.LAYOUTS`)."""
    sample = _first_sample(example)
    model = copy.deepcopy(model).eval()
    for module in model.modules():  # simulation hooks (fixed point) compute nothing the C code needs
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    folded = fold_batchnorm_(model, sample, skip_unfoldable=True)
    captured: list[Any] = []
    handle = model.register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        graph = trace_calls(model, sample)
    finally:
        handle.remove()
    if len(captured) != 1 or not isinstance(captured[0], Tensor):
        raise ConfigError("the C backend needs a model returning one tensor")
    out_id = id(captured[0])
    if out_id not in graph.versions:
        raise ConfigError("the model's output is not computed by a traced op")
    ctx = _Context(model, graph, _is_integer(model), layout)
    for call in graph.calls:
        _handler(call)(ctx, call)
    if ctx.input is None or not ctx.ops:
        raise ConfigError("the model computes nothing the C backend can run")
    output = ctx.values[(out_id, graph.versions[out_id])]
    if ctx.input.pending or output.pending:
        raise ConfigError("an integer model's input must reach a fixed-point layer before its output")
    ops = [op for op in ctx.ops if _reaches(op, output, ctx.ops)]
    arena, output = _place(ops, ctx.input, output)
    return Plan(ops, ctx.input, output, ctx.integer, arena, type(model).__name__.removeprefix("Parametrized"),
                list(folded.pairs))


def _reaches(op: Op, output: Value, ops: list[Op]) -> bool:
    """Whether ``op`` contributes to ``output`` (dead branches are dropped)."""
    needed = {id(output)}
    for later in reversed(ops):
        if id(later.output) in needed:
            needed.update(id(v) for v in later.inputs)
        if later is op:
            return id(op.output) in needed
    return False


def _place(ops: list[Op], model_input: Value, output: Value) -> tuple[int, Value]:
    """Give every value a storage (aliases share their source's, an in-place op reuses its dying input's), then
    place the arena; returns ``(arena bytes, output value)`` (a copy op is appended when the output's buffer
    cannot be the caller's array: it is the input, or it held something larger)."""
    model_input.storage = Storage("input")
    alias_of: dict[int, Value] = {}
    for op in ops:
        if op.kind == "alias":
            alias_of[id(op.output)] = alias_of.get(id(op.inputs[0]), op.inputs[0])

    def base(v: Value) -> Value:
        return alias_of.get(id(v), v)

    last_read: dict[int, int] = {id(base(output)): len(ops)}
    for i, op in enumerate(ops):
        for v in op.inputs:
            last_read[id(base(v))] = max(last_read.get(id(base(v)), -1), i)
    storages: list[Storage] = []
    for i, op in enumerate(ops):
        if op.kind == "alias":
            continue
        src = base(op.inputs[0])
        if (op.inplace and src.storage is not None and src.storage.place == "arena" and src.ctype == op.output.ctype
                and op.output.nbytes <= src.nbytes and last_read.get(id(src), -1) <= i):
            op.output.storage = src.storage
        else:
            op.output.storage = Storage()
            storages.append(op.output.storage)
        op.output.storage.segments.append((i, max(last_read.get(id(op.output), i), i), op.output.nbytes))
        if op.attrs.get("scatter"):
            op.scratch = Storage(segments=[(i, i, op.attrs["scratch_bytes"])])
            storages.append(op.scratch)
    for op in ops:
        if op.kind == "alias":
            op.output.storage = base(op.output).storage
    result = output.storage
    assert result is not None
    if result.place != "arena" or result.nbytes != output.nbytes:
        copied = Value(output.shape, output.ctype, output.frac, output.lo, output.hi)
        copied.storage = Storage("output")
        ops.append(Op("copy", "output", [output], copied))
        output = copied
    else:
        result.place = "output"
    return _offsets([s for s in storages if s.place == "arena"]), output


def _padded(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _offsets(storages: list[Storage]) -> int:
    """Greedy placement: largest buffer first, at the lowest offset where none of its segments overlaps a segment
    of a placed buffer live at the same time."""
    placed: list[Storage] = []
    top = 0
    for st in sorted(storages, key=lambda s: (-s.nbytes, s.segments[0][0])):
        busy = sorted((o.offset - _padded(seg[2]) + 1, o.offset + _padded(other[2]))
                      for o in placed for other in o.segments for seg in st.segments
                      if other[0] <= seg[1] and seg[0] <= other[1])
        offset = 0
        for lo, hi in busy:  # a segment of size n at offset x clashes with [o, o + m) iff o - n < x < o + m
            if offset < lo:
                break
            offset = max(offset, hi)
        st.offset = offset
        placed.append(st)
        top = max(top, offset + _padded(st.nbytes))
    return top
