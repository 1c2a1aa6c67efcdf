"""TTQ: the paper's gradients, ternary values, masks kept, scales trained, exact export and reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.core import ConfigError, dequantize, get_mask, get_value_transform, latent_weight, set_mask
from deepshrink.core.techniques import restorer_for
from deepshrink.data import load_dataset
from deepshrink.models import build_model
from deepshrink.ternary import (
    TTQ,
    Ternary,
    masked_latent,
    ternarize_,
    ternary_codes,
    ternary_layers,
    ternary_param_groups,
    ttq_function,
)
from deepshrink.train import TrainConfig, fit, load_checkpoint, save_checkpoint


def _tiny_mlp() -> nn.Module:
    return build_model("lenet300", in_features=64, num_classes=10, hidden=(32, 16))


def test_gradients_match_hand_computed_reference() -> None:
    latent = torch.tensor([[0.9, -0.02, 0.3, -0.5], [0.01, -1.0, 0.04, 0.2]], dtype=torch.float64, requires_grad=True)
    wp = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    wn = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, -3.0, 4.0], [5.0, -6.0, 7.0, 8.0]], dtype=torch.float64)
    out = ttq_function(latent, wp, wn, 0.05)  # delta = 0.05 * 1.0
    expected = torch.tensor([[0.7, 0.0, 0.7, -1.3], [0.0, -1.3, 0.0, 0.7]], dtype=torch.float64)
    assert torch.equal(out, expected)
    (out * upstream).sum().backward()
    # dL/dWp = sum of upstream over w > delta: 1 - 3 + 8; dL/dWn = -(sum over w < -delta): -(4 - 6)
    assert wp.grad is not None and wn.grad is not None and latent.grad is not None
    assert float(wp.grad) == pytest.approx(6.0)
    assert float(wn.grad) == pytest.approx(2.0)
    scale = torch.tensor([[0.7, 1.0, 0.7, 1.3], [1.0, 1.3, 1.0, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(latent.grad, upstream * scale)


def test_scale_gradients_match_finite_differences_on_a_layer() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(6, 3).double()
    ternarize_(nn.Sequential(layer), TTQ(t=0.05, keep_first_last=False))
    transform = get_value_transform(layer)
    assert isinstance(transform, Ternary)
    transform.double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])

    def loss() -> torch.Tensor:
        return F.cross_entropy(layer(x), y)

    loss().backward()
    eps = 1e-6
    for param in (transform.wp, transform.wn):
        assert param.grad is not None
        with torch.no_grad():
            param += eps
            up = float(loss())
            param -= 2 * eps
            down = float(loss())
            param += eps
        assert float(param.grad) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
    # the latent receives dL/dq scaled by Wp, 1 or Wn (dL/dw_t from the same layer with w_t as a leaf)
    w_t = layer.weight.detach().clone().requires_grad_(True)
    F.cross_entropy(F.linear(x, w_t, layer.bias), y).backward()
    pos, neg = ternary_codes(latent_weight(layer).detach(), 0.05)
    scale = torch.where(pos, transform.wp.detach(), torch.where(neg, transform.wn.detach(), torch.ones((), dtype=x.dtype)))
    assert w_t.grad is not None
    # the layer's weight is unit * q, so dL/dq = unit * dL/dw_t
    torch.testing.assert_close(latent_weight(layer).grad, transform.unit * w_t.grad * scale)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 9), st.floats(0.0, 0.9), st.floats(0.01, 3.0), st.floats(0.01, 3.0), st.integers(0, 99)
)
def test_values_are_ternary_and_masked_positions_zero(rows: int, cols: int, t: float, wp: float, wn: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(cols, rows)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(rows, cols, generator=gen))
    mask = torch.rand(rows, cols, generator=gen) > 0.3
    set_mask(layer, mask)
    ternarize_(nn.Sequential(layer), TTQ(t=t, keep_first_last=False))
    transform = get_value_transform(layer)
    assert isinstance(transform, Ternary)
    with torch.no_grad():
        transform.wp.fill_(wp)
        transform.wn.fill_(wn)
    weight = layer.weight.detach()
    real_wp, real_wn = transform.scales()
    assert real_wp == pytest.approx(wp * float(transform.unit), rel=1e-6)
    allowed = torch.tensor([-real_wn, 0.0, real_wp])
    assert torch.isin(weight, allowed).all()
    assert (weight[~mask] == 0).all()
    exported = transform.export(masked_latent(layer))
    assert set(np.unique(exported["code"])) <= {-1, 0, 1}
    assert np.array_equal(dequantize(exported).view(np.int32), weight.numpy().view(np.int32))


def test_initial_scales_fit_the_weights_and_paper_init_is_one() -> None:
    layer = nn.Linear(20, 10)
    before = layer.weight.detach().clone()
    ternarize_(nn.Sequential(layer), TTQ(keep_first_last=False))
    transform = get_value_transform(layer)
    assert isinstance(transform, Ternary)
    pos, neg = ternary_codes(before, 0.05)
    unit = float(before.abs().max())
    assert float(transform.unit) == pytest.approx(unit)
    assert float(transform.wp.detach()) == pytest.approx(float(before[pos].mean()) / unit)  # normalised units
    assert transform.scales()[0] == pytest.approx(float(before[pos].mean()))  # the layer's units
    assert transform.scales()[1] == pytest.approx(float(-before[neg].mean()))
    assert float(latent_weight(layer).detach().abs().max()) == pytest.approx(1.0)  # latent normalised to [-1, 1]
    other = nn.Linear(20, 10)
    ternarize_(nn.Sequential(other), TTQ(init="paper", keep_first_last=False))
    paper = get_value_transform(other)
    assert isinstance(paper, Ternary) and float(paper.wp.detach()) == 1.0 and float(paper.wn.detach()) == 1.0
    assert paper.scales()[0] == pytest.approx(float(other.weight.detach().abs().max()))  # +-max|w| in layer units


def test_first_and_last_layers_stay_full_precision() -> None:
    model = build_model("lenet5", in_channels=1, num_classes=10, input_size=28)
    assert ternarize_(model, TTQ()) == ["conv2", "fc1"]
    assert get_value_transform(model.conv1) is None and get_value_transform(model.fc2) is None
    every = build_model("lenet5", in_channels=1, num_classes=10, input_size=28)
    assert ternarize_(every, TTQ(keep_first_last=False), select="fc*") == ["fc1", "fc2"]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="t must be"):
        TTQ(t=1.5)
    with pytest.raises(ConfigError, match="init"):
        TTQ(init="ones")
    with pytest.raises(ConfigError, match="changed no layer"):
        ternarize_(nn.Sequential(nn.Linear(3, 3)), TTQ())


def test_scales_move_in_training_and_masks_stay() -> None:
    torch.manual_seed(0)
    model = _tiny_mlp()
    set_mask(model.fc2, torch.rand_like(model.fc2.weight) > 0.5)
    ternarize_(model, TTQ(keep_first_last=False))
    start = {r.name: (r.wp, r.wn) for r in ternary_layers(model)}
    data = load_dataset("digits", "train", limit=256)
    fit(model, data, TrainConfig(epochs=2, lr=0.05, batch_size=32), params=ternary_param_groups(model), quiet=True)
    end = {r.name: (r.wp, r.wn) for r in ternary_layers(model)}
    assert set(start) == {"fc1", "fc2", "fc3"}
    for name in start:
        assert start[name][0] != end[name][0] and start[name][1] != end[name][1], name
    mask = get_mask(model.fc2)
    assert mask is not None and (model.fc2.weight.detach()[~mask] == 0).all()
    for row in ternary_layers(model):
        weight = model.get_submodule(row.name).weight.detach()
        assert torch.isin(weight, torch.tensor([-np.float32(row.wn), 0.0, np.float32(row.wp)])).all()


def test_param_groups_exempt_scales_from_weight_decay() -> None:
    model = _tiny_mlp()
    ternarize_(model, TTQ())
    groups = ternary_param_groups(model)
    assert [len(g["params"]) for g in groups] == [len(list(model.parameters())) - 2, 2]
    assert groups[1]["weight_decay"] == 0.0


def test_checkpoint_and_export_round_trip_bit_for_bit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _tiny_mlp()
    ternarize_(model, TTQ(t=0.1))
    with torch.no_grad():
        model.fc2.parametrizations.weight[0].wp.fill_(0.123)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.fc2.weight, model.fc2.weight)
    transform = get_value_transform(loaded.fc2)
    assert isinstance(transform, Ternary) and float(transform.t) == pytest.approx(0.1)
    # a file's integer form restores the same weights on a fresh model, whatever the scales are
    exported = get_value_transform(model.fc2).export(masked_latent(model.fc2))  # type: ignore[union-attr]
    exported["wn"] = -0.5  # even a negative scale (the base attach would flip codes) reproduces exactly
    fresh = _tiny_mlp()
    cls = restorer_for("ternary")
    assert cls is Ternary
    cls.attach(fresh.fc2, exported)
    assert np.array_equal(fresh.fc2.weight.detach().numpy().view(np.int32), dequantize(exported).view(np.int32))
