"""Per-layer sparsities under one global budget, from each layer's own reconstruction-error curve.

Uniform sparsity treats a 3x3 stem conv like a 1280x1000 classifier. Here each layer is pruned (on a copy) at a grid
of sparsities by layer-wise OBS, and its relative output error ``tr(dW H dW^T) / tr(W H W^T)`` recorded; then,
starting from no pruning, the step (one layer, one grid point further) that adds the least error per weight it
removes is taken until the model-wide share of pruned weights reaches the target (the greedy solution of the
knapsack the curves define, exact when they are convex). The scheme of OBC's and SPDY's global allocation with
the layer's own error as the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["GRID", "allocate", "relative_error"]

GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def relative_error(weight: Tensor, pruned: Tensor, hessians: Sequence[Tensor]) -> float:
    """``sum_g tr(dW_g H_g dW_g^T) / tr(W_g H_g W_g^T)``: the layer's output error relative to its output energy."""
    groups = len(hessians)
    rows = weight.shape[0] // groups
    error = energy = 0.0
    for g, h in enumerate(hessians):
        w = weight[g * rows:(g + 1) * rows].reshape(rows, -1).double()
        d = w - pruned[g * rows:(g + 1) * rows].reshape(rows, -1).double()
        error += float(torch.einsum("rf,fk,rk->", d, h.double(), d))
        energy += float(torch.einsum("rf,fk,rk->", w, h.double(), w))
    return error / energy if energy > 0 else 0.0


def allocate(curves: Mapping[str, Mapping[float, float]], counts: Mapping[str, int], target: float,
             cap: Callable[[str], float] = lambda name: 1.0) -> dict[str, float]:
    """Sparsity per layer (grid points of its curve) so that at least ``target`` of all weights are pruned with
    the least summed error, greedily by error added per weight removed. ``cap(name)``: the most a layer may lose."""
    total = sum(counts.values())
    grids = {n: sorted(s for s in curve if s <= cap(n) + 1e-12) for n, curve in curves.items()}
    chosen = {n: grid[0] for n, grid in grids.items()}
    removed = sum(chosen[n] * counts[n] for n in chosen)
    while removed < target * total - 1e-9:
        best, best_cost = None, float("inf")
        for name, grid in grids.items():
            position = grid.index(chosen[name])
            # the cheapest next point: the best average slope over any further grid point (skips non-convex bumps)
            for later in grid[position + 1:]:
                gained = (later - chosen[name]) * counts[name]
                cost = (curves[name][later] - curves[name][chosen[name]]) / gained
                if cost < best_cost:
                    best, best_cost = (name, later), cost
        if best is None:
            break
        name, later = best
        removed += (later - chosen[name]) * counts[name]
        chosen[name] = later
    return chosen
