"""``--bench``: latency of the runtime model vs dense fp32 and torch's dynamic int8, whole model and per layer.

Measured the way ``deepshrink bench`` does (:func:`deepshrink.runtime.measure.compare`: the contenders in one
process, the same thread count, interleaved rounds, medians). Per layer, each model's own layer is called on the
input it received in a forward pass of that model, so a runtime layer sees its own input form.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

CONTENDERS = ("runtime", "dense_fp32", "dynamic_int8")
BATCHES = (1, 64)


@dataclass
class Latency:
    """Median milliseconds per contender at one batch size: the whole model and each layer (None: not timed)."""

    batch: int
    whole: dict[str, float]
    layers: dict[str, dict[str, float | None]] = field(default_factory=dict)


def _layer_inputs(model: nn.Module, names: list[str], x: Any) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments each named module was first called with in one forward of ``model`` on ``x``."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    hooks = []
    for name in names:
        if name in modules:

            def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
                seen.setdefault(name, (args, kwargs))

            hooks.append(modules[name].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in hooks:
            handle.remove()
    return seen


def _call(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Any]:
    return lambda: module(*args, **kwargs)


def inputs_for(input_shape: tuple[int, ...], dataset: str | None, data_dir: str | None) -> dict[int, torch.Tensor]:
    """Batch 1 and 64 inputs: the first test samples of ``dataset`` (real inputs: the runtime skips zero inputs),
    else Gaussian noise of ``input_shape``."""
    if dataset is not None:
        from ..core.graph import split_batch
        from ..data import DataOptions, make_loader, open_data

        data = open_data(dataset, DataOptions(data_dir=data_dir)).split("test", max(BATCHES))
        x = split_batch(next(iter(make_loader(data, max(BATCHES)))))[0]
        if isinstance(x, torch.Tensor) and x.shape[0] == max(BATCHES):
            return {b: x[:b].contiguous() for b in BATCHES}
    generator = torch.Generator().manual_seed(0)
    return {b: torch.randn(b, *input_shape, generator=generator) for b in BATCHES}


def measure(path: str | os.PathLike[str], model: nn.Module, layers: list[str], inputs: dict[int, torch.Tensor], *,
            repeats: int = 30, budget_s: float = 1.0) -> list[Latency]:
    """Latency of the runtime model of ``path`` vs ``model`` dense (effective weights) and its dynamic int8 copy.

    Set the thread count (``runtime.measure.set_threads``) before any model is loaded or run: changing torch's
    and numba's pools afterwards makes every contender many times slower (their idle workers spin).
    """
    from ..core.state import plain_copy
    from ..runtime import load
    from ..runtime.measure import compare, dynamic_int8

    models = {"runtime": load(path).eval(), "dense_fp32": plain_copy(model).eval()}
    models["dynamic_int8"] = dynamic_int8(copy.deepcopy(models["dense_fp32"]))
    results = []
    for batch, x in inputs.items():
        timings = compare({k: _call(m, (x,), {}) for k, m in models.items()}, repeats=repeats,
                          budget_s=3 * budget_s)
        latency = Latency(batch, {k: v["median_ms"] for k, v in timings.items()})
        captured = {k: _layer_inputs(m, layers, x) for k, m in models.items()}
        for name in layers:
            calls = {}
            for key, m in models.items():
                if name in captured[key]:
                    calls[key] = _call(m.get_submodule(name), *captured[key][name])
            row: dict[str, float | None] = dict.fromkeys(CONTENDERS, None)
            if calls:
                row.update({k: v["median_ms"] for k, v in compare(calls, repeats=repeats, budget_s=budget_s).items()})
            latency.layers[name] = row
        results.append(latency)
    return results
