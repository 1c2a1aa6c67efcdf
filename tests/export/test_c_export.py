"""The C99 exporter: generated code compiles warning-free, DFP models run bit-exact with the integer engine, float
models within 1e-5 of the runtime, unsupported layers are refused at export, and a Cortex-M4 under QEMU prints
what the host build prints."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.core.errors import ConfigError
from deepshrink.core.fixed_point import to_int
from deepshrink.export import to_c
from deepshrink.export.c import toolchain
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.lowrank import ZhangLowRank, lowrank_
from deepshrink.prune import MagnitudePrune, prune_
from deepshrink.runtime import IntegerModel, from_model
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.ternary import TTQ, ternarize_

ROOT = Path(__file__).resolve().parents[2]
needs_cc = pytest.mark.skipif(toolchain.host_compiler() is None, reason="no host C compiler (gcc/cc)")
_ARM = toolchain.arm_tools()
needs_m4 = pytest.mark.skipif(
    _ARM is None or _ARM.qemu is None,
    reason="arm-none-eabi-gcc or qemu-system-arm not installed (make mcu-tools installs gcc-arm-none-eabi, "
           "libnewlib-arm-none-eabi, qemu-system-arm)")


class ResidualCNN(nn.Module):
    """Padded, strided, grouped and depthwise convs, ReLU6, a residual add, max pool, flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu6(self.conv2(x))
        x = F.relu(x + self.dw(x))
        x = F.max_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


class FloatOpsCNN(nn.Module):
    """Float-only ops: a BatchNorm that folds, one that cannot (after an add), average pools, a Conv1d head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.conv_b = nn.Conv2d(6, 6, 1)
        self.bn_after_add = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d((3, 1))
        self.head = nn.Conv1d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.bn_after_add(x + self.conv_b(x))
        x = self.gap(self.pool(x))
        return self.head(x.flatten(2)).flatten(1)


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            m: Any = module
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _build_run(model: nn.Module, x: torch.Tensor, out: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Export, compile with -Werror, run the host harness on ``x``; returns (outputs as numbers, report)."""
    report = to_c(model, x[:1], out, **options)
    exe = toolchain.build_host(out, out / "harness")
    header = (out / "model.h").read_text()
    in_t = header.split("typedef ")[1].split()[0]
    out_t = header.split("typedef ")[2].split()[0]
    if report["arithmetic"] == "integer":
        lo, hi = (int(re.search(rf"#define DS_INPUT_{k} \(?(-?\d+)", header)[1]) for k in ("MIN", "MAX"))  # type: ignore[index]
        inputs = to_int(x, 32, report["input_frac_len"]).clamp(lo, hi).numpy()
    else:
        inputs = x.numpy()
    outputs, _ = toolchain.run_host(exe, inputs, in_t, out_t, report["output_size"])
    return outputs, report


def _assert_bit_exact(model: nn.Module, x: torch.Tensor, out: Path, **options: Any) -> dict[str, Any]:
    outputs, report = _build_run(model, x, out, **options)
    assert report["arithmetic"] == "integer"
    with torch.no_grad():
        expected = IntegerModel(model)(x).reshape(x.shape[0], -1).numpy()
    got = (outputs.astype(np.float64) / 2.0 ** report["output_frac_len"]).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    return report


def _assert_close(model: nn.Module, x: torch.Tensor, out: Path, **options: Any) -> dict[str, Any]:
    outputs, report = _build_run(model, x, out, **options)
    assert report["arithmetic"] == "float32"
    with torch.no_grad():
        expected = from_model(model, x[:1])(x).reshape(x.shape[0], -1).numpy()
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(outputs.argmax(1), expected.argmax(1))
    return report


@needs_cc
def test_dfp_residual_cnn_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = ResidualCNN().eval()
    calib = torch.randn(64, 1, 8, 8)
    prune_(model, MagnitudePrune(sparsity=0.6), select=["conv1", "fc"])
    quantize_(model, DynamicFixedPoint(bits={"conv": 8, "fc": 4}, act_bits=8), calib=calib)
    x = torch.randn(200, 1, 8, 8) * 1.5  # wider than calibration: saturation everywhere
    report = _assert_bit_exact(model, x, tmp_path / "c")
    code = re.sub(r"/\*.*?\*/", "", (tmp_path / "c" / "model.c").read_text(), flags=re.S)
    assert not re.search(r"\b(float|double|malloc)\b", code)  # integer-only, not even a declaration
    assert report["arena_bytes"] > 0
    # every weight sparse: the scatter conv kernel with padding tables, strides, groups and a depthwise conv
    report = _assert_bit_exact(model, x, tmp_path / "sparse", layout="sparse")
    assert all("kept, relative index" in layer["weight"] for layer in report["layers"])
    float_model = ResidualCNN().eval()
    prune_(float_model, MagnitudePrune(sparsity=0.7))
    _assert_close(float_model, x, tmp_path / "float_sparse", layout="sparse")


