"""One-dimensional k-means for weight sharing: centroid initialisations, Lloyd iterations, exact optimum.

Deep Compression clusters each layer's surviving weights into ``2^b`` shared values. In one dimension the
clusters are intervals of the sorted weights, so Lloyd's assignment is a ``searchsorted`` over centroid
midpoints and the exact optimum is a dynamic programme over split points (Wang & Song's Ckmeans.1d.dp;
here solved with the divide-and-conquer speed-up, O(K N log N), compiled with numba).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..core.errors import ConfigError

INITS = ("linear", "density", "random", "optimal")
"""Centroid initialisations: the paper's three plus the exact 1-D optimum (no Lloyd iterations needed)."""


@dataclass(frozen=True)
class KMeansResult:
    """Sorted ``centroids`` (float32, length K), ``labels`` per input value, ``inertia`` (sum of squared errors)."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    iterations: int


def init_centroids(values: np.ndarray, k: int, method: str, seed: int = 0) -> np.ndarray:
    """Initial centroids (sorted, float64) for ``values`` by the paper's ``linear`` / ``density`` / ``random``.

    * linear: evenly spaced over ``[min, max]`` (the paper's recommendation: keeps the rare large weights);
    * density: evenly spaced over the CDF of the weights (quantiles), crowding centroids near zero;
    * random (Forgy): ``k`` distinct weights drawn at random.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ConfigError("cannot cluster an empty set of weights")
    if method == "linear":
        return np.linspace(values.min(), values.max(), k)
    if method == "density":
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    if method == "random":
        rng = np.random.default_rng(seed)
        unique = np.unique(values)
        chosen = rng.choice(unique, size=min(k, unique.size), replace=False)
        if chosen.size < k:
            chosen = np.concatenate([chosen, rng.choice(unique, size=k - chosen.size)])
        return np.sort(chosen)
    raise ConfigError(f"unknown centroid init {method!r} (allowed: {', '.join(INITS)})")


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for each value (ties go to the lower centroid)."""
    mids = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(mids, values, side="left").astype(np.int64)


def lloyd(values: np.ndarray, centroids: np.ndarray, max_iter: int = 100, tol: float = 0.0) -> KMeansResult:
    """Lloyd's k-means from ``centroids``; empty clusters keep their centroid (as the paper's code does)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    c = np.sort(np.asarray(centroids, dtype=np.float64))
    k = c.size
    labels = assign(x, c)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        sums = np.bincount(labels, weights=x, minlength=k)
        counts = np.bincount(labels, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        new.sort()
        moved = float(np.max(np.abs(new - c))) if k else 0.0
        c = new
        new_labels = assign(x, c)
        if moved <= tol or np.array_equal(new_labels, labels):
            labels = new_labels
            break
        labels = new_labels
    inertia = float(np.sum((x - c[labels]) ** 2))
    return KMeansResult(c.astype(np.float32), labels, inertia, iterations)


@numba.njit(cache=True)
def _cost(prefix: np.ndarray, prefix_sq: np.ndarray, counts: np.ndarray, i: int, j: int) -> float:
    """Sum of squared errors of sorted unique values ``i..j`` (inclusive) around their weighted mean."""
    n = counts[j + 1] - counts[i]
    s = prefix[j + 1] - prefix[i]
    cost = (prefix_sq[j + 1] - prefix_sq[i]) - s * s / n
    return cost if cost > 0.0 else 0.0


@numba.njit(cache=True)
def _solve_row(prev: np.ndarray, cur: np.ndarray, arg: np.ndarray, prefix: np.ndarray, prefix_sq: np.ndarray,
               counts: np.ndarray, k: int, n: int) -> None:
    """Fill row ``k`` of the DP (cur[i] = best cost of the first i+1 values in k+1 clusters) by divide and conquer.

    The optimal split point is monotone in ``i`` (the cost is a Monge array), so each half of the range only
    searches its side of the middle's split: an explicit stack instead of recursion.
    """
    stack = np.empty((64 + 2 * 64, 4), dtype=np.int64)
    top = 0
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = k, n - 1, k, n - 1
    top = 1
    while top > 0:
        top -= 1
        lo, hi, opt_lo, opt_hi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        best = np.inf
        best_j = opt_lo
        upper = min(mid, opt_hi)
        for j in range(opt_lo, upper + 1):  # last cluster = values j..mid
            c = prev[j - 1] + _cost(prefix, prefix_sq, counts, j, mid)
            if c < best:
                best = c
                best_j = j
        cur[mid] = best
        arg[mid] = best_j
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, mid - 1, opt_lo, best_j
        top += 1
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = mid + 1, hi, best_j, opt_hi
        top += 1


@numba.njit(cache=True)
def _optimal_dp(unique: np.ndarray, weight: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Cluster starts (indices into ``unique``) of the exact weighted k-means, and its inertia."""
    n = unique.size
    prefix = np.zeros(n + 1)
    prefix_sq = np.zeros(n + 1)
    counts = np.zeros(n + 1)
    for i in range(n):
        prefix[i + 1] = prefix[i] + weight[i] * unique[i]
        prefix_sq[i + 1] = prefix_sq[i] + weight[i] * unique[i] * unique[i]
        counts[i + 1] = counts[i] + weight[i]
    args = np.zeros((k, n), dtype=np.int32)
    prev = np.empty(n)
    for i in range(n):
        prev[i] = _cost(prefix, prefix_sq, counts, 0, i)
    cur = np.full(n, np.inf)
    for row in range(1, k):
        cur[:] = np.inf
        _solve_row(prev, cur, args[row], prefix, prefix_sq, counts, row, n)
        prev, cur = cur, prev
    starts = np.zeros(k, dtype=np.int64)
    end = n - 1
    for row in range(k - 1, 0, -1):
        starts[row] = args[row, end]
        end = starts[row] - 1
    return starts, prev[n - 1]


def optimal_kmeans(values: np.ndarray, k: int) -> KMeansResult:
    """The exact minimum-inertia k-means of 1-D ``values`` (dynamic programming over sorted unique values)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ConfigError("cannot cluster an empty set of weights")
    unique, counts = np.unique(x, return_counts=True)
    used = min(k, unique.size)
    starts, _ = _optimal_dp(unique, counts.astype(np.float64), used)
    bounds = np.append(starts, unique.size)
    centroids = np.empty(used)
    for c in range(used):
        lo, hi = bounds[c], bounds[c + 1]
        centroids[c] = np.average(unique[lo:hi], weights=counts[lo:hi])
    if used < k:  # fewer distinct values than clusters: pad with copies of the largest (never assigned)
        centroids = np.concatenate([centroids, np.full(k - used, centroids[-1])])
    # labels by interval membership: value u belongs to the cluster whose start is the last one <= u
    labels = np.searchsorted(unique[starts], x, side="right") - 1
    inertia = float(np.sum((x - centroids[labels]) ** 2))
    return KMeansResult(centroids.astype(np.float32), labels.astype(np.int64), inertia, 0)


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", max_iter: int = 100, seed: int = 0) -> KMeansResult:
    """Cluster 1-D ``values`` into ``k`` shared values by ``init`` then Lloyd (or exactly, for ``optimal``)."""
    if k < 1:
        raise ConfigError(f"number of clusters must be >= 1, got {k}")
    if init not in INITS:
        raise ConfigError(f"unknown centroid init {init!r} (allowed: {', '.join(INITS)})")
    if init == "optimal":
        return optimal_kmeans(values, k)
    return lloyd(values, init_centroids(values, k, init, seed), max_iter=max_iter)
