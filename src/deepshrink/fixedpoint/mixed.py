"""Beyond the paper's per-layer formats: greedy mixed precision under a bit budget, and bias correction.

* :func:`widen_for_budget`: in Qiu et al.'s greedy spirit, the layers whose quantization costs the most error per
  byte are widened (e.g. 8 -> 16 bits, weights and activations) one at a time while the average weight width stays
  within the budget. A depthwise convolution's channels span very different ranges and it holds few weights, so
  it is usually widened first.
* :func:`correct_biases_` (Nagel et al. 2019, "data-free quantization", here with calibration data): each layer's
  mean output shift against the float model, per output channel, is subtracted from its bias, in execution order
  (later layers see the corrected earlier ones). The bias stays a float the integer engine rounds, so simulation
  and integer engine stay bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.layer_call import channel_axis
from ..core.state import latent_weight
from .search import capture_group_inputs

__all__ = ["average_bits", "correct_biases_", "widen_for_budget"]


def average_bits(bits: Mapping[str, int], modules: Mapping[str, nn.Module]) -> float:
    """Weight bits per weight over ``modules``."""
    counts = {name: latent_weight(m).numel() for name, m in modules.items()}
    return sum(bits[n] * counts[n] for n in counts) / max(sum(counts.values()), 1)


def widen_for_budget(errors: Mapping[str, float], modules: Mapping[str, nn.Module], base: Mapping[str, int],
                     wide: int, budget: float) -> list[str]:
    """Names to widen from their base width to ``wide`` bits, most error per added weight bit first, while the
    average width stays within ``budget`` (a layer that would break it is passed over for cheaper ones)."""
    counts = {name: latent_weight(m).numel() for name, m in modules.items()}
    total = max(sum(counts.values()), 1)
    spent = sum(base[n] * counts[n] for n in counts)
    order = sorted((n for n in errors if base[n] < wide),
                   key=lambda n: errors[n] / (counts[n] * (wide - base[n])), reverse=True)
    chosen = []
    for name in order:
        extra = counts[name] * (wide - base[name])
        if (spent + extra) / total <= budget + 1e-12 and errors[name] > 0:
            chosen.append(name)
            spent += extra
    return chosen


def _bias_of(module: nn.Module) -> Tensor:
    """The layer's bias parameter (a zero one is added where the layer has none)."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, Tensor):
        weight = latent_weight(module)
        module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
        bias = module.bias
    return bias


@torch.no_grad()
def correct_biases_(model: nn.Module, order: Sequence[str], modules: Mapping[str, nn.Module],
                    reference_out: Mapping[str, list[Tensor]], batches: Sequence[Any]) -> dict[str, float]:
    """Subtract each layer's mean output error (per output channel) from its bias, in ``order``; returns the mean
    absolute shift removed per layer."""
    removed: dict[str, float] = {}
    for name in order:
        module = modules[name]
        if isinstance(module, nn.Embedding):
            continue
        inputs = capture_group_inputs(model, [module], batches)[0]
        refs = reference_out[name][: len(inputs)]
        axis = channel_axis(module)
        shift = None
        for x, ref in zip(inputs, refs, strict=False):
            diff = (module(x) - ref).double()
            dims = [d for d in range(diff.dim()) if d != axis % diff.dim()]
            total = diff.sum(dim=dims)
            shift = total if shift is None else shift + total
        if shift is None:
            continue
        count = sum(ref.numel() // ref.shape[axis] for ref in refs)
        shift = shift / max(count, 1)
        bias = _bias_of(module)
        bias.sub_(shift.to(bias.dtype))
        removed[name] = float(shift.abs().mean())
    return removed
