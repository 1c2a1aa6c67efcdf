"""A new value kind is one module and one registration: the codec, the loader and the runtime take it unchanged.

The kind here (``pow2``: each weight ``sign * 2**exponent``, the form of Miyashita et al.'s logarithmic weights)
is the worked example of docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import deepshrink.runtime as rt
from deepshrink.codec import load_compressed, read_compressed, save_compressed
from deepshrink.core import (
    KINDS,
    FormatError,
    Palette,
    StoredWeight,
    ValueKind,
    ValueTransform,
    kind_of,
    register_kind,
    set_mask,
    set_value_transform,
    stored_from_export,
)
from deepshrink.core.techniques import _RESTORERS
from deepshrink.models import build_model

# --- the whole new kind: a ValueKind + its registration ------------------------------------------------------


class Pow2Kind(ValueKind):
    """Symbols ``s`` code ``0`` (s == 0), ``+2**(s - 1 - 8)`` (s in 1..16) and ``-2**(s - 17 - 8)`` (s in 17..32)."""

    name = "pow2"
    symbol_key = "code"

    def check(self, weight: StoredWeight) -> None:
        if weight.kept and (int(weight.data.min()) < 0 or int(weight.data.max()) > 32):
            raise FormatError("pow2 codes must lie in 0..32")

    def palette(self, weight: StoredWeight) -> Palette:
        magnitudes = 2.0 ** (np.arange(16) - 8)
        table = np.concatenate([[0.0], magnitudes, -magnitudes]).astype(np.float32).reshape(1, -1)
        return Palette(table, np.where(weight.data == 0, -1, weight.data))

    def values(self, weight: StoredWeight) -> np.ndarray:
        codes, table = self.palette(weight).flat(weight)
        return np.where(codes >= 0, table[np.maximum(codes, 0)], np.float32(0)).astype(np.float32)


# --- a transform that produces it (what a technique would add) -------------------------------------------------


class Pow2(ValueTransform):
    kind: ClassVar[str] = "pow2"

    def forward(self, weight: Tensor) -> Tensor:
        return torch.from_numpy(kind_of("pow2").dense(stored_from_export(self.export(weight)))).to(weight.dtype)

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        w = masked_latent.detach().cpu().numpy()
        exponent = np.clip(np.round(np.log2(np.maximum(np.abs(w), 2.0**-9))), -8, 7).astype(np.int64)
        code = np.where(np.abs(w) < 2.0**-9, 0, np.where(w > 0, exponent + 9, exponent + 25))
        return {"kind": "pow2", "code": code}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> Pow2:
        return cls()


@pytest.fixture
def pow2(monkeypatch: pytest.MonkeyPatch) -> type[ValueKind]:
    monkeypatch.setitem(KINDS, "pow2", Pow2Kind())  # what register_kind(Pow2Kind()) does at import
    monkeypatch.setitem(_RESTORERS, "pow2", Pow2)  # what register_technique(..., restores={...}) does
    return Pow2Kind


def test_a_new_kind_goes_through_codec_loader_and_runtime(pow2: type, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet300", in_features=20, hidden=(16, 8), num_classes=3).eval()
    set_mask(model.fc1, model.fc1.weight.abs() > 0.05)
    set_value_transform(model.fc1, Pow2())
    set_value_transform(model.fc2, Pow2())
    path = tmp_path / "pow2.dsz"
    save_compressed(model, path)
    assert read_compressed(path).weights["fc1.weight"].kind == "pow2"
    loaded = load_compressed(path)
    assert torch.equal(loaded.fc1.weight, model.fc1.weight) and torch.equal(loaded.fc2.weight, model.fc2.weight)
    fast = rt.load(path)  # no pow2 builder: the generic palette builder runs it through the codebook kernel
    assert isinstance(fast.fc1, rt.SparseLinear) and isinstance(fast.fc2, rt.SparseLinear)
    x = torch.randn(4, 20)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)


def test_register_kind_and_unknown_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deepshrink.core.kinds.base.KINDS", dict(KINDS))
    from deepshrink.core.kinds import base

    register_kind(Pow2Kind())
    assert base.KINDS["pow2"].name == "pow2"
    with pytest.raises(FormatError, match=r"unknown weight kind 'nope'.*codebook"):
        kind_of("nope")


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["codebook", "fixedpoint", "ternary"]), st.integers(1, 6), st.integers(1, 9),
       st.integers(1, 6), st.booleans(), st.integers(0, 10_000))
def test_every_lookup_kind_palette_and_values_agree(kind: str, rows: int, cols: int, groups: int, masked: bool,
                                                    seed: int) -> None:
    """``dense()`` and the palette view (what the runtime, ONNX and C consumers read) give the same weights."""
    rng = np.random.default_rng(seed)
    shape = (rows * groups, cols)
    mask = rng.random(shape) < 0.6 if masked else None
    if kind == "codebook":
        exported: dict[str, Any] = {"kind": kind, "index": rng.integers(-1, 5, shape),
                                    "centroids": rng.standard_normal((groups, 5)).astype(np.float32)}
    elif kind == "fixedpoint":
        exported = {"kind": kind, "int": rng.integers(-128, 128, shape), "bits": 8, "frac_len": int(rng.integers(-3, 9))}
    else:
        exported = {"kind": kind, "code": rng.integers(-1, 2, shape).astype(np.int8),
                    "wp": rng.uniform(0.1, 2, groups).astype(np.float32), "wn": rng.uniform(0.1, 2, groups).astype(np.float32)}
    weight = stored_from_export(exported, mask)
    weight.value_kind.check(weight)
    codes, table = weight.palette().flat(weight)  # type: ignore[union-attr]
    from_palette = np.zeros(weight.numel, np.float32)
    live = codes >= 0
    from_palette[weight.flat_positions()[live]] = table[codes[live]]
    assert np.array_equal(from_palette.reshape(shape), weight.dense())
    assert np.array_equal(stored_from_export(weight.export(), mask).dense(), weight.dense())
