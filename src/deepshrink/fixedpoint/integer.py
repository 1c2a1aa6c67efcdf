"""Integer-only inference: integer weights and activations, int32/int64 accumulation, rounding shifts, saturation.

* :class:`IntegerLayer` — one quantized Linear/Conv as integers: requantize the incoming integers (or round a
  float input at a float boundary) to the input format, accumulate ``x*w`` and the bias in int32 (int64 when
  the worst-case partial sum could reach 2**31), then shift
  (round half up) and saturate to the output format.
* :class:`IntegerModel` — the whole network on integers: the model is traced with ``torch.fx`` and run by an
  interpreter in which activations are :class:`QTensor` (int64 data + fractional length). Order-preserving
  ops (ReLU, max-pool, flatten, view, dropout in eval) act on the integers directly; any other op sees the
  exact float value of its input (a float boundary, e.g. LayerNorm or softmax).
* :func:`swap_integer_layers_` — for models ``torch.fx`` cannot trace (Hugging Face encoders): each quantized
  layer is replaced by its integer form with float input and output (float ops around it stay float).

Every path is bit-exact with the simulated model of :mod:`deepshrink.fixedpoint.simulate`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..core.edits import set_submodule
from ..core.errors import UnsupportedLayerError
from ..core.select import layer_type_name
from .formats import FixedPointFormat, from_int, requantize, rounding_shift, saturate, to_int
from .simulate import accumulate, bias_int, fixed_point_of, layer_bias, layer_weight
from .transform import FixedPoint


@dataclass
class QTensor:
    """An integer activation: ``data`` (int64) times ``2**-frac_len``."""

    data: Tensor
    frac_len: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return from_int(self.data, self.frac_len, dtype)


class IntegerLayer(nn.Module):
    """A quantized Linear/Conv1d/Conv2d computed on integers only (between its input and output formats)."""

    weight_int: Tensor
    bias_int: Tensor | None
    weight_t8: Tensor | None

    is_runtime_layer = True  # listed by deepshrink.runtime.runtime_layers

    def __init__(self, module: nn.Module, w_int: Tensor, bias: Tensor | None, w_fmt: FixedPointFormat,
                 act_in: FixedPointFormat, act_out: FixedPointFormat | None, float_io: bool = False) -> None:
        """``module`` gives the layer type and geometry only (it may live on the meta device)."""
        super().__init__()
        self.w_fmt, self.act_in, self.act_out = w_fmt, act_in, act_out
        self.acc_frac_len = act_in.frac_len + w_fmt.frac_len
        self.float_io = float_io
        with torch.no_grad():
            w_int = w_int.detach().to("cpu", torch.int64)
            b = bias_int(None if bias is None else bias.detach().cpu(), self.acc_frac_len)
            # int32 accumulation when no partial sum can reach 2**31, else int64
            row_sum = int(w_int.abs().reshape(w_int.shape[0], -1).sum(1).max()) if w_int.numel() else 0
            bound = (1 << (act_in.bits - 1)) * row_sum + (int(b.abs().max()) if b is not None and b.numel() else 0)
            self.acc_dtype = torch.int32 if bound < 2**31 else torch.int64
            self.register_buffer("weight_int", w_int.to(self.acc_dtype))
            self.register_buffer("bias_int", None if b is None else b.to(self.acc_dtype))
            # int8 x int8 -> int32 GEMM (torch._int_mm) for 8-bit Linear layers: the fast CPU integer path
            self.int8_gemm = (isinstance(module, nn.Linear) and act_in.bits <= 8 and w_fmt.bits <= 8
                              and self.acc_dtype == torch.int32 and hasattr(torch, "_int_mm"))
            self.register_buffer("weight_t8", w_int.t().contiguous().to(torch.int8) if self.int8_gemm else None)
        self.kind = layer_type_name(module)
        self._template = _geometry_of(module)

    @classmethod
    def from_module(cls, module: nn.Module, float_io: bool = False) -> IntegerLayer:
        """The integer form of a layer carrying a ``FixedPoint`` weight with an input format."""
        fp = fixed_point_of(module)
        if fp is None or fp.act_in is None:
            raise UnsupportedLayerError(f"{type(module).__name__} has no fixed-point weight with an input format; "
                                        "run quantize_(model, DynamicFixedPoint(...), calib=...) first")
        w_fmt = fp.weight_format
        w_int = torch.round(layer_weight(module).detach().double() * math.ldexp(1.0, w_fmt.frac_len))
        return cls(module, w_int, layer_bias(module), w_fmt, fp.act_in, fp.act_out, float_io)

    @classmethod
    def from_export(cls, module: nn.Module, exported: dict[str, Any], bias: Tensor | None,
                    float_io: bool = True) -> IntegerLayer:
        """The integer form of a layer from its ``fixedpoint`` export (as read from a ``.dsz`` file)."""
        fp = FixedPoint.from_export(exported)
        if fp.act_in is None:
            raise UnsupportedLayerError("this fixedpoint weight has no activation format (quantized without "
                                        "calibration data); the integer kernel needs one")
        w_int = torch.as_tensor(np.asarray(exported["int"], dtype=np.int64))
        return cls(module, w_int, bias, fp.weight_format, fp.act_in, fp.act_out, float_io)

    def forward(self, x: Tensor | QTensor) -> Tensor | QTensor:
        fmt = self.act_in
        if isinstance(x, QTensor):
            x_int = requantize(x.data.to(torch.int64), x.frac_len, fmt.bits, fmt.frac_len)
        else:
            x_int = to_int(x, fmt.bits, fmt.frac_len)
        acc = self._accumulate(x_int).to(torch.int64)
        if self.act_out is None:
            return from_int(acc, self.acc_frac_len, torch.float32)
        out = QTensor(saturate(rounding_shift(acc, self.acc_frac_len - self.act_out.frac_len), self.act_out.bits),
                      self.act_out.frac_len)
        return out.dequantize() if self.float_io else out

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
        return accumulate(self._template, x_int.to(self.acc_dtype), self.weight_int, self.bias_int)

    def extra_repr(self) -> str:
        out = self.act_out or "float"
        gemm = ", int8 GEMM" if self.int8_gemm else ""
        return f"{self.kind}, w={self.w_fmt}, in={self.act_in}, out={out}, acc={self.acc_dtype}{gemm}"


def _geometry_of(module: nn.Module) -> nn.Module:
    """A weightless copy of the layer's type and geometry (stride, padding, ...), for :func:`accumulate`."""
    if isinstance(module, nn.Linear):
        return nn.Linear(1, 1, bias=False)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        cls = nn.Conv1d if isinstance(module, nn.Conv1d) else nn.Conv2d
        groups = module.groups
        geo = cls(groups, groups, 1, bias=False, groups=groups)  # geometry copied below; weight unused
        geo.stride, geo.padding, geo.dilation = module.stride, module.padding, module.dilation
        geo.padding_mode = module.padding_mode
        return geo
    raise UnsupportedLayerError(f"no integer kernel for {type(module).__name__}")


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


