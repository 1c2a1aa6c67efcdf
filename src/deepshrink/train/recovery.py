"""Cheap recovery after one-shot compression, with calibration data and no labels.

* :func:`recalibrate_batchnorm_`: re-estimate BatchNorm running statistics (pruning and low-rank shift them).
* :func:`correct_biases_` / :func:`bias_correction_` (Nagel et al. 2019, here with calibration data): each layer's
  mean output shift against the uncompressed model, per output channel, is subtracted from its bias, in execution
  order (later layers see the corrected earlier ones). A fixed-point layer's bias stays a float the integer engine
  rounds, so simulation and integer engine stay bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..core.capture import capture, execution_order, layer_by_layer
from ..core.graph import run_model, split_batch
from ..core.layer_call import channel_axis
from ..core.select import Selector, select_layers
from ..core.state import latent_weight
from ..data import make_loader
from .evaluate import _device, to_device

__all__ = ["bias_correction_", "correct_biases_", "recalibrate_batchnorm_"]


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, dataset: Dataset, batches: int = 50, batch_size: int = 128) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``dataset`` (a cheap recovery after pruning or low-rank)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    was_training = model.training
    model.train()
    device = _device(model, None)
    for i, batch in enumerate(make_loader(dataset, batch_size, shuffle=True)):
        if i >= batches:
            break
        run_model(model, to_device(split_batch(batch)[0], device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model


def _bias_of(module: nn.Module) -> Tensor:
    """The layer's bias parameter (a zero one is added where the layer has none)."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, Tensor):
        weight = latent_weight(module)
        module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
        bias = module.bias
    return bias


@torch.no_grad()
def correct_biases_(model: nn.Module, order: Sequence[str], modules: Mapping[str, nn.Module],
                    reference_out: Mapping[str, list[Tensor]], batches: Sequence[Any]) -> dict[str, float]:
    """Subtract each layer's mean output error (per output channel) from its bias, in ``order``; returns the mean
    absolute shift removed per layer."""
    removed: dict[str, float] = {}

    def decide(name: str, inputs: list[Tensor], refs: list[Tensor]) -> None:
        module = modules[name]
        axis = channel_axis(module)
        shift = None
        for x, ref in zip(inputs, refs, strict=False):
            diff = (module(x) - ref).double()
            dims = [d for d in range(diff.dim()) if d != axis % diff.dim()]
            total = diff.sum(dim=dims)
            shift = total if shift is None else shift + total
        if shift is None:
            return
        count = sum(ref.numel() // ref.shape[axis] for ref in refs[: len(inputs)])
        shift = shift / max(count, 1)
        bias = _bias_of(module)
        bias.sub_(shift.to(bias.dtype))
        removed[name] = float(shift.abs().mean())

    layer_by_layer(model, [n for n in order if not isinstance(modules[n], nn.Embedding)], modules, batches,
                   reference_out, decide)
    return removed


@torch.no_grad()
def bias_correction_(model: nn.Module, reference: nn.Module, batches: Sequence[Any],
                     select: Selector = None) -> dict[str, float]:
    """:func:`correct_biases_` of the selected layers of ``model`` against ``reference`` (the model before
    compression, with the same layer names) on calibration ``batches``."""
    layers = {n: m for n, m in select_layers(model, select).layers if not isinstance(m, nn.Embedding)}
    references = {n: reference.get_submodule(n) for n in layers}
    order = execution_order(model, layers, batches[0])
    _, outputs = capture(reference, references, batches, inputs=False)
    return correct_biases_(model, order, layers, outputs, batches)