@needs_cc
def test_dfp_wide_formats_int64_and_per_channel(tmp_path: Path) -> None:
    """16-bit weights and activations accumulate in int64; per-channel weight formats shift per channel."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 300), nn.ReLU(),
                          nn.Linear(300, 4)).eval()
    with torch.no_grad():
        cast(nn.Linear, model[3]).weight.mul_(8)
    calib = torch.randn(32, 2, 6, 6) * 4
    quantize_(model, DynamicFixedPoint(bits=16, granularity="channel", quantize_last_output=True), calib=calib)
    _assert_bit_exact(model, torch.randn(50, 2, 6, 6) * 4, tmp_path / "c")
    assert "int64_t acc" in (tmp_path / "c" / "model.c").read_text()


@needs_cc
def test_float_models_match_runtime(tmp_path: Path) -> None:
    """Codebook (per channel group), pruned float, ternary and dense weights; BN folded and unfolded; pools; Conv1d."""
    torch.manual_seed(3)
    x = torch.randn(40, 2, 8, 8)
    plain = _randomize_bn(FloatOpsCNN(), 3)
    _assert_close(plain, x, tmp_path / "dense")
    shared = copy.deepcopy(plain)
    prune_(shared, MagnitudePrune(sparsity=0.5), select=["conv", "conv_b", "head"])
    share_weights_(shared, WeightSharing(bits=3, groups=2, init="optimal", bias_bits=2), select=["conv_b", "head"])
    report = _assert_close(shared, x, tmp_path / "shared")
    assert any("codes" in layer["weight"] for layer in report["layers"])
    ternary = copy.deepcopy(plain)
    ternarize_(ternary, TTQ(keep_first_last=False))
    report = _assert_close(ternary, x, tmp_path / "ternary")
    assert any("2-bit codes" in layer["weight"] or "1-bit codes" in layer["weight"] for layer in report["layers"])
    source = (tmp_path / "shared" / "model.c").read_text()
    assert "bn_after_add" in source and "avgpool" in source  # the unfoldable BN runs as an affine op


@needs_cc
def test_3d_lowrank_model_runs_in_c_float_and_fixed_point(tmp_path: Path) -> None:
    """k x 1, 1 x k and 1x1 convs (the 3-D low-rank form): non-square kernels and paddings, float and integer."""
    torch.manual_seed(5)
    x = torch.randn(24, 2, 8, 8)
    model = _randomize_bn(FloatOpsCNN(), 5)
    lowrank_(model, x, conv=ZhangLowRank(decomposition="3d", ranks={"conv": 4}, spatial_ranks={"conv": 3}, images=24),
             select=["conv"])
    assert [m.kernel_size for m in cast(nn.Sequential, model.conv)] == [(3, 1), (1, 3), (1, 1)]
    _assert_close(model, x, tmp_path / "float")
    plain = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, (3, 2), stride=(1, 2)), nn.ReLU(),
                          nn.Flatten(), nn.Linear(5 * 6 * 4, 3)).eval()
    lowrank_(plain, x, conv=ZhangLowRank(decomposition="3d", ranks={"0": 5, "2": 4}, spatial_ranks={"0": 4, "2": 3},
                                         images=24))
    quantize_(plain, DynamicFixedPoint(bits=8), calib=[x])
    _assert_bit_exact(plain, x, tmp_path / "integer")


@needs_cc
def test_lenet300_codebook_file_within_1e5(tmp_path: Path) -> None:
    """A real Deep Compression file (pruned, 6-bit codebooks): sparse codes, equal argmax on test images."""
    from deepshrink.io import load_model

    model, _ = load_model(ROOT / "benchmarks" / "results" / "codecs-lenet300.dsz")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 1, 28, 28, generator=gen)
    report = _assert_close(model, x, tmp_path / "c")
    assert all(layer["weight"].startswith(tuple("0123456789")) for layer in report["layers"])  # all sparse
    assert report["weight_bytes"] < 32 * 1024


@needs_cc
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), cin=st.integers(1, 4), cout_mult=st.integers(1, 3), kernel=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 1), grouped=st.booleans(),
       bits=st.sampled_from([4, 8, 16]), act_bits=st.sampled_from([8, 16]),
       sparsity=st.sampled_from([0.0, 0.5, 0.9]), unsigned=st.booleans())
def test_dfp_layer_shapes_bit_exact(tmp_path_factory: pytest.TempPathFactory, seed: int, cin: int, cout_mult: int,
                                    kernel: int, stride: int, pad: int, grouped: bool, bits: int, act_bits: int,
                                    sparsity: float, unsigned: bool) -> None:
    """``unsigned``: a non-negative input (an image) and the ReLU between the layers get unsigned formats:
    ``uint8_t`` activations at 8 bits."""
    gen = torch.Generator().manual_seed(seed)
    groups = cin if grouped else 1
    conv = nn.Conv2d(cin, cin * cout_mult, kernel, stride=stride, padding=pad, groups=groups)
    side = (7 + 2 * pad - kernel) // stride + 1
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(cin * cout_mult * side * side, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    if sparsity:
        prune_(model, MagnitudePrune(sparsity=sparsity))
    draw = torch.rand if unsigned else torch.randn
    quantize_(model, DynamicFixedPoint(bits=bits, act_bits=act_bits, unsigned_activations=unsigned),
              calib=draw(32, cin, 7, 7, generator=gen))
    out = tmp_path_factory.mktemp("c")
    _assert_bit_exact(model, draw(16, cin, 7, 7, generator=gen) * 2, out)
    if unsigned and act_bits == 8:
        assert "typedef uint8_t ds_input_t;" in (out / "model.h").read_text()


@needs_cc
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(1, 6), groups=st.sampled_from(["layer", "channel", 2]),
       sparsity=st.sampled_from([0.0, 0.7, 0.95]), out=st.sampled_from([2, 6]))
def test_codebook_linear_within_1e5(tmp_path_factory: pytest.TempPathFactory, seed: int, bits: int,
                                    groups: str | int, sparsity: float, out: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, out)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    if sparsity:
        prune_(model, MagnitudePrune(sparsity=sparsity))
    share_weights_(model, WeightSharing(bits=bits, groups=groups, init="optimal"))
    _assert_close(model, torch.randn(32, 40, generator=gen), tmp_path_factory.mktemp("c"))


def _unroll_net(seed: int, dilation: int = 1) -> nn.Sequential:
    """Inner lengths that no unroll factor divides: conv input channels 7 and 5 per group (padded, strided,
    grouped; dilated for float: the integer engine has no dilated int conv), Linear columns 54 and 13."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(7, 10, 3, padding=dilation, dilation=dilation), nn.ReLU(),
                         nn.Conv2d(10, 6, 3, stride=2, padding=1, groups=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 13), nn.ReLU(), nn.Linear(13, 3)).eval()