class _Interpreter(fx.Interpreter):
    def __init__(self, owner: IntegerModel) -> None:
        super().__init__(owner.graph_module)
        self.owner = owner

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        key = str(target)
        if key in self.owner.layer_names:
            return self.owner.layers[self.owner.layer_names[key]](args[0])
        module = self.fetch_attr(key)
        if args and isinstance(args[0], QTensor) and isinstance(module, _INT_MODULES):
            return _on_ints(module, args, kwargs)
        return super().call_module(target, _to_float(args), _to_float(kwargs))

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if args and isinstance(args[0], QTensor) and target in _INT_FUNCTIONS:
            kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
            return _on_ints(target, args, kwargs)
        return super().call_function(target, _to_float(args), _to_float(kwargs))

    def call_method(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if args and isinstance(args[0], QTensor) and target in _INT_METHODS:
            first = args[0]
            return QTensor(getattr(first.data, str(target))(*args[1:], **kwargs), first.frac_len)
        if args and isinstance(args[0], QTensor) and target == "size":
            return args[0].data.size(*args[1:], **kwargs)
        return super().call_method(target, _to_float(args), _to_float(kwargs))


class IntegerModel(nn.Module):
    """A fixed-point model run on integers end to end (float only at the input and at non-integer ops)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        try:
            self.graph_module = fx.symbolic_trace(model)
        except Exception as exc:
            raise UnsupportedLayerError(f"cannot trace {type(model).__name__} for integer inference ({exc}); "
                                        "use swap_integer_layers_(model) instead") from exc
        self.layers = nn.ModuleDict()
        self.layer_names: dict[str, str] = {}
        for fqn, module in model.named_modules():
            if fixed_point_of(module) is not None:
                safe = fqn.replace(".", "__")
                self.layers[safe] = IntegerLayer.from_module(module)
                self.layer_names[fqn] = safe
        if not self.layer_names:
            raise UnsupportedLayerError("the model has no fixed-point layers; quantize it first")

    @torch.no_grad()
    def forward(self, *args: Any) -> Any:
        return _to_float(_Interpreter(self).run(*args))


def swap_integer_layers_(model: nn.Module) -> nn.Module:
    """Replace every fixed-point layer of ``model`` in place by its integer form with float input/output."""
    targets = [(fqn, m) for fqn, m in model.named_modules() if fixed_point_of(m) is not None]
    for fqn, module in targets:
        set_submodule(model, fqn, IntegerLayer.from_module(module, float_io=True))
    return model
