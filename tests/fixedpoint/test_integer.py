"""The integer engine is bit-exact with the simulated (fake-quantized) model on random models and inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.codec import load_compressed, save_compressed
from deepshrink.core import ConfigError, UnsupportedLayerError
from deepshrink.core.state import set_value_transform
from deepshrink.fixedpoint import DynamicFixedPoint, FixedPoint, FixedPointFormat, install_hooks, quantize_
from deepshrink.runtime import IntegerLayer, IntegerModel, QTensor, swap_integer_layers_

from .conftest import TinyCNN, TinyMLP, randomize_

BITS = st.sampled_from([4, 6, 8, 16, {"conv": 8, "fc": 4}])


@settings(max_examples=16, deadline=None)
@given(seed=st.integers(0, 10_000), bits=BITS, static=st.booleans(), outputs=st.booleans(),
       scale=st.floats(0.05, 20.0), rounding=st.sampled_from(["half_up", "half_even"]), unsigned=st.booleans())
def test_cnn_integer_engine_bit_exact(seed: int, bits: int | dict[str, int], static: bool, outputs: bool,
                                      scale: float, rounding: str, unsigned: bool) -> None:
    model = randomize_(TinyCNN(), seed, scale)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = [torch.randn(16, 1, 8, 8, generator=gen) * scale for _ in range(2)]
    quantize_(model, DynamicFixedPoint(bits=bits, act_bits=8 if isinstance(bits, dict) else bits, static=static,
                                       quantize_outputs=outputs, rounding=rounding,
                                       unsigned_activations=unsigned), calib=calib)
    x = torch.randn(32, 1, 8, 8, generator=gen) * scale * 3  # wider than calibration: exercises saturation
    simulated = model(x)
    assert torch.equal(IntegerModel(model)(x), simulated)
    assert torch.equal(swap_integer_layers_(copy.deepcopy(model))(x), simulated)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([4, 6, 8, 16]), outputs=st.booleans())
def test_mlp_with_float_op_bit_exact(seed: int, bits: int, outputs: bool) -> None:
    model = randomize_(TinyMLP(), seed, 1.0)
    gen = torch.Generator().manual_seed(seed)
    quantize_(model, DynamicFixedPoint(bits=bits, quantize_outputs=outputs), calib=torch.randn(64, 10, generator=gen))
    x = torch.randn(40, 10, generator=gen) * 2
    assert torch.equal(IntegerModel(model)(x), model(x))


def test_integer_layer_keeps_integers_between_layers() -> None:
    model = randomize_(TinyCNN(), 0, 1.0)
    quantize_(model, DynamicFixedPoint(bits=8), calib=torch.randn(8, 1, 8, 8))
    layer = IntegerModel(model).layers["conv1"]
    assert isinstance(layer, IntegerLayer) and layer.weight_int.dtype == torch.int32  # 8-bit sums fit int32
    out = layer(torch.randn(2, 1, 8, 8))
    assert isinstance(out, QTensor) and out.data.dtype == torch.int64
    assert int(out.data.abs().max()) <= 128


def test_wide_formats_accumulate_in_int64() -> None:
    """16-bit inputs times 16-bit weights over 300 terms can pass 2**31: the engine must switch to int64."""
    model = nn.Sequential(nn.Linear(300, 4))
    with torch.no_grad():
        model[0].weight.fill_(0.9)
    x = torch.full((3, 300), 0.9)
    quantize_(model, DynamicFixedPoint(bits=16), calib=x)
    engine = IntegerModel(model)
    assert engine.layers["0"].weight_int.dtype == torch.int64
    assert torch.equal(engine(x), model(x))


def test_saturation_in_both_paths() -> None:
    """Inputs and outputs far outside the formats saturate identically in the simulation and on integers."""
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
        layer.bias.zero_()
    set_value_transform(layer, FixedPoint(4, 2, act_in=FixedPointFormat(4, 1), act_out=FixedPointFormat(4, 0)))
    install_hooks(layer)
    x = torch.tensor([[100.0, 100.0], [0.25, 0.0]])
    # input saturates to 3.5 (7 * 2**-1); weights 1.0 = 4 * 2**-2; output 7.0 saturates to 7 / -8
    expected = torch.tensor([[7.0, -7.0], [1.0, -0.0]])
    sim = layer(x)
    assert torch.equal(sim, expected)
    assert torch.equal(IntegerLayer.from_module(layer, float_io=True)(x), expected)
    x = torch.tensor([[-100.0, -100.0]])
    assert layer(x).tolist() == [[-8.0, 7.0]]
    assert IntegerLayer.from_module(layer, float_io=True)(x).tolist() == [[-8.0, 7.0]]


def test_unquantized_model_is_refused() -> None:
    with pytest.raises(UnsupportedLayerError):
        IntegerModel(TinyCNN())


@pytest.mark.parametrize("bits", [8, 16])
def test_token_inputs_through_swapped_layers(bits: int) -> None:
    """(batch, tokens, features) inputs, as in transformers: the int8 GEMM path (8 bits) and int32/64 (16)."""
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    calib = torch.randn(4, 7, 16)
    quantize_(model, DynamicFixedPoint(bits=bits, quantize_outputs=False), calib=calib)
    engine = swap_integer_layers_(copy.deepcopy(model))
    assert engine[0].int8_gemm == (bits == 8)
    x = torch.randn(3, 5, 16) * 2
    assert torch.equal(engine(x), model(x))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([4, 8, 16]), outputs=st.booleans(),
       per_token=st.booleans(), corrected=st.booleans(), scale=st.floats(0.05, 20.0),
       rounding=st.sampled_from(["half_up", "half_even"]))
def test_per_channel_and_per_token_formats_are_bit_exact(seed: int, bits: int, outputs: bool, per_token: bool,
                                                         corrected: bool, scale: float, rounding: str) -> None:
    """Per-channel weight fractional lengths (a per-channel shift) and per-token input formats, with bias
    correction: the integer engine, per layer and whole-model, equals the simulation bit for bit."""
    model = randomize_(TinyCNN(), seed, scale)
    with torch.no_grad():  # channels of very different ranges: what per-channel formats are for
        model.conv1.weight.mul_(torch.logspace(-2, 1, 4).reshape(-1, 1, 1, 1))
    gen = torch.Generator().manual_seed(seed + 1)
    calib = [torch.randn(16, 1, 8, 8, generator=gen) * scale for _ in range(2)]
    report = quantize_(model, DynamicFixedPoint(bits=bits, granularity="channel", quantize_outputs=outputs,
                                                activations="per_token" if per_token else "static",
                                                bias_correction=corrected, rounding=rounding), calib=calib)
    assert any(row.frac_lens and len(set(row.frac_lens)) > 1 for row in report.layers)
    x = torch.randn(32, 1, 8, 8, generator=gen) * scale * 3
    simulated = model(x)
    assert torch.equal(IntegerModel(model)(x), simulated)
    assert torch.equal(swap_integer_layers_(copy.deepcopy(model))(x), simulated)


def test_mixed_precision_widens_the_costliest_layers_within_the_budget() -> None:
    model = randomize_(TinyCNN(), 3, 1.0)
    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    report = quantize_(model, DynamicFixedPoint(bits=8, max_bits_avg=8.5), calib=calib)
    widened = [r for r in report.layers if r.widened]
    assert widened and all(r.weight.bits == 16 for r in widened) and report.average_bits <= 8.5
    assert torch.equal(IntegerModel(model)(calib), model(calib))


def test_network_objective_widens_what_the_output_loses_most_and_stays_bit_exact() -> None:
    model = randomize_(TinyCNN(), 3, 1.0)
    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(calib)
    errors = {}
    for objective in ("layer", "network"):
        candidate = copy.deepcopy(model)
        report = quantize_(candidate, DynamicFixedPoint(bits=4, max_bits_avg=6, mixed_objective=objective),
                           calib=calib)
        assert report.average_bits <= 6 and any(r.widened for r in report.layers)
        assert torch.equal(IntegerModel(candidate)(calib), candidate(calib))
        with torch.no_grad():
            errors[objective] = float(((candidate(calib) - reference) ** 2).sum())
    # widening by what the output loses leaves less output error here than widening by each layer's own error
    assert errors["network"] <= errors["layer"] * 1.0001
    with pytest.raises(ConfigError, match="mixed_objective"):
        DynamicFixedPoint(mixed_objective="output")


def test_half_even_rounding_is_kept_by_the_file(tmp_path: Path) -> None:
    """``rounding="half_even"`` (ONNX's rule) rounds ties to even everywhere (weights, inputs, outputs); the .dsz
    records it, the reloaded model and its integer engine compute the same; it is a config error otherwise."""
    model = randomize_(TinyCNN(), 5, 1.0)
    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    quantize_(model, DynamicFixedPoint(bits=4, rounding="half_even"), calib=calib)
    x = (calib * 4).round() / 4  # inputs on a coarse grid: many exact ties at 4 bits
    assert "rounding=half_even" in repr(model)
    save_compressed(model, tmp_path / "even.dsz")
    loaded = load_compressed(tmp_path / "even.dsz", model=randomize_(TinyCNN(), 9, 1.0))
    assert torch.equal(loaded(x), model(x))
    engine = IntegerModel(loaded)
    assert torch.equal(engine(x), model(x))
    assert any(getattr(layer, "last_kernel", "").startswith("int8") for layer in engine.layers.values())  # fused path
    with pytest.raises(ConfigError, match="rounding"):
        DynamicFixedPoint(rounding="nearest")


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_obs_weight_rounding_beats_nearest_and_stays_bit_exact(granularity: str) -> None:
    """GPTQ-style rounding on the weights' own grids: smaller output error than nearest rounding at 4 bits on
    correlated inputs, weights on the grid (the integer engine still equals the simulation), pruned weights 0."""
    from deepshrink.core.state import get_mask
    from deepshrink.prune import MagnitudePrune, prune_

    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(10, 10, generator=gen)
    calib = [torch.randn(128, 10, generator=gen) @ mixing for _ in range(2)]
    x = torch.randn(256, 10, generator=gen) @ mixing
    base = randomize_(TinyMLP(), 4, 1.0)
    prune_(base, MagnitudePrune(sparsity=0.3))
    reference = base(x).detach()
    outcome = {}
    for rounding in ("nearest", "obs"):
        model = copy.deepcopy(base)
        report = quantize_(model, DynamicFixedPoint(bits=4, act_bits=16, granularity=granularity,
                                                    weight_rounding=rounding), calib=calib)
        out = model(x).detach()
        outcome[rounding] = float(((out - reference) ** 2).mean())
        assert torch.equal(IntegerModel(model)(x), out)
        for name, module in model.named_modules():
            mask = get_mask(module)
            if mask is not None:
                assert torch.all(module.weight.detach()[~mask] == 0), name
    assert set(report.obs_rounding) == {"fc1", "fc2", "fc3"}
    assert any(b < a for a, b in report.obs_rounding.values())
    assert outcome["obs"] < outcome["nearest"]


class _Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


def test_swap_bakes_weight_only_layers_and_stays_bit_exact() -> None:
    """An embedding in fixed point has a weight format only: the swapped model holds its values (no transform left
    to re-quantize the table on every call) and computes what the simulation does."""
    from torch.nn.utils import parametrize

    model = _Embedder()
    ids = torch.randint(0, 50, (16, 5), generator=torch.Generator().manual_seed(0))
    quantize_(model, DynamicFixedPoint(bits=6), calib=[ids])
    simulated = model(ids).detach()
    engine = swap_integer_layers_(copy.deepcopy(model))
    assert not parametrize.is_parametrized(engine.emb) and isinstance(engine.fc, IntegerLayer)
    assert torch.equal(engine.emb.weight, model.emb.weight.detach())
    with torch.no_grad():
        assert torch.equal(engine(ids), simulated)


def test_activation_widening_within_its_budget_stays_bit_exact() -> None:
    model = randomize_(TinyCNN(), 3, 1.0)
    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    report = quantize_(model, DynamicFixedPoint(bits=4, max_act_bits_avg=8.0, wide_bits=16), calib=calib)
    assert report.act_widened and report.average_act_bits <= 8.0 and report.average_bits == 4.0
    widened = {r.name: r for r in report.layers}
    assert all(widened[n].act_in is not None and widened[n].act_in.bits == 16 for n in report.act_widened)
    assert torch.equal(IntegerModel(model)(calib), model(calib))
    with pytest.raises(ConfigError, match="max_act_bits_avg"):
        DynamicFixedPoint(max_act_bits_avg=0)


def test_a_copied_integer_model_runs_its_own_layers() -> None:
    model = randomize_(TinyCNN(), 1, 1.0)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    quantize_(model, DynamicFixedPoint(bits=8), calib=x)
    engine = IntegerModel(model)
    expected = engine(x)  # compiles
    clone = copy.deepcopy(engine)
    with torch.no_grad():
        for layer in clone.layers.values():
            layer.weight_int.zero_()
            layer.__dict__.pop("_plan", None)  # rebuilt from the zeroed weights
    assert torch.equal(engine(x), expected)
    assert not torch.equal(clone(x), expected)  # the copy's steps call the copy's (zeroed) layers


def test_unsigned_formats_for_non_negative_activations(tmp_path: Path) -> None:
    """``unsigned_activations``: ReLU outputs and inputs that are non-negative on all the calibration data get
    ``[0, 2**bits - 1]`` formats (one more bit of resolution), signed tensors keep signed ones; the file and the
    integer engine (both int8 kernels: unsigned bytes enter the VNNI kernel as they are) keep them bit for bit."""
    model = randomize_(TinyCNN(), 4, 1.0)
    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    signed = copy.deepcopy(model)
    report = quantize_(model, DynamicFixedPoint(bits=8), calib=calib)  # unsigned formats are the default
    rows = {row.name: row for row in report.layers}
    assert rows["conv1"].act_in is not None and rows["conv1"].act_in.signed  # the raw input is signed
    assert rows["conv2"].act_in is not None and not rows["conv2"].act_in.signed  # after max-pool and ReLU
    assert rows["fc1"].act_out is not None and not rows["fc1"].act_out.signed  # feeds a ReLU only
    assert rows["fc2"].act_in is not None and not rows["fc2"].act_in.signed
    assert "UQ8." in repr(model)
    # the same range at twice the resolution: the fractional length grows by one
    before = {row.name: row for row in quantize_(signed, DynamicFixedPoint(bits=8, unsigned_activations=False),
                                                 calib=calib).layers}
    assert all(row.act_in is None or row.act_in.signed for row in before.values())
    assert rows["fc2"].act_in.frac_len >= before["fc2"].act_in.frac_len + 1  # type: ignore[union-attr]
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    reference = model(x)
    save_compressed(model, tmp_path / "u.dsz")
    loaded = load_compressed(tmp_path / "u.dsz", model=randomize_(TinyCNN(), 9, 1.0))
    assert torch.equal(loaded(x), reference)
    engine = IntegerModel(loaded)
    assert torch.equal(engine(x), reference)
    assert engine.layers["fc2"].last_kernel.startswith("int8")  # the fused kernel took the unsigned input
    with pytest.raises(ConfigError, match="unsigned_activations"):
        DynamicFixedPoint(unsigned_activations="yes")  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_in=st.integers(1, 70), n_out=st.integers(1, 90), tokens=st.integers(1, 9),
       outputs=st.booleans(), unsigned=st.booleans(), even=st.booleans())
def test_float_io_linear_single_call_path_equals_the_torch_path(seed: int, n_in: int, n_out: int, tokens: int,
                                                                 outputs: bool, unsigned: bool, even: bool) -> None:
    """A float-in, float-out Linear (what ``runtime.from_model`` runs between float ops, e.g. in a transformer) takes
    the one-call fused kernel; its outputs equal the torch integer path's and the simulation's bit for bit, for
    shapes that are not multiples of the vector width, signed and unsigned inputs and both roundings."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Sequential(nn.Linear(n_in, n_out))
    with torch.no_grad():
        layer[0].weight.normal_(0, 1, generator=g)
        layer[0].bias.normal_(0, 1, generator=g)
    x = torch.randn(tokens, n_in, generator=g) * 3
    if unsigned:
        x = x.abs()
    quantize_(layer, DynamicFixedPoint(bits=8, quantize_outputs=outputs, quantize_last_output=outputs,
                                       rounding="half_even" if even else "half_up"), calib=x)
    fast = IntegerLayer.from_module(layer[0], float_io=True)
    got = fast(x)
    assert fast.last_kernel.startswith("int8")
    slow = IntegerLayer.from_module(layer[0], float_io=True)
    slow.__dict__["_plan"] = None  # the torch integer path
    with torch.no_grad():
        assert torch.equal(got, slow(x)) and torch.equal(got, layer(x))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([4, 8, 16]), depthwise=st.booleans(),
       kernel=st.sampled_from([1, 3, 5]), channels=st.integers(1, 12), size=st.integers(5, 11),
       per_token=st.booleans())
