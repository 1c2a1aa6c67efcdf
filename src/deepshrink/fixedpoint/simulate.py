"""The exact output of a fixed-point layer, computed in floats the way the integer engine computes it.

Integer inputs times integer weights accumulated in float64 (every partial sum is an integer below 2**53, hence
exact; float32 where every partial sum stays below 2**24), plus the bias rounded to the accumulator's fractional
length, then a rounding shift (half up, or half to even) and saturation to the output format. The accumulator's fractional length is
the input's plus the weight's: per output channel when the weight has one fractional length per channel, per row
when the input's is chosen per token. The layer's computation comes from :func:`deepshrink.core.layer_call`, so a
layer class with its own ``forward`` (e.g. TF-"same" padding) is simulated as it computes. The activation hooks
that apply this live with the transform (:mod:`.transform`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from ..core.fixed_point import FixedPointFormat, FracLen, pow2, round_scaled
from ..core.layer_call import channel_axis, layer_call, plain_type

FLOAT32_EXACT = float(2**24)


def layer_weight(module: nn.Module) -> Tensor:
    """``module.weight`` (through its parametrization chain), typed."""
    return cast(Tensor, module.weight)


def layer_bias(module: nn.Module) -> Tensor | None:
    return cast("Tensor | None", getattr(module, "bias", None))


def accumulator_frac_len(module: nn.Module, out: Tensor, in_frac: FracLen, w_frac: FracLen) -> FracLen:
    """The accumulator's fractional length(s), shaped to broadcast over the layer's output ``out``."""
    if not isinstance(in_frac, Tensor) and not isinstance(w_frac, Tensor):
        return in_frac + w_frac
    acc = torch.zeros((1,) * out.dim(), dtype=torch.int64)
    if isinstance(w_frac, Tensor) and w_frac.dim():
        shape = [1] * out.dim()
        shape[channel_axis(module)] = -1
        acc = acc + w_frac.reshape(shape)
    else:
        acc = acc + int(w_frac)
    return acc + (in_frac if isinstance(in_frac, Tensor) else int(in_frac))


def _scale(frac: FracLen, like: Tensor) -> float | Tensor:
    """``2**frac`` for a fractional length that already broadcasts against ``like`` (or an int)."""
    if isinstance(frac, Tensor) and frac.dim():
        return torch.pow(2.0, frac.double())
    return pow2(int(frac), like)


def _float32_exact(x_int: Tensor, w_int: Tensor) -> bool:
    """Whether every partial sum of ``x*w`` is an integer below 2**24, so float32 accumulation is exact in
    any summation order (the bias is added afterwards in float64)."""
    if x_int.numel() == 0 or w_int.numel() == 0:
        return False
    row_sum = float(w_int.abs().reshape(w_int.shape[0], -1).sum(1).max())
    return float(x_int.abs().max()) * row_sum < FLOAT32_EXACT


def exact_output(module: nn.Module, x: Tensor, bits: int, w_frac: FracLen, in_frac: FracLen,
                 act_out: FixedPointFormat | None, out_dtype: torch.dtype, rounding: str = "half_up") -> Tensor:
    """The layer's output as the integer path computes it, from an input already on its format's grid.

    ``w_frac``: the weight's fractional length (an int, or one per output channel); ``in_frac``: the input's (an
    int, or one per row shaped ``(..., 1)``).
    """
    x_int = torch.round(x.detach().double() * _scale(in_frac, x))
    w_int = torch.round(layer_weight(module).detach().double() * pow2(w_frac, layer_weight(module), 0))
    if plain_type(module) is not None and _float32_exact(x_int, w_int):
        acc = layer_call(module, x_int.float(), w_int.float(), None).double()
    else:
        acc = layer_call(module, x_int, w_int, None)
    acc_fl = accumulator_frac_len(module, acc, in_frac, w_frac)
    bias = layer_bias(module)
    if bias is not None:
        shape = [1] * acc.dim()
        shape[channel_axis(module)] = -1
        acc = acc + round_scaled(bias.detach().double().reshape(shape) * _scale(acc_fl, acc), rounding)
    if act_out is None:
        return (acc / _scale(acc_fl, acc)).to(out_dtype)
    qmin, qmax = act_out.range
    y = round_scaled(acc * (pow2(act_out.frac_len, acc) / _scale(acc_fl, acc)), rounding).clamp_(qmin, qmax)
    return (y / pow2(act_out.frac_len, y)).to(out_dtype)
