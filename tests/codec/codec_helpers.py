"""Test-local value transforms (one per exported kind) and small compressed models for the codec tests.

These minimal transforms stand in for the technique packages' own (the codec must not depend on them): each
follows the ``ValueTransform`` contract of ``core/state.py`` and exports one registered kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deepshrink.codec import load as codec_load
from deepshrink.core import STATE_CLASSES, ValueTransform, get_mask, set_mask, set_value_transform
from deepshrink.models import build_model


class CodebookT(ValueTransform):
    kind = "codebook"

    def __init__(self, index: Tensor, centroids: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.int64))
        self.centroids = nn.Parameter(centroids.to(torch.float32))

    def forward(self, weight: Tensor) -> Tensor:
        return torch.where(self.index >= 0, self.centroids[self.index.clamp(min=0)], torch.zeros((), dtype=weight.dtype))

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        return {"kind": "codebook", "index": self.index.clone(), "centroids": self.centroids.detach().clone(),
                "act_bits": 8, "note": "kept verbatim", "act_scale": np.float32(0.125)}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> CodebookT:
        return cls(torch.as_tensor(np.asarray(exported["index"])), torch.as_tensor(np.asarray(exported["centroids"])))


class FixedT(ValueTransform):
    kind = "fixedpoint"

    def __init__(self, ints: Tensor, bits: int, frac_len: int) -> None:
        super().__init__()
        self.register_buffer("ints", ints.to(torch.int64))
        self.bits_, self.frac_len = bits, frac_len

    def forward(self, weight: Tensor) -> Tensor:
        return self.ints.to(torch.float32) * torch.tensor(2.0**-self.frac_len, dtype=torch.float32)

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        return {"kind": "fixedpoint", "int": self.ints.numpy().copy(), "bits": self.bits_, "frac_len": self.frac_len,
                "act_frac_len": [3, 4]}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> FixedT:
        return cls(torch.as_tensor(np.asarray(exported["int"])), int(exported["bits"]), int(exported["frac_len"]))


class TernaryT(ValueTransform):
    kind = "ternary"

    def __init__(self, code: Tensor, wp: float, wn: float) -> None:
        super().__init__()
        self.register_buffer("code", code.to(torch.int8))
        self.wp, self.wn = float(np.float32(wp)), float(np.float32(wn))

    def forward(self, weight: Tensor) -> Tensor:
        wp = torch.tensor(self.wp, dtype=torch.float32)
        wn = torch.tensor(self.wn, dtype=torch.float32)
        zero = torch.zeros((), dtype=torch.float32)
        return torch.where(self.code > 0, wp, torch.where(self.code < 0, -wn, zero))

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        return {"kind": "ternary", "code": self.code.numpy().copy(), "wp": self.wp, "wn": self.wn}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> TernaryT:
        return cls(torch.as_tensor(np.asarray(exported["code"])), exported["wp"], exported["wn"])


TRANSFORMS = {"codebook": CodebookT, "fixedpoint": FixedT, "ternary": TernaryT}


@pytest.fixture
def transforms(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, type[ValueTransform]]]:
    """Register the test transforms for the duration of a test (and make the loader find exactly these)."""
    for cls in TRANSFORMS.values():
        STATE_CLASSES[cls.__name__] = cls
    monkeypatch.setattr(codec_load, "restorer_for", lambda kind: TRANSFORMS.get(kind))
    yield TRANSFORMS
    for cls in TRANSFORMS.values():
        STATE_CLASSES.pop(cls.__name__, None)


def quantize_(module: nn.Module, kind: str, levels: int = 16) -> None:
    """Attach a test transform of ``kind`` to ``module.weight``, keeping masked positions at zero."""
    w = module.weight.detach().clone()
    mask = get_mask(module)
    keep = mask if mask is not None else torch.ones_like(w, dtype=torch.bool)
    if kind == "codebook":
        live = w[keep] if keep.any() else w.reshape(-1)
        cents = torch.linspace(float(live.min()), float(live.max()) + 1e-6, levels)
        index = (w.unsqueeze(-1) - cents).abs().argmin(-1)
        set_value_transform(module, CodebookT(torch.where(keep, index, torch.full_like(index, -1)), cents))
    elif kind == "fixedpoint":
        ints = torch.clamp(torch.round(w * 64), -127, 127).to(torch.int64) * keep
        set_value_transform(module, FixedT(ints, 8, 6))
    elif kind == "ternary":
        t = 0.7 * float(w.abs().mean())
        code = (torch.sign(w) * (w.abs() > t)).to(torch.int8) * keep
        set_value_transform(module, TernaryT(code, float(w[w > t].mean()), float(-w[w < -t].mean())))
    else:
        raise ValueError(kind)


def prune_(module: nn.Module, density: float) -> None:
    w = module.weight.detach()
    threshold = w.abs().reshape(-1).quantile(1.0 - density) if density < 1 else -1.0
    set_mask(module, w.abs() > threshold)


def effective_weights(model: nn.Module) -> dict[str, Tensor]:
    """Name -> effective (parametrized) weight of every Linear/Conv layer, plus every plain state tensor."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out[f"{name}.weight"] = module.weight.detach().clone()
    for key, value in model.state_dict().items():
        if "parametrizations" not in key.split(".") and key not in out:
            out[key] = value.clone()
    return out


def assert_same_bits(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert x.dtype == y.dtype and x.shape == y.shape, key
        if x.is_floating_point():
            # +0.0 and -0.0 both mean "pruned"; every other value must match bit for bit
            x = torch.where(x == 0, torch.zeros_like(x), x)
            y = torch.where(y == 0, torch.zeros_like(y), y)
            assert torch.equal(x.view(torch.int32) if x.dtype == torch.float32 else x,
                               y.view(torch.int32) if y.dtype == torch.float32 else y), key
        else:
            assert torch.equal(x, y), key


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    """``make_model(arch)``: a tiny zoo model (lenet300 with small hidden layers, or a BN VGG)."""

    def build(arch: str = "lenet300") -> nn.Module:
        if arch == "lenet300":
            return build_model("lenet300", in_features=64, hidden=(24, 12), num_classes=10)
        if arch == "vgg":
            model = build_model("vgg", in_channels=1, num_classes=4, widths=(4, 8))
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
                    m.num_batches_tracked.fill_(7)
            return model
        raise ValueError(arch)

    return build
