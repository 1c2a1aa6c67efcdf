"""Capturing what layers see and produce on calibration data, by forward hooks (any ``forward``, no tracing).

Shared by the data-driven passes: fixed point's format search, bias correction, OBS's Hessians.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .graph import run_model

__all__ = ["capture", "capture_first_input", "capture_group_inputs", "execution_order"]

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
