"""Second-order layer reconstruction (Optimal Brain Surgeon, layer-wise): input Hessians and the column sweep.

Per layer, the Hessian of the output reconstruction error is ``H = 2 X X^T`` over calibration inputs ``X`` (the
layer's inputs; a convolution's im2col patches, one Hessian per group of output channels). :func:`obs_sweep`
walks a weight matrix's columns left to right in blocks and replaces each column by a target the caller chooses
(zero for a pruned weight, the nearest grid point for a quantized one); the difference is spread over the columns
not yet visited through the upper Cholesky factor of ``H^-1``, so the layer keeps computing what it computed.
Shared by OBS pruning (Hassibi & Stork 1993; SparseGPT, Frantar & Alistarh 2023) and OBS rounding of fixed-point
weights (GPTQ / Optimal Brain Quantization, Frantar et al. 2022).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .graph import run_model
from .layer_call import op_call
from .state import latent_weight

__all__ = ["BlockRule", "input_hessian", "layer_hessians", "obs_sweep"]

BlockRule = Callable[[int, int, Tensor, Tensor], Callable[[int, Tensor], Tensor]]
"""``rule(start, stop, block, block_inv)`` is called when a block of columns begins (``block``: its current values,
updated in place as the sweep goes; ``block_inv``: its part of the factor) and returns ``target(i, column)``: the
value column ``start + i`` takes."""


def _inverse_factor(hessian: Tensor, damp: float) -> Tensor:
    """The upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; more damping if still not definite."""
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for factor in (damp, 10 * damp, 100 * damp):
        try:
            return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h + factor * float(
                torch.diag(h).mean()) * eye)), upper=True)
        except RuntimeError:  # not positive definite even damped: try more damping
            continue
    raise RuntimeError("input Hessian not positive definite even with 100x damping")


def obs_sweep(weight: Tensor, hessian: Tensor, rule: BlockRule, block_size: int = 128, damp: float = 0.01) -> Tensor:
    """``weight`` (rows, cols) with every column replaced by ``rule``'s target, the error of each replacement
    compensated on the columns to its right (float64 result). Columns of an all-zero Hessian (inputs always 0)
    are zeroed first: nothing reads them."""
    w = weight.double().clone()
    dead = torch.diag(hessian) == 0
    w[:, dead] = 0.0
    h_inv = _inverse_factor(hessian, damp)
    cols = w.shape[1]
    for start in range(0, cols, block_size):
        stop = min(start + block_size, cols)
        block = w[:, start:stop].clone()
        block_inv = h_inv[start:stop, start:stop]
        errors = torch.zeros_like(block)
        target = rule(start, stop, block, block_inv)
        for i in range(stop - start):
            column = block[:, i]
            new = target(i, column)
            error = (column - new) / block_inv[i, i]
            block[:, i:] -= error.unsqueeze(1) @ block_inv[i, i:].unsqueeze(0)
            block[:, i] = new
            errors[:, i] = error
        w[:, start:stop] = block
        w[:, stop:] -= errors @ h_inv[start:stop, stop:]
    return w


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


PATCH_BYTES = 256 * 2**20
"""The most bytes of float64 patches built at once: a batch is taken a few samples at a time to stay under it. A
merged calibration batch of 512 EfficientNet-Lite2 crops would otherwise build 22 GB of depthwise patches."""


def _products(kind: str, x: Tensor, weight_shape: torch.Size, geometry: Mapping[str, Any]) -> tuple[list[Tensor], int]:
    """``(per group X X^T, rows)`` of the op's input ``x``, its patches built :data:`PATCH_BYTES` at a time."""
    step = x.shape[0]  # an unbatched input: one part
    if x.dim() >= {"linear": 2, "conv1d": 3}.get(kind, 4):  # batched: the first axis holds samples (or tokens)
        first = _patches(kind, x[:1], weight_shape, geometry)
        step = max(1, PATCH_BYTES // max(first.numel() * first.element_size(), 1))
    total: list[Tensor] | None = None
    rows = 0
    for part in x.split(step):
        patches = _patches(kind, part, weight_shape, geometry)
        products = list(torch.einsum("gnf,gnk->gfk", patches, patches))
        total = products if total is None else [s + p for s, p in zip(total, products, strict=True)]
        rows += patches.shape[1]
    assert total is not None
    return total, rows


@torch.no_grad()
def input_hessian(module: nn.Module, inputs: list[Tensor]) -> list[Tensor]:
    """Per group of output channels, ``H = 2 X X^T / n`` of the layer's ``inputs`` (a list of input batches)."""
    total: list[Tensor] | None = None
    count = 0
    for x in inputs:
        kind, x, geometry = op_call(module, x)
        products, rows = _products(kind, x, latent_weight(module).shape, geometry)
        total = products if total is None else [s + p for s, p in zip(total, products, strict=True)]
        count += rows
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
            products, rows = _products(kind, x, latent_weight(mod).shape, geometry)
            if name in sums:
                sums[name] = [s + p for s, p in zip(sums[name], products, strict=True)]
            else:
                sums[name] = products
            counts[name] = counts.get(name, 0) + rows

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
