"""Whole-model rank selection (Zhang et al., TPAMI sec. 4.2): keep the most PCA energy under a FLOP budget.

Maximise ``prod_l sum_{a <= d'_l} sigma_{l,a}`` (``sigma``: eigenvalues of layer ``l``'s response covariance)
subject to the total conv cost ``<= C``, by the paper's greedy rule: start from the full model and repeatedly
drop the eigenvalue that costs the least objective per MAC saved. Unlike the paper's ``(d'/d) C_l`` we count the
factorised layer's exact cost ``d' (k^2 c + d) H W``, the 1x1 conv included; a layer stays unfactorised (cost
``C_l``) until its rank falls below the break-even rank, so the first step of a layer jumps to that rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

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


@dataclass(frozen=True)
class SpatialCost:
    """MACs of a ``k x k`` conv per input, 3-D factorised into ``k x 1`` (``s`` filters), ``1 x k`` (``r``), 1x1."""

    filters: int
    spatial_max: int
    """Largest useful spatial rank: ``min(c kh, d kw)``."""
    original: int
    vertical: int
    """MACs per spatial filter of the ``k x 1`` conv."""
    horizontal: int
    """MACs per spatial-by-channel rank product of the ``1 x k`` conv."""
    pointwise: int
    """MACs per channel rank of the 1x1 conv."""

    def cost(self, ranks: tuple[int, int] | None) -> int:
        if ranks is None:
            return self.original
        s, r = ranks
        return s * self.vertical + s * r * self.horizontal + r * self.pointwise


Move = tuple[Any, int, float]  # (next state, MACs saved, log-energy lost)


def _channel_moves(cost: LayerCost, energy: Tensor, rank: int | None) -> list[Move]:
    nxt = cost.break_even if rank is None else rank - 1
    if nxt < 1:
        return []
    lost = _log_energy(energy, rank, cost.filters) - _log_energy(energy, nxt, cost.filters)
    return [(nxt, cost.cost(rank) - cost.cost(nxt), lost)]


def _spatial_moves(cost: SpatialCost, spatial: Tensor, channel: Tensor, ranks: tuple[int, int] | None) -> list[Move]:
    def log_energy(state: tuple[int, int] | None) -> float:
        if state is None:
            return _log_energy(spatial, None, cost.spatial_max) + _log_energy(channel, None, cost.filters)
        return _log_energy(spatial, state[0], cost.spatial_max) + _log_energy(channel, state[1], cost.filters)

    if ranks is None:  # the first step jumps to the most energetic factorisation cheaper than the original
        options = []
        for s in range(1, cost.spatial_max + 1):
            room = cost.original - 1 - s * cost.vertical
            r = min(cost.filters, room // (s * cost.horizontal + cost.pointwise)) if room > 0 else 0
            if r >= 1:
                options.append((s, r))
        if not options:
            return []
        candidates = [max(options, key=log_energy)]
    else:
        s, r = ranks
        candidates = [c for c in ((s - 1, r), (s, r - 1)) if min(c) >= 1]
    here = log_energy(ranks)
    return [(c, cost.cost(ranks) - cost.cost(c), here - log_energy(c)) for c in candidates]


def greedy(moves: dict[str, Any], total: int, budget: int) -> dict[str, Any]:
    """Apply the move losing the least log-energy per MAC saved until ``total <= budget``."""
    state: dict[str, Any] = {k: None for k in moves}
    while total > budget:
        best: tuple[float, str, Any, int] | None = None
        for name, options in moves.items():
            for nxt, saved, lost in options(state[name]):
                score = lost / max(saved, 1)
                if saved > 0 and (best is None or score < best[0]):
                    best = (score, name, nxt, saved)
        if best is None:
            raise ConfigError(f"the conv FLOP budget {budget:,} MACs is unreachable even at rank 1 in every layer")
        _, name, nxt, saved = best
        total -= saved
        state[name] = nxt
    return state


def select_ranks(
    eigenvalues: dict[str, Tensor], costs: dict[str, LayerCost], budget: int, fixed: int = 0
) -> dict[str, int | None]:
    """Rank per layer (``None``: keep the layer as it is) so that ``fixed + sum cost <= budget``.

    ``eigenvalues[l]`` are layer ``l``'s response-covariance eigenvalues, largest first; ``fixed`` counts MACs of
    layers not up for factorisation. Raises :class:`ConfigError` when even rank 1 everywhere exceeds the budget.
    """
    return select_ranks_3d(eigenvalues, costs, {}, budget, fixed)


def select_ranks_3d(
    eigenvalues: dict[str, Tensor], costs: Mapping[str, LayerCost | SpatialCost],
    spatial_energy: Mapping[str, Tensor], budget: int, fixed: int = 0,
) -> dict[str, Any]:
    """The greedy with 3-D layers: a :class:`SpatialCost` layer gets ``(spatial rank, channel rank)`` or ``None``.

    Its objective adds the log of the energy its spatial split keeps (``spatial_energy[l]``: squared singular values
    of its response-weighted tap matrix, :func:`~.spatial.spatial_singular_values`) to the log of the kept response
    energy, as the paper's product rule does across layers; each step lowers one of the two ranks.
    """
    if set(eigenvalues) != set(costs) or not set(spatial_energy) <= set(costs):
        raise ConfigError("select_ranks needs eigenvalues and costs for the same layers")
    cumulative = {k: torch.cumsum(v.double().clamp_min(0), 0) for k, v in eigenvalues.items()}
    moves: dict[str, Any] = {}
    for name, cost in costs.items():
        if isinstance(cost, SpatialCost):
            spatial = torch.cumsum(spatial_energy[name].double().clamp_min(0), 0)
            moves[name] = partial(_spatial_moves, cost, spatial, cumulative[name])
        else:
            moves[name] = partial(_channel_moves, cost, cumulative[name])
    return greedy(moves, fixed + sum(c.original for c in costs.values()), budget)
