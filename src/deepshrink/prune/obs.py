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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.capture import execution_order, layer_by_layer
from ..core.errors import ConfigError
from ..core.graph import run_model
from ..core.layer_call import op_call
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
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * float(torch.diag(h).mean()) * torch.eye(h.shape[0], dtype=h.dtype)
    try:
        h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:  # not positive definite even damped: much more damping, then give up on the update
        h += 10 * damp * float(torch.diag(h).mean()) * torch.eye(h.shape[0], dtype=h.dtype)
        h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    cols = w.shape[1]
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block = w[:, start:stop].clone()
        block_inv = h_inv[start:stop, start:stop]
        errors = torch.zeros_like(block)
        forced = ~alive[:, start:stop]
        if pattern == "unstructured":
            saliency = block**2 / torch.diag(block_inv).reshape(1, -1) ** 2
            saliency[forced] = -1.0
            count = math.floor(saliency.numel() * sparsity)
            block_pruned = torch.zeros_like(block, dtype=torch.bool)
            if count:
                block_pruned.view(-1)[torch.topk(saliency.flatten(), count, largest=False).indices] = True
            block_pruned |= forced
        else:
            block_pruned = forced.clone()
        for i in range(stop - start):
            if pattern == "2:4" and i % 4 == 0:
                span = slice(i, min(i + 4, stop - start))
                saliency = block[:, span] ** 2 / torch.diag(block_inv)[span].reshape(1, -1) ** 2
                drop = min(2, saliency.shape[1])
                block_pruned[:, span].scatter_(1, torch.topk(saliency, drop, dim=1, largest=False).indices, True)
            column = block[:, i]
            quantized = torch.where(block_pruned[:, i], torch.zeros_like(column), column)
            error = (column - quantized) / block_inv[i, i]
            block[:, i:] -= error.unsqueeze(1) @ block_inv[i, i:].unsqueeze(0)
            block[:, i] = quantized
            errors[:, i] = error
        w[:, start:stop] = block
        w[:, stop:] -= errors @ h_inv[start:stop, stop:]
        pruned[:, start:stop] = block_pruned
    keep = ~pruned
    return (w * keep).to(weight.dtype), keep


def _patches(kind: str, x: Tensor, weight_shape: torch.Size, geometry: Mapping[str, Any]) -> Tensor:
    """The op's input as ``(groups, samples, features)`` rows whose products with the weight rows are its outputs."""
    groups = int(geometry.get("groups", 1) or 1)
    if kind == "linear":
        return x.detach().double().reshape(1, -1, x.shape[-1])
    if kind == "conv1d":
        x = x.unsqueeze(2)
        kernel: tuple[int, ...] = (1, int(weight_shape[-1]))
        pairs = [(1, _first(geometry.get(k, d))) for k, d in (("stride", 1), ("dilation", 1))]
        stride, dilation = pairs
        padding: Any = geometry.get("padding", 0)
        padding = padding if isinstance(padding, str) else (0, _first(padding))
    else:
        kernel = (int(weight_shape[-2]), int(weight_shape[-1]))
        stride, dilation = (_two(geometry.get("stride", 1)), _two(geometry.get("dilation", 1)))
        padding = geometry.get("padding", 0)
        padding = padding if isinstance(padding, str) else _two(padding)
    if isinstance(padding, str):  # "valid" / "same" (stride 1): pad explicitly, then no padding
        total = [dilation[d] * (kernel[d] - 1) if padding == "same" else 0 for d in (0, 1)]
        x = F.pad(x, [total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2])
        padding = (0, 0)
    cols = F.unfold(x.detach().double(), kernel, dilation=dilation, padding=padding, stride=stride)
    n, features, positions = cols.shape
    cols = cols.reshape(n, groups, features // groups, positions).permute(1, 0, 3, 2)
    return cols.reshape(groups, n * positions, features // groups)


def _first(value: Any) -> int:
    return int(value[0]) if isinstance(value, tuple | list) else int(value)


def _two(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, tuple | list) else (int(value), int(value))


@torch.no_grad()
def input_hessian(module: nn.Module, inputs: list[Tensor]) -> list[Tensor]:
    """Per group of output channels, ``H = 2 X X^T / n`` of the layer's ``inputs`` (a list of input batches)."""
    total: list[Tensor] | None = None
    count = 0
    for x in inputs:
        kind, x, geometry = op_call(module, x)
        rows = _patches(kind, x, latent_weight(module).shape, geometry)
        products = list(torch.einsum("gnf,gnk->gfk", rows, rows))
        total = products if total is None else [s + p for s, p in zip(total, products, strict=True)]
        count += rows.shape[1]
    assert total is not None
    return [2.0 * s / max(count, 1) for s in total]


@torch.no_grad()
def layer_hessians(model: nn.Module, layers: Mapping[str, nn.Module], batches: list[Any]) -> dict[str, list[Tensor]]:
    """Per layer, per group of output channels, ``H = 2 X X^T / n`` over the calibration batches (one pass)."""
    sums: dict[str, list[Tensor]] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, module in layers.items():
        def hook(mod: nn.Module, args: tuple, output: Any, name: str = name) -> None:
            kind, x, geometry = op_call(mod, args[0])
            rows = _patches(kind, x, latent_weight(mod).shape, geometry)
            products = torch.einsum("gnf,gnk->gfk", rows, rows)
            if name in sums:
                sums[name] = [s + p for s, p in zip(sums[name], products, strict=True)]
            else:
                sums[name] = list(products)
            counts[name] = counts.get(name, 0) + rows.shape[1]

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            run_model(model, batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: [2.0 * s / max(counts[name], 1) for s in sums[name]] for name in sums}
