"""Integer-only inference: integer weights and activations, int32/int64 accumulation, rounding shifts, saturation.

* :class:`IntegerLayer` — one quantized Linear/Conv as integers: requantize the incoming integers (or round a
  float input at a float boundary) to the input format, accumulate ``x*w`` and the bias in int32 (int64 when
  the worst-case partial sum could reach 2**31), then shift
  (round half up, or half to even where the layer says so) and saturate to the output format.
* :class:`IntegerModel` — the whole network on integers: the model is traced with ``torch.fx`` (every module
  without children is a leaf, so control flow inside a layer class is no obstacle) and run by an interpreter in
  which activations are :class:`QTensor` (int64 data + fractional length). Order-preserving ops (ReLU, max-pool,
  flatten, view, dropout in eval) act on the integers directly; any other op sees the exact float value of its
  input (a float boundary, e.g. LayerNorm or softmax).
* :func:`swap_integer_layers_` — for models whose own ``forward`` cannot be traced (control flow between layers,
  Hugging Face encoders): each quantized layer is replaced by its integer form with float input and output.

Every path is bit-exact with the simulated model of :mod:`deepshrink.fixedpoint.simulate`; the runtime builds
:class:`IntegerLayer` for every ``fixedpoint`` weight with activation formats.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..core.edits import set_submodule
from ..core.errors import FormatError, UnsupportedLayerError
from ..core.fixed_point import (
    FixedPointFormat,
    bias_int,
    from_int,
    requantize,
    round_scaled,
    rounding_shift,
    row_frac_lens,
    saturate,
    to_int,
)
from ..core.graph import is_leaf, run_model, split_batch
from ..core.kinds import FixedPointKind, StoredWeight, kind_of, stored_from_export
from ..core.kinds.fixedpoint import formats
from ..core.layer_call import channel_axis, layer_call, plain_type
from ..core.select import layer_type_name
from ..core.state import bake_module_, get_mask, get_value_transform, latent_weight
from .integer_kernels import Int8Plan
from .registry import ANY_LOOKUP, LAYER_BUILDERS, register_layer_builder

FAST_PATH = True
"""Run covered layers through the fused int8 kernels (:mod:`.integer_kernels`, bit-identical); False: torch ops."""

EXACT_FLOAT_LIMITS = ((torch.float32, 2**24), (torch.float64, 2**53))
"""Integers up to these magnitudes are exact in these float types."""


def exact_float_dtype(bound: int) -> torch.dtype | None:
    """The narrowest float type in which a layer's integer products can run unchanged, or None.

    ``bound`` bounds every partial sum of the layer's products and bias. When it is within a float type's exact
    integer range, every partial sum in any order is an exactly representable integer. The float convolution or
    GEMM then returns the integer result bit for bit, at float speed. torch's CPU integer convolutions are naive
    loops: 18-32x slower than float32 on EfficientNet's depthwise shapes. This holds for kernels that only sum
    products, which are the direct and im2col/GEMM convolutions and BLAS GEMMs torch runs on CPU. A Winograd or
    FFT algorithm would break it. The integer-engine tests check the result against the simulation.
    """
    for dtype, limit in EXACT_FLOAT_LIMITS:
        if bound < limit:
            return dtype
    return None


@dataclass
class QTensor:
    """An integer activation: ``data`` (int64) times ``2**-frac_len``."""

    data: Tensor
    frac_len: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return from_int(self.data, self.frac_len, dtype)


class IntegerLayer(nn.Module):
    """A quantized Linear/Conv1d/Conv2d computed on integers only (between its input and output formats).

    The weight has one fractional length or one per output channel (a per-channel shift at the output); the input
    a calibrated format, or (``dynamic_input``) one per row chosen from the row's own range at run time.
    """

    weight_int: Tensor
    bias_int: Tensor | None
    bias_float: Tensor | None
    weight_t8: Tensor | None
    last_kernel: str = ""
    """What the last call ran: ``int8-vnni`` / ``int8-portable`` (the fused plan) or the torch path."""
    _template: nn.Module  # the layer's computation (kept out of the module tree: it holds no state of ours)

    is_runtime_layer = True  # listed by deepshrink.runtime.runtime_layers

    def __init__(self, module: nn.Module, w_int: Tensor, bias: Tensor | None, bits: int, w_frac: int | Tensor,
                 act_in: FixedPointFormat, act_out: FixedPointFormat | None, float_io: bool = False,
                 dynamic_input: bool = False, rounding: str = "half_up") -> None:
        """``module`` gives the layer's computation and geometry only (it may live on the meta device)."""
        super().__init__()
        self.bits, self.act_in, self.act_out, self.dynamic_input = int(bits), act_in, act_out, dynamic_input
        self.rounding = rounding
        self.w_frac: int | Tensor = w_frac.clone() if isinstance(w_frac, Tensor) and w_frac.dim() else int(w_frac)
        self.float_io = float_io
        self.axis = channel_axis(module)
        with torch.no_grad():
            w_int = w_int.detach().to("cpu", torch.int64)
            static_acc = None if dynamic_input else self._channel_frac(act_in.frac_len)
            b = (bias_int(None if bias is None else bias.detach().cpu(), static_acc, rounding)
                 if static_acc is not None else None)
            # int32 accumulation when no partial sum (bias included) can reach 2**31, else int64
            row_sum = int(w_int.abs().reshape(w_int.shape[0], -1).sum(1).max()) if w_int.numel() else 0
            bias_bound = (int(b.abs().max()) if b is not None and b.numel() else 0) if not dynamic_input else 1 << 62
            bound = act_in.magnitude * row_sum + bias_bound
            self.acc_dtype = torch.int32 if bound < 2**31 else torch.int64
            self.weight_row_sum = row_sum
            # the products on float kernels where that is exact; a plain layer's bias is added after them in int64,
            # a layer class with its own forward gets it in the call (the bound then includes it)
            self.bias_after = plain_type(module) is not None
            m: Any = module
            self._pointwise = (plain_type(module) is nn.Conv2d and tuple(m.kernel_size) == (1, 1) and m.groups == 1
                               and tuple(m.stride) == (1, 1) and m.padding in ((0, 0), "valid")
                               and m.padding_mode == "zeros")
            bias_max = int(b.abs().max()) if b is not None and b.numel() else 0
            self.exact_float = exact_float_dtype(act_in.magnitude * row_sum + (0 if self.bias_after else bias_max))
            self.register_buffer("weight_int", w_int.to(self.acc_dtype))
            self.register_buffer("bias_int", None if b is None else b.to(self.acc_dtype))
            self.register_buffer("bias_float", bias.detach().cpu().double() if dynamic_input and bias is not None
                                 else None)
            # int8 x int8 -> int32 GEMM (torch._int_mm) for 8-bit Linear layers: the fast CPU integer path
            self.int8_gemm = (plain_type(module) is nn.Linear and act_in.bits <= 8 and act_in.signed and self.bits <= 8
                              and self.acc_dtype == torch.int32 and hasattr(torch, "_int_mm"))
            # a fresh (in, out) buffer: ``.t().contiguous()`` keeps the strides (1, 1) of a one-input weight,
            # which torch._int_mm reads as garbage (torch 2.x, oneDNN)
            w_t8 = torch.empty(w_int.shape[::-1], dtype=torch.int8).copy_(w_int.t()) if self.int8_gemm else None
            self.register_buffer("weight_t8", w_t8)
        self.kind = layer_type_name(module)
        self.__dict__["_template"] = _template_of(module)  # not a submodule: it holds no state of ours

    def _channel_frac(self, in_frac: int | Tensor) -> int | Tensor:
        """The accumulator's fractional length: input's + weight's (per channel, per row, or one)."""
        if isinstance(self.w_frac, Tensor):
            return self.w_frac + in_frac
        return in_frac + self.w_frac

    @classmethod
    def from_stored(cls, module: nn.Module, weight: StoredWeight, bias: Tensor | None,
                    float_io: bool = True) -> IntegerLayer:
        """The integer form of a layer from its stored ``fixedpoint`` weight (as read from a ``.dsz`` file)."""
        fmt = formats(weight)
        if fmt.act_in is None:
            raise UnsupportedLayerError("this fixedpoint weight has no activation format (quantized without "
                                        "calibration data); the integer kernel needs one")
        if bias is not None and not bool(torch.isfinite(bias).all()):
            raise FormatError("the bias of a fixed-point layer is not finite; the integer engine rounds it to an integer")
        ints = torch.zeros(weight.numel, dtype=torch.int64)
        ints[torch.from_numpy(weight.flat_positions())] = torch.from_numpy(np.asarray(weight.data, dtype=np.int64))
        frac: int | Tensor = torch.from_numpy(fmt.frac_lens.copy()) if fmt.per_channel else int(fmt.frac_lens[0])
        return cls(module, ints.reshape(weight.shape), bias, fmt.bits, frac, fmt.act_in, fmt.act_out, float_io,
                   fmt.dynamic_input, fmt.rounding)

    @classmethod
    def from_module(cls, module: nn.Module, float_io: bool = False) -> IntegerLayer:
        """The integer form of an in-memory layer carrying a fixed-point weight with an input format."""
        weight = fixed_point_weight(module)
        if weight is None:
            raise UnsupportedLayerError(f"{type(module).__name__} has no fixed-point weight; "
                                        "run quantize_(model, DynamicFixedPoint(...), calib=...) first")
        return cls.from_stored(module, weight, cast("Tensor | None", getattr(module, "bias", None)), float_io)

    def forward(self, x: Tensor | QTensor) -> Tensor | QTensor:
        plan = self.__dict__.get("_plan", False)
        if plan is False:  # built on the first call (exporters construct layers they never run)
            plan = self.__dict__["_plan"] = Int8Plan.build(self, self._template) if FAST_PATH else None
        if plan is not None:
            out = plan(x, QTensor)
            if out is not None:
                self.__dict__["last_kernel"] = "int8-vnni" if plan.weight.packed is not None else "int8-portable"
                return out
        self.__dict__["last_kernel"] = "torch-int8-gemm" if self.int8_gemm else "torch-integer"
        fmt = self.act_in
        if self.dynamic_input:
            value = x.dequantize() if isinstance(x, QTensor) else x
            rows = row_frac_lens(value, fmt.bits).unsqueeze(-1)
            in_frac: int | Tensor = rows
            x_int = round_scaled(value.detach().double() * torch.pow(2.0, rows.double()), self.rounding).clamp_(
                *fmt.range)
        elif isinstance(x, QTensor):
            in_frac, x_int = fmt.frac_len, requantize(x.data.to(torch.int64), x.frac_len, fmt.bits, fmt.frac_len,
                                                      self.rounding, fmt.signed)
        else:
            in_frac, x_int = fmt.frac_len, to_int(x, fmt.bits, fmt.frac_len, rounding=self.rounding, signed=fmt.signed)
        acc = self._accumulate(x_int).to(torch.int64)
        acc_frac = self._output_frac(acc, in_frac)
        if self.dynamic_input and self.bias_float is not None:  # the bias at each row's accumulator format
            acc = acc + round_scaled(self.bias_float * torch.pow(2.0, acc_frac.double()),  # type: ignore[union-attr]
                                     self.rounding).to(torch.int64)
        if self.act_out is None:
            if isinstance(acc_frac, Tensor):
                return (acc.double() / torch.pow(2.0, acc_frac.double())).to(torch.float32)
            return from_int(acc, acc_frac, torch.float32)
        shifted = rounding_shift(acc, acc_frac - self.act_out.frac_len, self.rounding)
        out = QTensor(saturate(shifted, self.act_out.bits, self.act_out.signed), self.act_out.frac_len)
        return out.dequantize() if self.float_io else out

    def _output_frac(self, acc: Tensor, in_frac: int | Tensor) -> int | Tensor:
        """The accumulator's fractional length shaped for ``acc`` (channels on :attr:`axis`, rows leading)."""
        if not isinstance(self.w_frac, Tensor) and not isinstance(in_frac, Tensor):
            return in_frac + self.w_frac
        shape = [1] * acc.dim()
        shape[self.axis] = -1
        w = self.w_frac.reshape(shape) if isinstance(self.w_frac, Tensor) else self.w_frac
        return w + in_frac

    def _accumulate(self, x_int: Tensor) -> Tensor:
        if self.int8_gemm and self.weight_t8 is not None:
            flat = x_int.reshape(-1, x_int.shape[-1]).to(torch.int8)
            try:
                acc = torch._int_mm(flat, self.weight_t8)
            except RuntimeError:  # shapes the int8 kernel refuses: the generic integer path
                self.int8_gemm = False
            else:
                if self.bias_int is not None:
                    acc = acc + self.bias_int
                return acc.reshape(*x_int.shape[:-1], acc.shape[-1])
        if self.exact_float is not None:
            weight = self.__dict__.get("_float_weight")
            if weight is None or weight.dtype != self.exact_float:
                weight = self.__dict__["_float_weight"] = self.weight_int.to(self.exact_float)
            if not self.bias_after:
                bias = None if self.bias_int is None else self.bias_int.to(self.exact_float)
                return layer_call(self._template, x_int.to(self.exact_float), weight, bias).to(torch.int64)
            if self._pointwise and x_int.dim() == 4:  # a 1x1 conv as one GEMM: 1.2-3.5x faster in float64
                n, c, h, w = x_int.shape
                flat = weight.reshape(weight.shape[0], c) @ x_int.to(self.exact_float).reshape(n, c, h * w)
                acc = flat.reshape(n, -1, h, w).to(torch.int64)
            else:
                acc = layer_call(self._template, x_int.to(self.exact_float), weight, None).to(torch.int64)
            if self.bias_int is None:
                return acc
            shape = [1] * acc.dim()
            shape[self.axis] = -1
            return acc + self.bias_int.to(torch.int64).reshape(shape)
        return layer_call(self._template, x_int.to(self.acc_dtype), self.weight_int, self.bias_int)

    def extra_repr(self) -> str:
        out = self.act_out or "float"
        gemm = ", int8 GEMM" if self.int8_gemm else ""
        weight = (f"Q{self.bits}.[{int(self.w_frac.min())}..{int(self.w_frac.max())}]"
                  if isinstance(self.w_frac, Tensor) else f"Q{self.bits}.{self.w_frac}")
        source = "per-token " if self.dynamic_input else ""
        return f"{self.kind}, w={weight}, in={source}{self.act_in}, out={out}, acc={self.acc_dtype}{gemm}"


