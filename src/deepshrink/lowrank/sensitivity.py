"""Ranks by measured sensitivity: how far the network output moves when one layer alone is factorised.

The paper's rule (:mod:`.ranks`) keeps the most PCA energy of each layer's responses; how much a lost direction
costs depends on what the rest of the network does with it, which the energy cannot see. Here each candidate
layer is factorised alone at a grid of ranks (linear reconstruction of its own responses, the rest of the network
exact), the mean squared change of the network's output on calibration images is measured for each, and the
whole-model greedy then lowers, step by step, the rank whose next grid point costs the least output change per
MAC saved (Han et al.'s per-layer sensitivity analysis, applied to ranks). Losses are taken as additive.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core.edits import set_submodule
from ..core.errors import ConfigError
from .fit import linear_fit
from .modules import conv_pair
from .ranks import LayerCost, greedy

__all__ = ["rank_grid", "select_ranks_by_sensitivity", "sensitivity_losses"]


def rank_grid(cost: LayerCost, points: int) -> list[int]:
    """Up to ``points`` ranks from 1 to the break-even rank, denser at the low end (largest first)."""
    top = cost.break_even
    if top < 1:
        return []
    fractions = [(i / points) ** 1.5 for i in range(1, points + 1)]
    return sorted({max(1, round(top * f)) for f in fractions}, reverse=True)


def _factorised(conv: nn.Conv2d, responses: Tensor, rank: int) -> nn.Sequential:
    fac = linear_fit(responses, responses, rank, asymmetric=True)
    return conv_pair(conv, *fac.conv_weights(conv.weight, conv.bias)).eval()


def _output(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    outs = []
    for start in range(0, images.shape[0], batch_size):
        out = model(images[start:start + batch_size])
        if not isinstance(out, Tensor):
            raise ConfigError("rank_rule='sensitivity' needs a model whose output is one tensor")
        outs.append(out.detach().double().flatten(1))
    return torch.cat(outs)


@torch.no_grad()
def sensitivity_losses(model: nn.Module, order: list[str], costs: dict[str, LayerCost], responses: dict[str, Tensor],
                       images: Tensor, points: int = 10, batch_size: int = 100) -> dict[str, dict[int, float]]:
    """``{layer: {rank: mean squared output change}}`` with each layer factorised alone (the model is restored)."""
    was_training = model.training
    model.eval()
    reference = _output(model, images, batch_size)
    losses: dict[str, dict[int, float]] = {}
    try:
        for name in order:
            conv = model.get_submodule(name)
            assert isinstance(conv, nn.Conv2d)
            losses[name] = {}
            for rank in rank_grid(costs[name], points):
                set_submodule(model, name, _factorised(conv, responses[name], rank))
                try:
                    out = _output(model, images, batch_size)
                finally:
                    set_submodule(model, name, conv)
                losses[name][rank] = float(((out - reference) ** 2).sum(1).mean())
    finally:
        model.train(was_training)
    return losses


def select_ranks_by_sensitivity(losses: dict[str, dict[int, float]], costs: dict[str, LayerCost], budget: int,
                                fixed: int = 0) -> dict[str, int | None]:
    """Rank per layer (``None``: kept) so that ``fixed + sum cost <= budget``, by the measured losses."""

    def moves(name: str, rank: int | None) -> list[tuple[Any, int, float]]:
        lower = [r for r in losses[name] if rank is None or r < rank]
        if not lower:
            return []
        nxt = max(lower)
        here = 0.0 if rank is None else losses[name][rank]
        return [(nxt, costs[name].cost(rank) - costs[name].cost(nxt), losses[name][nxt] - here)]

    options = {name: (lambda rank, name=name: moves(name, rank)) for name in losses}
    return greedy(options, fixed + sum(c.original for c in costs.values()), budget)
