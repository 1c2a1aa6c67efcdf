"""1-D k-means: initialisations, Lloyd, and the exact dynamic programme against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.core import ConfigError
from deepshrink.share import INITS, init_centroids, kmeans_1d, optimal_kmeans


def _brute_force(x: np.ndarray, k: int) -> float:
    s = np.sort(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, s.size), k - 1):
        best = min(best, sum(float(((p - p.mean()) ** 2).sum()) for p in np.split(s, cuts)))
    return best


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=2, max_size=9),
    st.integers(1, 4),
)
def test_optimal_matches_brute_force(values: list[float], k: int) -> None:
    x = np.asarray(values, dtype=np.float64)
    k = min(k, np.unique(x).size)
    result = optimal_kmeans(x, k)
    assert result.inertia == pytest.approx(_brute_force(x, k), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("init", INITS)
def test_every_init_clusters_and_optimal_is_best(init: str) -> None:
    x = np.random.default_rng(1).standard_normal(3000) * 0.1
    result = kmeans_1d(x, 8, init)
    best = kmeans_1d(x, 8, "optimal")
    assert result.centroids.shape == (8,) and result.labels.shape == x.shape
    assert np.all(np.diff(result.centroids) >= 0)
    assert result.labels.min() >= 0 and result.labels.max() < 8
    assert best.inertia <= result.inertia * (1 + 1e-9)
    # labels are consistent with the reported inertia
    np.testing.assert_allclose(np.sum((x - result.centroids[result.labels]) ** 2), result.inertia, rtol=1e-4)


def test_inits_follow_the_paper() -> None:
    x = np.concatenate([np.random.default_rng(0).standard_normal(1000) * 0.01, [-1.0, 1.0]])
    linear = init_centroids(x, 5, "linear")
    np.testing.assert_allclose(linear, [-1, -0.5, 0, 0.5, 1])
    density = init_centroids(x, 5, "density")  # quantiles: crowded near zero, far from the outliers
    assert np.abs(density).max() < 0.05
    forgy = init_centroids(x, 5, "random", seed=3)
    assert set(forgy.tolist()) <= set(x.tolist())


def test_fewer_values_than_clusters() -> None:
    x = np.array([0.5, 0.5, -0.25])
    for init in INITS:
        result = kmeans_1d(x, 4, init)
        assert result.inertia == pytest.approx(0.0, abs=1e-12)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="allowed"):
        kmeans_1d(np.ones(3), 2, "kmeans++")
    with pytest.raises(ConfigError, match="empty"):
        kmeans_1d(np.array([]), 2, "optimal")
