"""Post-training compression of real pretrained models, every technique beside its peers (issue #14).

Models and data (all offline, see ``real_models.py``): EfficientNet-Lite2 (ImageNet) on seeded random crops of the
photographs bundled with scikit-image, and all-MiniLM-L6-v2 on human-written sentences (first sentences of
installed packages' docstrings). Calibration data is disjoint from evaluation data: crops with seed 0 (calibration),
2 (``--split val``, where settings are chosen) and 1 (``--split test``, looked at once per adopted setting); the
sentence pool's calibration half, and the first / second 256 of its evaluation half for val / test.

Each row compresses a fresh copy of the fp32 model and reports its agreement with it (CNN: top-1 / top-5 agreement
and logit cosine; MiniLM: embedding cosine mean / 5th percentile and top-10 neighbour overlap). Every deepshrink
row is also written to a ``.dsz`` (its size in bytes), read back by ``deepshrink.runtime.load`` and built by
``runtime.from_model``: both must give the in-memory model's outputs (max abs difference reported, on 8 inputs).
Peers run in the same process: fp16, torch dynamic int8, uniform int8 fake-quant (per tensor / per channel, W8A8),
``torch.nn.utils.prune`` L1, torchao (MiniLM) and coremltools (palettization, SparseGPT), the last two from
``pip install -c constraints.txt -e '.[bench,real]'`` (benchmark-only extras).

    nice .venv/bin/python benchmarks/bench_real_models.py --model effnet --split val
    nice .venv/bin/python benchmarks/bench_real_models.py --model minilm --split test --rows dfp8_channel,obs50

Results merge into ``benchmarks/results/real_models.json`` (one entry per model, split and row; a row is rerun
only when named or with ``--redo``), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models as rm
from deepshrink import runtime
from deepshrink.codec import load_compressed, save_compressed
from deepshrink.core import atomic_write_text
from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.lowrank import SVDLinear, lowrank_
from deepshrink.prune import MagnitudePrune, OBSPrune, prune_
from deepshrink.share import WeightSharing, share_weights_
from deepshrink.ternary import TTQ, ternarize_
from deepshrink.train import DistillationLoss, TrainConfig, fit, recalibrate_batchnorm_

RESULTS = Path(__file__).resolve().parent / "results" / "real_models.json"
VAL_SEED = 2  # CNN validation crops (calibration: rm.CALIB_SEED = 0, test: rm.EVAL_SEED = 1)


# ----------------------------------------------------------------------------------------------------- the models
@dataclass
class Bench:
    """One model with its data: a fresh fp32 copy per row, calibration batches, the evaluation inputs."""

    name: str
    base: nn.Module
    calib: list[Any]  # calibration batches (model inputs)
    evaluation: list[Any]  # evaluation batches
    skeleton: Callable[[], nn.Module]  # an uncompressed model to read a .dsz into
    metric: Callable[[Tensor, Tensor], dict[str, float]]
    reference: Tensor = field(default_factory=lambda: torch.empty(0))

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.base).eval()

    @torch.no_grad()
    def outputs(self, model: nn.Module, batches: list[Any] | None = None) -> Tensor:
        return torch.cat([model(b).float() for b in (self.evaluation if batches is None else batches)])

    def check_inputs(self) -> list[Any]:
        """A few evaluation inputs, for the file / runtime equality checks."""
        first = self.evaluation[0]
        if isinstance(first, Tensor):
            return [first[:8]]
        return [{k: v[:8] for k, v in first.items()}]

    def calib_dataset(self) -> TensorDataset:
        return TensorDataset(torch.cat(self.calib))


def effnet_bench(split: str, n_calib: int, n_eval: int) -> Bench:
    base = rm.efficientnet_lite2()
    calib = rm.photo_batch(n_calib, rm.CALIB_SEED)
    evaluation = rm.photo_batch(n_eval, VAL_SEED if split == "val" else rm.EVAL_SEED)
    return Bench("effnet", base, list(calib.split(16)), list(evaluation.split(32)),
                 lambda: rm.efficientnet_lite2(pretrained=False), rm.cnn_agreement)


def minilm_bench(split: str, n_calib: int, n_eval: int) -> Bench:
    base = rm.minilm()
    calib = rm.human_sentences("calib", n_calib)
    pool = rm.human_sentences("eval", 2 * n_eval)
    evaluation = pool[:n_eval] if split == "val" else pool[n_eval:]
    # calibration batches padded to one length (masked positions), so they stack: one-pass greedy calibration
    padded = rm.tokenize(calib)
    calib_batches = [{k: v[i:i + 32] for k, v in padded.items()} for i in range(0, len(calib), 32)]
    return Bench("minilm", base, calib_batches,
                 [rm.tokenize(evaluation[i:i + 64]) for i in range(0, len(evaluation), 64)], rm.minilm,
                 rm.embedding_agreement)


BENCHES = {"effnet": effnet_bench, "minilm": minilm_bench}


# ------------------------------------------------------------------------------------------------------------ rows
@dataclass
class Outcome:
    """What a row produced: the model to evaluate, whether it carries deepshrink state (then it is also written
    to a file and run by the runtime), and notes."""

    model: nn.Module
    deepshrink: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    integer: nn.Module | None = None  # the integer engine's version of a fixed-point model


ROWS: dict[str, dict[str, Callable[[Bench], Outcome]]] = {"effnet": {}, "minilm": {}}


def row(*models: str) -> Callable[[Callable[[Bench], Outcome]], Callable[[Bench], Outcome]]:
    def wrap(fn: Callable[[Bench], Outcome]) -> Callable[[Bench], Outcome]:
        for m in models:
            ROWS[m][fn.__name__.removeprefix("row_")] = fn
        return fn
    return wrap


def _layers(model: nn.Module, kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def _encoder_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """MiniLM's 36 encoder Linears (the unused pooler left out)."""
    return [(n, m) for n, m in _layers(model, (nn.Linear,)) if ".pooler." not in f".{n}."]


