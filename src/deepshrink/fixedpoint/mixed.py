"""Beyond the paper's per-layer formats: greedy mixed precision under a bit budget.

In Qiu et al.'s greedy spirit, the layers whose quantization costs the most error per weight bit are widened (e.g.
8 -> 16 bits, weights and activations) one at a time while the average weight width stays within the budget. A
depthwise convolution's channels span very different ranges and it holds few weights, so it is usually widened
first. What "error" means is the ``mixed_objective`` of the configuration: each layer's own relative error
(``"layer"``: its weight error plus its output's error, one capture pass), or what the whole network loses
(``"network"``, :func:`network_gains`: how much the network output's error against the float model falls when
that layer alone runs wide, one calibration pass per layer) -- a layer's own error says little about how much
of it survives to the output. ``max_act_bits_avg`` widens activations alone the same way (by the network
objective), for models whose activations, not weights, carry the error (a transformer's outlier channels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.graph import run_model
from ..core.state import latent_weight
from .search import output_tensors
from .transform import fixed_point_of

__all__ = ["average_bits", "network_gains", "widen_activations_for_budget", "widen_for_budget"]


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


def widen_activations_for_budget(gains: Mapping[str, float], act_bits: Mapping[str, int], wide: int,
                                 budget: float) -> list[str]:
    """Layers whose activations go from their width to ``wide`` bits, largest positive gain first, while the
    average activation width over ``act_bits``' layers stays within ``budget``."""
    total = sum(act_bits.values())
    chosen = []
    for name in sorted((n for n in gains if act_bits[n] < wide and gains[n] > 0), key=lambda n: -gains[n]):
        extra = wide - act_bits[name]
        if (total + extra) / max(len(act_bits), 1) <= budget + 1e-12:
            chosen.append(name)
            total += extra
    return chosen


@torch.no_grad()
def network_gains(model: nn.Module, modules: Mapping[str, nn.Module], names: Sequence[str], batches: Sequence[Any],
                  reference: Sequence[Sequence[Tensor]],
                  wide_weight: Callable[[str], tuple[int, int | Tensor]] | None,
                  originals: Mapping[str, Tensor] | None = None) -> dict[str, float]:
    """For each layer in ``names``: how much the squared error of the network's outputs against ``reference`` (the
    float model's, per calibration batch) falls when that layer alone runs wide -- its weight at the width and
    fractional length(s) ``wide_weight(name)`` gives, its activations unrounded -- the rest as quantized.

    Weights must not be cached (``parametrize.cached``) around this: each trial changes one layer's format.
    ``originals``: latent weights a wide layer runs from (when the narrow ones were moved, e.g. OBS-rounded).
    ``wide_weight=None``: the weight keeps its format, only the activations run unrounded (what widening the
    layer's activations alone gains).
    """
    def error() -> float:
        total = 0.0
        for batch, ref in zip(batches, reference, strict=True):
            for got, want in zip(output_tensors(run_model(model, batch)), ref, strict=True):
                total += float(((got.double() - want.double()) ** 2).sum())
        return total

    base = error()
    gains: dict[str, float] = {}
    for name in names:
        fp = fixed_point_of(modules[name])
        assert fp is not None
        saved = int(fp.bits_buf), fp.weight_frac_len, fp.act_in, fp.act_out
        latent = latent_weight(modules[name])
        narrow = (latent.detach().clone() if wide_weight is not None and originals is not None
                  and name in originals else None)
        if narrow is not None and originals is not None:
            latent.data.copy_(originals[name])
        if wide_weight is not None:
            fp.set_weight_frac_len(*wide_weight(name))
        fp.set_act_in(None)
        fp.set_act_out(None)
        try:
            gains[name] = base - error()
        finally:
            if narrow is not None:
                latent.data.copy_(narrow)
            fp.set_weight_frac_len(saved[0], saved[1])
            fp.set_act_in(saved[2])
            fp.set_act_out(saved[3])
    return gains