@needs_cc
@pytest.mark.parametrize("unroll", [2, 4])
def test_unrolled_kernels_exact_and_close(tmp_path: Path, unroll: int) -> None:
    """``unroll=N``: N accumulators and a remainder loop in every dense Linear/Conv; DFP (int8 conv, 4-bit codes
    fc) stays bit-exact with the engine, float within 1e-5 of the runtime; -Werror clean."""
    x = torch.randn(60, 7, 6, 6, generator=torch.Generator().manual_seed(unroll)) * 1.5
    dfp = _unroll_net(4)
    quantize_(dfp, DynamicFixedPoint(bits={"conv": 8, "fc": 4}, act_bits=8), calib=x[:32])
    report = _assert_bit_exact(dfp, x, tmp_path / "dfp", layout="dense", unroll=unroll)
    assert report["unroll"] == unroll
    source = (tmp_path / "dfp" / "model.c").read_text()
    assert source.count(f"unrolled by {unroll} ({unroll} accumulators)") == 4
    assert f"acc{unroll - 1} = 0," in source and "/* the last " in source
    _assert_close(_unroll_net(5, dilation=2), x, tmp_path / "float", unroll=str(unroll))
    assert (tmp_path / "float" / "model.c").read_text().count("unrolled by") == 4


def test_unroll_option_default_and_refused(tmp_path: Path) -> None:
    model, x = _unroll_net(6), torch.randn(1, 7, 6, 6)
    to_c(model, x, tmp_path / "plain")
    to_c(model, x, tmp_path / "one", unroll=1)
    to_c(model, x, tmp_path / "eight", unroll=8)  # the convs (7 and 5 input channels) keep the plain loop
    plain = (tmp_path / "plain" / "model.c").read_text()
    assert plain == (tmp_path / "one" / "model.c").read_text() and "unrolled" not in plain
    assert (tmp_path / "eight" / "model.c").read_text().count("unrolled by 8") == 2
    for bad in (3, 0, "4x", True, 16):
        with pytest.raises(ConfigError, match=r"unroll must be one of 1, 2, 4, 8"):
            to_c(model, x, tmp_path / "never", unroll=bad)
    assert not (tmp_path / "never").exists()


