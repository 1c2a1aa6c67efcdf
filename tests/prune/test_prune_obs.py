"""Layer-wise OBS: better reconstruction than magnitude at equal sparsity, exact 2:4 masks, conv groups."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.core import ConfigError, get_mask
from deepshrink.prune import MagnitudePrune, OBSPrune, obs_prune_matrix, prune_


def _correlated(n: int, features: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen) * torch.logspace(0, -2, features)
    return torch.randn(n, features, generator=gen) @ mixing + 0.3 * torch.randn(1, features, generator=gen)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), sparsity=st.sampled_from([0.3, 0.5, 0.7]))
def test_obs_reconstructs_a_linear_layer_better_than_magnitude(seed: int, sparsity: float) -> None:
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(24, 16))
    x = _correlated(512, 24, seed)
    reference = layer(x).detach()
    obs, magnitude = copy.deepcopy(layer), copy.deepcopy(layer)
    # damp 1e-3: these inputs are ill-conditioned (mixing scales down to 1e-2), and the default 1% of the mean
    # Hessian diagonal loses to magnitude on 2 of the 3,003 (seed, sparsity) cases (123 and 591 at 0.3); at 1e-3
    # OBS wins on all of them (checked exhaustively), so this property holds on the strategy's whole domain
    prune_(obs, OBSPrune(sparsity=sparsity, block_size=8, damp=1e-3), data=x)
    prune_(magnitude, MagnitudePrune(sparsity=sparsity))
    kept = get_mask(obs[0])
    assert kept is not None and abs(1 - float(kept.float().mean()) - sparsity) < 0.05
    with torch.no_grad():
        error_obs = float(((obs(x) - reference) ** 2).mean())
        error_magnitude = float(((magnitude(x) - reference) ** 2).mean())
    assert error_obs < error_magnitude


def test_two_four_masks_keep_exactly_two_of_every_four() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 16)
    x = _correlated(256, 16, 1)
    new, keep = obs_prune_matrix(weight, 2 * x.T @ x / 256, torch.ones_like(weight, dtype=torch.bool), 0.5, "2:4", 8)
    assert torch.all(keep.reshape(6, 4, 4).sum(-1) == 2)
    assert torch.all(new[~keep] == 0)


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_layers_grouped_or_not_keep_sparsity_and_the_previous_mask(groups: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=groups), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(16, 4, 10, 10)
    prune_(model, MagnitudePrune(sparsity=0.2))
    before = get_mask(model[0])
    assert before is not None
    before = before.clone()
    reference = model(x).detach()
    magnitude = copy.deepcopy(model)
    prune_(model, OBSPrune(sparsity=0.6), data=x)
    prune_(magnitude, MagnitudePrune(sparsity=0.6))
    after = get_mask(model[0])
    assert after is not None and not torch.any(after & ~before)  # masks only narrow
    assert abs(1 - float(after.float().mean()) - 0.6) < 0.05
    with torch.no_grad():
        assert float(((model(x) - reference) ** 2).mean()) < float(((magnitude(x) - reference) ** 2).mean())



def test_global_allocation_meets_the_budget_and_spares_the_layer_that_costs_most() -> None:
    from deepshrink.prune.allocate import allocate

    # layer a loses little error per weight, b a lot: the budget is taken from a first
    curves = {"a": {0.0: 0.0, 0.5: 0.01, 0.9: 0.05}, "b": {0.0: 0.0, 0.5: 0.5, 0.9: 2.0}}
    chosen = allocate(curves, {"a": 100, "b": 100}, target=0.45)
    assert chosen == {"a": 0.9, "b": 0.0}
    chosen = allocate(curves, {"a": 100, "b": 100}, target=0.6)
    assert chosen["a"] == 0.9 and chosen["b"] == 0.5


def test_global_obs_prunes_the_share_asked_for_over_all_layers() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    data = [torch.randn(64, 16) @ torch.randn(16, 16) for _ in range(2)]
    report = prune_(model, OBSPrune(sparsity=0.5, scope="global"), data=data)
    assert report.sparsity >= 0.5 - 1e-9
    with pytest.raises(ConfigError, match="global"):
        OBSPrune(sparsity={"0": 0.5}, scope="global")
