"""Layer-wise Optimal Brain Surgeon (Hassibi & Stork 1993), one shot as in SparseGPT (Frantar & Alistarh 2023).

OBD's successor keeps the off-diagonal Hessian and updates the surviving weights. Per layer, the Hessian of the
output reconstruction error is ``H = 2 X X^T`` over calibration inputs ``X`` (the layer's inputs; a convolution's
im2col patches, per group). Columns are processed left to right in blocks: within a block the weights of least
saliency ``w^2 / [H^-1]_ii^2`` (with ``H^-1``'s upper Cholesky factor, which makes the sequential updates exact)
are pruned, and each pruned weight's error is spread over the columns to its right through ``H^-1``, so the
layer keeps computing what it computed. ``pattern="2:4"`` keeps the two most salient of every four consecutive
weights of a row (the semi-structured sparsity some accelerators run). Masks go to the shared state like any
criterion's, so sharing, fixed point, the codec and the runtime take them unchanged.

``sequential=True`` (the default, as SparseGPT runs): layers are pruned in call order, each from the inputs the
already-pruned layers before it produce, so later layers also absorb the error of earlier ones; ``False`` estimates
every Hessian from the uncompressed model in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from ..core.capture import execution_order, layer_by_layer
from ..core.errors import ConfigError
from ..core.hessian import input_hessian, layer_hessians, obs_sweep
from ..core.state import latent_weight
from ..data import calibration_batches
from .allocate import GRID, allocate, relative_error
from .base import PerLayer, check_fraction, frozen_copy, per_layer

__all__ = ["OBSPrune", "input_hessian", "layer_hessians", "obs_prune_matrix"]

PATTERNS = ("unstructured", "2:4")


@dataclass(frozen=True)
class OBSPrune:
    """Layer-wise OBS pruning to ``sparsity`` (a float or ``{layer: s}``), from calibration ``data``.

    ``pattern``: unstructured, or ``"2:4"`` (two of every four consecutive weights kept; ``sparsity`` is then
    0.5). ``scope="global"``: ``sparsity`` (a float) is the share of all selected weights pruned, spread over the
    layers by their reconstruction-error curves (:mod:`.allocate`); ``"layer"``: each layer to ``sparsity``. ``block_size``: columns per lazy-update block. ``damp``: the fraction of the mean Hessian diagonal added
    to it (numerical stability). ``max_samples``: calibration samples the Hessians are estimated from.
    Embeddings (no inputs to reconstruct) are pruned by magnitude.
    """

    sparsity: PerLayer = 0.5
    pattern: str = "unstructured"
    scope: str = "layer"
    block_size: int = 128
    damp: float = 0.01
    max_samples: int = 512
    sequential: bool = True

    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        if self.pattern not in PATTERNS:
            raise ConfigError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.scope == "global" and (isinstance(self.sparsity, Mapping) or self.pattern != "unstructured"):
            raise ConfigError("OBS with scope='global' takes one unstructured sparsity for the whole selection")
        if self.block_size < 1 or not self.damp > 0 or self.max_samples < 1:
            raise ConfigError("block_size and max_samples must be >= 1 and damp > 0")
        object.__setattr__(self, "sparsity", frozen_copy(self.sparsity))

    def scores(self, model: nn.Module, layers: list[tuple[str, nn.Module]], data: Any = None) -> dict[str, Tensor]:
        """Magnitudes (what an embedding is pruned by); the OBS layers are solved in :meth:`solve`."""
        return {name: latent_weight(module).detach().abs() for name, module in layers}

    def solve(self, model: nn.Module, layers: dict[str, nn.Module], alive: dict[str, Tensor],
              data: Any) -> tuple[dict[str, Tensor], dict[str, float | None]]:
        """Masks for every layer; the surviving weights of the OBS layers are updated in place."""
        targets = per_layer(self.sparsity, layers, "sparsity")
        solvable = {n: m for n, m in layers.items() if not isinstance(m, nn.Embedding)}
        batches = calibration_batches(data, self.max_samples)
        if self.scope == "global":
            targets = {**targets, **self._allocate(model, solvable, alive, batches)}
        masks: dict[str, Tensor] = {}
        thresholds: dict[str, float | None] = {}

        def prune_layer(name: str, hessian: list[Tensor]) -> None:
            module = layers[name]
            weight = latent_weight(module)
            new, mask = _solve_layer(module, weight.detach().cpu(), hessian, alive[name], targets[name], self)
            with torch.no_grad():
                weight.copy_(new.to(weight.dtype).to(weight.device))
            masks[name], thresholds[name] = mask, None

        if self.sequential:
            was_training = model.training
            model.eval()
            try:
                order = execution_order(model, solvable, batches[0])
                layer_by_layer(model, order, solvable, batches, None,
                               lambda name, xs, _: prune_layer(name, input_hessian(solvable[name], xs)))
            finally:
                model.train(was_training)
        else:
            for name, hessian in layer_hessians(model, solvable, batches).items():
                prune_layer(name, hessian)
        for name, module in layers.items():
            weight = latent_weight(module)
            if name not in masks:  # an embedding, or a layer the calibration never reached: magnitude
                keep = round((1.0 - targets[name]) * weight.numel())
                flat = torch.where(alive[name], weight.detach().abs().cpu(), torch.tensor(-1.0)).flatten()
                mask = torch.zeros(flat.numel(), dtype=torch.bool)
                mask[torch.topk(flat, max(0, min(keep, int(alive[name].sum()))), sorted=False).indices] = True
                masks[name], thresholds[name] = mask.reshape(weight.shape), None
                continue
        return masks, thresholds


    def _allocate(self, model: nn.Module, layers: dict[str, nn.Module], alive: dict[str, Tensor],
                  batches: list[Any]) -> dict[str, float]:
        """Per-layer sparsities meeting the global target (see :mod:`.allocate`)."""
        hessians = layer_hessians(model, layers, batches)
        curves: dict[str, dict[float, float]] = {}
        for name, hessian in hessians.items():
            weight = latent_weight(layers[name]).detach().cpu()
            curves[name] = {s: relative_error(weight, _solve_layer(layers[name], weight, hessian, alive[name], s,
                                                                    self)[0], hessian) for s in GRID}
        counts = {n: latent_weight(layers[n]).numel() for n in curves}
        return allocate(curves, counts, float(cast(float, self.sparsity)))


def _solve_layer(module: nn.Module, weight: Tensor, hessians: list[Tensor], alive: Tensor, sparsity: float,
                 config: OBSPrune) -> tuple[Tensor, Tensor]:
    """The pruned, updated weight and its keep-mask, one group of output channels at a time."""
    groups = len(hessians)
    rows = weight.shape[0] // groups
    new = weight.double().clone()
    mask = torch.ones_like(weight, dtype=torch.bool)
    for g, hessian in enumerate(hessians):
        part = slice(g * rows, (g + 1) * rows)
        w = new[part].reshape(rows, -1)
        pruned_w, kept = obs_prune_matrix(w, hessian, alive[part].reshape(rows, -1), sparsity, config.pattern,
                                          config.block_size, config.damp)
        new[part] = pruned_w.reshape(new[part].shape)
        mask[part] = kept.reshape(mask[part].shape)
    return new * mask, mask


def obs_prune_matrix(weight: Tensor, hessian: Tensor, alive: Tensor, sparsity: float, pattern: str = "unstructured",
                     block_size: int = 128, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(updated weight, keep-mask)`` of one ``(rows, cols)`` matrix with input Hessian ``(cols, cols)``.

    Positions not ``alive`` are pruned whatever their saliency (masks only narrow).
    """
    pruned = torch.zeros_like(weight, dtype=torch.bool)

    def rule(start: int, stop: int, block: Tensor, block_inv: Tensor) -> Callable[[int, Tensor], Tensor]:
        forced = ~alive[:, start:stop]
        block_pruned = forced.clone()
        if pattern == "unstructured":
            saliency = block**2 / torch.diag(block_inv).reshape(1, -1) ** 2
            saliency[forced] = -1.0
            count = math.floor(saliency.numel() * sparsity)
            if count:
                block_pruned.view(-1)[torch.topk(saliency.flatten(), count, largest=False).indices] = True

        def target(i: int, column: Tensor) -> Tensor:
            if pattern == "2:4" and i % 4 == 0:
                span = slice(i, min(i + 4, stop - start))
                saliency = block[:, span] ** 2 / torch.diag(block_inv)[span].reshape(1, -1) ** 2
                drop = min(2, saliency.shape[1])
                block_pruned[:, span].scatter_(1, torch.topk(saliency, drop, dim=1, largest=False).indices, True)
            pruned[:, start + i] = block_pruned[:, i]
            return torch.where(block_pruned[:, i], torch.zeros_like(column), column)

        return target

    w = obs_sweep(weight, hessian, rule, block_size, damp)
    keep = ~pruned
    return (w * keep).to(weight.dtype), keep
