"""Beyond the paper's per-layer formats: greedy mixed precision under a bit budget.

In Qiu et al.'s greedy spirit, the layers whose quantization costs the most error per weight bit are widened (e.g.
8 -> 16 bits, weights and activations) one at a time while the average weight width stays within the budget. A
depthwise convolution's channels span very different ranges and it holds few weights, so it is usually widened
first.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..core.state import latent_weight

__all__ = ["average_bits", "widen_for_budget"]


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