def _selector(bench: Bench) -> Any:
    """What the weight techniques compress: every conv and the classifier (CNN), the encoder Linears (MiniLM)."""
    return (lambda m, name: isinstance(m, nn.Linear) and ".pooler." not in f".{name}.") if bench.name == "minilm" \
        else None


def _fake_quant_(x: Tensor, bits: int, axis: int | None) -> Tensor:
    """Symmetric uniform quantization round trip (per tensor, or per slice along ``axis``)."""
    q = 2 ** (bits - 1) - 1
    if axis is None:
        scale = x.abs().max().clamp(min=1e-12) / q
    else:
        dims = [d for d in range(x.dim()) if d != axis]
        scale = x.abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / q
    return (x / scale).round().clamp(-q, q) * scale


def _uniform_weights(bench: Bench, axis: int | None, acts: bool = False) -> nn.Module:
    model = bench.fresh()
    layers = _encoder_linears(model) if bench.name == "minilm" else _layers(model)
    with torch.no_grad():
        for _, m in layers:
            m.weight.copy_(_fake_quant_(m.weight, 8, axis))
    if acts:  # static per-tensor input scales from the calibration data's max |x|
        ranges: dict[nn.Module, float] = {}
        handles = [m.register_forward_pre_hook(
            lambda mod, args: ranges.__setitem__(mod, max(ranges.get(mod, 0.0), float(args[0].abs().max()))))
            for _, m in layers]
        with torch.no_grad():
            for b in bench.calib:
                model(b)
        for h in handles:
            h.remove()
        for _, m in layers:
            scale = max(ranges.get(m, 0.0), 1e-12) / 127
            m.register_forward_pre_hook(
                lambda mod, args, s=scale: ((args[0] / s).round().clamp(-127, 127) * s, *args[1:]))
    return model


@row("effnet", "minilm")
def row_fp16(bench: Bench) -> Outcome:
    model = bench.fresh().half()

    class Half(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: Any) -> Tensor:
            if isinstance(x, Tensor):
                return self.m(x.half())
            return self.m(x)

    return Outcome(Half(), deepshrink=False)


@row("effnet", "minilm")
def row_torch_dynamic_int8(bench: Bench) -> Outcome:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(bench.fresh(), {nn.Linear}, dtype=torch.qint8)
    return Outcome(model, deepshrink=False, info={"note": "Linear layers only (torch has no dynamic conv)"})


@row("effnet", "minilm")
def row_int8_tensor_weights(bench: Bench) -> Outcome:
    return Outcome(_uniform_weights(bench, None), deepshrink=False, info={"note": "weights only, activations float"})


@row("effnet", "minilm")
def row_int8_channel_weights(bench: Bench) -> Outcome:
    return Outcome(_uniform_weights(bench, 0), deepshrink=False, info={"note": "weights only, activations float"})


