"""OBS rounding of fixed-point weights: GPTQ / Optimal Brain Quantization (Frantar et al. 2022) on Qiu's grids.

Rounding every weight to its nearest grid point minimises the weight error, not the layer's output error. Here
the weights of each layer are rounded one input column at a time, and each column's rounding error is spread over
the columns not yet rounded through the inverse of the layer's input Hessian ``H = 2 X X^T`` (calibration
inputs), exactly as layer-wise OBS pruning spreads a pruned weight's error (:mod:`deepshrink.core.hessian`). The
grid is the layer's own: the fractional length(s) the weight stage chose (per layer or per output channel),
saturated to the width. The result lies on the grid, so the ``FixedPoint`` transform stores it exactly. Layers are
rounded in call order, each from the inputs the already-rounded layers before it produce; pruned weights stay 0.
A layer whose output error on its calibration inputs comes out larger than with nearest rounding (saturation at a
coarse per-layer grid can defeat the compensation) keeps nearest rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.capture import layer_by_layer
from ..core.fixed_point import int_range, round_scaled
from ..core.hessian import input_hessian, obs_sweep
from ..core.layer_call import layer_call
from ..core.state import get_mask, latent_weight
from .transform import fixed_point_of

__all__ = ["obs_round_"]


def _round_rows(module: nn.Module, weight: Tensor, hessians: list[Tensor], block_size: int, damp: float) -> Tensor:
    """``weight`` (float64, pruned positions 0) OBS-rounded to the layer's grid, one group of channels at a time."""
    fp = fixed_point_of(module)
    assert fp is not None
    qmin, qmax = int_range(int(fp.bits_buf))
    frac = fp.weight_frac_len
    rows_total = weight.shape[0]
    fl = frac.reshape(-1) if isinstance(frac, Tensor) else torch.full((rows_total,), int(frac), dtype=torch.int64)
    scale = torch.pow(2.0, fl.double()).reshape(-1, 1)
    mask = get_mask(module)
    alive = (mask.detach().cpu().reshape(rows_total, -1) if mask is not None
             else torch.ones(rows_total, weight[0].numel(), dtype=torch.bool))
    rows = rows_total // len(hessians)
    new = weight.reshape(rows_total, -1).clone()
    for g, hessian in enumerate(hessians):
        part = slice(g * rows, (g + 1) * rows)
        steps, kept = scale[part], alive[part]

        def rule(start: int, stop: int, block: Tensor, block_inv: Tensor,
                 steps: Tensor = steps, kept: Tensor = kept) -> Callable[[int, Tensor], Tensor]:
            def target(i: int, column: Tensor) -> Tensor:
                ints = round_scaled(column.unsqueeze(1) * steps, fp.rounding).clamp_(qmin, qmax)
                return torch.where(kept[:, start + i], (ints / steps).squeeze(1), torch.zeros_like(column))
            return target

        new[part] = obs_sweep(new[part], hessian, rule, block_size, damp)
    return new.reshape(weight.shape)


@torch.no_grad()
def obs_round_(model: nn.Module, order: Sequence[str], modules: Mapping[str, nn.Module], batches: Sequence[Any],
               block_size: int = 128, damp: float = 0.01) -> dict[str, tuple[float, float]]:
    """OBS-round the weights of the layers in ``order`` (each already carrying its ``FixedPoint`` format) in place;
    returns each layer's relative output error on its calibration inputs, ``(nearest rounding, OBS rounding)``
    (the layer keeps the smaller)."""
    errors: dict[str, tuple[float, float]] = {}

    def decide(name: str, xs: list[Tensor], _refs: list[Tensor]) -> None:
        module = modules[name]
        if isinstance(module, nn.Embedding):
            return
        latent = latent_weight(module)
        mask = get_mask(module)
        original = latent.detach().cpu().double() * (mask.detach().cpu() if mask is not None else 1.0)
        before = [module(x) for x in xs]
        reference = _float_outputs(module, xs, original)
        new = _round_rows(module, original, input_hessian(module, xs), block_size, damp)
        latent.copy_(new.to(latent.dtype).to(latent.device))
        after = [module(x) for x in xs]
        energy = sum(float((r.double() ** 2).sum()) for r in reference) or 1.0
        errors[name] = (_sq(before, reference) / energy, _sq(after, reference) / energy)
        if errors[name][1] > errors[name][0]:  # saturation can defeat the compensation: keep nearest rounding
            latent.copy_(original.to(latent.dtype).to(latent.device))

    layer_by_layer(model, order, modules, batches, None, decide)
    return errors


def _float_outputs(module: nn.Module, xs: list[Tensor], weight: Tensor) -> list[Tensor]:
    """The layer's outputs with its float ``weight`` (the transform bypassed)."""
    bias = getattr(module, "bias", None)
    return [layer_call(module, x.double(), weight, None if bias is None else bias.detach().double()) for x in xs]


def _sq(outs: list[Tensor], refs: list[Tensor]) -> float:
    return float(sum(float(((a.double() - b) ** 2).sum()) for a, b in zip(outs, refs, strict=True)))
