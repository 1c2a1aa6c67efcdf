"""Cross-layer equalisation keeps the model's function and evens out channel ranges; BN fold comes first."""

from __future__ import annotations

import torch
from torch import nn

from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.fixedpoint.equalize import equalization_pairs, equalize_


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6),
                          nn.ReLU6(), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-2, 1, 6).reshape(-1, 1, 1, 1))
    return model.eval()


def test_equalization_is_function_preserving_and_skips_relu6() -> None:
    model, x = _model(), torch.randn(4, 3, 8, 8)
    # the ReLU6 between 2 and 4 is not scale-free; a Flatten between 4 and 6 mixes channels into features
    assert equalization_pairs(model, x[:1]) == [("0", "2")]
    before = model(x)
    spread = model[0].weight.detach().abs().reshape(6, -1).amax(1)
    equalize_(model, x[:1])
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    after = model[0].weight.detach().abs().reshape(6, -1).amax(1)
    assert float(after.max() / after.min()) < float(spread.max() / spread.min())


def test_equalize_option_runs_inside_quantize() -> None:
    model, x = _model(), torch.randn(16, 3, 8, 8)
    report = quantize_(model, DynamicFixedPoint(bits=8, equalize=True), calib=x)
    assert report.equalized == [("0", "2")]
