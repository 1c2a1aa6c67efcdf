"""The solvers: known low-rank responses recovered, the closed-form z step, asymmetric optimality, greedy ranks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.core import ConfigError
from deepshrink.lowrank import (
    LayerCost,
    ZhangLowRank,
    linear_fit,
    lowrank_conv_,
    nonlinear_fit,
    pca_fit,
    relu_followed,
    select_ranks,
    z_step,
)


class TwoConv(nn.Module):
    def __init__(self, rank: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(12, 10, 3, padding=1)
        with torch.no_grad():  # conv1's responses span a rank-`rank` subspace (plus the bias offset)
            basis = torch.randn(12, rank) @ torch.randn(rank, 27)
            self.conv1.weight.copy_(basis.reshape(12, 3, 3, 3))
            self.conv1.bias.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


@pytest.mark.parametrize("method", ["linear", "nonlinear", "asymmetric", "linear-asymmetric", "svd"])
@pytest.mark.parametrize("stride", [1, 2])
def test_known_low_rank_response_is_recovered(method: str, stride: int) -> None:
    model = TwoConv(rank=4, stride=stride)
    images = torch.randn(30, 3, 10, 10)
    ref = model(images)
    report = lowrank_conv_(model, ZhangLowRank(ranks={"conv1": 4}, method=method, images=30, positions=20,
                                               schedule=((0.01, 3), (1.0, 3))), images)
    assert report.ranks == {"conv1": 4, "conv2": None}
    assert report.energy["conv1"] == pytest.approx(1.0, abs=1e-6)
    assert model.conv1[0].out_channels == 4 and isinstance(model.conv2, nn.Conv2d)
    torch.testing.assert_close(model(images), ref, atol=2e-4, rtol=1e-3)


def test_relu_detection() -> None:
    model = TwoConv(rank=2)
    assert relu_followed(model, torch.randn(1, 3, 6, 6)) == {"conv1", "conv2"}
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU())
    assert relu_followed(plain, torch.randn(1, 1, 6, 6)) == set()
    inplace = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Identity(), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 1))
    assert relu_followed(inplace, torch.randn(1, 1, 6, 6)) == {"0"}


@settings(max_examples=40, deadline=None)
@given(target=st.floats(0, 5), v=st.floats(-5, 5), lam=st.sampled_from([0.01, 0.1, 1.0, 10.0]))
def test_z_step_is_the_elementwise_minimiser(target: float, v: float, lam: float) -> None:
    z = float(z_step(torch.tensor([target], dtype=torch.float64), torch.tensor([v], dtype=torch.float64), lam)[0])
    grid = torch.linspace(-12, 12, 48001, dtype=torch.float64)
    cost = (target - grid.clamp_min(0)) ** 2 + lam * (grid - v) ** 2
    best = float(cost.min())
    assert (target - max(z, 0.0)) ** 2 + lam * (z - v) ** 2 <= best + 1e-6


def _responses(n: int = 2000, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(n, d, generator=gen) @ torch.randn(d, d, generator=gen) * 0.5 + 0.2
    yhat = y + 0.3 * torch.randn(n, d, generator=gen)  # the approximated network's (noisier) input
    return y, yhat


def test_nonlinear_beats_its_linear_start_on_the_relu_objective() -> None:
    y, yhat = _responses()
    for asym in (False, True):
        fac = nonlinear_fit(y, yhat if asym else y, 5, asymmetric=asym)
        assert fac.error < fac.initial_error
        assert len(fac.history) == 50
        relu_err = float(((torch.relu(y) - torch.relu(fac.apply(yhat if asym else y).float())) ** 2).sum(1).mean())
        assert relu_err == pytest.approx(fac.error, rel=1e-4)


def test_asymmetric_linear_is_optimal_for_the_asymmetric_objective() -> None:
    y, yhat = _responses()
    asym = linear_fit(y, yhat, 5, asymmetric=True)
    sym = pca_fit(y, 5)

    def err(fac) -> float:  # type: ignore[no-untyped-def]
        return float(((y.double() - fac.apply(yhat)) ** 2).sum(1).mean())

    assert err(asym) < err(sym)
    assert asym.error == pytest.approx(err(asym), rel=1e-6)
    # with y^ == y the asymmetric solver is PCA
    same = linear_fit(y, y, 5, asymmetric=True)
    assert same.error == pytest.approx(sym.error, rel=1e-4)


def test_greedy_ranks_meet_the_budget_and_favour_concentrated_energy() -> None:
    flat = torch.ones(16)
    peaked = torch.tensor([100.0, 50.0] + [0.01] * 14)
    costs = {"a": LayerCost(16, 16 * 300, 300 + 16), "b": LayerCost(16, 16 * 300, 300 + 16)}
    budget = 16 * 300
    ranks = select_ranks({"a": flat, "b": peaked}, costs, budget)
    total = sum(costs[k].cost(r) for k, r in ranks.items())
    assert total <= budget
    assert ranks["b"] is not None and ranks["b"] <= 2
    assert ranks["a"] is None or ranks["a"] > ranks["b"]
    # looser budgets keep at least as much rank everywhere
    loose = select_ranks({"a": flat, "b": peaked}, costs, int(1.5 * budget))
    for k in ranks:
        assert (loose[k] or 16) >= (ranks[k] or 16)
    with pytest.raises(ConfigError, match="unreachable"):
        select_ranks({"a": flat, "b": peaked}, costs, 10)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="method"):
        ZhangLowRank(method="tucker")
    with pytest.raises(ConfigError, match="speedup"):
        ZhangLowRank(speedup=0.5)
    with pytest.raises(ConfigError, match="ranks"):
        lowrank_conv_(TwoConv(2), ZhangLowRank(ranks={"nope": 2}, method="linear", images=2), torch.randn(2, 3, 6, 6))
