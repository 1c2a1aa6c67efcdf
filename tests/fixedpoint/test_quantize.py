"""quantize_: configuration checks, per-kind widths, the accuracy-driven weight search, the report table."""

from __future__ import annotations

import copy

import pytest
import torch

from deepshrink.core import ConfigError
from deepshrink.fixedpoint import DynamicFixedPoint, FixedPointFormat, fixed_point_of, parse_bits, quantize_
from deepshrink.fixedpoint.quantize import _refine_weights_by_accuracy, _top1
from deepshrink.runtime import IntegerModel

from .conftest import TinyCNN, TinyMLP, randomize_


def test_config_validation_and_bits_parsing() -> None:
    for bad in ({"bits": 1}, {"bits": {"lstm": 8}}, {"act_bits": 20}, {"span": -1}, {"weight_objective": "f1"}):
        with pytest.raises(ConfigError):
            DynamicFixedPoint(**bad)  # type: ignore[arg-type]
    assert parse_bits("8") == 8 and parse_bits("conv=8,fc=4") == {"conv": 8, "fc": 4}
    with pytest.raises(ConfigError):
        parse_bits("conv:8")
    with pytest.raises(ConfigError):
        quantize_(TinyCNN(), DynamicFixedPoint(), calib=None)


def test_per_kind_widths_and_report() -> None:
    model = randomize_(TinyCNN(), 2, 1.0)
    report = quantize_(model, DynamicFixedPoint(bits={"conv": 8, "fc": 4}), calib=torch.randn(16, 1, 8, 8))
    widths = {row.name: row.weight.bits for row in report.layers}
    assert widths == {"conv1": 8, "conv2": 8, "fc1": 4, "fc2": 4}
    assert all(row.act_in is not None and row.act_in.bits == 8 for row in report.layers)
    assert report.layers[-1].act_out is None and report.layers[0].act_out is not None  # logits stay accumulator
    assert "fl_w" in str(report) and report.to_dict()["scheme"] == "dynamic"


def test_static_uses_one_fractional_length() -> None:
    model = randomize_(TinyCNN(), 4, 1.0)
    report = quantize_(model, DynamicFixedPoint(bits=8, static=True), calib=torch.randn(16, 1, 8, 8))
    assert len({row.weight.frac_len for row in report.layers}) == 1
    assert len({row.act_in.frac_len for row in report.layers if row.act_in}) == 1


def test_accuracy_objective_never_lowers_calibration_top1() -> None:
    torch.manual_seed(0)
    model = randomize_(TinyMLP(width=24), 11, 1.0)
    x = torch.randn(256, 10)
    batches = [(x, model(x).argmax(1))]  # labels the float model gets right
    with pytest.raises(ConfigError):
        quantize_(copy.deepcopy(model), DynamicFixedPoint(bits=4, weight_objective="accuracy"), calib=[x])
    error_only = copy.deepcopy(model)
    quantize_(error_only, DynamicFixedPoint(bits=4, quantize_outputs=False), calib=batches)
    for name in ("fc1", "fc2", "fc3"):  # back to float activations: compare the weight stage alone
        fixed_point_of(error_only.get_submodule(name)).set_act_in(None)  # type: ignore[union-attr]
    before = _top1(error_only, batches)
    _refine_weights_by_accuracy(error_only, ["fc1", "fc2", "fc3"],
                                {n: error_only.get_submodule(n) for n in ("fc1", "fc2", "fc3")}, batches, 3)
    assert _top1(error_only, batches) >= before
    tuned = copy.deepcopy(model)
    quantize_(tuned, DynamicFixedPoint(bits=4, weight_objective="accuracy"), calib=batches)
    assert torch.equal(IntegerModel(tuned)(x), tuned(x))


class _Attention(torch.nn.Module):
    """q, k, v read the same tensor (one capture pass serves all three); out reads their combination."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(8, 8) for _ in range(3))
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2), dim=-1)
        return self.out(att @ self.v(h))


def test_one_pass_grouped_and_per_layer_calibration_choose_the_same_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    """The greedy data stage decides each layer inside one forward pass when the calibration batches stack; else
    it captures each layer's input by a pass stopping there (q, k, v sharing one); all three give one result."""
    from deepshrink.core import capture

    base = randomize_(_Attention(), 5, 1.0)
    calib = [torch.randn(2, 6, 8) * 2 for _ in range(2)]
    one_pass = copy.deepcopy(base)
    report_one_pass = quantize_(one_pass, DynamicFixedPoint(bits=6), calib=calib)

    monkeypatch.setattr(capture, "concat_batches", lambda batches: None)
    grouped = copy.deepcopy(base)
    seen: list[int] = []
    original = capture.capture_group_inputs

    def spy(model, layers, batches):  # type: ignore[no-untyped-def]
        group = original(model, layers, batches)
        seen.append(len(group))
        return group

    monkeypatch.setattr(capture, "capture_group_inputs", spy)
    report_grouped = quantize_(grouped, DynamicFixedPoint(bits=6), calib=calib)
    assert seen[0] == 3  # q, k, v from one pass

    def one_by_one(model, layers, batches):  # type: ignore[no-untyped-def]
        return [capture.capture_first_input(model, layers[0], batches)]

    monkeypatch.setattr(capture, "capture_group_inputs", one_by_one)
    single = copy.deepcopy(base)
    report_single = quantize_(single, DynamicFixedPoint(bits=6), calib=calib)
    rows = [r.to_dict() for r in report_single.layers]
    assert [r.to_dict() for r in report_grouped.layers] == rows
    assert [r.to_dict() for r in report_one_pass.layers] == rows
    x = torch.randn(3, 6, 8)
    assert torch.equal(grouped(x), single(x)) and torch.equal(one_pass(x), single(x))


class _ClippedConv(torch.nn.Module):
    """A conv whose pre-activation outputs reach ~±100 but which only ReLU6 reads, then a conv on its output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.act = torch.nn.ReLU6()
        self.head = torch.nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)))


def test_an_output_read_only_by_relu6_gets_a_format_for_what_survives_the_clip() -> None:
    from deepshrink.core.graph import clip_range, trace_calls

    torch.manual_seed(0)
    model = _ClippedConv().eval()
    with torch.no_grad():
        model.conv.weight.mul_(40.0)
    x = torch.randn(4, 2, 6, 6)
    graph = trace_calls(model, x)
    reader = graph.sole_reader(graph.calls_of("conv")[0])
    assert reader is not None and clip_range(reader) == (0.0, 6.0)
    assert float(model.conv(x).detach().abs().max()) > 50  # an unclipped 8-bit format would need fl <= 0
    signed = copy.deepcopy(model)
    report = quantize_(signed, DynamicFixedPoint(bits=8, unsigned_activations=False), calib=[x])
    conv = next(r for r in report.layers if r.name == "conv")
    assert conv.act_out is not None and conv.act_out.frac_len == 4  # [0, 6] fits Q8.4 (max 7.94)
    assert torch.equal(IntegerModel(signed)(x), signed(x))
    report = quantize_(model, DynamicFixedPoint(bits=8), calib=[x])  # unsigned (the default): UQ8.5, max 7.97
    conv = next(r for r in report.layers if r.name == "conv")
    assert conv.act_out == FixedPointFormat(8, 5, signed=False)
    assert torch.equal(IntegerModel(model)(x), model(x))