@row("effnet", "minilm")
def row_int8_channel_w8a8(bench: Bench) -> Outcome:
    return Outcome(_uniform_weights(bench, 0, acts=True), deepshrink=False,
                   info={"note": "per-channel weights, static per-tensor layer inputs (max calibration)"})


@row("effnet", "minilm")
def row_torch_l1_50(bench: Bench) -> Outcome:
    import torch.nn.utils.prune as tprune

    model = bench.fresh()
    layers = _encoder_linears(model) if bench.name == "minilm" else _layers(model)
    for _, m in layers:
        tprune.l1_unstructured(m, "weight", amount=0.5)
        tprune.remove(m, "weight")
    if bench.name == "effnet":
        recalibrate_batchnorm_(model, bench.calib_dataset(), batch_size=16)
    return Outcome(model.eval(), deepshrink=False, info={"note": "per layer, + BN re-estimation (CNN)"})


@row("minilm")
def row_torchao_w8a8_dynamic(bench: Bench) -> Outcome:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from torchao.quantization import quantize_ as ao_quantize_

    model = bench.fresh()
    ao_quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                 filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and ".pooler." not in f".{fqn}.")
    return Outcome(model, deepshrink=False, info={"note": "per-token activations, per-channel weights"})


@row("minilm")
def row_torchao_int8_weight_only(bench: Bench) -> Outcome:
    from torchao.quantization import Int8WeightOnlyConfig
    from torchao.quantization import quantize_ as ao_quantize_

    model = bench.fresh()
    ao_quantize_(model, Int8WeightOnlyConfig(),
                 filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and ".pooler." not in f".{fqn}.")
    return Outcome(model, deepshrink=False)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """coremltools prints version warnings on import and progress while compressing."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _coreml_palettize(bench: Bench, granularity: str) -> Outcome:
    with _quiet():
        from coremltools.optimize.torch.palettization import (
            PostTrainingPalettizer,
            PostTrainingPalettizerConfig,
        )

        spec: dict[str, Any] = {"n_bits": 8, "granularity": granularity}
        if granularity == "per_grouped_channel":
            spec["group_size"] = 1
        config = PostTrainingPalettizerConfig.from_dict({"global_config": spec})
        model = PostTrainingPalettizer(bench.fresh(), config).compress()
    return Outcome(model.eval(), deepshrink=False, info={"note": "coremltools PostTrainingPalettizer, 8-bit k-means"})


@row("effnet", "minilm")
def row_coreml_palettize8_tensor(bench: Bench) -> Outcome:
    return _coreml_palettize(bench, "per_tensor")


@row("effnet", "minilm")
def row_coreml_palettize8_channel(bench: Bench) -> Outcome:
    return _coreml_palettize(bench, "per_grouped_channel")


@row("effnet", "minilm")
def row_coreml_sparsegpt50(bench: Bench) -> Outcome:
    with _quiet():
        from coremltools.optimize.torch.layerwise_compression import (
            LayerwiseCompressor,
            LayerwiseCompressorConfig,
        )
        from coremltools.optimize.torch.layerwise_compression.algorithms import ModuleSparseGPTConfig

        model = bench.fresh()
        blocks = (list(model.encoder.encoder.layer) if bench.name == "minilm"  # type: ignore[union-attr]
                  else list(model.blocks))  # type: ignore[union-attr]
        config = LayerwiseCompressorConfig(layers=blocks, global_config=ModuleSparseGPTConfig(
            target_sparsity=0.5, weight_dtype="float32"), calibration_nsamples=len(torch.cat(
                [b if isinstance(b, Tensor) else b["input_ids"] for b in bench.calib])))
        model = LayerwiseCompressor(model, config).compress(bench.calib, device="cpu")
    return Outcome(model.eval(), deepshrink=False, info={"note": "coremltools layer-wise SparseGPT, blocks only"})


# --------------------------------------------------------------------------------------------- deepshrink's rows
def _dfp(bench: Bench, **options: Any) -> Outcome:
    if bench.name == "minilm":  # Linear outputs feed float LayerNorm / GELU / softmax: leave them unrounded
        options.setdefault("quantize_outputs", False)
    options.setdefault("unsigned_activations", False)  # the rows measured before unsigned formats became the default
    model = bench.fresh()
    start = time.perf_counter()
    report = quantize_(model, DynamicFixedPoint(**options), calib=bench.calib, select=_selector(bench))
    info = {"quantize_s": round(time.perf_counter() - start, 1), "average_weight_bits": round(report.average_bits, 3),
            "average_act_bits": round(report.average_act_bits, 3), "act_widened": report.act_widened,
            "widened": [r.name for r in report.layers if r.widened], "options": options}
    integer: nn.Module | None
    try:
        integer = runtime.IntegerModel(model, example=bench.check_inputs()[0])
        info["integer_engine"] = "whole graph (IntegerModel)"
    except Exception as exc:
        integer = runtime.swap_integer_layers_(copy.deepcopy(model))
        info["integer_engine"] = f"integer layers, float boundaries ({type(exc).__name__})"
    return Outcome(model, info=info, integer=integer)


@row("effnet", "minilm")
def row_dfp8_layer(bench: Bench) -> Outcome:
    """The paper's setting: per-layer formats, static activations."""
    return _dfp(bench, bits=8)


