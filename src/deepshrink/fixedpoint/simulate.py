"""The simulated (fake-quantized) forward: activation quantizers as forward hooks on quantized layers.

The pre-hook rounds the layer's input to its input format. The post-hook recomputes the layer's output
*exactly* as the integer path does it: integer inputs times integer weights accumulated in float64 (every
partial sum is an integer below 2**53, hence exact), plus the bias rounded to the accumulator's fractional
length, then a round-half-up shift and saturation to the output format. Its value replaces the float32
output; the gradient still flows through the float32 computation (straight-through), so the model can be
fine-tuned with the hooks in place.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import UnsupportedLayerError
from ..core.state import get_value_transform
from .formats import fake_quantize, int_range
from .transform import FixedPoint

QUANT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def fixed_point_of(module: nn.Module) -> FixedPoint | None:
    transform = get_value_transform(module) if hasattr(module, "parametrizations") else None
    return transform if isinstance(transform, FixedPoint) else None


def accumulate(module: nn.Module, x_int: Tensor, w_int: Tensor, b_int: Tensor | None) -> Tensor:
    """The layer's integer accumulation ``sum x*w + b`` on integer-valued tensors (float64 or int64)."""
    if isinstance(module, nn.Linear):
        return F.linear(x_int, w_int, b_int)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(f"fixed point supports zero padding only, got padding_mode={module.padding_mode!r}")
        conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
        return conv(x_int, w_int, b_int, module.stride, module.padding, module.dilation, module.groups)
    raise UnsupportedLayerError(f"fixed point supports Linear/Conv1d/Conv2d, not {type(module).__name__}")


def layer_weight(module: nn.Module) -> Tensor:
    """``module.weight`` (through its parametrization chain), typed."""
    return cast(Tensor, module.weight)


def layer_bias(module: nn.Module) -> Tensor | None:
    return cast("Tensor | None", getattr(module, "bias", None))


def bias_int(bias: Tensor | None, acc_frac_len: int) -> Tensor | None:
    """The bias rounded (half up) to the accumulator's fractional length, as float64 integers (no saturation)."""
    if bias is None:
        return None
    return torch.floor(bias.detach().double() * math.ldexp(1.0, acc_frac_len) + 0.5)


def exact_output(module: nn.Module, x: Tensor, fp: FixedPoint, out_dtype: torch.dtype) -> Tensor:
    """The layer's output as the integer path computes it, from an input already on the input format's grid."""
    act_in = fp.act_in
    assert act_in is not None
    w_fmt = fp.weight_format
    x_int = torch.round(x.detach().double() * math.ldexp(1.0, act_in.frac_len))
    w_int = torch.round(layer_weight(module).detach().double() * math.ldexp(1.0, w_fmt.frac_len))
    acc_fl = act_in.frac_len + w_fmt.frac_len
    b_int = bias_int(layer_bias(module), acc_fl)
    if _float32_exact(x_int, w_int, b_int):
        acc = accumulate(module, x_int.float(), w_int.float(), None).double()
        if b_int is not None:
            acc = acc + (b_int if isinstance(module, nn.Linear) else b_int.reshape((-1,) + (1,) * (acc.dim() - 2)))
    else:
        acc = accumulate(module, x_int, w_int, b_int)
    act_out = fp.act_out
    if act_out is None:
        return (acc * math.ldexp(1.0, -acc_fl)).to(out_dtype)
    qmin, qmax = int_range(act_out.bits)
    y = torch.floor(acc * math.ldexp(1.0, act_out.frac_len - acc_fl) + 0.5).clamp_(qmin, qmax)
    return (y * math.ldexp(1.0, -act_out.frac_len)).to(out_dtype)


FLOAT32_EXACT = float(2**24)


def _float32_exact(x_int: Tensor, w_int: Tensor, b_int: Tensor | None) -> bool:
    """Whether every partial sum of ``x*w`` is an integer below 2**24, so float32 accumulation is exact in
    any summation order (the bias is added afterwards in float64)."""
    if x_int.numel() == 0 or w_int.numel() == 0:
        return False
    row_sum = float(w_int.abs().reshape(w_int.shape[0], -1).sum(1).max())
    return float(x_int.abs().max()) * row_sum < FLOAT32_EXACT


def _pre_hook(module: nn.Module, args: tuple) -> tuple | None:
    fp = fixed_point_of(module)
    if fp is None or fp.act_in is None or not args:
        return None
    fmt = fp.act_in
    return (fake_quantize(args[0], fmt.bits, fmt.frac_len), *args[1:])


def _post_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    fp = fixed_point_of(module)
    if fp is None or fp.act_in is None or not args:
        return None  # without an input format the float32 output is the simulation
    exact = exact_output(module, args[0], fp, output.dtype)
    return exact + (output - output.detach())


def install_hooks(module: nn.Module) -> None:
    """Attach the activation hooks to one quantized layer (idempotent; survives ``deepcopy``)."""
    if _pre_hook not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_pre_hook)
    if _post_hook not in module._forward_hooks.values():
        module.register_forward_hook(_post_hook)


def install_all_hooks(model: nn.Module) -> int:
    """Attach activation hooks to every layer of ``model`` carrying a ``FixedPoint`` weight (e.g. after
    ``load_checkpoint``, which restores the formats but not hooks); returns how many layers."""
    count = 0
    for module in model.modules():
        if fixed_point_of(module) is not None:
            install_hooks(module)
            count += 1
    return count
