"""``quantize_(model, DynamicFixedPoint(bits=8), calib=...)``: the full dynamic fixed-point flow in place."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.capture import capture, execution_order
from ..core.errors import ConfigError, UnsupportedLayerError
from ..core.fixed_point import FixedPointFormat, check_bits, check_rounding, overflow_free_frac_len
from ..core.fold import fold_batchnorm_
from ..core.graph import clip_range, trace_calls
from ..core.select import Selector, layer_kind, layer_type_name, select_layers
from ..core.state import get_mask, latent_weight, set_value_transform
from ..train.recovery import correct_biases_
from .equalize import equalize_
from .mixed import average_bits, network_gains, widen_activations_for_budget, widen_for_budget
from .obs_rounding import obs_round_
from .search import (
    channel_weight_error,
    greedy_data_stage,
    output_tensors,
    run_model,
    search_channel_frac_lens,
    search_static_weight_frac_len,
    search_weight_frac_len,
    static_data_stage,
    weight_error,
)
from .transform import FixedPoint, fixed_point_of, install_hooks


@dataclass(frozen=True)
class DynamicFixedPoint:
    """Dynamic fixed point (Qiu et al. 2016).

    ``bits``: weight width, one int or per layer kind (``{"conv": 8, "fc": 4}``, the paper's 8/4 setting).
    ``act_bits``: activation width (default: the widest weight width). ``static``: one global fractional
    length for all weights and one for all activations (the paper's static baseline). ``quantize_outputs``:
    also put each layer's output in fixed point (off for layers followed by float ops, e.g. transformers).
    ``quantize_last_output``: also round the last layer's output (the logits); off by default, the logits
    are then the last layer's integer accumulator, so argmax sees no ties made by a coarse output format.
    ``span``: how many finer fractional lengths than the overflow-free one each search tries.
    ``weight_objective``: ``"error"`` (least squared weight error) or ``"accuracy"``: then, layer by layer,
    the candidate with the best top-1 on the labelled calibration batches ``(inputs, labels)`` replaces the
    error-optimal one when it is strictly better (the paper's optional accuracy check).

    Beyond the paper (each off by default, so the paper's setting is what ``DynamicFixedPoint()`` does):
    ``granularity="channel"``: one weight fractional length per output channel (still a power of two: a
    per-channel shift in the integer engine). ``activations="per_token"``: each Linear layer's input format is
    chosen per row (token) from the row's own range at run time (the fixed-point analogue of per-token dynamic
    int8; those layers' outputs stay float). ``max_bits_avg``: greedy mixed precision, widening to ``wide_bits``
    the layers whose quantization costs the most error per weight bit while the average weight width stays
    within the budget; ``mixed_objective`` says what error: ``"layer"`` (each layer's own relative error) or
    ``"network"`` (how much the network output's error falls when the layer alone runs wide: one calibration
    pass per layer, better where a layer's error is amplified or absorbed downstream). ``bias_correction``:
    each layer's mean output shift on the calibration data is folded
    into its bias. ``equalize``: cross-layer equalisation of consecutive layers' channel ranges first.
    ``rounding``: ``"half_up"`` (the paper's; what the C backend computes) or ``"half_even"`` (ONNX's
    ``QuantizeLinear`` rule: an ONNX Q/DQ export then computes bit for bit what deepshrink computes).
    ``max_act_bits_avg``: also widen the activations (input and output formats) of single layers to ``wide_bits``,
    those whose widening lowers the network output's error most (one calibration pass per candidate layer), while
    the average activation width over the layers stays within this budget (weights keep their widths).
    ``weight_rounding="obs"``: weights rounded to their grid column by column with each column's error compensated
    on the rest through the inverse input Hessian (GPTQ, Frantar et al. 2022; :mod:`.obs_rounding`) instead of
    to the nearest grid point: the layer's output error, not its weight error, is what it minimises.
    ``unsigned_activations`` (on by default; the static baseline ignores it): a layer input that is non-negative on
    all the calibration data, and a layer output that only feeds a clip at a bound >= 0 (ReLU, ReLU6), get unsigned
    formats (``[0, 2**bits - 1]``: one more bit of resolution over the same range; EfficientNet-Lite2's ReLU6
    activations: top-1 agreement 0.930 -> 0.953). False: every activation signed, the paper's formats.
    """

    bits: int | Mapping[str, int] = 8
    act_bits: int | None = None
    static: bool = False
    quantize_outputs: bool = True
    quantize_last_output: bool = False
    span: int = 3
    weight_objective: str = "error"
    granularity: str = "layer"
    activations: str = "static"
    max_bits_avg: float | None = None
    wide_bits: int = 16
    mixed_objective: str = "layer"
    bias_correction: bool = False
    equalize: bool = False
    rounding: str = "half_up"
    weight_rounding: str = "nearest"
    max_act_bits_avg: float | None = None
    unsigned_activations: bool = True

    def __post_init__(self) -> None:
        check_rounding(self.rounding)
        if self.weight_rounding not in ("nearest", "obs"):
            raise ConfigError(f"weight_rounding must be 'nearest' or 'obs', got {self.weight_rounding!r}")
        if self.weight_rounding == "obs" and (self.static or self.weight_objective != "error"):
            raise ConfigError("weight_rounding='obs' needs per-layer dynamic formats (static=False) and "
                              "weight_objective='error'")
        if self.weight_objective not in ("error", "accuracy"):
            raise ConfigError(f"weight_objective must be 'error' or 'accuracy', got {self.weight_objective!r}")
        if self.granularity not in ("layer", "channel"):
            raise ConfigError(f"granularity must be 'layer' or 'channel', got {self.granularity!r}")
        if self.mixed_objective not in ("layer", "network"):
            raise ConfigError(f"mixed_objective must be 'layer' or 'network', got {self.mixed_objective!r}")
        if self.activations not in ("static", "per_token"):
            raise ConfigError(f"activations must be 'static' or 'per_token', got {self.activations!r}")
        if self.static and (self.granularity != "layer" or self.activations != "static" or self.max_bits_avg):
            raise ConfigError("static=True is the paper's one-format baseline: per-layer granularity and static "
                              "activations only, no mixed precision")
        check_bits(self.wide_bits, "wide_bits")
        for key in ("max_bits_avg", "max_act_bits_avg"):
            value = getattr(self, key)
            if value is not None and not float(value) > 0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        if self.static and self.max_act_bits_avg is not None:
            raise ConfigError("static=True is the paper's one-format baseline: no mixed activation widths")
        if not isinstance(self.unsigned_activations, bool):
            raise ConfigError(f"unsigned_activations must be true or false, got {self.unsigned_activations!r}")
        if isinstance(self.bits, Mapping):
            unknown = set(self.bits) - {"conv", "fc"}
            if unknown or not self.bits:
                raise ConfigError(f"bits per layer kind takes keys 'conv' and 'fc', got {sorted(self.bits)}")
            for kind, b in self.bits.items():
                check_bits(b, f"bits[{kind!r}]")
        else:
            check_bits(self.bits, "bits")
        if self.act_bits is not None:
            check_bits(self.act_bits, "act_bits")
        if not isinstance(self.span, int) or not 0 <= self.span <= 16:
            raise ConfigError(f"span must be an integer in [0, 16], got {self.span!r}")

    def weight_bits(self, module: nn.Module) -> int:
        if isinstance(self.bits, Mapping):
            kind = layer_kind(module)
            if kind not in self.bits:
                raise ConfigError(f"bits gives no width for {kind!r} layers ({type(module).__name__}); add {kind}=N")
            return int(self.bits[kind])
        return int(self.bits)

    @property
    def activation_bits(self) -> int:
        if self.act_bits is not None:
            return self.act_bits
        return max(self.bits.values()) if isinstance(self.bits, Mapping) else int(self.bits)


def parse_bits(text: str) -> int | dict[str, int]:
    """``"8"`` -> 8; ``"conv=8,fc=4"`` -> ``{"conv": 8, "fc": 4}`` (the CLI's ``--bits``)."""
    text = text.strip()
    if "=" not in text:
        try:
            return int(text)
        except ValueError as exc:
            raise ConfigError(f"--bits must be an integer or conv=N,fc=M, got {text!r}") from exc
    out: dict[str, int] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = int(value)
        except ValueError as exc:
            raise ConfigError(f"--bits entry {part!r} is not kind=N (e.g. conv=8,fc=4)") from exc
    return out


@dataclass
class LayerFormat:
    """The formats chosen for one layer, and its weights' relative quantization error."""

    name: str
    type: str
    weight: FixedPointFormat
    act_in: FixedPointFormat | None
    act_out: FixedPointFormat | None
    weight_rel_error: float
    frac_lens: list[int] | None = None
    per_token: bool = False
    widened: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "type": self.type, "bits": self.weight.bits,
                "fl_w": self.frac_lens if self.frac_lens is not None else self.weight.frac_len,
                "act_bits": self.act_in.bits if self.act_in else None,
                "fl_in": "per-token" if self.per_token else (self.act_in.frac_len if self.act_in else None),
                "fl_out": self.act_out.frac_len if self.act_out else None,
                "in_format": "per-token" if self.per_token else (str(self.act_in) if self.act_in else None),
                "out_format": str(self.act_out) if self.act_out else None,
                "weight_rel_error": round(self.weight_rel_error, 6), "widened": self.widened}


@dataclass
class FixedPointReport:
    """Per-layer (b, fl_w, fl_a) table returned by :func:`quantize_`."""

    layers: list[LayerFormat] = field(default_factory=list)
    static: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    folded: list[tuple[str, str]] = field(default_factory=list)
    equalized: list[tuple[str, str]] = field(default_factory=list)
    bias_corrected: dict[str, float] = field(default_factory=dict)
    average_bits: float = 0.0
    act_widened: list[str] = field(default_factory=list)
    average_act_bits: float = 0.0
    obs_rounding: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per OBS-rounded layer: its relative output error on the calibration inputs, nearest -> OBS rounding."""

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": "static" if self.static else "dynamic", "layers": [row.to_dict() for row in self.layers],
                "skipped": [list(s) for s in self.skipped], "folded_bn": [list(p) for p in self.folded],
                "equalized": [list(p) for p in self.equalized], "bias_corrected": dict(self.bias_corrected),
                "average_weight_bits": round(self.average_bits, 4),
                "obs_rounding": {n: [round(a, 8), round(b, 8)] for n, (a, b) in self.obs_rounding.items()},
                "average_act_bits": round(self.average_act_bits, 4), "act_widened": list(self.act_widened),
                "widened": [r.name for r in self.layers if r.widened]}

    def __str__(self) -> str:
        head = f"{'layer':<44} {'type':<7} {'b_w':>3} {'fl_w':>7} {'b_a':>3} {'fl_in':>5} {'fl_out':>6} {'w rel.err':>9}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            fl_w = f"{min(r.frac_lens)}..{max(r.frac_lens)}" if r.frac_lens else str(r.weight.frac_len)
            fl_in = "token" if r.per_token else (r.act_in.frac_len if r.act_in else "-")
            lines.append(f"{r.name:<44} {r.type:<7} {r.weight.bits:>3} {fl_w:>7} "
                         f"{r.act_in.bits if r.act_in else '-':>3} {fl_in:>5} "
                         f"{r.act_out.frac_len if r.act_out else 'float':>6} {r.weight_rel_error:>9.2e}"
                         + ("  widened" if r.widened else ""))
        for name, reason in self.skipped:
            lines.append(f"{name:<44} skipped: {reason}")
        lines.append(f"average weight bits {self.average_bits:.3f}")
        return "\n".join(lines)


def _batches(calib: Any) -> list[Any]:
    if calib is None:
        raise ConfigError("dynamic fixed point needs calibration data: pass calib=<tensor | batches | loader>")
    if isinstance(calib, Tensor | dict):
        return [calib]
    if isinstance(calib, Iterable):
        batches = list(calib)
        if batches:
            return batches
    raise ConfigError("calib must be a tensor, a feature dict or a non-empty iterable of batches")


@torch.no_grad()
def _top1(model: nn.Module, batches: list[Any]) -> int:
    correct = 0
    for batch in batches:
        if not (isinstance(batch, tuple | list) and len(batch) >= 2):
            raise ConfigError("weight_objective='accuracy' needs labelled calibration batches (inputs, labels)")
        correct += int((run_model(model, batch).argmax(1) == batch[1]).sum())
    return correct


@torch.no_grad()
def _refine_weights_by_accuracy(model: nn.Module, order: list[str], modules: dict[str, nn.Module],
                                batches: list[Any], span: int) -> None:
    """Layer by layer, keep the weight fractional length with the best calibration top-1 (ties: least error)."""
    for name in order:
        fp = fixed_point_of(modules[name])
        assert fp is not None
        bits, chosen = fp.weight_format.bits, fp.weight_format.frac_len
        start = overflow_free_frac_len(float(latent_weight(modules[name]).detach().abs().max()), bits)
        best = _top1(model, batches)
        for fl in range(start, start + span + 1):
            if fl == chosen:
                continue
            fp.set_weight_format(FixedPointFormat(bits, fl))
            score = _top1(model, batches)
            if score > best:
                best, chosen = score, fl
        fp.set_weight_format(FixedPointFormat(bits, chosen))


def _maybe_fold(model: nn.Module, example: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Fold BatchNorms into their layers; ``(folded pairs, BatchNorms left float with the reason)``."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return [], []
    report = fold_batchnorm_(model, example)
    return report.pairs, report.kept


def _clipped_outputs(model: nn.Module, names: Iterable[str], example: Any) -> dict[str, tuple[float, float]]:
    """Layers called once whose output feeds only a clipping activation (ReLU, ReLU6, ...), with its bounds."""
    graph = trace_calls(model, example)
    clips = {}
    for name in names:
        calls = graph.calls_of(name)
        reader = graph.sole_reader(calls[0], passthrough=(nn.Identity, nn.Dropout)) if len(calls) == 1 else None
        bounds = clip_range(reader) if reader is not None else None
        if bounds is not None:
            clips[name] = bounds
    return clips


def _relative_change(module: nn.Module, original: Tensor) -> float:
    """``|W - W0|^2 / |W0|^2`` of the layer's weight (masked positions as 0) against its original latent ``W0``."""
    mask = get_mask(module)
    keep = mask.double() if mask is not None else 1.0
    w0 = original.double() * keep
    return float(((latent_weight(module).detach().double() * keep - w0) ** 2).sum()) / (float((w0**2).sum()) or 1.0)


def _weight_formats(module: nn.Module, weight: Tensor, bits: int, config: DynamicFixedPoint,
                    static_fl: int | None) -> tuple[int | Tensor, float]:
    """The weight's fractional length(s) and its relative squared error."""
    norm = float((weight.double() ** 2).sum()) or 1.0
    if static_fl is not None:
        return static_fl, weight_error(weight, FixedPointFormat(bits, static_fl)) / norm
    if config.granularity == "channel":
        frac = search_channel_frac_lens(weight, bits, config.span)
        return frac, channel_weight_error(weight, bits, frac) / norm
    fl = search_weight_frac_len(weight, bits, config.span)
    return fl, weight_error(weight, FixedPointFormat(bits, fl)) / norm


@torch.no_grad()
def quantize_(model: nn.Module, config: DynamicFixedPoint, calib: Any = None, select: Selector = None,
              exclude: Selector = None) -> FixedPointReport:
    """Put the selected Linear/Conv/Embedding layers of ``model`` in dynamic (or static) fixed point, in place.

    Folds BatchNorm first (and equalises channel ranges with ``config.equalize``); weight stage, then the data
    stage on ``calib`` (and mixed precision and bias correction where configured); installs the activation hooks
    so that ``model`` computes the simulation, bit-exact with :class:`~deepshrink.runtime.IntegerModel`.
    Embeddings get weight formats only (their input is token ids, their output a row of the weight).
    """
    batches = _batches(calib)
    was_training = model.training
    model.eval()
    folded, float_bns = _maybe_fold(model, batches[0])
    equalized = equalize_(model, batches[0]) if config.equalize else []
    selection = select_layers(model, select, exclude=exclude)
    modules = dict(selection.layers)
    if not modules:
        raise UnsupportedLayerError("no Linear/Conv layer selected for fixed point")
    reference = copy.deepcopy(model)
    ref_modules = {name: reference.get_submodule(name) for name in modules}
    order = execution_order(reference, ref_modules, batches[0])
    ref_in, ref_out = capture(reference, ref_modules, batches, inputs=config.static)
    clips = {} if config.static else _clipped_outputs(reference, modules, batches[0])
    network_objective = config.max_bits_avg is not None and config.mixed_objective == "network"
    needs_final = config.static or network_objective or config.max_act_bits_avg is not None
    final = [output_tensors(run_model(reference, b)) for b in batches] if needs_final else []
    del reference, ref_modules

    # weight stage
    bits = {name: config.weight_bits(m) for name, m in modules.items()}
    static_fl = (search_static_weight_frac_len([(latent_weight(m).detach(), bits[n]) for n, m in modules.items()],
                                               config.span) if config.static else None)
    errors: dict[str, float] = {}
    per_token = {n for n, m in modules.items() if config.activations == "per_token" and isinstance(m, nn.Linear)}
    for name, module in modules.items():
        frac, errors[name] = _weight_formats(module, latent_weight(module).detach(), bits[name], config, static_fl)
        set_value_transform(module, FixedPoint(bits[name], frac, dynamic_input=name in per_token,
                                               rounding=config.rounding))
        install_hooks(module)
    originals = {n: latent_weight(m).detach().clone() for n, m in modules.items()}
    obs_errors: dict[str, tuple[float, float]] = {}
    if config.weight_rounding == "obs":
        obs_errors = obs_round_(model, order, modules, batches)
        for name in obs_errors:
            errors[name] = _relative_change(modules[name], originals[name])
    if config.weight_objective == "accuracy" and not config.static:
        _refine_weights_by_accuracy(model, order, modules, batches, config.span)
        for name, module in modules.items():
            fp = fixed_point_of(module)
            assert fp is not None
            w = latent_weight(module).detach()
            errors[name] = weight_error(w, fp.weight_format) / (float((w.double() ** 2).sum()) or 1.0)

    # data stage: every layer but embeddings (their input is token ids, their output a row of the weight)
    computed = [n for n in order if not isinstance(modules[n], nn.Embedding)]
    outputs = set(computed) - per_token if config.quantize_outputs else set()
    if computed and not config.quantize_last_output:
        outputs.discard(computed[-1])
    act_bits = {n: config.activation_bits for n in computed}
    widened: list[str] = []
    with parametrize.cached():  # weights are fixed now: quantize each once, not on every forward
        if config.static:
            static_data_stage(model, computed, modules, ref_in, ref_out, final, batches, config.activation_bits,
                              outputs, config.span)
            output_errors: dict[str, float] = {}
        else:
            output_errors = greedy_data_stage(model, computed, modules, ref_out, batches, act_bits, outputs,
                                              config.span, clips, config.unsigned_activations)
    if config.max_bits_avg is not None:  # mixed precision: widen, then choose the activation formats again
        wide = {n: _weight_formats(m, originals[n], config.wide_bits, config, None)
                for n, m in modules.items() if bits[n] < config.wide_bits}
        if network_objective:
            score = network_gains(model, modules, [n for n in computed if n in wide], batches, final,
                                  lambda n: (config.wide_bits, wide[n][0]), originals if obs_errors else None)
        else:
            score = {n: errors[n] + output_errors.get(n, 0.0) for n in modules}
        widened = widen_for_budget(score, modules, bits, config.wide_bits, float(config.max_bits_avg))
        for name in widened:
            bits[name] = config.wide_bits
            frac, errors[name] = wide[name]
            if name in obs_errors:  # the wide grid is fine: nearest rounding of the original weight
                latent_weight(modules[name]).data.copy_(originals[name])
                del obs_errors[name]
            fp = fixed_point_of(modules[name])
            assert fp is not None
            fp.set_weight_frac_len(bits[name], frac)
            act_bits[name] = max(config.wide_bits, config.activation_bits) if name in act_bits else 0
        if widened:
            with parametrize.cached():  # a fresh cache: the widened layers' weights changed
                greedy_data_stage(model, computed, modules, ref_out, batches, act_bits, outputs, config.span, clips,
                                  config.unsigned_activations)
    act_widened: list[str] = []
    if config.max_act_bits_avg is not None:  # activations alone, by what the network output gains
        wide_act = max(config.wide_bits, config.activation_bits)
        candidates = [n for n in computed if n not in per_token and act_bits[n] < wide_act]
        gains = network_gains(model, modules, candidates, batches, final, None)
        act_widened = widen_activations_for_budget(gains, {n: act_bits[n] for n in computed if n not in per_token},
                                                   wide_act, float(config.max_act_bits_avg))
        for name in act_widened:
            act_bits[name] = wide_act
        if act_widened:
            with parametrize.cached():
                greedy_data_stage(model, computed, modules, ref_out, batches, act_bits, outputs, config.span, clips,
                                  config.unsigned_activations)
    bias_corrected = correct_biases_(model, computed, modules, ref_out, batches) if config.bias_correction else {}
    model.train(was_training)

    report = FixedPointReport(static=config.static, skipped=[*selection.skipped, *float_bns], folded=list(folded),
                              equalized=equalized, bias_corrected=bias_corrected,
                              average_bits=average_bits(bits, modules), obs_rounding=obs_errors,
                              act_widened=act_widened,
                              average_act_bits=sum(act_bits.values()) / max(len(act_bits), 1))
    for name in [*order, *[n for n in modules if n not in order]]:
        fp = fixed_point_of(modules[name])
        assert fp is not None
        frac_lens = fp.frac_len.tolist() if fp.per_channel else None
        report.layers.append(LayerFormat(name, layer_type_name(modules[name]), fp.weight_format, fp.act_in,
                                         fp.act_out, errors[name], frac_lens, fp.dynamic_input, name in widened))
        if name not in order:
            report.skipped.append((name, "not called on the calibration data: activations stay float"))
    return report
