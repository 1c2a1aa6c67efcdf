"""Factorised structure: full rank reproduces the layer; strides, padding, dilation, bias; groups refused; replay."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink import build_model, fold_batchnorm_, load_checkpoint, save_checkpoint, summary
from deepshrink.core import ConfigError, UnsupportedLayerError, recorded_edits
from deepshrink.lowrank import (
    SVDLinear,
    ZhangLowRank,
    lowrank_conv_,
    pca_fit,
    replace_conv_,
    svd_conv_,
    svd_linear_,
)


class Wrap(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@settings(max_examples=20, deadline=None)
@given(
    c=st.integers(1, 5), d=st.integers(1, 6), k=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]),
    padding=st.sampled_from([0, 1, 2]), dilation=st.sampled_from([1, 2]), bias=st.booleans(),
    mode=st.sampled_from(["zeros", "reflect"]),
)
def test_full_rank_svd_conv_equals_original(c, d, k, stride, padding, dilation, bias, mode) -> None:
    conv = nn.Conv2d(c, d, k, stride=stride, padding=padding, dilation=dilation, bias=bias, padding_mode=mode)
    model = Wrap(conv)
    x = torch.randn(2, c, 9, 9)
    ref = model(x)
    pair = svd_conv_(model, "conv", min(d, c * k * k))
    assert isinstance(pair, nn.Sequential) and all(type(m) is nn.Conv2d for m in pair)
    assert pair[0].stride == conv.stride and pair[0].padding == conv.padding and pair[0].dilation == conv.dilation
    assert pair[0].bias is None and pair[1].kernel_size == (1, 1) and pair[1].bias is not None
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)
    assert recorded_edits(model) == [{"op": "lowrank_conv", "layer": "conv", "rank": min(d, c * k * k)}]


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_response_fit_equals_original(bias: bool) -> None:
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
    x = torch.randn(4, 3, 10, 10)
    y = conv(x).permute(0, 2, 3, 1).reshape(-1, 6)
    fac = pca_fit(y, 6)
    model = Wrap(copy.deepcopy(conv))
    ref = model(x)
    replace_conv_(model, "conv", *fac.conv_weights(conv.weight, conv.bias))
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)


def test_grouped_and_stateful_convs_are_refused() -> None:
    model = Wrap(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        svd_conv_(model, "conv", 2)
    with pytest.raises(ConfigError, match="groups=2"):
        lowrank_conv_(model, ZhangLowRank(speedup=2, method="linear", images=4), torch.randn(4, 4, 6, 6))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_svd_full_rank_and_energy(bias: bool) -> None:
    model = nn.Sequential(nn.Linear(20, 12, bias=bias), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(5, 20)
    ref = model(x)
    report = svd_linear_(model, SVDLinear(rank=12, force=True), select="0")
    assert report.ranks == {"0": 12}
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)
    # a weight of exact rank 2: the energy rule finds it and the factorisation is exact
    low = nn.Linear(30, 40, bias=bias)
    with torch.no_grad():
        low.weight.copy_(torch.randn(40, 2) @ torch.randn(2, 30))
    net = nn.Sequential(low)
    ref = net(x.repeat(1, 2)[:, :30])
    report = svd_linear_(net, SVDLinear(energy=0.999))
    assert report.ranks == {"0": 2} and report.params_after == 2 * 70
    torch.testing.assert_close(net(x.repeat(1, 2)[:, :30]), ref, atol=1e-4, rtol=1e-4)


def test_linear_svd_skips_layers_it_cannot_shrink() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    report = svd_linear_(model, SVDLinear(energy=1.0))
    assert "0" in report.skipped and isinstance(model[0], nn.Linear)


def test_checkpoint_round_trip_rebuilds_factorised_structure(tmp_path) -> None:
    model = build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16))
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    images = torch.randn(40, 1, 8, 8)
    fold_batchnorm_(model, images[:1])
    report = lowrank_conv_(model, ZhangLowRank(speedup=2, method="asymmetric", images=40, schedule=((0.01, 2), (1.0, 2))),
                           images)
    assert report.macs_after * 2 <= report.macs_before
    svd_linear_(model, SVDLinear(rank=2))
    path = tmp_path / "lowrank.pt"
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path)
    loaded.eval()
    torch.testing.assert_close(loaded(images), model(images))
    assert [e["op"] for e in recorded_edits(loaded)].count("lowrank_conv") == sum(r is not None for r in report.ranks.values())
    macs = summary(loaded, (1, 8, 8)).total["macs"]
    assert macs < summary(build_model("vgg", in_channels=1, num_classes=10, widths=(8, 8, 16, 16)), (1, 8, 8)).total["macs"]
    # the factorised model still trains: gradients reach both halves
    loaded.train()
    torch.nn.functional.cross_entropy(loaded(images), torch.zeros(40, dtype=torch.long)).backward()
    pair = next(m for m in loaded.modules() if isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d) and len(m) == 2)
    assert pair[0].weight.grad is not None and pair[1].weight.grad is not None


@pytest.mark.parametrize("bias", [True, False])
def test_response_pca_linear_recovers_low_rank_outputs(bias: bool) -> None:
    # full-rank weight, but the inputs span 3 dimensions: weight SVD cannot compress, response PCA is exact
    model = nn.Sequential(nn.Linear(24, 16, bias=bias), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(200, 3) @ torch.randn(3, 24)
    ref = model(x)
    report = svd_linear_(model, SVDLinear(energy=0.9999), select="0", calib=lambda m: m(x[:100]))
    assert report.ranks["0"] == 3 and report.energy["0"] == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)
    weight_only = nn.Sequential(nn.Linear(24, 16, bias=bias))
    assert svd_linear_(weight_only, SVDLinear(energy=0.9999)).skipped  # full-rank weight: nothing to gain
