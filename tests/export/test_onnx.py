"""The ONNX exporter: every value kind rebuilds its weight bit for bit from standard ops that ONNX Runtime folds at
load, whole compressed models run in ORT like in deepshrink (fixed point: bit-exact in ``exact`` mode, and equal to
a model quantized with rounding="half_even" in ``qdq`` mode), refusals name the module and the op and write nothing,
and a written file loads in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort

from deepshrink.core import fixed_point as fp
from deepshrink.core.errors import ConfigError
from deepshrink.core.kinds import StoredWeight, stored_from_export
from deepshrink.export import to_onnx
from deepshrink.export.onnx.encodings import ENCODERS, Target, check_exact, encode, gap_stream
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.lowrank import SVDLinear, ZhangLowRank, lowrank_
from deepshrink.prune import MagnitudePrune, prune_
from deepshrink.runtime import IntegerModel
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.ternary import TTQ, ternarize_

DECODE_OPS = {"Gather", "ScatterElements", "CumSum", "Cast", "BitShift", "Compress", "ConstantOfShape"}


class Small(nn.Module):
    """conv -> BN -> ReLU -> conv -> pool -> fc -> ReLU -> fc: every layer type the zoo has, small."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, groups=2)
        self.fc1 = nn.Linear(8 * 3 * 3, 24)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def small() -> Small:
    torch.manual_seed(0)
    model = Small().train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 8, 8))
    return model.eval()


X = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_run(path: Path, x: torch.Tensor, optimized: Path | None = None) -> np.ndarray:
    s = session(path, optimized)
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def export_and_run(model: nn.Module, path: Path, **options: Any) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """Export, check, run in ORT (batch 16, traced at batch 1); returns the report, ORT output, optimized ops."""
    report = to_onnx(model, X[:1], path, **options)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    optimized = path.with_suffix(".opt.onnx")
    out = ort_run(path, X, optimized)
    return report, out, [n.op_type for n in onnx.load(optimized).graph.node]


@torch.no_grad()
def reference(model: nn.Module) -> np.ndarray:
    return model(X).numpy()


# --------------------------------------------------------------------------------- encoders, kind by kind
def _check_all(weight: StoredWeight) -> None:
    target = Target("w", tuple(weight.shape), 21, weight.numel * 4)
    found = ENCODERS[weight.kind](weight, target)
    assert found
    for candidate in found:
        assert candidate.added is not None
        check_exact(candidate.added, "w", weight.dense(), f"{weight.kind}/{candidate.encoding}", 21)
    assert encode(weight, target).bytes <= weight.numel * 4


shapes = st.tuples(st.integers(1, 24), st.integers(1, 40))