def _template_of(module: nn.Module) -> nn.Module:
    """A weightless copy of a plain layer's type and geometry (stride, padding, ...) for :func:`layer_call`; a
    layer class with its own ``forward`` is kept as it is (its ``forward`` is the computation)."""
    base = plain_type(module)
    if base is nn.Linear:
        return nn.Linear(1, 1, bias=False)
    if base in (nn.Conv1d, nn.Conv2d):
        m: Any = module
        geo = base(m.groups, m.groups, 1, bias=False, groups=m.groups)  # geometry copied below; weight unused
        geo.stride, geo.padding, geo.dilation = m.stride, m.padding, m.dilation
        geo.padding_mode = m.padding_mode
        return geo
    if base is None and isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
        return module
    raise UnsupportedLayerError(f"no integer kernel for {type(module).__name__}")


def fixed_point_weight(module: nn.Module, name: str = "weight") -> StoredWeight | None:
    """The stored form of ``module``'s weight when its value transform exports the ``fixedpoint`` kind."""
    transform = get_value_transform(module, name) if hasattr(module, "parametrizations") else None
    if transform is None or not isinstance(kind_of(transform.kind), FixedPointKind):
        return None
    mask = get_mask(module, name)
    with torch.no_grad():
        latent = latent_weight(module, name).detach()
        masked = latent * mask.to(latent.dtype) if mask is not None else latent
        return stored_from_export({k: v.detach().cpu().numpy() if isinstance(v, Tensor) else v
                                   for k, v in transform.export(masked).items()})


