from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.core import ConfigError, get_mask, latent_weight, set_mask
from deepshrink.prune import (
    MagnitudePrune,
    RandomPrune,
    clear_pruned_optimizer_state_,
    model_sparsity,
    prune_,
)

from .prune_helpers import TinyCNN, TinyMLP


def test_layer_sparsity_prunes_smallest_weights(tiny_mlp: TinyMLP) -> None:
    before = tiny_mlp.fc1.weight.detach().abs().clone()
    report = prune_(tiny_mlp, MagnitudePrune(sparsity=0.5))
    mask = get_mask(tiny_mlp.fc1)
    assert mask is not None and int(mask.sum()) == 15  # 30 weights, half kept
    assert before[mask].min() >= before[~mask].max()
    assert [r.name for r in report.layers] == ["fc1", "fc2"]
    assert report.layers[0].kept_after == 15
    assert torch.all(tiny_mlp.fc1.weight[~mask] == 0)
    assert torch.all(latent_weight(tiny_mlp.fc1)[~mask] == 0)


def test_quality_threshold_is_quality_times_std(tiny_mlp: TinyMLP) -> None:
    w = tiny_mlp.fc1.weight.detach().clone()
    prune_(tiny_mlp, MagnitudePrune(quality=0.7), select="fc1")
    mask = get_mask(tiny_mlp.fc1)
    assert mask is not None
    assert torch.equal(mask, w.abs() >= 0.7 * w.std())
    assert get_mask(tiny_mlp.fc2) is None


def test_per_layer_dict_and_glob(tiny_mlp: TinyMLP) -> None:
    report = prune_(tiny_mlp, MagnitudePrune(sparsity={"fc1": 0.8, "fc*": 0.2}))
    kept = {r.name: r.kept_after for r in report.layers}
    assert kept == {"fc1": 6, "fc2": 12}
    with pytest.raises(ConfigError, match="fc9"):
        prune_(tiny_mlp, MagnitudePrune(sparsity={"fc9": 0.5}))


def test_global_scope_uses_one_threshold(tiny_mlp: TinyMLP) -> None:
    weights = torch.cat([m.weight.detach().abs().flatten() for m in (tiny_mlp.fc1, tiny_mlp.fc2)])
    report = prune_(tiny_mlp, MagnitudePrune(sparsity=0.6, scope="global"))
    assert report.kept == round(0.4 * weights.numel())
    cut = torch.sort(weights, descending=True).values[report.kept - 1]
    for module in (tiny_mlp.fc1, tiny_mlp.fc2):
        mask = get_mask(module)
        assert mask is not None
        assert torch.equal(mask, module.weight.detach().abs() >= cut) or int(mask.sum()) == 0


def test_masks_only_narrow(tiny_mlp: TinyMLP) -> None:
    prune_(tiny_mlp, MagnitudePrune(sparsity=0.5))
    first = get_mask(tiny_mlp.fc1).clone()  # type: ignore[union-attr]
    prune_(tiny_mlp, RandomPrune(sparsity=0.7, seed=3))
    second = get_mask(tiny_mlp.fc1)
    assert second is not None and not torch.any(second & ~first)
    assert int(second.sum()) == 9
    # a lower target than already reached changes nothing
    prune_(tiny_mlp, MagnitudePrune(sparsity=0.1))
    assert torch.equal(get_mask(tiny_mlp.fc1), second)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{}, {"quality": 1.0, "sparsity": 0.5}, {"sparsity": 1.0}, {"sparsity": -0.1},
                                    {"quality": -1.0}, {"sparsity": 0.5, "scope": "model"},
                                    {"sparsity": {"fc1": 0.5}, "scope": "global"}])
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        MagnitudePrune(**kwargs)


def test_pruned_weights_stay_zero_through_momentum_and_weight_decay(tiny_mlp: TinyMLP, tiny_data) -> None:
    x, y = tiny_data.tensors
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    # build up momentum before pruning, so the buffers hold non-zero values at soon-pruned positions
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(tiny_mlp(x), y).backward()
        optimizer.step()
    prune_(tiny_mlp, MagnitudePrune(sparsity=0.7))
    # the optimizer still points at the old plain parameter: hand it the latent (same tensor object)
    assert latent_weight(tiny_mlp.fc1) in [p for g in optimizer.param_groups for p in g["params"]]
    clear_pruned_optimizer_state_(optimizer, tiny_mlp)
    mask = get_mask(tiny_mlp.fc1)
    assert mask is not None
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(tiny_mlp(x), y).backward()
        assert torch.all(latent_weight(tiny_mlp.fc1).grad[~mask] == 0)  # type: ignore[index]
        optimizer.step()
        assert torch.all(tiny_mlp.fc1.weight[~mask] == 0)
        assert torch.all(latent_weight(tiny_mlp.fc1)[~mask] == 0)
        assert torch.all(optimizer.state[latent_weight(tiny_mlp.fc1)]["momentum_buffer"][~mask] == 0)


def test_adam_state_cleared_too(tiny_mlp: TinyMLP, tiny_data) -> None:
    x, y = tiny_data.tensors
    optimizer = torch.optim.Adam(tiny_mlp.parameters(), lr=0.1, weight_decay=0.01)
    optimizer.zero_grad()
    nn.functional.cross_entropy(tiny_mlp(x), y).backward()
    optimizer.step()
    prune_(tiny_mlp, MagnitudePrune(sparsity=0.5))
    clear_pruned_optimizer_state_(optimizer, tiny_mlp)
    mask = get_mask(tiny_mlp.fc2)
    assert mask is not None
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(tiny_mlp(x), y).backward()
        optimizer.step()
        assert torch.all(latent_weight(tiny_mlp.fc2)[~mask] == 0)


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), scope=st.sampled_from(["layer", "global"]), seed=st.integers(0, 5))
def test_sparsity_is_met(sparsity: float, scope: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = TinyMLP(8, 7, 4)
    report = prune_(model, MagnitudePrune(sparsity=sparsity, scope=scope))
    total = 8 * 7 + 7 * 4
    assert report.params == total
    if scope == "global":
        assert report.kept == round((1 - sparsity) * total)
    else:
        assert report.kept == round((1 - sparsity) * 56) + round((1 - sparsity) * 28)
    assert abs(model_sparsity(model) - report.sparsity) < 1e-9


def test_random_prune_is_seeded(tiny_mlp: TinyMLP) -> None:
    import copy

    other = copy.deepcopy(tiny_mlp)
    prune_(tiny_mlp, RandomPrune(sparsity=0.5, seed=7))
    prune_(other, RandomPrune(sparsity=0.5, seed=7))
    assert torch.equal(get_mask(tiny_mlp.fc1), get_mask(other.fc1))  # type: ignore[arg-type]


def test_prune_on_value_transformed_layer_keeps_mask_first(tiny_mlp: TinyMLP) -> None:
    set_mask(tiny_mlp.fc1, torch.ones(5, 6, dtype=torch.bool))
    report = prune_(tiny_mlp, MagnitudePrune(sparsity=0.5), select="fc1")
    assert report.layers[0].kept_before == 30 and report.layers[0].kept_after == 15
    assert "15" in str(report) and report.to_dict()["kept"] == 15


def test_conv_layers_pruned_and_report_table() -> None:
    model = TinyCNN()
    report = prune_(model, MagnitudePrune(sparsity=0.75))
    assert {r.name for r in report.layers} == {"conv", "fc"}
    assert report.layers[0].kept_after == 9
    assert "total" in str(report)
