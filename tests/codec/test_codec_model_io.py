"""save_compressed / read_compressed / load_compressed: bit-exact weights, masks and transforms restored."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.codec import load as codec_load
from deepshrink.codec import load_compressed, load_compressed_with_meta, read_compressed, save_compressed
from deepshrink.core import ConfigError, DeepShrinkError, get_mask, get_value_transform, restorer_for
from deepshrink.io import DSZ_MAGIC, load_model

from .codec_helpers import CodebookT, assert_same_bits, effective_weights, prune_, quantize_

KINDS = ["codebook", "fixedpoint", "ternary"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("density", [None, 0.1])
@pytest.mark.parametrize("entropy", ["huffman", "ans", "raw"])
def test_quantized_round_trip_bit_exact(tmp_path: Path, make_model: Callable[..., nn.Module], transforms: dict,
                                        kind: str, density: float | None, entropy: str) -> None:
    model = make_model("lenet300")
    for module in (model.fc1, model.fc2, model.fc3):
        if density is not None:
            prune_(module, density)
        quantize_(module, kind)
    before = effective_weights(model)
    path = tmp_path / "m.dsz"
    report = save_compressed(model, path, entropy=entropy, meta={"dataset": "digits"})
    assert report.file_bytes == os.path.getsize(path)
    assert report.total_bytes + report.header_bytes == report.file_bytes
    loaded, meta = load_compressed_with_meta(path)
    assert meta["dataset"] == "digits" and meta["arch"] == "lenet300" and meta["kwargs"]["hidden"] == [24, 12]
    assert_same_bits(before, effective_weights(loaded))
    for name in ("fc1", "fc2", "fc3"):
        original, restored = model.get_submodule(name), loaded.get_submodule(name)
        assert isinstance(get_value_transform(restored), transforms[kind])
        if density is None:
            assert get_mask(restored) is None
        else:
            assert torch.equal(get_mask(original), get_mask(restored))


def test_pruned_only_keeps_mask_and_zero_valued_kept_weights(tmp_path: Path, make_model: Callable) -> None:
    model = make_model("lenet300")
    prune_(model.fc1, 0.05)
    prune_(model.fc2, 0.5)
    with torch.no_grad():  # a kept weight that is exactly zero must stay kept
        kept = torch.nonzero(get_mask(model.fc2))[0]
        model.fc2.parametrizations.weight.original[tuple(kept)] = 0.0
    before = effective_weights(model)
    save_compressed(model, tmp_path / "p.dsz", index_bits={"fc": 3})
    loaded = load_compressed(tmp_path / "p.dsz")
    assert_same_bits(before, effective_weights(loaded))
    assert torch.equal(get_mask(loaded.fc2), get_mask(model.fc2))
    assert get_mask(loaded.fc3) is None
    cf = read_compressed(tmp_path / "p.dsz")
    assert cf.weights["fc1.weight"].kind == "sparse"
    assert cf.weights["fc1.weight"].values().dtype == np.float32
    assert cf.weights["fc3.weight"].kind == "dense"
    assert cf.header["weights"]["fc1.weight"]["index"]["bits"] == 3


def test_batchnorm_model_and_int_buffers(tmp_path: Path, make_model: Callable, transforms: dict) -> None:
    model = make_model("vgg")
    conv = model.features[0]
    prune_(conv, 0.5)
    quantize_(conv, "codebook", levels=8)
    quantize_(model.classifier, "ternary")
    before = effective_weights(model)
    save_compressed(model, tmp_path / "v.dsz", entropy="ans")
    loaded = load_compressed(tmp_path / "v.dsz")
    assert_same_bits(before, effective_weights(loaded))
    assert loaded.features[1].num_batches_tracked.item() == 7
    x = torch.randn(2, 1, 8, 8)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_dense_fp16(tmp_path: Path, make_model: Callable) -> None:
    model = make_model("lenet300")
    save_compressed(model, tmp_path / "h.dsz", dense_dtype="fp16")
    loaded = load_compressed(tmp_path / "h.dsz")
    assert torch.equal(loaded.fc1.weight, model.fc1.weight.half().float())
    assert torch.equal(loaded.fc1.bias, model.fc1.bias)  # other tensors stay raw
    assert os.path.getsize(tmp_path / "h.dsz") < 0.6 * 4 * sum(p.numel() for p in model.parameters())


def test_read_compressed_export_forms_keep_extras(tmp_path: Path, make_model: Callable, transforms: dict) -> None:
    model = make_model("lenet300")
    prune_(model.fc1, 0.2)
    quantize_(model.fc1, "codebook")
    quantize_(model.fc2, "fixedpoint")
    quantize_(model.fc3, "ternary")
    save_compressed(model, tmp_path / "f.dsz")
    cf = read_compressed(tmp_path / "f.dsz")
    stored = cf.weights["fc1.weight"]
    cb, mask = stored.export(), stored.mask()
    assert stored.kind == "codebook" and cb["index"].dtype == np.int64 and cb["index"].shape == (24, 64)
    assert cb["centroids"].dtype == np.float32 and mask is not None and mask.dtype == bool
    assert cb["act_bits"] == 8 and cb["note"] == "kept verbatim" and cb["act_scale"] == 0.125
    assert np.all(cb["index"][~mask] == -1)
    assert stored.kept == int(mask.sum()) and stored.data.shape == (stored.kept,)  # one symbol per kept weight
    fx = cf.weights["fc2.weight"].export()
    assert fx["bits"] == 8 and fx["frac_len"] == 6 and fx["act_frac_len"] == [3, 4]
    assert cf.weights["fc2.weight"].mask() is None
    tern = cf.weights["fc3.weight"].export()
    assert set(np.unique(tern["code"])) <= {-1, 0, 1} and np.float32(tern["wp"]) == np.float32(model.fc3
                                                                                               .parametrizations
                                                                                               .weight[0].wp)
    assert set(cf.tensors) == {"fc1.bias", "fc2.bias", "fc3.bias"}
    assert sum(sum(parts.values()) for parts in cf.section_bytes.values()) < cf.file_size


def test_fallback_without_transform_class_is_still_exact(tmp_path: Path, make_model: Callable, transforms: dict,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("lenet300")
    prune_(model.fc1, 0.3)
    quantize_(model.fc1, "codebook")
    before = effective_weights(model)
    save_compressed(model, tmp_path / "c.dsz")
    monkeypatch.setattr(codec_load, "restorer_for", lambda kind: None)
    loaded = load_compressed(tmp_path / "c.dsz")
    assert get_value_transform(loaded.fc1) is None and get_mask(loaded.fc1) is not None
    assert_same_bits(before, effective_weights(loaded))


def test_restorers_come_from_the_technique_registry() -> None:
    from deepshrink.core.plugins import TECHNIQUE_PACKAGES
    from deepshrink.fixedpoint import FixedPoint
    from deepshrink.share import SharedWeights
    from deepshrink.ternary import Ternary

    assert restorer_for("codebook") is SharedWeights and restorer_for("fixedpoint") is FixedPoint
    assert restorer_for("ternary") is Ternary and restorer_for("no-such-kind") is None
    assert set(TECHNIQUE_PACKAGES) == {"deepshrink.prune", "deepshrink.share", "deepshrink.fixedpoint",
                                       "deepshrink.ternary", "deepshrink.lowrank"}


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Conv1d(7, 3, 1, bias=False)


def test_model_without_arch_loads_into_given_model(tmp_path: Path) -> None:
    model = Custom()
    prune_(model.a, 0.4)
    save_compressed(model, tmp_path / "x.dsz")
    with pytest.raises(ConfigError, match="records no arch"):
        load_compressed(tmp_path / "x.dsz")
    loaded = load_compressed(tmp_path / "x.dsz", model=Custom())
    assert_same_bits(effective_weights(model), effective_weights(loaded))
    with pytest.raises(DeepShrinkError, match="fresh model"):
        load_compressed(tmp_path / "x.dsz", model=loaded)


def test_io_load_model_dispatches_on_magic(tmp_path: Path, make_model: Callable) -> None:
    model = make_model("lenet300")
    save_compressed(model, tmp_path / "m.dsz", meta={"dataset": "digits"})
    assert (tmp_path / "m.dsz").read_bytes()[:8] == DSZ_MAGIC
    loaded, meta = load_model(tmp_path / "m.dsz")
    assert meta["dataset"] == "digits"
    assert_same_bits(effective_weights(model), effective_weights(loaded))


class BadExport(CodebookT):
    def export(self, masked_latent: torch.Tensor) -> dict:
        out = super().export(masked_latent)
        out["centroids"] = out["centroids"] + 1.0
        return out


def test_inconsistent_export_is_refused_and_write_is_atomic(tmp_path: Path, make_model: Callable) -> None:
    path = tmp_path / "m.dsz"
    path.write_bytes(b"previous contents")
    model = make_model("lenet300")
    quantize_(model.fc2, "codebook")
    transform = get_value_transform(model.fc2)
    bad = BadExport(transform.index, transform.centroids.detach())
    model.fc2.parametrizations.weight[0] = bad
    with pytest.raises(DeepShrinkError, match=r"fc2\.weight"):
        save_compressed(model, path)
    assert path.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dsz"]  # no temporary file left behind


def test_invalid_options(tmp_path: Path, make_model: Callable) -> None:
    model = make_model("lenet300")
    with pytest.raises(ConfigError, match="entropy"):
        save_compressed(model, tmp_path / "a.dsz", entropy="zip")
    with pytest.raises(ConfigError, match="index_bits"):
        save_compressed(model, tmp_path / "a.dsz", index_bits={"fc": 0})
    with pytest.raises(ConfigError, match="dense_dtype"):
        save_compressed(model, tmp_path / "a.dsz", dense_dtype="int8")
    with pytest.raises(ConfigError, match="meta"):
        save_compressed(model, tmp_path / "a.dsz", meta={"x": object()})


def test_header_is_json_with_arch_and_encodings(tmp_path: Path, make_model: Callable) -> None:
    import zlib

    model = make_model("lenet300")
    prune_(model.fc1, 0.1)
    save_compressed(model, tmp_path / "m.dsz")
    data = (tmp_path / "m.dsz").read_bytes()
    flags, stored, raw = (int.from_bytes(data[o : o + 4], "little") for o in (12, 16, 20))
    blob = data[28 : 28 + stored]
    header = json.loads(zlib.decompress(blob) if flags & 1 else blob)
    assert len(zlib.decompress(blob) if flags & 1 else blob) == raw
    assert int.from_bytes(data[8:12], "little") == 2  # version 2: the compact header (short keys)
    assert header["arch"] == "lenet300" and "format" not in header
    assert header["w"]["fc1.weight"]["k"] == "sparse"
    assert 28 + stored + sum(header["s"]) == len(data)
    save_compressed(model, tmp_path / "v1.dsz", version=1)  # version 1 is still written on request
    data = (tmp_path / "v1.dsz").read_bytes()
    flags, stored = (int.from_bytes(data[o : o + 4], "little") for o in (12, 16))
    blob = data[28 : 28 + stored]
    header = json.loads(zlib.decompress(blob) if flags & 1 else blob)
    assert header["arch"] == "lenet300" and header["format"] == "deepshrink-dsz" and header["version"] == 1
    assert header["weights"]["fc1.weight"]["kind"] == "sparse"
    assert 28 + stored + sum(length for _, length, _ in header["sections"]) == len(data)


def test_auto_index_width_is_never_larger(tmp_path: Path, make_model: Callable, transforms: dict) -> None:
    model = make_model("lenet300")
    prune_(model.fc1, 0.03)
    quantize_(model.fc1, "codebook")
    prune_(model.fc2, 0.4)
    before = effective_weights(model)
    fixed = save_compressed(model, tmp_path / "fixed.dsz")
    auto = save_compressed(model, tmp_path / "auto.dsz", index_bits="auto")
    assert auto.tensors["fc1.weight"] <= fixed.tensors["fc1.weight"]
    assert auto.tensors["fc2.weight"] <= fixed.tensors["fc2.weight"]
    assert_same_bits(before, effective_weights(load_compressed(tmp_path / "auto.dsz")))
    with pytest.raises(ConfigError, match="index_bits"):
        save_compressed(model, tmp_path / "bad.dsz", index_bits="fast")


class OneLayer(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        if len(shape) == 2:
            self.layer: nn.Module = nn.Linear(shape[1], shape[0], bias=False)
        else:
            self.layer = nn.Conv2d(shape[1], shape[0], shape[2:], bias=False)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.one_of(st.tuples(st.integers(1, 40), st.integers(1, 70)),
                    st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4))),
    density=st.floats(0.0, 1.0),
    kind=st.sampled_from(["sparse", "codebook", "fixedpoint", "ternary"]),
    entropy=st.sampled_from(["raw", "huffman", "ans"]),
    bits=st.integers(1, 6),
    index_coding=st.sampled_from(["relative", "auto"]),
    seed=st.integers(0, 2**16),
)
def test_random_sparse_tensors_round_trip(tmp_path: Path, transforms: dict, shape: tuple[int, ...], density: float,
                                          kind: str, entropy: str, bits: int, index_coding: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = OneLayer(shape)
    mask = torch.rand(shape) < density  # low densities with few index bits force long runs of fillers
    from deepshrink.core import set_mask

    set_mask(model.layer, mask)
    if kind != "sparse":
        quantize_(model.layer, kind, levels=1 + seed % 40)
    before = effective_weights(model)
    path = tmp_path / f"r{seed}.dsz"
    save_compressed(model, path, entropy=entropy, index_bits={"conv": bits, "fc": bits}, index_coding=index_coding)
    loaded = load_compressed(path, model=OneLayer(shape))
    assert_same_bits(before, effective_weights(loaded))
    assert torch.equal(get_mask(loaded.layer), mask)


def test_structural_edits_are_replayed(tmp_path: Path, make_model: Callable, transforms: dict) -> None:
    from deepshrink.core import fold_batchnorm_, recorded_edits

    model = make_model("vgg").eval()
    fold_batchnorm_(model, torch.randn(1, 1, 8, 8))
    assert recorded_edits(model)
    prune_(model.features[0], 0.5)
    quantize_(model.features[0], "fixedpoint")
    before = effective_weights(model)
    save_compressed(model, tmp_path / "folded.dsz")
    loaded = load_compressed(tmp_path / "folded.dsz").eval()
    assert recorded_edits(loaded) == recorded_edits(model)
    assert_same_bits(before, effective_weights(loaded))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_arch_kwargs_that_disagree_with_the_tensors_are_refused_before_building(tmp_path: Path,
                                                                              make_model: Callable) -> None:
    from .test_codec_format import _join, _split

    model = make_model("lenet300")
    save_compressed(model, tmp_path / "m.dsz")
    header, sections = _split((tmp_path / "m.dsz").read_bytes())
    header["kwargs"]["hidden"] = [1_000_000, 1_000_000]  # would be a 4 TB model if it were built
    (tmp_path / "evil.dsz").write_bytes(_join(header, sections))
    with pytest.raises(DeepShrinkError, match="does not match the stored tensors"):
        load_compressed(tmp_path / "evil.dsz")
    header["kwargs"]["hidden"] = "wide"
    (tmp_path / "evil.dsz").write_bytes(_join(header, sections))
    with pytest.raises(DeepShrinkError, match="cannot rebuild"):
        load_compressed(tmp_path / "evil.dsz")


def test_context_mask_coding_is_chosen_where_smaller(tmp_path: Path, make_model: Callable, transforms: dict) -> None:
    model = make_model("lenet300")
    mask = torch.rand(24, 64) < 0.5  # empty rows and columns (dead inputs / units): what the context model sees
    mask[torch.rand(24) < 0.5] = False
    mask[:, torch.rand(64) < 0.5] = False
    from deepshrink.core import set_mask

    set_mask(model.fc1, mask)
    quantize_(model.fc1, "codebook")
    before = effective_weights(model)
    relative = save_compressed(model, tmp_path / "rel.dsz", entropy="ans")
    auto = save_compressed(model, tmp_path / "ctx.dsz", entropy="ans", index_coding="auto")
    header = read_compressed(tmp_path / "ctx.dsz").header["weights"]["fc1.weight"]
    assert "mask" in header and "index" not in header
    assert auto.tensors["fc1.weight"] < relative.tensors["fc1.weight"]
    loaded = load_compressed(tmp_path / "ctx.dsz")
    assert_same_bits(before, effective_weights(loaded))
    assert torch.equal(get_mask(loaded.fc1), get_mask(model.fc1))
    from deepshrink.codec import file_stats

    row = next(r for r in file_stats(tmp_path / "ctx.dsz")["layers"] if r["name"] == "fc1.weight")
    assert row["index_coding"] == "ctx" and row["index_bits"] < row["index_bits_fixed"]
    with pytest.raises(ConfigError, match="index_coding"):
        save_compressed(model, tmp_path / "bad.dsz", index_coding="bitmap")