@row("effnet", "minilm")
def row_dfp8_channel(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel")


@row("effnet", "minilm")
def row_dfp8_channel_mixed(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5)


@row("effnet", "minilm")
def row_dfp8_channel_mixed_net(bench: Bench) -> Outcome:
    """Mixed precision chosen by what the network output loses (one calibration pass per layer)."""
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, mixed_objective="network")


@row("effnet", "minilm")
def row_dfp8_channel_obs(bench: Bench) -> Outcome:
    """Per-channel formats, weights OBS-rounded (GPTQ) on their grids."""
    return _dfp(bench, bits=8, granularity="channel", weight_rounding="obs")


@row("effnet", "minilm")
def row_dfp8_channel_mixed_obs(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, weight_rounding="obs")


@row("effnet", "minilm")
def row_dfp8_channel_mixed_net_obs(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, mixed_objective="network",
                weight_rounding="obs")


@row("minilm")
def row_dfp8_channel_per_token_mixed_net(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", activations="per_token", max_bits_avg=8.5,
                mixed_objective="network")


@row("effnet", "minilm")
def row_dfp8_channel_mixed_bc(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, bias_correction=True)


@row("effnet", "minilm")
def row_dfp8_channel_bc(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", bias_correction=True)


@row("minilm")
def row_dfp8_channel_per_token(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", activations="per_token")


@row("minilm")
def row_dfp8_channel_per_token_obs(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", activations="per_token", weight_rounding="obs")


@row("minilm")
def row_dfp8_channel_per_token_mixed_obs(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", activations="per_token", max_bits_avg=8.5,
                weight_rounding="obs")


@row("effnet")
def row_dfp8_channel_mixed_obs_a9(bench: Bench) -> Outcome:
    """Weights as in ``dfp8_channel_mixed_obs``, every activation at 9 bits (not W8A8: a probe of how much the
    activations' eighth bit costs; post-ReLU6 tensors waste the sign bit of a signed format)."""
    return _dfp(bench, bits=8, act_bits=9, granularity="channel", max_bits_avg=8.5, weight_rounding="obs")


@row("effnet", "minilm")
def row_dfp8_channel_mixed_obs_unsigned(bench: Bench) -> Outcome:
    """``dfp8_channel_mixed_obs`` with unsigned formats for non-negative activations (ReLU6 outputs): W8A8."""
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, weight_rounding="obs",
                unsigned_activations=True)


@row("effnet", "minilm")
def row_dfp8_channel_mixed_obs_act9(bench: Bench) -> Outcome:
    """Static activations: weights mixed 8.5 bits (OBS-rounded), activations of the layers the network output
    gains most from at 16 bits within 9 bits on average."""
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, weight_rounding="obs", max_act_bits_avg=9.0)


@row("effnet", "minilm")
def row_dfp8_channel_mixed_obs_act10(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, weight_rounding="obs", max_act_bits_avg=10.0)


@row("minilm")
def row_dfp8_channel_mixed_obs_act11(bench: Bench) -> Outcome:
    """As ``dfp8_channel_mixed_obs_act10`` with 11 average activation bits: what static formats need for 0.99."""
    return _dfp(bench, bits=8, granularity="channel", max_bits_avg=8.5, weight_rounding="obs", max_act_bits_avg=11.0)


@row("minilm")
def row_dfp8_channel_per_token_mixed_net_obs(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", activations="per_token", max_bits_avg=8.5,
                mixed_objective="network", weight_rounding="obs")


@row("minilm")
def row_dfp8_channel_per_token_mixed(bench: Bench) -> Outcome:
    return _dfp(bench, bits=8, granularity="channel", activations="per_token", max_bits_avg=8.5)


def _share(bench: Bench, **options: Any) -> Outcome:
    model = bench.fresh()
    start = time.perf_counter()
    share_weights_(model, WeightSharing(**options), select=_selector(bench))
    return Outcome(model, info={"share_s": round(time.perf_counter() - start, 1), "options": options})


@row("effnet", "minilm")
def row_share8_linear(bench: Bench) -> Outcome:
    """The paper's initialisation (its best before centroid fine-tuning), no fine-tuning."""
    return _share(bench, bits=8, init="linear")


@row("effnet", "minilm")
def row_share8_optimal(bench: Bench) -> Outcome:
    return _share(bench, bits=8, init="optimal")


@row("effnet", "minilm")
def row_share8_channel(bench: Bench) -> Outcome:
    return _share(bench, bits=8, init="optimal", groups="channel")


def _depthwise(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


@row("effnet")
def row_share8_depthwise_channel(bench: Bench) -> Outcome:
    """One codebook per layer, one per channel on the depthwise convs (4.5% of the weights, 9-25 per channel)."""
    model = bench.fresh()
    start = time.perf_counter()
    share_weights_(model, WeightSharing(bits=8, init="optimal"), select=_selector(bench), exclude=_depthwise)
    share_weights_(model, WeightSharing(bits=8, init="optimal", groups="channel"), select=_depthwise)
    return Outcome(model, info={"share_s": round(time.perf_counter() - start, 1)})


@row("effnet", "minilm")
def row_share8_groups8(bench: Bench) -> Outcome:
    """Eight codebooks per layer (contiguous groups of output channels): 8x the codebook bytes of one per layer."""
    return _share(bench, bits=8, init="optimal", groups=8)


@row("effnet")
def row_share_conv8_fc5_linear(bench: Bench) -> Outcome:
    return _share(bench, bits={"conv": 8, "fc": 5}, init="linear")


def _prune(bench: Bench, method: Any, bn: bool = True) -> Outcome:
    model = bench.fresh()
    start = time.perf_counter()
    report = prune_(model, method, select=_selector(bench), data=bench.calib)
    info: dict[str, Any] = {"prune_s": round(time.perf_counter() - start, 1),
                            "sparsity": round(report.sparsity, 4)}
    if bench.name == "effnet" and bn:
        recalibrate_batchnorm_(model, bench.calib_dataset(), batch_size=16)
        info["bn_reestimated"] = True
    return Outcome(model.eval(), info=info)


@row("effnet", "minilm")
def row_magnitude50(bench: Bench) -> Outcome:
    return _prune(bench, MagnitudePrune(sparsity=0.5))


@row("effnet", "minilm")
def row_obs50(bench: Bench) -> Outcome:
    """Every layer to 50%, sequentially (each from the already-pruned layers' outputs), no BN re-estimation."""
    return _prune(bench, OBSPrune(sparsity=0.5), bn=False)


@row("effnet")
def row_obs50_bn(bench: Bench) -> Outcome:
    return _prune(bench, OBSPrune(sparsity=0.5))


@row("effnet", "minilm")
def row_obs50_global(bench: Bench) -> Outcome:
    """50% of all selected weights, spread over the layers by their OBS reconstruction-error curves."""
    return _prune(bench, OBSPrune(sparsity=0.5, scope="global"), bn=False)


def _frozen_batchnorm(model: nn.Module) -> None:
    """BatchNorms stay in eval mode while the rest trains (a few hundred crops cannot re-estimate them per batch)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = (lambda mod: lambda mode=True: mod)(m)  # type: ignore[method-assign]


def _with_calib(bench: Bench, crops: int) -> Bench:
    """``bench`` with ``crops`` calibration crops (the same seed: the first 32 are the default set)."""
    return dataclasses.replace(bench, calib=list(rm.photo_batch(crops, rm.CALIB_SEED).split(16)))


def _effnet_distill(bench: Bench, crops: int, epochs: int, dropout: bool = True, obs_crops: int | None = None,
                    sequential: bool = True, features: bool = False) -> Outcome:
    outcome = _prune(_with_calib(bench, obs_crops) if obs_crops else bench,
                     OBSPrune(sparsity=0.5, scope="global", sequential=sequential), bn=False)
    model = outcome.model
    if bench.reference.numel():  # the one-shot figure before the fine-tune
        outcome.info["before_distill"] = {k: round(v, 4) for k, v in bench.metric(bench.reference,
                                                                                  bench.outputs(model)).items()}
    images = rm.photo_batch(crops, rm.CALIB_SEED)
    _frozen_batchnorm(model)
    start = time.perf_counter()
    config = TrainConfig(epochs=epochs, lr=1e-4, optimizer="adam", weight_decay=0.0, batch_size=16, schedule="cosine",
                         dropout=dropout)
    loss = DistillationLoss(bench.fresh(), alpha=1.0, temperature=2.0,
                            features=_block_outputs(model) if features else ())
    fit(model, TensorDataset(images), config, loss_fn=loss, quiet=True)
    outcome.info.update(distill_s=round(time.perf_counter() - start, 1), distill_crops=crops, distill_epochs=epochs,
                        dropout=dropout, **({"feature_distillation": "every block's output"} if features else {}))
    return Outcome(model.eval(), info=outcome.info)


@row("effnet")
def row_obs50_global_distill(bench: Bench) -> Outcome:
    """OBS 50% (global), then a short label-free distillation fine-tune from the fp32 model on 256 calibration
    crops (disjoint from the evaluation crops): masks kept, BatchNorm statistics frozen."""
    return _effnet_distill(bench, 256, 4)


@row("effnet")
def row_obs50_global_distill12(bench: Bench) -> Outcome:
    """The same on 512 calibration crops for 12 epochs, dropout off."""
    return _effnet_distill(bench, 512, 12, dropout=False)


@row("effnet")
def row_obs50_global_distill24(bench: Bench) -> Outcome:
    """``obs50_global_distill12`` for twice the epochs (24 on the same 512 crops)."""
    return _effnet_distill(bench, 512, 24, dropout=False)


@row("effnet")
def row_obs50_global_calib512_distill12(bench: Bench) -> Outcome:
    """``obs50_global_distill12`` with the OBS Hessians from the same 512 crops the distillation uses (the classifier's
    1,280 inputs see one pooled vector per crop: 32 crops give it a Hessian of rank 32), every layer from the dense
    model's inputs (``sequential=False``: the sequential pass keeps every batch's inputs and needs more than this
    machine's 24 GB at 512 crops)."""
    return _effnet_distill(bench, 512, 12, dropout=False, obs_crops=512, sequential=False)


@row("effnet")
def row_obs50_global_distill_more_crops(bench: Bench) -> Outcome:
    """The same number of steps as ``obs50_global_distill12`` (384 batches of 16) over 3,072 calibration crops for 2
    epochs instead of 512 crops for 12: more views of the photos, less repetition."""
    return _effnet_distill(bench, 3072, 2, dropout=False)


def _block_outputs(model: nn.Module) -> list[str]:
    """EfficientNet's feature-distillation points: every MBConv block's output and the head's."""
    return [f"blocks.{i}" for i in range(len(model.blocks))] + ["bn1"]  # type: ignore[arg-type]


@row("effnet")
def row_obs50_global_seq512_features12(bench: Bench) -> Outcome:
    """OBS 50% (global) from 512 calibration crops, sequential (each layer from the already-pruned layers' inputs,
    one layer's inputs held at a time), then 12 epochs of distillation on the same crops with every block's output
    matched too (feature distillation), BatchNorm statistics frozen, dropout off."""
    return _effnet_distill(bench, 512, 12, dropout=False, obs_crops=512, features=True)


class _Sentences(torch.utils.data.Dataset):
    """Tokenized sentences (padded to one length) as a dataset of feature dicts, for label-free fine-tunes."""

    def __init__(self, features: dict[str, Tensor]) -> None:
        self.features = features

    def __len__(self) -> int:
        return int(self.features["input_ids"].shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.features.items()}


def _minilm_distill(bench: Bench, epochs: int, lr: float, dropout: bool = True) -> Outcome:
    outcome = _prune(bench, OBSPrune(sparsity=0.5), bn=False)
    model = outcome.model
    sentences = _Sentences(rm.tokenize(rm.human_sentences("calib", 512)))
    start = time.perf_counter()
    config = TrainConfig(epochs=epochs, lr=lr, optimizer="adam", weight_decay=0.0, batch_size=16, schedule="cosine",
                         dropout=dropout)
    fit(model, sentences, config, loss_fn=DistillationLoss(bench.fresh(), alpha=1.0, target="outputs"), quiet=True)
    outcome.info.update(distill_s=round(time.perf_counter() - start, 1), distill_sentences=512, distill_epochs=epochs,
                        distill_lr=lr, dropout=dropout)
    return Outcome(model.eval(), info=outcome.info)


@row("minilm")
def row_obs50_distill(bench: Bench) -> Outcome:
    """OBS 50% (sequential), then a label-free distillation fine-tune from the fp32 model on 512 calibration
    sentences (disjoint from the evaluation sentences): the embeddings' mean squared error, masks kept."""
    return _minilm_distill(bench, 4, 5e-5)


@row("minilm")
def row_obs50_distill8(bench: Bench) -> Outcome:
    """The same, 8 epochs at lr 1e-4."""
    return _minilm_distill(bench, 8, 1e-4)


@row("minilm")
def row_obs50_distill8_nodrop(bench: Bench) -> Outcome:
    """The same, 8 epochs at lr 1e-4, dropout off."""
    return _minilm_distill(bench, 8, 1e-4, dropout=False)


@row("effnet", "minilm")
def row_obs_2of4(bench: Bench) -> Outcome:
    return _prune(bench, OBSPrune(sparsity=0.5, pattern="2:4"), bn=False)


@row("minilm")
def row_svd_half(bench: Bench) -> Outcome:
    """Response-fitted SVD of the encoder Linears, half their weights kept."""
    model = bench.fresh()
    report = lowrank_(model, bench.calib, linear=SVDLinear(param_ratio=0.5), linear_response=True,
                      linear_select=_selector(bench))
    return Outcome(model, info={"lowrank": {k: v for k, v in report.items() if k != "linear"}})


@row("effnet")
def row_lowrank_fc_half(bench: Bench) -> Outcome:
    """Response-fitted SVD of the classifier (1280 -> 1000, 23% of the weights), half its weights kept."""
    model = bench.fresh()
    lowrank_(model, bench.calib, linear=SVDLinear(param_ratio=0.5), linear_response=True)
    return Outcome(model)


@row("effnet", "minilm")
def row_ttq_no_training(bench: Bench) -> Outcome:
    """TTQ's ternary weights before any training: the method needs training (its scales are learned)."""
    model = bench.fresh()
    ternarize_(model, TTQ(), select=_selector(bench))
    return Outcome(model, info={"note": "needs training: TTQ learns its scales by back-propagation"})


@row("minilm")
def row_file_under_15mb(bench: Bench) -> Outcome:
    """Embeddings shared at 6 bits, encoder Linears OBS-pruned 50% and shared at 8 bits (optimal init)."""
    model = bench.fresh()
    select = _selector(bench)
    prune_(model, OBSPrune(sparsity=0.5), select=select, data=bench.calib)
    share_weights_(model, WeightSharing(bits=8, init="optimal"), select=select)
    share_weights_(model, WeightSharing(bits=6, init="optimal"), select=nn.Embedding)
    return Outcome(model)


# ------------------------------------------------------------------------------------------------------- harness
def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def kept_path(keep: Path, bench: Bench, name: str) -> Path:
    return keep / f"{bench.name}-{name}.dsz"


def run_kept(bench: Bench, name: str, keep: Path) -> dict[str, Any]:
    """A row's model read back from the ``.dsz`` its ``--keep`` run wrote: the same file evaluated on this split
    (every row is deterministic and its data independent of the split, so this equals rebuilding it)."""
    path = kept_path(keep, bench, name)
    if not path.exists():
        raise FileNotFoundError(f"no kept file {path}: run the row with --keep {keep} first")
    model = load_compressed(path, bench.skeleton()).eval()
    return {"group": "deepshrink", "from_kept_file": path.name, "dsz_bytes": path.stat().st_size,
            **{k: round(v, 4) for k, v in bench.metric(bench.reference, bench.outputs(model)).items()}}


def run_row(bench: Bench, name: str, keep: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    outcome = ROWS[bench.name][name](bench)
    build_s = time.perf_counter() - start
    model = outcome.model.eval()
    out = bench.outputs(model)
    result: dict[str, Any] = {"group": "deepshrink" if outcome.deepshrink else "peer", **outcome.info,
                              "build_s": round(build_s, 1),
                              **{k: round(v, 4) for k, v in bench.metric(bench.reference, out).items()}}
    if outcome.integer is not None:
        integer_out = bench.outputs(outcome.integer)
        result["integer"] = {k: round(v, 4) for k, v in bench.metric(bench.reference, integer_out).items()}
        result["integer_vs_simulation_max_diff"] = _max_diff(integer_out, out)
    if outcome.deepshrink:
        check = bench.check_inputs()
        in_memory = bench.outputs(model, check)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.dsz")
            save_compressed(model, path)
            result["dsz_bytes"] = os.path.getsize(path)
            loaded = runtime.load(path, model=bench.skeleton())
            result["dsz_runtime_max_diff"] = _max_diff(bench.outputs(loaded, check), in_memory)
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                os.replace(path, kept_path(keep, bench, name))
        built = runtime.from_model(model)
        result["from_model_max_diff"] = _max_diff(bench.outputs(built, check), in_memory)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def markdown(results: dict[str, Any], key: str) -> str:
    """One results entry as a Markdown table (the metric columns of its model, file bytes, notes)."""
    rows = results[key]["rows"]
    metrics = ["top1", "top5", "logit_cosine"] if key.startswith("effnet") else [
        "cos_mean", "cos_p05", "neighbours_top10"]
    lines = ["| row | group | " + " | ".join(metrics) + " | integer engine | .dsz bytes | notes |",
             "|---|---|" + "---:|" * len(metrics) + "---:|---:|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | | " + " | ".join("" for _ in metrics) + f" | | | {r['error'][:80]} |")
            continue
        integer = r.get("integer", {}).get(metrics[0])
        notes = []
        if "average_weight_bits" in r:
            notes.append(f"{r['average_weight_bits']} avg weight bits")
        if "sparsity" in r:
            notes.append(f"sparsity {r['sparsity']}")
        if r.get("note"):
            notes.append(str(r["note"]))
        lines.append(f"| {name} | {r.get('group', '')} | " + " | ".join(f"{r[m]:.4f}" if m in r else "" for m in metrics)
                     + f" | {'' if integer is None else f'{integer:.4f}'} | "
                     + (f"{r['dsz_bytes']:,}" if "dsz_bytes" in r else "") + f" | {'; '.join(notes)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(BENCHES), required=True)
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--rows", help="comma-separated row names (default: all)")
    parser.add_argument("--calib", type=int, default=None, help="calibration samples (CNN 32 crops, MiniLM 256)")
    parser.add_argument("--eval", type=int, default=None, help="evaluation samples (CNN 128 crops, MiniLM 256)")
    parser.add_argument("--redo", action="store_true", help="rerun rows already in the results file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="keep each row's .dsz file in this folder")
    parser.add_argument("--from-kept", type=Path, help="evaluate the rows' kept .dsz files from this folder "
                        "instead of rebuilding them (e.g. --split test after a --keep run on val)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--markdown", action="store_true", help="print the results file's table and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.json.read_text()), f"{args.model}/{args.split}"))
        return
    if args.list:
        for model, rows in ROWS.items():
            print(model, " ".join(rows))
        return
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    defaults = {"effnet": (32, 128), "minilm": (256, 256)}[args.model]
    n_calib, n_eval = args.calib or defaults[0], args.eval or defaults[1]
    names = args.rows.split(",") if args.rows else list(ROWS[args.model])
    unknown = [n for n in names if n not in ROWS[args.model]]
    if unknown:
        parser.error(f"unknown rows {unknown}; --list shows them")
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    key = f"{args.model}/{args.split}"
    table = results.setdefault(key, {"rows": {}})
    table["setup"] = {"calib": n_calib, "eval": n_eval, "threads": args.threads, "torch": torch.__version__,
                      "machine": platform.processor() or platform.machine()}
    bench = BENCHES[args.model](args.split, n_calib, n_eval)
    bench.reference = bench.outputs(bench.base)
    for name in names:
        if name in table["rows"] and not args.redo and not args.rows:
            continue
        try:
            table["rows"][name] = (run_kept(bench, name, args.from_kept) if args.from_kept
                                   else run_row(bench, name, args.keep))
        except Exception as exc:
            table["rows"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(name, json.dumps(table["rows"][name]), flush=True)
        # merge into the file as it is now: other runs (other models, other rows) may have written it meanwhile
        current = json.loads(args.json.read_text()) if args.json.exists() else {}
        entry = current.setdefault(key, {"rows": {}})
        entry["setup"] = table["setup"]
        entry.setdefault("rows", {})[name] = table["rows"][name]
        atomic_write_text(args.json, json.dumps(current, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
