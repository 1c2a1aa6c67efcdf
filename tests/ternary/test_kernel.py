"""The add/subtract runtime equals the dense computation; the TWN baseline's values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.core import (
    UnsupportedLayerError,
    dequantize,
    get_value_transform,
    latent_weight,
    stored_from_export,
)
from deepshrink.models import build_model
from deepshrink.runtime import TernaryConv2d, TernaryRows, from_model, ternary_matmul
from deepshrink.ternary import (
    TTQ,
    TWN,
    SymmetricTernary,
    masked_latent,
    ternarize_,
    ternary_layers,
    twn_scale,
)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(1, 3), st.integers(0, 999))
def test_matvec_equals_dense(rows: int, cols: int, batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    code = rng.integers(-1, 2, size=(rows, cols)).astype(np.int8)
    wp, wn = float(rng.uniform(0.1, 2)), float(rng.uniform(0.1, 2))
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    dense = dequantize({"kind": "ternary", "code": code, "wp": wp, "wn": wn})
    np.testing.assert_allclose(ternary_matmul(code, wp, wn, x), x @ dense.T, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.sampled_from([1, 3]), st.integers(1, 2), st.integers(0, 1),
       st.sampled_from([(7, 6), (18, 17)]), st.integers(0, 999))
def test_conv_equals_dense(cin: int, cout: int, k: int, stride: int, pad: int, size: tuple[int, int], seed: int) -> None:
    """Both conv paths: im2row + row kernel (small outputs) and im2col + position-vectorised kernel (>= 256)."""
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=True)
    code = rng.integers(-1, 2, size=tuple(conv.weight.shape)).astype(np.int8)
    exported = {"kind": "ternary", "code": code, "wp": 0.3, "wn": 0.7}
    x = torch.from_numpy(rng.standard_normal((2, cin, *size)).astype(np.float32))
    dense = F.conv2d(x, torch.from_numpy(dequantize(exported)), conv.bias, stride=stride, padding=pad)
    out = TernaryConv2d.from_conv(conv, stored_from_export(exported), conv.bias)(x)
    torch.testing.assert_close(out, dense.detach(), rtol=1e-5, atol=1e-5)


def test_grouped_conv_is_refused_with_a_clear_error() -> None:
    conv = nn.Conv2d(4, 4, 3, groups=2)
    code = np.zeros(tuple(conv.weight.shape), np.int8)
    with pytest.raises(UnsupportedLayerError, match="groups=1"):
        TernaryConv2d.from_conv(conv, stored_from_export({"kind": "ternary", "code": code, "wp": 1.0, "wn": 1.0}),
                                None)


def test_fold_scale_is_a_per_row_affine_map() -> None:
    code = np.array([[1, -1, 0], [0, 1, 1]], np.int8)
    rows = TernaryRows(code, 2.0, 3.0, bias=np.array([1.0, -1.0], np.float32))
    x = np.array([[1.0, 2.0, 4.0]], np.float32)
    before = rows.matvec(x)
    rows.fold_scale(np.array([0.5, 2.0], np.float32), np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(rows.matvec(x), before * np.array([0.5, 2.0]) + np.array([1.0, 0.0]), rtol=1e-6)


@pytest.mark.parametrize("arch", ["lenet5", "resnet20"])
def test_runtime_model_matches_the_ternary_model(arch: str) -> None:
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "num_classes": 10}
    model = build_model(arch, **(kwargs | ({"input_size": 16} if arch == "lenet5" else {})))
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 1, 16, 16))  # non-trivial BatchNorm statistics to fold
    ternarize_(model, TTQ())
    model.eval()
    runtime = from_model(model, example=torch.randn(1, 1, 16, 16))  # BatchNorms fold into per-channel Wp/Wn
    kinds = {type(m).__name__ for m in runtime.modules()}
    assert "TernaryConv2d" in kinds
    if arch == "resnet20":  # every BatchNorm folded: into the dense first conv, into the ternary convs' Wp/Wn
        assert not any(isinstance(m, nn.BatchNorm2d) for m in runtime.modules())
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), model(x), rtol=1e-4, atol=1e-4)
    name = ternary_layers(model)[0].name
    assert get_value_transform(model.get_submodule(name)) is not None  # the original model is untouched
    assert model.get_submodule(name).weight is not None


def test_twn_values_scale_and_straight_through_gradient() -> None:
    model = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    before = model[2].weight.detach().clone()
    assert ternarize_(model, TWN()) == ["2"]
    transform = get_value_transform(model[2])
    assert isinstance(transform, SymmetricTernary)
    delta = 0.7 * before.abs().mean()
    chosen = before.abs() > delta
    alpha = before.abs()[chosen].mean()
    expected = torch.where(before > delta, alpha, torch.where(before < -delta, -alpha, torch.zeros(())))
    torch.testing.assert_close(model[2].weight.detach(), expected)
    code, scale = twn_scale(before, 0.7)
    assert set(code.unique().tolist()) <= {-1, 0, 1} and float(scale) == pytest.approx(float(alpha))
    upstream = torch.randn_like(before)
    (model[2].weight * upstream).sum().backward()
    torch.testing.assert_close(latent_weight(model[2]).grad, upstream)
    exported = transform.export(masked_latent(model[2]))
    assert exported["wp"] == exported["wn"]
    assert np.array_equal(dequantize(exported), model[2].weight.detach().numpy())
    row = ternary_layers(model)[0]
    assert row.method == "twn" and row.positives + row.negatives == int(chosen.sum())
