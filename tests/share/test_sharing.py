"""SharedWeights: masks kept through training, eq. 3 gradients, export/state_dict round trips."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.core import (
    ConfigError,
    compression_spec,
    dequantize,
    get_value_transform,
    prepare_for_state_dict,
    restorer_for,
    set_mask,
)
from deepshrink.data import load_dataset
from deepshrink.share import SharedWeights, WeightSharing, bits_for, finetune_centroids, share_weights_
from deepshrink.train import TrainConfig, evaluate, fit


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))


def _pruned_shared(bits: int = 3) -> nn.Sequential:
    model = _mlp()
    for layer in (model[1], model[3]):
        set_mask(layer, layer.weight.abs() > layer.weight.abs().median())
    share_weights_(model, WeightSharing(bits=bits))
    return model


def test_pruned_weights_stay_zero_and_never_join_a_cluster() -> None:
    model = _pruned_shared()
    for layer in (model[1], model[3]):
        step = get_value_transform(layer)
        assert isinstance(step, SharedWeights)
        mask = layer.parametrizations.weight[0].mask
        assert torch.all((step.index == -1) == ~mask)
        assert torch.all(layer.weight[~mask] == 0)
        assert len(torch.unique(layer.weight[mask])) <= 8


def test_masks_survive_momentum_and_weight_decay() -> None:
    model = _pruned_shared()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for layer in (model[1], model[3]):
        mask = layer.parametrizations.weight[0].mask
        assert torch.all(layer.weight[~mask] == 0)
        assert torch.count_nonzero(layer.weight) <= int(mask.sum())


def test_centroid_gradient_is_sum_of_weight_gradients() -> None:
    layer = nn.Linear(6, 4, bias=False)
    set_mask(layer, torch.rand(4, 6) > 0.3)
    share_weights_(layer_model := nn.Sequential(layer), WeightSharing(bits=2))
    step = get_value_transform(layer)
    assert isinstance(step, SharedWeights)
    x = torch.randn(5, 6)
    out = layer_model(x)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    weight_grad = upstream.T @ x  # dL/dW of a dense linear layer: computed by hand
    expected = torch.zeros(4)
    for k in range(4):
        expected[k] = weight_grad[step.index == k].sum()
    assert step.centroids.grad is not None
    torch.testing.assert_close(step.centroids.grad, expected)


def test_export_dequantizes_to_forward_bit_for_bit_and_rebuilds() -> None:
    model = _pruned_shared(bits=4)
    layer = model[1]
    step = get_value_transform(layer)
    assert isinstance(step, SharedWeights) and step.bits == 4
    exported = step.export(layer.weight)
    assert np.array_equal(dequantize(exported).view(np.uint32), layer.weight.detach().numpy().view(np.uint32))
    assert restorer_for("codebook") is SharedWeights
    rebuilt = SharedWeights.from_export(exported)
    assert torch.equal(rebuilt.index, step.index) and torch.equal(rebuilt.centroids, step.centroids)
    fresh = nn.Linear(64, 24)
    SharedWeights.attach(fresh, exported)
    assert torch.equal(fresh.weight, layer.weight)


def test_state_dict_round_trip_and_deepcopy() -> None:
    model = _pruned_shared()
    spec, state = compression_spec(model), model.state_dict()
    assert spec["1.weight"] == ["Mask", "SharedWeights"]
    fresh = _mlp()
    prepare_for_state_dict(fresh, spec, state)
    fresh.load_state_dict(state)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))


def test_mask_narrowed_after_sharing_drops_from_clusters() -> None:
    model = _pruned_shared()
    layer = model[1]
    set_mask(layer, layer.weight.abs() > layer.weight.abs().max() / 2)
    step = get_value_transform(layer)
    assert isinstance(step, SharedWeights)
    assert torch.all((step.index == -1) == ~layer.parametrizations.weight[0].mask)


def test_bits_per_family_and_name() -> None:
    conv, fc = nn.Conv2d(1, 2, 3), nn.Linear(2, 2)
    config = WeightSharing(bits={"conv": 6, "head*": 3})
    assert bits_for(config, "features.0", conv) == 6
    assert bits_for(config, "fc1", fc) == 5  # paper default for fc
    assert bits_for(config, "head", fc) == 3
    assert bits_for(WeightSharing(bits=2), "x", conv) == 2
    for bad in ({"fc": 0}, 17, {"fc": 2.5}):
        with pytest.raises(ConfigError):
            WeightSharing(bits=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="linear"):
        WeightSharing(init="kmeans++")


def test_finetune_centroids_on_digits_keeps_codebook_and_masks() -> None:
    train, val = load_dataset("digits", "train"), load_dataset("digits", "val")
    model = _mlp()
    fit(model, train, TrainConfig(epochs=4, lr=0.1, batch_size=64), quiet=True)
    for layer in (model[1], model[3]):
        set_mask(layer, layer.weight.abs() > layer.weight.abs().quantile(0.5))
    share_weights_(model, WeightSharing(bits=2, init="linear"))
    before = evaluate(model, val)["loss"]
    index_before = get_value_transform(model[1]).index.clone()  # type: ignore[union-attr]
    finetune_centroids(model, train, TrainConfig(epochs=3, lr=1e-3, batch_size=64, weight_decay=0.0), quiet=True)
    after = evaluate(model, val)["loss"]
    assert after < before
    assert torch.equal(get_value_transform(model[1]).index, index_before)  # type: ignore[union-attr]
    for layer in (model[1], model[3]):
        mask = layer.parametrizations.weight[0].mask
        assert torch.all(layer.weight[~mask] == 0)
        assert len(torch.unique(layer.weight[mask])) <= 4


def test_bias_sharing_and_small_codebooks() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 80), nn.ReLU(), nn.Linear(80, 10))
    report = share_weights_(model, WeightSharing(bits=4, bias_bits=2))
    assert "1.bias" in report.layers and "3.bias" not in report.layers  # 10 <= 4 * 2^2: left in fp32
    step = get_value_transform(model[1], "bias")
    assert isinstance(step, SharedWeights) and step.centroids.numel() == 4
    assert len(torch.unique(model[1].bias)) <= 4
    tiny = nn.Sequential(nn.Linear(2, 2))
    set_mask(tiny[0], torch.tensor([[True, False], [False, True]]))
    share_weights_(tiny, WeightSharing(bits=5))
    assert get_value_transform(tiny[0]).centroids.numel() == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("groups", ["channel", 2])
def test_channel_group_codebooks_round_trip_fine_tune_and_run(tmp_path, groups) -> None:  # type: ignore[no-untyped-def]
    import deepshrink.runtime as rt
    from deepshrink.codec import load_compressed, read_compressed, save_compressed
    from deepshrink.core import set_mask

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6))
    with torch.no_grad():  # channels of very different ranges: one codebook each is what helps
        model[0].weight.mul_(torch.logspace(-2, 1, 4).reshape(-1, 1, 1, 1))
    set_mask(model[3], model[3].weight.abs() > 0.02)
    per_layer = share_weights_(copy.deepcopy(model), WeightSharing(bits=2, groups="layer"))
    report = share_weights_(model, WeightSharing(bits=2, groups=groups))
    expected = {"channel": (4, 6), 2: (2, 2)}[groups]
    assert (report.layers["0"]["codebooks"], report.layers["3"]["codebooks"]) == expected
    assert report.layers["0"]["mse"] < per_layer.layers["0"]["mse"]
    transform = model[0].parametrizations.weight[0]
    assert isinstance(transform, SharedWeights) and transform.centroids.shape == (expected[0], 4)
    x = torch.randn(5, 2, 6, 6)
    loss = model(x).square().mean()
    loss.backward()
    assert transform.centroids.grad is not None and transform.centroids.grad.abs().sum() > 0
    path = tmp_path / "groups.dsz"
    save_compressed(model, path)
    assert read_compressed(path).weights["0.weight"].params["centroids"].shape == (expected[0], 4)
    loaded = load_compressed(path, model=copy.deepcopy(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                                                                      nn.Linear(4 * 4 * 4, 6))))
    assert torch.equal(loaded[0].weight, model[0].weight) and torch.equal(loaded[3].weight, model[3].weight)
    with torch.no_grad():
        torch.testing.assert_close(rt.from_model(model)(x), model(x), rtol=1e-5, atol=1e-6)
