"""The exact output of a fixed-point layer, computed in floats the way the integer engine computes it.

Integer inputs times integer weights accumulated in float64 (every partial sum is an integer below 2**53, hence
exact; float32 where every partial sum stays below 2**24), plus the bias rounded to the accumulator's fractional
length, then a round-half-up shift and saturation to the output format. The layer's computation comes from
:func:`deepshrink.core.layer_call`, so a layer class with its own ``forward`` (e.g. TF-"same" padding) is
simulated as it computes. The activation hooks that apply this live with the transform (:mod:`.transform`).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from ..core.fixed_point import FixedPointFormat, bias_int, int_range
from ..core.layer_call import layer_call, plain_type

FLOAT32_EXACT = float(2**24)


def layer_weight(module: nn.Module) -> Tensor:
    """``module.weight`` (through its parametrization chain), typed."""
    return cast(Tensor, module.weight)


def layer_bias(module: nn.Module) -> Tensor | None:
    return cast("Tensor | None", getattr(module, "bias", None))


def _float32_exact(x_int: Tensor, w_int: Tensor) -> bool:
    """Whether every partial sum of ``x*w`` is an integer below 2**24, so float32 accumulation is exact in
    any summation order (the bias is added afterwards in float64)."""
    if x_int.numel() == 0 or w_int.numel() == 0:
        return False
    row_sum = float(w_int.abs().reshape(w_int.shape[0], -1).sum(1).max())
    return float(x_int.abs().max()) * row_sum < FLOAT32_EXACT


def exact_output(module: nn.Module, x: Tensor, w_fmt: FixedPointFormat, act_in: FixedPointFormat,
                 act_out: FixedPointFormat | None, out_dtype: torch.dtype) -> Tensor:
    """The layer's output as the integer path computes it, from an input already on the input format's grid."""
    x_int = torch.round(x.detach().double() * math.ldexp(1.0, act_in.frac_len))
    w_int = torch.round(layer_weight(module).detach().double() * math.ldexp(1.0, w_fmt.frac_len))
    acc_fl = act_in.frac_len + w_fmt.frac_len
    b_int = bias_int(layer_bias(module), acc_fl)
    if plain_type(module) is not None and _float32_exact(x_int, w_int):
        acc = layer_call(module, x_int.float(), w_int.float(), None).double()
        if b_int is not None:
            acc = acc + (b_int if isinstance(module, nn.Linear) else b_int.reshape((-1,) + (1,) * (acc.dim() - 2)))
    else:
        acc = layer_call(module, x_int, w_int, b_int)
    if act_out is None:
        return (acc * math.ldexp(1.0, -acc_fl)).to(out_dtype)
    qmin, qmax = int_range(act_out.bits)
    y = torch.floor(acc * math.ldexp(1.0, act_out.frac_len - acc_fl) + 0.5).clamp_(qmin, qmax)
    return (y * math.ldexp(1.0, -act_out.frac_len)).to(out_dtype)