@settings(max_examples=12, deadline=None)
@given(shape=shapes, k=st.integers(1, 40), groups=st.sampled_from([1, 0]), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_codebook_and_ternary_encodings_rebuild_the_weight(shape: tuple[int, int], k: int, groups: int,
                                                           density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = shape[0] if groups == 0 else 1
    mask = rng.random(shape) < density
    index = np.where(mask, rng.integers(0, k, shape), -1)
    centroids = rng.standard_normal((g, k)).astype(np.float32) if g > 1 else rng.standard_normal(k).astype(np.float32)
    _check_all(stored_from_export({"kind": "codebook", "index": index, "centroids": centroids}, mask))
    codes = np.where(mask, rng.integers(-1, 2, shape), 0).astype(np.int8)
    wp = rng.random(g).astype(np.float32) + 0.1
    _check_all(stored_from_export({"kind": "ternary", "code": codes, "wp": wp, "wn": wp * 2}))


@settings(max_examples=12, deadline=None)
@given(shape=shapes, bits=st.integers(2, 16), per_channel=st.booleans(), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_fixedpoint_and_sparse_encodings_rebuild_the_weight(shape: tuple[int, int], bits: int, per_channel: bool,
                                                            density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lo, hi = fp.int_range(bits)
    mask = rng.random(shape) < density
    ints = np.where(mask, rng.integers(lo, hi + 1, shape), 0)
    frac: Any = rng.integers(-3, 12, shape[0]).astype(np.int64) if per_channel else int(rng.integers(-3, 12))
    _check_all(stored_from_export({"kind": "fixedpoint", "int": ints, "bits": bits, "frac_len": frac}, mask))
    values = rng.standard_normal(shape).astype(np.float32)
    _check_all(stored_from_export({"kind": "sparse", "mask": mask, "values": values}))


@given(positions=st.lists(st.integers(0, 5000), unique=True, max_size=60), width=st.sampled_from([4, 8]))
def test_gap_stream_fillers_reach_every_position(positions: list[int], width: int) -> None:
    ordered = np.array(sorted(positions), dtype=np.int64)
    gaps, fillers = gap_stream(ordered, width)
    step = np.where(gaps == 0, (1 << width) - 1, gaps)
    landed = np.cumsum(step) - 1
    assert gaps.max(initial=0) < (1 << width) and int((gaps == 0).sum()) == fillers
    assert np.array_equal(landed[gaps != 0], ordered)
    assert not set(landed[gaps == 0].tolist()) & set(ordered.tolist())


# ------------------------------------------------------------------------------------------- whole models
def test_deep_compression_model_is_small_exact_and_folded_at_load(tmp_path: Path) -> None:
    model = small()
    prune_(model, MagnitudePrune(sparsity=0.7))
    share_weights_(model, WeightSharing(bits={"conv": 4, "fc": 3}))
    report, out, ops = export_and_run(model, tmp_path / "dc.onnx")
    np.testing.assert_allclose(out, reference(model), rtol=0, atol=1e-5)
    assert report["verify"]["relative_to_range"] <= 1e-4
    assert {w["encoding"] for w in report["weights"].values()} <= {"codes", "gaps", "float"}
    assert report["compressed_weight_bytes"] < report["fp32_weight_bytes"] / 2
    # ORT rebuilt every weight once at session creation and fused the BatchNorm into the decoded conv
    assert not DECODE_OPS & set(ops) and "BatchNormalization" not in ops
    file_ops = {n.op_type for n in onnx.load(tmp_path / "dc.onnx").graph.node}
    assert "BatchNormalization" in file_ops and file_ops & {"ScatterElements", "Gather"}


def test_pruned_ternary_and_lowrank_models_match(tmp_path: Path) -> None:
    pruned = small()
    prune_(pruned, MagnitudePrune(sparsity=0.8))
    ternary = small()
    ternarize_(ternary, TTQ())
    factorised = small()
    lowrank_(factorised, X, linear=SVDLinear(rank=4))
    spatial = small()  # the 3-D decomposition: 5x1, 1x5 and 1x1 convs
    lowrank_(spatial, X, conv=ZhangLowRank(decomposition="3d", ranks={"conv1": 4}, spatial_ranks={"conv1": 3},
                                           images=16), select=["conv1"])
    assert [m.kernel_size for m in spatial.conv1] == [(5, 1), (1, 5), (1, 1)]
    for name, model in (("pruned", pruned), ("ternary", ternary), ("3d", spatial), ("lowrank", factorised)):
        report, out, ops = export_and_run(model, tmp_path / f"{name}.onnx")
        np.testing.assert_allclose(out, reference(model), rtol=0, atol=1e-5, err_msg=name)
        assert not DECODE_OPS & set(ops), name
    assert report["weights"] == {}  # low-rank: plain factors, nothing to encode


def _dfp(bits: Any, **config: Any) -> nn.Module:
    model = small()
    quantize_(model, DynamicFixedPoint(bits=bits, **config), calib=[X])
    return model


@pytest.mark.parametrize("bits", [8, {"conv": 8, "fc": 4}], ids=["dfp8", "conv8-fc4"])
@pytest.mark.parametrize("unsigned", [False, True], ids=["signed", "unsigned"])
def test_fixed_point_exact_mode_is_bit_exact_with_the_integer_engine(tmp_path: Path, bits: Any,
                                                                      unsigned: bool) -> None:
    model = _dfp(bits, granularity="channel", unsigned_activations=unsigned)
    report, out, _ = export_and_run(model, tmp_path / "exact.onnx", activations="exact")
    with torch.no_grad():
        assert np.array_equal(out, IntegerModel(model)(X).numpy())
    assert report["verify"]["bit_exact"]


@pytest.mark.parametrize("unsigned", [False, True], ids=["signed", "unsigned"])
def test_fixed_point_qdq_runs_int8_kernels_bit_exact_with_half_even_rounding(tmp_path: Path, unsigned: bool) -> None:
    """ORT's Q/DQ rounds half to even: a model quantized with rounding="half_even" exports bit-exact; with the
    default half up only ties differ. Unsigned activation formats become ``uint8`` Q/DQ pairs (zero point 0)."""
    model = _dfp(8, rounding="half_even", unsigned_activations=unsigned)
    report, out, ops = export_and_run(model, tmp_path / "qdq.onnx")
    assert {"QLinearConv", "QGemm"} <= set(ops)
    zero_points = {i.data_type for i in onnx.load(tmp_path / "qdq.onnx").graph.initializer if i.dims == []}
    assert (onnx.TensorProto.UINT8 in zero_points) == unsigned
    assert all("DequantizeLinear" in w["encoding"] for w in report["weights"].values())
    assert report["verify"]["bit_exact"]
    with torch.no_grad():
        assert np.array_equal(out, IntegerModel(model)(X).numpy())
    half_up = _dfp(8)
    _, out_up, _ = export_and_run(half_up, tmp_path / "qdq-up.onnx")
    with torch.no_grad():
        assert (out_up.argmax(1) == IntegerModel(half_up)(X).numpy().argmax(1)).mean() >= 0.9


def test_half_even_exact_mode_uses_round(tmp_path: Path) -> None:
    model = _dfp(8, granularity="channel", rounding="half_even")
    report, out, _ = export_and_run(model, tmp_path / "exact.onnx", activations="exact")
    assert "Round" in {n.op_type for n in onnx.load(tmp_path / "exact.onnx").graph.node}
    with torch.no_grad():
        assert np.array_equal(out, IntegerModel(model)(X).numpy())
    assert report["verify"]["bit_exact"]


def test_qdq_bias_beyond_int32_stays_exact_under_ort_optimizations(tmp_path: Path) -> None:
    """A channel of tiny weights (per-channel format: a fine accumulator step) with a large bias, as BN folding
    leaves in real CNNs: its bias is beyond int32 at the accumulator's scale. Kept out of the Conv (an Add after
    it), ORT's WeightBiasQuantization cannot re-quantize and overflow it (regression: EfficientNet-Lite2 qdq)."""
    model = small()
    with torch.no_grad():
        model.conv2.weight[3].mul_(1e-6)
        model.conv2.bias[3] = 40.0
    quantize_(model, DynamicFixedPoint(bits=8, granularity="channel", rounding="half_even"), calib=[X])
    _, out, _ = export_and_run(model, tmp_path / "qdq.onnx")
    with torch.no_grad():
        assert np.array_equal(out, IntegerModel(model)(X).numpy())


def test_per_token_inputs_and_weight_only_fixed_point(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(6, 12)
    quantize_(model, DynamicFixedPoint(bits=8, activations="per_token", quantize_outputs=False), calib=[x])
    report = to_onnx(model, x, tmp_path / "tok.onnx")
    assert report["verify"]["bit_exact"] and report["weights"]["0.weight"]["activations"] == "exact"
    report = to_onnx(model, x, tmp_path / "w.onnx", activations="float")
    assert {w["encoding"] for w in report["weights"].values()} <= {"ints", "gaps", "float"}


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(3, 4)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.a(batch["x"]) + self.b(batch["y"][:, :, None].expand(-1, -1, 3)).mean(1)


def test_dict_inputs_and_dynamic_dims(tmp_path: Path) -> None:
    model = DictModel().eval()
    share_weights_(model, WeightSharing(bits=2))
    batch = {"x": torch.randn(2, 6), "y": torch.randn(2, 5)}
    report = to_onnx(model, batch, tmp_path / "d.onnx", dynamic_dims="0,1")
    assert [i["name"] for i in report["inputs"]] == ["batch_x", "batch_y"]
    assert report["inputs"][1]["shape"][1] != 5  # the second dimension stayed symbolic
    s = session(tmp_path / "d.onnx")
    bigger = {"x": torch.randn(3, 6), "y": torch.randn(3, 9)}
    got = s.run(None, {"batch_x": bigger["x"].numpy(), "batch_y": bigger["y"].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(bigger).numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------- refusals
class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:  # Python control flow on a tensor's value
            y = -y
        return y


class Sorted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.fc(x), 1).values


@pytest.mark.parametrize(("model", "module", "op"), [(Branchy(), "Branchy", "if y.sum() > 0"),
                                                      (Sorted(), "Sorted", "aten.cummax")], ids=["branch", "op"])
def test_refusal_names_module_and_op_and_writes_nothing(tmp_path: Path, model: nn.Module, module: str,
                                                        op: str) -> None:
    out = tmp_path / "refused.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(ConfigError) as info:
        to_onnx(model.eval(), torch.randn(2, 4), out)
    assert module in str(info.value) and op in str(info.value)
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["refused.onnx"]


def test_options_are_checked(tmp_path: Path) -> None:
    for options in ({"activations": "int8"}, {"opset": 11}, {"colour": 1}, {"encoding": "nope"}):
        with pytest.raises(ConfigError):
            to_onnx(small(), X[:1], tmp_path / "x.onnx", **options)
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------------ files and processes
@pytest.mark.slow  # a subprocess, torchrun or a CLI training run (still run by make test)
def test_cli_writes_a_file_a_fresh_process_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepshrink.cli import app
    from deepshrink.codec import save_compressed
    from deepshrink.models import build_model
    from deepshrink.train import save_checkpoint

    torch.manual_seed(0)
    model = build_model("lenet300", in_features=64, num_classes=5).eval()
    prune_(model, MagnitudePrune(sparsity=0.6))
    share_weights_(model, WeightSharing(bits=4))
    save_compressed(model, tmp_path / "m.dsz")
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "m.dsz"), "--format", "onnx", "--out", str(out),
                                      "--input-shape", "1,8,8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["bytes"] == out.stat().st_size and report["checker"] == "full_check passed"
    np.save(tmp_path / "x.npy", X.numpy())
    code = ("import sys, numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], "
            "providers=['CPUExecutionProvider']); x = np.load(sys.argv[2]); "
            "np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0])")
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), reference(model), atol=1e-5)

    # a training checkpoint exports the same way (its compression state comes back with it)
    save_checkpoint(tmp_path / "m.pt", model)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "m.pt"), "--format", "onnx", "--out",
                                      str(tmp_path / "c.onnx"), "--input-shape", "1,8,8", "--option",
                                      "activations=exact", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["activations"] == "exact" and report["compressed_weight_bytes"] < report["fp32_weight_bytes"]
    np.testing.assert_allclose(ort_run(tmp_path / "c.onnx", X), reference(model), atol=1e-5)
