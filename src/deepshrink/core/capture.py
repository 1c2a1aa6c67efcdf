"""Capturing what layers see and produce on calibration data, by forward hooks (any ``forward``, no tracing).

Shared by the data-driven passes: fixed point's format search, bias correction, OBS's Hessians.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .graph import run_model, split_batch

__all__ = ["capture", "capture_first_input", "capture_group_inputs", "concat_batches", "execution_order",
           "layer_by_layer"]

Batch = Any


@torch.no_grad()
def capture(model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[Batch],
            inputs: bool = True, outputs: bool = True) -> tuple[dict[str, list[Tensor]], dict[str, list[Tensor]]]:
    """Inputs and outputs of ``modules`` (name -> module) over ``batches``, in call order."""
    seen_in: dict[str, list[Tensor]] = {name: [] for name in modules}
    seen_out: dict[str, list[Tensor]] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():
        def hook(mod: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
            if inputs:
                seen_in[name].append(args[0].detach())
            if outputs:
                seen_out[name].append(out.detach())
        handles.append(module.register_forward_hook(hook))
    try:
        for batch in batches:
            run_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen_in, seen_out


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early (the rest of the network is not needed)."""


@torch.no_grad()
def capture_first_input(model: nn.Module, module: nn.Module, batches: Sequence[Batch]) -> list[Tensor]:
    """The input of ``module``'s first call per batch; the forward pass stops right there."""
    seen: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(hook, prepend=True)
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                run_model(model, batch)
    finally:
        handle.remove()
    return seen


@torch.no_grad()
def execution_order(model: nn.Module, modules: dict[str, nn.Module], batch: Batch) -> list[str]:
    """Names of ``modules`` in the order the forward pass first calls them (uncalled ones left out)."""
    order: list[str] = []
    handles = []
    for name, module in modules.items():
        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            if name not in order:
                order.append(name)
        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return order


@torch.no_grad()
def capture_group_inputs(model: nn.Module, layers: Sequence[nn.Module], batches: Sequence[Batch]) -> list[list[Tensor]]:
    """Inputs (first call per batch) of ``layers[0]`` and of the following layers that receive the identical,
    unmodified tensor in every batch; the forward pass stops at the first other hooked call."""
    per_batch: list[list[Tensor]] = []
    current: list[Tensor] = []

    def hook_for(position: int) -> Callable[[nn.Module, tuple], None]:
        def hook(mod: nn.Module, args: tuple) -> None:
            x = args[0]
            if position == len(current) and (
                position == 0 or (x is current[0] and x._version == current[0]._version)
            ):
                current.append(x)
                return
            raise _Stop

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(k), prepend=True) for k, layer in enumerate(layers)]
    try:
        for batch in batches:
            current = []
            with contextlib.suppress(_Stop):
                run_model(model, batch)
            per_batch.append(current)
    finally:
        for handle in handles:
            handle.remove()
    size = min(len(b) for b in per_batch)
    if size == 0:
        raise RuntimeError("calibration forward pass never reached the layer being calibrated")
    return [[b[k].detach() for b in per_batch] for k in range(size)]


def concat_batches(batches: Sequence[Batch]) -> Batch | None:
    """The inputs of ``batches`` as one batch (tensors, or feature dicts, whose shapes agree past the batch
    dimension), or None when they do not stack (e.g. token batches padded to different lengths)."""
    inputs = [split_batch(b)[0] for b in batches]
    if not inputs:
        return None
    if len(inputs) == 1:
        return inputs[0]
    if all(isinstance(x, Tensor) for x in inputs):
        if len({(x.shape[1:], x.dtype) for x in inputs}) == 1:
            return torch.cat(inputs)
        return None
    if all(isinstance(x, dict) for x in inputs):
        keys = set(inputs[0])
        if any(set(x) != keys for x in inputs):
            return None
        out = {}
        for key in keys:
            values = [x[key] for x in inputs]
            if not all(isinstance(v, Tensor) for v in values) or len({(v.shape[1:], v.dtype) for v in values}) != 1:
                return None
            out[key] = torch.cat(values)
        return out
    return None


def _first_calls(outputs: list[Tensor], n_batches: int) -> list[Tensor]:
    """A layer's recorded outputs (every call, in order, over ``n_batches``) -> its first call's per batch."""
    calls = max(1, len(outputs) // max(1, n_batches))
    return outputs[::calls][:n_batches]


MERGED_BYTES = 2 * 2**30
"""The most bytes of activations one merged calibration pass may hold, estimated as :data:`LIVE_TENSORS` times the
largest module output of the first batch, scaled to all batches. 512 EfficientNet-Lite2 crops in one pass would
hold 3.3 GB per early activation."""

LIVE_TENSORS = 4


@torch.no_grad()
def _merged_activation_bytes(model: nn.Module, batches: Sequence[Batch]) -> int:
    """The estimated activation bytes of one forward pass over all ``batches`` stacked (one pass over the first)."""
    if len(batches) <= 1:
        return 0
    largest = 0

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        nonlocal largest
        if isinstance(out, Tensor):
            largest = max(largest, out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        run_model(model, batches[0])
    finally:
        for handle in handles:
            handle.remove()
    return LIVE_TENSORS * largest * len(batches)


@torch.no_grad()
def layer_by_layer(model: nn.Module, order: Sequence[str], modules: Mapping[str, nn.Module], batches: Sequence[Batch],
                   reference_out: Mapping[str, list[Tensor]] | None,
                   decide: Callable[[str, list[Tensor], list[Tensor]], None]) -> None:
    """Greedy calibration: ``decide(name, inputs, references)`` for each layer in call order, where ``inputs`` are
    what the layer receives with every earlier layer already decided, and ``references`` its reference outputs
    (the uncompressed model's, ``reference_out`` as :func:`capture` records them, or none) for the same samples.

    When the batches stack into one and its activations fit :data:`MERGED_BYTES`, a single forward pass does it
    all: each layer is decided inside its forward pre-hook, and the pass continues through the decided layer.
    Otherwise each layer's input is captured by forward passes over the batches that stop at it (layers reading
    the very same tensor share one pass): more compute, but only the inputs of the layers being decided are held.
    """
    merged = concat_batches(batches) if _merged_activation_bytes(model, batches) <= MERGED_BYTES else None
    if merged is not None:
        pending = {modules[name]: name for name in order}

        def hook(module: nn.Module, args: tuple) -> None:
            name = pending.pop(module, None)  # popped first: decide() calls the module again
            if name is not None:
                refs = _first_calls(reference_out[name], len(batches)) if reference_out is not None else []
                decide(name, [args[0].detach()], [torch.cat(refs)] if len(refs) > 1 else refs)

        handles = [modules[name].register_forward_pre_hook(hook, prepend=True) for name in order]
        try:
            run_model(model, merged)
        finally:
            for handle in handles:
                handle.remove()
        return
    i = 0
    while i < len(order):
        group = capture_group_inputs(model, [modules[name] for name in order[i:]], batches)
        for name, xs in zip(order[i:], group, strict=False):
            refs = _first_calls(reference_out[name], len(batches))[: len(xs)] if reference_out is not None else []
            decide(name, xs, refs)
        i += len(group)