# ops that commute with a monotone integer representation: applied to the integers directly
_INT_FUNCTIONS = {F.relu, torch.relu, torch.flatten, F.max_pool1d, F.max_pool2d, torch.reshape, operator.getitem}
_INT_METHODS = {"relu", "flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze"}
_INT_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)


def _to_float(value: Any) -> Any:
    if isinstance(value, QTensor):
        return value.dequantize()
    if isinstance(value, tuple | list):
        return type(value)(_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    return value


def _on_ints(fn: Any, args: tuple, kwargs: dict) -> QTensor:
    first = args[0]
    result = fn(first.data, *args[1:], **kwargs)
    return QTensor(result, first.frac_len)


def _module_step(owner: IntegerModel, target: str) -> Any:
    """What a ``call_module`` node runs: the integer layer, an order-preserving module on the integers, or the
    module on float values."""
    name = f"int_{target.replace('.', '_')}"
    if target in owner.layer_names:
        layer = owner.layers[owner.layer_names[target]]

        def integer_step(x: Any) -> Any:
            return layer(x)

        integer_step.__name__ = name
        return integer_step
    module = owner.graph_module.get_submodule(target)
    on_ints = isinstance(module, _INT_MODULES)

    def step(*args: Any, **kwargs: Any) -> Any:
        if on_ints and args and isinstance(args[0], QTensor):
            return _on_ints(module, args, kwargs)
        return module(*_to_float(args), **_to_float(kwargs))

    step.__name__ = name
    return step


def _function_step(target: Any) -> Any:
    on_ints = target in _INT_FUNCTIONS

    def step(*args: Any, **kwargs: Any) -> Any:
        if on_ints and args and isinstance(args[0], QTensor):
            return _on_ints(target, args, {k: v for k, v in kwargs.items() if k != "inplace"})
        return target(*_to_float(args), **_to_float(kwargs))

    step.__name__ = f"int_{getattr(target, '__name__', 'fn')}"
    return step


def _method_step(target: str) -> Any:
    on_ints = target in _INT_METHODS

    def step(*args: Any, **kwargs: Any) -> Any:
        first = args[0]
        if isinstance(first, QTensor):
            if on_ints:
                return QTensor(getattr(first.data, target)(*args[1:], **kwargs), first.frac_len)
            if target == "size":
                return first.data.size(*args[1:], **kwargs)
        args = _to_float(args)
        return getattr(args[0], target)(*args[1:], **_to_float(kwargs))

    step.__name__ = f"int_{target}"
    return step


def _compile(owner: IntegerModel) -> fx.GraphModule:
    """The traced graph rewritten so that every node calls its integer-aware step directly: fx generates straight
    Python code for it, without an interpreter's per-node dispatch (at batch 1 as costly as the integer layers)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in owner.graph_module.graph.nodes:
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_module":
            env[node] = graph.call_function(_module_step(owner, str(node.target)), args, kwargs)
        elif node.op == "call_function":
            env[node] = graph.call_function(_function_step(node.target), args, kwargs)
        elif node.op == "call_method":
            env[node] = graph.call_function(_method_step(str(node.target)), args, kwargs)
        else:  # placeholder, get_attr, output
            env[node] = graph.node_copy(node, env.__getitem__)
    return fx.GraphModule(owner.graph_module, graph)


def _has_input_format(module: nn.Module) -> bool:
    """A fixed-point layer that computes on integers (weight-only ones, e.g. embeddings, stay as they are)."""
    weight = fixed_point_weight(module)
    return weight is not None and formats(weight).act_in is not None


class _LeafTracer(fx.Tracer):
    """Treats every module without children as a leaf, and remembers which module it was tracing when it failed."""

    def __init__(self) -> None:
        super().__init__()
        self.path: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.path.pop()


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = next((p for p in reversed(tracer.path) if p), "") or "the model's own forward"
        raise UnsupportedLayerError(
            f"integer inference of the whole {type(model).__name__} needs its graph, and tracing stopped in "
            f"{where!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}. Use swap_integer_layers_(model) (integer "
            "layers with float boundaries) instead") from exc
    return fx.GraphModule(tracer.root, graph)


class IntegerModel(nn.Module):
    """A fixed-point model run on integers end to end (float only at the input and at non-integer ops).

    With ``example`` (one input batch) the traced graph is checked to reproduce the model's simulation on it
    exactly: a ``forward`` whose Python branches the tracer resolved one way for every input (``isinstance``
    tests, shape checks) is refused rather than run wrongly.
    """

    def __init__(self, model: nn.Module, example: Any = None) -> None:
        super().__init__()
        self.graph_module = _trace(model)
        self.layers = nn.ModuleDict()
        self.layer_names: dict[str, str] = {}
        for fqn, module in model.named_modules():
            if _has_input_format(module):
                safe = fqn.replace(".", "__")
                self.layers[safe] = IntegerLayer.from_module(module)
                self.layer_names[fqn] = safe
        if not self.layer_names:
            raise UnsupportedLayerError("the model has no fixed-point layers; quantize it first")
        if example is not None:
            self._check(model, example)

    @torch.no_grad()
    def _check(self, model: nn.Module, example: Any) -> None:
        inputs = split_batch(example)[0]
        try:
            ours = self(inputs)
        except Exception as exc:
            raise UnsupportedLayerError(f"the traced graph of {type(model).__name__} fails on the example input "
                                        f"({type(exc).__name__}: {str(exc).splitlines()[0]}); use swap_integer_layers_"
                                        "(model) instead") from exc
        if not torch.equal(torch.as_tensor(ours), torch.as_tensor(run_model(model, inputs))):
            raise UnsupportedLayerError(f"the traced graph of {type(model).__name__} does not reproduce the model on "
                                        "the example input (a branch of its forward was fixed at tracing); use "
                                        "swap_integer_layers_(model) instead")

    @torch.no_grad()
    def forward(self, *args: Any) -> Any:
        owner, compiled = self.__dict__.get("_compiled", (None, None))
        if owner != id(self):  # built on the first call, and again in a copy (its steps must call the copy's own
            compiled = _compile(self)  # layers); not a submodule: it holds no state of its own
            self.__dict__["_compiled"] = (id(self), compiled)
        return _to_float(compiled(*args))


def swap_integer_layers_(model: nn.Module) -> nn.Module:
    """Replace every fixed-point layer of ``model`` in place by its integer form with float input/output; layers
    with fixed-point weights but no activation formats (embeddings, weight-only layers) keep their module with the
    weight's values baked in (the transform would otherwise re-quantize the whole table on every call)."""
    targets = [(fqn, m) for fqn, m in model.named_modules() if _has_input_format(m)]
    for fqn, module in targets:
        set_submodule(model, fqn, IntegerLayer.from_module(module, float_io=True))
    for module in model.modules():
        if fixed_point_weight(module) is not None:
            bake_module_(module).requires_grad_(False)
    return model


@register_layer_builder("fixedpoint")
def build_fixedpoint(module: nn.Module, weight: StoredWeight, bias: Tensor | None, name: str) -> nn.Module | None:
    """``IntegerLayer`` computing from the stored integers; weights without activation formats (or layers the
    integer kernel does not cover) run their palette through the sparse kernel."""
    m: Any = module
    supported = isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) and getattr(m, "padding_mode", "zeros") == "zeros"
    if supported and formats(weight).act_in is not None:
        return IntegerLayer.from_stored(module, weight, bias)
    return LAYER_BUILDERS[ANY_LOOKUP](module, weight, bias, name)
