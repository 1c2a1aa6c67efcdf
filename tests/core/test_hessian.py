"""Input Hessians of calibration data: the same whether a batch's patches are built at once or a few samples at a
time (large calibration batches are split so the float64 patches stay within ``PATCH_BYTES``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepshrink.core import hessian


@pytest.mark.parametrize("layer", [nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 6, 3, groups=6, stride=2),
                                   nn.Linear(10, 3), nn.Conv1d(3, 5, 2)])
def test_hessians_built_in_parts_equal_one_pass(layer: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    shape = {nn.Conv2d: (7, layer.in_channels if isinstance(layer, nn.Conv2d) else 0, 9, 9),
             nn.Linear: (7, 5, 10), nn.Conv1d: (7, 3, 11)}[type(layer)]
    inputs = [torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)]
    whole = hessian.input_hessian(layer, inputs)
    monkeypatch.setattr(hessian, "PATCH_BYTES", 1)  # one sample at a time
    parts = hessian.input_hessian(layer, inputs)
    assert len(whole) == len(parts) == getattr(layer, "groups", 1)
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    hooked = hessian.layer_hessians(nn.Sequential(layer), {"0": layer}, inputs)["0"]  # the forward-hook path
    for a, b in zip(whole, hooked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
