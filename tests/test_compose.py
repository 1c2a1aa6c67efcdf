"""The techniques compose in any order on one model: pruned weights stay exactly zero after every step, the
``.dsz`` round trip is bit-exact, and the runtime computes what the model computes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import deepshrink.runtime as rt
from deepshrink.codec import load_compressed, save_compressed
from deepshrink.core import compress_, get_mask, iter_states
from deepshrink.fixedpoint import DynamicFixedPoint
from deepshrink.models import build_model
from deepshrink.prune import MagnitudePrune
from deepshrink.share import WeightSharing
from deepshrink.ternary import TTQ

X = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))

STEPS: dict[str, Callable[[nn.Module], object]] = {
    "prune": lambda m: compress_(m, MagnitudePrune(sparsity=0.6)),
    "share": lambda m: compress_(m, WeightSharing(bits=4, init="optimal")),
    "fixedpoint": lambda m: compress_(m, DynamicFixedPoint(bits=8), calib=X),
    "ternary": lambda m: compress_(m, TTQ(t=0.05, keep_first_last=False)),
}


def _masked_positions_are_zero(model: nn.Module) -> None:
    for fqn, module, name, _ in iter_states(model):
        mask = get_mask(module, name)
        if mask is not None:
            assert torch.all(getattr(module, name)[~mask] == 0), f"{fqn}.{name} revived a pruned weight"


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{fqn}.{name}": getattr(module, name).detach().clone() for fqn, module, name, _ in iter_states(model)}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(list(STEPS)).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])),
       prune_again=st.booleans())
def test_any_order_keeps_masks_and_round_trips_bit_exactly(tmp_path: Path, order: list[str],
                                                           prune_again: bool) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", in_channels=1, num_classes=4, input_size=16).eval()
    for step in order:
        STEPS[step](model)
        _masked_positions_are_zero(model)
    if prune_again:  # a later pruning step narrows the mask under whatever value transform is there
        STEPS["prune"](model)
        _masked_positions_are_zero(model)
    path = tmp_path / f"{'-'.join(order)}-{prune_again}.dsz"
    save_compressed(model, path)
    loaded = load_compressed(path).eval()
    before, after = _effective(model), _effective(loaded)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    _masked_positions_are_zero(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X))
        torch.testing.assert_close(rt.load(path)(X), model(X), rtol=1e-4, atol=1e-4)


def test_compress_dispatches_on_the_config_type() -> None:
    from deepshrink.core import ConfigError

    with pytest.raises(ConfigError, match="no technique takes a dict"):
        compress_(nn.Linear(2, 2), {"sparsity": 0.5})
    with pytest.raises(ConfigError, match="calibration data"):
        compress_(build_model("lenet300"), DynamicFixedPoint(bits=8))
