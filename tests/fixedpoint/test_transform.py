"""The FixedPoint transform: export == forward bit for bit, formats round-trip through exports and checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from deepshrink.core import FormatError, dequantize, get_value_transform, latent_weight, set_mask
from deepshrink.core.state import STATE_CLASSES
from deepshrink.core.techniques import restorer_for
from deepshrink.fixedpoint import DynamicFixedPoint, FixedPoint, install_all_hooks, quantize_
from deepshrink.runtime import IntegerModel
from deepshrink.train import load_into, read_checkpoint, save_checkpoint

from .conftest import TinyCNN, randomize_


def _quantized(bits: int | dict[str, int] = 8) -> TinyCNN:
    model = randomize_(TinyCNN(), 3, 1.0)
    quantize_(model, DynamicFixedPoint(bits=bits, act_bits=8), calib=torch.randn(16, 1, 8, 8))
    return model


def test_registered_for_files() -> None:
    assert STATE_CLASSES["FixedPoint"] is FixedPoint
    assert restorer_for("fixedpoint") is FixedPoint


@pytest.mark.parametrize("bits", [4, 8, 16, {"conv": 8, "fc": 4}])
def test_export_dequantizes_to_forward_and_round_trips(bits: int | dict[str, int]) -> None:
    model = _quantized(bits)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        module = model.get_submodule(name)
        fp = get_value_transform(module)
        assert isinstance(fp, FixedPoint)
        exported = fp.export(latent_weight(module).detach())
        assert exported["int"].dtype == np.int64
        assert np.array_equal(dequantize(exported), module.weight.detach().numpy())
        assert all(isinstance(exported[k], int) for k in ("bits", "frac_len", "act_in_bits", "act_in_frac_len",
                                                          "act_out_bits", "act_out_frac_len"))
        rebuilt = FixedPoint.from_export(exported)
        assert rebuilt.weight_format == fp.weight_format
        assert rebuilt.act_in == fp.act_in and rebuilt.act_out == fp.act_out
    assert get_value_transform(model.fc2).bits == (4 if isinstance(bits, dict) else bits)  # type: ignore[union-attr]


def test_attach_restores_model_exactly() -> None:
    model = _quantized()
    fresh = randomize_(TinyCNN(), 99, 1.0)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        module = model.get_submodule(name)
        exported = get_value_transform(module).export(latent_weight(module).detach())  # type: ignore[union-attr]
        target = fresh.get_submodule(name)
        with torch.no_grad():
            target.bias.copy_(module.bias)
        FixedPoint.attach(target, exported)
    x = torch.randn(10, 1, 8, 8) * 3
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(IntegerModel(fresh)(x), model(x))


def test_checkpoint_round_trip_keeps_formats(tmp_path) -> None:
    model = _quantized({"conv": 8, "fc": 4})
    path = tmp_path / "q.pt"
    save_checkpoint(path, model)
    loaded = copy.deepcopy(randomize_(TinyCNN(), 5, 1.0))
    load_into(loaded, read_checkpoint(path))  # the hooks come back with the state (WeightState.on_attached)
    x = torch.randn(10, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    assert install_all_hooks(loaded) == 4  # idempotent: no second set of hooks
    assert len(loaded.fc1._forward_pre_hooks) == 1
    assert torch.equal(loaded(x), model(x))
    assert get_value_transform(loaded.fc1).act_in == get_value_transform(model.fc1).act_in  # type: ignore[union-attr]


def test_mask_kept_after_quantization_and_training_step() -> None:
    model = randomize_(TinyCNN(), 1, 1.0)
    mask = torch.rand_like(model.fc1.weight) > 0.5
    set_mask(model.fc1, mask)
    quantize_(model, DynamicFixedPoint(bits=6), calib=torch.randn(8, 1, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(8, 1, 8, 8)).square().mean().backward()
    opt.step()
    assert torch.all(model.fc1.weight[~mask] == 0)


def test_from_export_rejects_out_of_range_integers() -> None:
    with pytest.raises(FormatError):
        FixedPoint.from_export({"kind": "fixedpoint", "int": np.array([200]), "bits": 8, "frac_len": 0})
    with pytest.raises(FormatError):
        FixedPoint.from_export({"kind": "fixedpoint", "int": np.array([1])})


def test_checkpoint_round_trip_keeps_unsigned_formats(tmp_path) -> None:
    model = randomize_(TinyCNN(), 2, 1.0)
    quantize_(model, DynamicFixedPoint(bits=8, unsigned_activations=True), calib=torch.randn(32, 1, 8, 8))
    fp = get_value_transform(model.fc2)
    assert fp is not None and not fp.act_in.signed  # type: ignore[union-attr]
    path = tmp_path / "q.pt"
    save_checkpoint(path, model)
    loaded = copy.deepcopy(randomize_(TinyCNN(), 5, 1.0))
    load_into(loaded, read_checkpoint(path))
    x = torch.randn(10, 1, 8, 8) * 2
    assert torch.equal(loaded(x), model(x))
    assert get_value_transform(loaded.fc2).act_in == fp.act_in  # type: ignore[union-attr]
