"""Whole-model rank selection (Zhang et al., TPAMI sec. 4.2): keep the most PCA energy under a FLOP budget.

Maximise ``prod_l sum_{a <= d'_l} sigma_{l,a}`` (``sigma``: eigenvalues of layer ``l``'s response covariance)
subject to the total conv cost ``<= C``, by the paper's greedy rule: start from the full model and repeatedly
drop the eigenvalue that costs the least objective per MAC saved. Unlike the paper's ``(d'/d) C_l`` we count the
factorised layer's exact cost ``d' (k^2 c + d) H W``, the 1x1 conv included; a layer stays unfactorised (cost
``C_l``) until its rank falls below the break-even rank, so the first step of a layer jumps to that rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.errors import ConfigError


@dataclass(frozen=True)
class LayerCost:
    """MACs of a conv layer per input: ``original`` unfactorised, ``per_rank`` per kept filter when factorised."""

    filters: int
    original: int
    per_rank: int

    @property
    def break_even(self) -> int:
        """Largest rank whose factorised form is cheaper than the original (0: never cheaper)."""
        return min(self.filters, (self.original - 1) // self.per_rank)

    def cost(self, rank: int | None) -> int:
        """MACs at ``rank`` (``None``: unfactorised)."""
        return self.original if rank is None else rank * self.per_rank


def _log_energy(cumulative: Tensor, rank: int | None, filters: int) -> float:
    kept = float(cumulative[(rank if rank is not None else filters) - 1])
    return math.log(max(kept, 1e-300))


def select_ranks(
    eigenvalues: dict[str, Tensor], costs: dict[str, LayerCost], budget: int, fixed: int = 0
) -> dict[str, int | None]:
    """Rank per layer (``None``: keep the layer as it is) so that ``fixed + sum cost <= budget``.

    ``eigenvalues[l]`` are layer ``l``'s response-covariance eigenvalues, largest first; ``fixed`` counts MACs of
    layers not up for factorisation. Raises :class:`ConfigError` when even rank 1 everywhere exceeds the budget.
    """
    if set(eigenvalues) != set(costs):
        raise ConfigError("select_ranks needs eigenvalues and costs for the same layers")
    cumulative = {k: torch.cumsum(v.double().clamp_min(0), 0) for k, v in eigenvalues.items()}
    ranks: dict[str, int | None] = {k: None for k in costs}
    total = fixed + sum(c.original for c in costs.values())
    while total > budget:
        best: tuple[float, str, int] | None = None
        for name, cost in costs.items():
            rank = ranks[name]
            nxt = cost.break_even if rank is None else rank - 1
            if nxt < 1:
                continue
            saved = cost.cost(rank) - cost.cost(nxt)
            lost = _log_energy(cumulative[name], rank, cost.filters) - _log_energy(cumulative[name], nxt, cost.filters)
            score = lost / saved
            if best is None or score < best[0]:
                best = (score, name, nxt)
        if best is None:
            raise ConfigError(f"the conv FLOP budget {budget:,} MACs is unreachable even at rank 1 in every layer")
        _, name, nxt = best
        total -= costs[name].cost(ranks[name]) - costs[name].cost(nxt)
        ranks[name] = nxt
    return ranks
