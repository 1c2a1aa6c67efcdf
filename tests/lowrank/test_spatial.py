"""The 3-D decomposition (k x 1, 1 x k, 1x1): exact at full rank, response-weighted split, ranks, replay, bad files."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink import build_model, fold_batchnorm_, load_checkpoint, save_checkpoint
from deepshrink.core import ConfigError, FormatError, recorded_edits, replay_edits
from deepshrink.lowrank import ZhangLowRank, lowrank_conv_
from deepshrink.lowrank.ranks import LayerCost, SpatialCost, select_ranks_3d
from deepshrink.lowrank.spatial import column_moments, spatial_factors

FAST = ((0.01, 2), (1.0, 2))


@settings(max_examples=25, deadline=None)
@given(
    c=st.integers(1, 4), d=st.integers(1, 5), kh=st.integers(2, 3), kw=st.integers(2, 4),
    stride=st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2)]), padding=st.sampled_from([(0, 0), (1, 1), (2, 1)]),
    dilation=st.sampled_from([(1, 1), (2, 1), (1, 2)]), bias=st.booleans(),
)
def test_full_rank_3d_factorisation_equals_original(c, d, kh, kw, stride, padding, dilation, bias) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(c, d, (kh, kw), stride=stride, padding=padding, dilation=dilation, bias=bias),
                          nn.ReLU())
    x = torch.randn(30, c, 11, 10)
    ref = model(x)
    spatial = min(c * kh, d * kw)
    report = lowrank_conv_(model, ZhangLowRank(method="linear-asymmetric", decomposition="3d", ranks={"0": d},
                                               spatial_ranks={"0": spatial}, images=30), x)
    triple = model[0]
    assert isinstance(triple, nn.Sequential) and [m.kernel_size for m in triple] == [(kh, 1), (1, kw), (1, 1)]
    assert report.spatial_ranks == {"0": spatial} and report.ranks == {"0": d}
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)
    assert recorded_edits(model) == [{"op": "lowrank_conv3d", "layer": "0", "spatial_rank": spatial, "rank": d}]


def test_response_weighted_split_beats_the_weight_split_on_responses() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=False)
    mix = torch.randn(6, 6) * torch.tensor([4.0, 2.0, 1.0, 0.3, 0.1, 0.05])  # correlated, uneven input channels
    x = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 6, 12, 12))
    moment = column_moments(nn.Sequential(conv), ["0"], x, positions=40)["0"]
    ref = conv(x).detach()

    def error(moment_or_none: torch.Tensor | None) -> float:
        v, h = spatial_factors(conv, 4, moment_or_none)
        out = nn.functional.conv2d(nn.functional.conv2d(x, v, padding=(1, 0)), h, padding=(0, 1)).detach()
        return float(((out - ref) ** 2).sum())

    assert error(moment) < 0.8 * error(None)


def test_3d_greedy_meets_the_budget_and_lowers_both_ranks() -> None:
    spatial_cost = SpatialCost(filters=16, spatial_max=48, original=16 * 16 * 9 * 100, vertical=16 * 3 * 100,
                               horizontal=3 * 100, pointwise=16 * 100)
    channel_cost = LayerCost(16, 16 * 16 * 100, 32 * 100)
    eigen = {"a": torch.logspace(0, -3, 16), "b": torch.logspace(0, -3, 16)}
    budget = (spatial_cost.original + channel_cost.original) // 3
    ranks = select_ranks_3d(eigen, {"a": spatial_cost, "b": channel_cost}, {"a": torch.logspace(0, -4, 48)}, budget)
    s, r = ranks["a"]
    assert spatial_cost.cost((s, r)) + channel_cost.cost(ranks["b"]) <= budget
    assert 1 <= s < 48 and 1 <= r < 16
    with pytest.raises(ConfigError, match="unreachable"):
        select_ranks_3d(eigen, {"a": spatial_cost, "b": channel_cost}, {"a": torch.ones(48)}, 10)


def test_3d_vgg_round_trip_and_speedup(tmp_path) -> None:
    model = build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16)).eval()
    images = torch.randn(40, 1, 8, 8)
    fold_batchnorm_(model, images[:1])
    report = lowrank_conv_(model, ZhangLowRank(speedup=2.5, decomposition="3d", images=40, schedule=FAST), images)
    assert report.macs_before >= 2.5 * report.macs_after and report.spatial_ranks
    path = tmp_path / "vgg3d.pt"
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path)
    torch.testing.assert_close(loaded.eval()(images), model(images))


@pytest.mark.parametrize("params", [{"spatial_rank": 10**9, "rank": 2}, {"spatial_rank": 2, "rank": 0},
                                    {"spatial_rank": "2", "rank": 2}, {"rank": 2}])
def test_a_file_cannot_ask_for_impossible_ranks(params) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(FormatError, match="cannot replay"):
        replay_edits(copy.deepcopy(model), [{"op": "lowrank_conv3d", "layer": "0", **params}])
    with pytest.raises(FormatError, match="cannot replay"):
        replay_edits(copy.deepcopy(model), [{"op": "lowrank_conv", "layer": "0", "rank": 10**9}])


def test_3d_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="decomposition"):
        ZhangLowRank(decomposition="4d")
    with pytest.raises(ConfigError, match="svd"):
        ZhangLowRank(decomposition="3d", method="svd")
    with pytest.raises(ConfigError, match="spatial_ranks"):
        ZhangLowRank(decomposition="3d", ranks={"0": 2})
    with pytest.raises(ConfigError, match="spatial_ranks"):
        ZhangLowRank(spatial_ranks={"0": 2})


def test_3d_ranks_must_name_factorised_spatial_layers() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU())
    x = torch.randn(8, 2, 6, 6)
    with pytest.raises(ConfigError, match="without a rank or a spatial extent"):
        lowrank_conv_(copy.deepcopy(model), ZhangLowRank(decomposition="3d", ranks={"0": 2}, spatial_ranks={"0": 2, "2": 1},
                                                         images=8), x)
    with pytest.raises(ConfigError, match="needs a spatial rank"):
        lowrank_conv_(copy.deepcopy(model), ZhangLowRank(decomposition="3d", ranks={"0": 2, "2": 2},
                                                         spatial_ranks={}, images=8), x)
    # a 1x1 conv has no spatial extent: with a speedup it is channel-decomposed, the 3x3 one split in 3-D
    report = lowrank_conv_(model, ZhangLowRank(speedup=1.5, decomposition="3d", images=8, schedule=FAST), x)
    assert set(report.spatial_ranks) <= {"0"}


def test_sensitivity_ranks_follow_the_measured_losses() -> None:
    from deepshrink.lowrank.sensitivity import rank_grid, select_ranks_by_sensitivity

    cost = LayerCost(16, 16 * 16 * 9 * 100, (16 * 9 + 16) * 100)
    grid = rank_grid(cost, 6)
    assert grid == sorted(set(grid), reverse=True) and grid[0] == cost.break_even and grid[-1] >= 1
    fragile = {r: 100.0 / r for r in grid}  # the output moves a lot when this layer loses rank
    robust = {r: 1.0 / r for r in grid}
    budget = cost.original  # two layers' worth of MACs down to one
    ranks = select_ranks_by_sensitivity({"a": fragile, "b": robust}, {"a": cost, "b": cost}, budget)
    assert cost.cost(ranks["a"]) + cost.cost(ranks["b"]) <= budget
    assert ranks["b"] is not None and (ranks["a"] is None or ranks["a"] > ranks["b"])


def test_sensitivity_rule_on_a_small_vgg() -> None:
    model = build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16)).eval()
    images = torch.randn(40, 1, 8, 8)
    fold_batchnorm_(model, images[:1])
    reference = model(images).detach()
    report = lowrank_conv_(model, ZhangLowRank(speedup=2, rank_rule="sensitivity", images=40, schedule=FAST), images)
    assert report.macs_before >= 2 * report.macs_after
    assert model(images).shape == reference.shape
    with pytest.raises(ConfigError, match="rank_rule"):
        ZhangLowRank(rank_rule="magic")
    with pytest.raises(ConfigError, match="channel"):
        ZhangLowRank(rank_rule="sensitivity", decomposition="3d")