class _Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x))


def test_unsupported_layer_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"'norm'.*LayerNorm"):
        to_c(_Normed(), torch.randn(2, 4), out)
    with pytest.raises(ConfigError, match=r"'1' \(Sigmoid\)"):
        to_c(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()), torch.randn(2, 4), out)
    with pytest.raises(ConfigError, match="operation 'sigmoid'"):
        to_c(_Gated(), torch.randn(2, 4), out)
    assert not out.exists()


def test_integer_model_refuses_float_ops(tmp_path: Path) -> None:
    """Average pooling is float in the integer engine: an integer-only export refuses it, naming the op."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).eval()
    quantize_(model, DynamicFixedPoint(bits=8), calib=torch.randn(8, 1, 8, 8))
    with pytest.raises(ConfigError, match=r"'1'.*AvgPool2d"):
        to_c(model, torch.randn(1, 1, 8, 8), tmp_path / "c")
    mixed = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    quantize_(mixed, DynamicFixedPoint(bits=8), calib=torch.randn(8, 4), select=["0"])
    with pytest.raises(ConfigError, match="'2'"):
        to_c(mixed, torch.randn(1, 4), tmp_path / "c")


def test_half_even_rounding_refused_by_the_c_backend(tmp_path: Path) -> None:
    """The C kernels round half up; a layer quantized to round half to even (for ONNX) is refused, not mis-rounded."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    quantize_(model, DynamicFixedPoint(bits=8, rounding="half_even"), calib=torch.randn(8, 4))
    with pytest.raises(ConfigError, match=r"rounds half up.*half_even"):
        to_c(model, torch.randn(1, 4), tmp_path / "c")
    assert not (tmp_path / "c").exists()


def _lenet5_dfp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The pruned LeNet-5 of the pruning benchmark in 8-bit DFP (post-training), and 100 test images."""
    from deepshrink.data import load_dataset
    from deepshrink.io import load_model

    model, _ = load_model(ROOT / "benchmarks" / "results" / "pruning-lenet5.pt")
    calib = load_dataset("fashion-mnist", "train", limit=256).tensors[0]
    quantize_(model, DynamicFixedPoint(bits=8), calib=calib)
    test = load_dataset("fashion-mnist", "test", limit=100)
    return model.eval(), test.tensors[0], test.tensors[1]


@needs_cc
@needs_m4
@pytest.mark.slow
def test_cortex_m4_qemu_matches_host_and_fits(tmp_path: Path) -> None:
    """100 Fashion-MNIST images on an emulated Cortex-M4 print what the host build prints, bit-exact with the
    engine; the soft-float image links no float routine; it links for 256K/64K and 128K/32K parts, not 16K/4K."""
    model, x, labels = _lenet5_dfp()
    out = tmp_path / "lenet5"
    report = _assert_bit_exact(model, x, out)
    inputs = to_int(x, 8, report["input_frac_len"]).numpy()
    build = tmp_path / "m4"
    build.mkdir()
    toolchain.write_images(build / "ds_images.h", inputs, "int8_t")
    image = toolchain.link_arm(toolchain.compile_arm(out, build), build / "model.axf")
    assert isinstance(image, toolchain.ArmImage), image
    assert toolchain.float_routines(image.axf) == []
    status, stdout, stderr = toolchain.run_qemu(image.axf)
    assert status == 0, stderr
    host = toolchain.build_host(out, build / "host", embedded=True, extra=(f"-I{build}",))
    lines = [line for line in stdout.splitlines() if not line.startswith("[ds]")]
    assert len(lines) == 100
    assert lines == toolchain.run_host_text(host).splitlines()[:100]
    predicted = np.array([int(line.split()[1]) for line in lines])
    assert (predicted == labels.numpy()).mean() > 0.8
    stack = toolchain.stack_peak(stdout)
    assert stack is not None and 0 < stack < 1024
    fits = toolchain.fit_maps(out, build / "fit", stack, {"256K/64K": ("256K", "64K"), "128K/32K": ("128K", "32K"),
                                                          "16K/4K": ("16K", "4K")})
    assert fits["256K/64K"] is True and fits["128K/32K"] is True
    assert "FLASH over by" in str(fits["16K/4K"])


def test_cli_export_c(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepshrink.cli import app

    result = CliRunner().invoke(app, ["export", str(ROOT / "benchmarks" / "results" / "codecs-lenet300.dsz"),
                                      "--format", "c", "--out", str(tmp_path / "c"), "--option", "layout=dense",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "model.c").is_file()
    assert "all 235200 positions" in (tmp_path / "c" / "model.c").read_text()