def test_integer_products_on_float_kernels_equal_the_integer_kernels(seed: int, bits: int, depthwise: bool,
                                                                     kernel: int, channels: int, size: int,
                                                                     per_token: bool) -> None:
    """Layers whose partial sums stay within a float type's exact integers run their products on torch's float
    kernels (EfficientNet's depthwise convs: 18-32x faster than torch's integer loops); the integers are the same."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels if depthwise else 1)
    linear = nn.Linear(channels * 3, 7)
    for module in (conv, linear):
        with torch.no_grad():
            module.weight.normal_(0, 1, generator=g)
            module.bias.normal_(0, 1, generator=g)
    cases = [(nn.Sequential(conv), torch.randn(2, channels, size, size, generator=g) * 4)]
    cases.append((nn.Sequential(linear), torch.randn(5, channels * 3, generator=g) * 4))
    for model, x in cases:
        quantize_(model, DynamicFixedPoint(bits=bits, activations="per_token" if per_token and model[0] is linear
                                           else "static"), calib=x)
        fast = IntegerLayer.from_module(model[0], float_io=True)
        fast.__dict__["_plan"] = None  # not the fused int8 kernels: the torch path this test is about
        assert fast.exact_float is not None  # these bounds fit float32 or float64
        got = fast(x)
        slow = IntegerLayer.from_module(model[0], float_io=True)
        slow.__dict__["_plan"] = None
        slow.exact_float = None  # torch's integer kernels
        assert torch.equal(got, slow(x))
        with torch.no_grad():
            assert torch.equal(got, model(x))
