"""Compression state: masks stay, state survives state_dict, deepcopy, and composes with value transforms."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deepshrink.core import (
    ConfigError,
    FormatError,
    Mask,
    ValueTransform,
    apply_masks_,
    bake_,
    compression_spec,
    dequantize,
    get_mask,
    get_value_transform,
    latent_weight,
    prepare_for_state_dict,
    register_state_class,
    set_mask,
    set_value_transform,
)
from deepshrink.models import build_model
from deepshrink.train import load_checkpoint, save_checkpoint


@register_state_class
class HalfStep(ValueTransform):
    """Test transform: fixed point with one fractional bit (keeps zeros at zero)."""

    kind: ClassVar[str] = "test-halfstep"

    @property
    def bits(self) -> float:
        return 8.0

    def forward(self, x: Tensor) -> Tensor:
        return x + (torch.round(x * 2) / 2 - x).detach()

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        ints = torch.round(masked_latent * 2).to(torch.int64).numpy()
        return {"kind": "fixedpoint", "int": ints, "bits": 8, "frac_len": 1}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> HalfStep:
        return cls()

    @classmethod
    def from_tensors(cls, tensors: Any, weight_shape: torch.Size) -> HalfStep:
        return cls()


def _random_mask(shape: torch.Size, keep: float = 0.3) -> Tensor:
    return torch.rand(shape) < keep


def test_mask_zeroes_weights_and_gradients() -> None:
    layer = nn.Linear(6, 5)
    mask = _random_mask(layer.weight.shape)
    set_mask(layer, mask)
    assert torch.all(layer.weight[~mask] == 0)
    layer(torch.randn(4, 6)).sum().backward()
    assert torch.all(latent_weight(layer).grad[~mask] == 0)


def test_pruned_weights_stay_zero_through_momentum_and_weight_decay() -> None:
    layer = nn.Linear(8, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):  # build up momentum on every weight first
        opt.zero_grad()
        layer(torch.randn(16, 8)).pow(2).sum().backward()
        opt.step()
    mask = _random_mask(layer.weight.shape, 0.5)
    set_mask(layer, mask)
    for _ in range(5):
        opt.zero_grad()
        layer(torch.randn(16, 8)).pow(2).sum().backward()
        opt.step()
        apply_masks_(layer)
    assert torch.all(layer.weight[~mask] == 0)
    assert torch.all(latent_weight(layer)[~mask] == 0)


def test_masks_only_narrow() -> None:
    layer = nn.Linear(10, 10)
    first = _random_mask(layer.weight.shape, 0.5)
    second = _random_mask(layer.weight.shape, 0.5)
    set_mask(layer, first)
    set_mask(layer, second)
    assert torch.equal(get_mask(layer), first & second)
    assert compression_spec(nn.Sequential(layer)) == {"0.weight": ["Mask"]}


def test_value_transform_after_mask_keeps_pruned_zero_and_mask_inserted_first() -> None:
    layer = nn.Linear(6, 4)
    set_value_transform(layer, HalfStep())
    mask = _random_mask(layer.weight.shape, 0.5)
    set_mask(layer, mask)  # pruning after quantizing: the mask must go first in the chain
    chain = list(layer.parametrizations.weight)
    assert isinstance(chain[0], Mask) and isinstance(chain[1], HalfStep)
    assert torch.all(layer.weight[~mask] == 0)
    values = layer.weight[mask]
    assert torch.equal(values * 2, torch.round(values * 2))


def test_replacing_a_value_transform_starts_from_the_current_weight() -> None:
    layer = nn.Linear(4, 4)
    set_value_transform(layer, HalfStep())
    before = layer.weight.detach().clone()
    set_value_transform(layer, HalfStep())
    assert torch.equal(layer.weight, before)
    assert len(list(layer.parametrizations.weight)) == 1
    assert torch.equal(latent_weight(layer), before)


def test_state_dict_round_trip_and_deepcopy_keep_state(tmp_path) -> None:
    model = build_model("lenet300", in_features=64, num_classes=10)
    set_mask(model.fc1, _random_mask(model.fc1.weight.shape))
    set_value_transform(model.fc2, HalfStep())
    set_mask(model.fc2, _random_mask(model.fc2.weight.shape))
    x = torch.randn(3, 64)
    expected = model(x)

    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), expected)
    assert compression_spec(clone) == compression_spec(model)

    fresh = build_model("lenet300", in_features=64, num_classes=10)
    state = model.state_dict()
    prepare_for_state_dict(fresh, compression_spec(model), state)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), expected)
    assert torch.equal(get_mask(fresh.fc1), get_mask(model.fc1))

    path = tmp_path / "model.pt"
    save_checkpoint(path, model, meta={"dataset": "digits"})
    loaded, meta = load_checkpoint(path)
    assert meta["dataset"] == "digits" and meta["arch"] == "lenet300"
    assert torch.equal(loaded(x), expected)
    assert isinstance(get_value_transform(loaded.fc2), HalfStep)


def test_unknown_state_class_is_a_format_error() -> None:
    model = build_model("lenet300", in_features=64)
    with pytest.raises(FormatError, match="unknown compression state"):
        prepare_for_state_dict(model, {"fc1.weight": ["os.system"]}, {})
    with pytest.raises(FormatError, match="does not have"):
        prepare_for_state_dict(model, {"nope.weight": ["Mask"]}, {})


def test_wrong_mask_shape_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mask shape"):
        set_mask(nn.Linear(3, 3), torch.ones(2, 2, dtype=torch.bool))


def test_bake_removes_state_and_keeps_values() -> None:
    model = nn.Sequential(nn.Linear(5, 5))
    set_mask(model[0], _random_mask(model[0].weight.shape))
    before = model[0].weight.detach().clone()
    bake_(model)
    assert compression_spec(model) == {}
    assert torch.equal(model[0].weight, before)


def test_dequantize_forms() -> None:
    codebook = {"kind": "codebook", "index": np.array([[-1, 0], [1, 1]]), "centroids": np.array([0.5, -2.0], np.float32)}
    assert dequantize(codebook).tolist() == [[0.0, 0.5], [-2.0, -2.0]]
    fixed = {"kind": "fixedpoint", "int": np.array([-3, 0, 5]), "bits": 4, "frac_len": 2}
    assert dequantize(fixed).tolist() == [-0.75, 0.0, 1.25]
    ternary = {"kind": "ternary", "code": np.array([-1, 0, 1], np.int8), "wp": 0.25, "wn": 0.5}
    assert dequantize(ternary).tolist() == [-0.5, 0.0, 0.25]
    with pytest.raises(FormatError, match="out of range"):
        dequantize({"kind": "codebook", "index": np.array([3]), "centroids": np.zeros(2, np.float32)})
    with pytest.raises(FormatError, match="unknown weight kind"):
        dequantize({"kind": "nope"})


def test_attach_restores_exported_weight_bit_for_bit() -> None:
    source = nn.Linear(7, 3)
    set_value_transform(source, HalfStep())
    exported = HalfStep().export(latent_weight(source).detach())
    target = nn.Linear(7, 3)
    HalfStep.attach(target, exported)
    assert torch.equal(target.weight, source.weight)


def test_deepcopy_then_parametrizing_a_new_tensor_leaves_the_original_intact() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    set_mask(model[0], torch.rand(3, 3) > 0.5)
    clone = copy.deepcopy(model)
    set_mask(clone[0], torch.rand(3) > 0.5, name="bias")
    assert isinstance(model[0].bias, torch.nn.Parameter)  # the original has no "bias" parametrization
    assert compression_spec(model) == {"0.weight": ["Mask"]}
    assert compression_spec(clone) == {"0.weight": ["Mask"], "0.bias": ["Mask"]}
