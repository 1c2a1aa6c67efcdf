"""Build runtime models: from export dicts, from a ``.dsz`` file, or from an in-memory compressed model.

The skeleton is constructed on the ``meta`` device, so no weight storage is allocated; compressed layers
are swapped for runtime modules built from their export dicts, and the remaining raw tensors (dense
weights, biases, BatchNorm statistics) are assigned in place with ``load_state_dict(..., assign=True)``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.edits import replay_edits, set_submodule
from ..core.errors import ConfigError, FormatError
from ..core.state import get_mask, get_value_transform, iter_states, latent_weight
from ..models.registry import arch_of, build_model
from .registry import builder_for

Skeleton = nn.Module | tuple[str, Mapping[str, Any]]


def _tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    array = np.asarray(value)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, copy=True, order="C")
    return torch.from_numpy(array)


def _skeleton(model: Skeleton, edits: list[dict[str, Any]] | None) -> nn.Module:
    if isinstance(model, nn.Module):
        skeleton = model
    elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], str):
        with torch.device("meta"):
            skeleton = build_model(model[0], **dict(model[1]))
    else:
        raise ConfigError(f"from_exports needs an nn.Module or (arch, kwargs), got {type(model).__name__}")
    if edits:
        replay_edits(skeleton, edits)
    return skeleton


def runtime_layers(model: nn.Module) -> dict[str, str]:
    """``{module fqn: "RuntimeClass (export kind)"}`` for every layer that computes from a compressed form:
    built by a layer builder, or a module class that declares ``is_runtime_layer = True``."""
    found: dict[str, str] = {}
    for fqn, module in model.named_modules():
        kind = getattr(module, "deepshrink_runtime_kind", None)
        if kind is not None or getattr(module, "is_runtime_layer", False):
            found[fqn] = f"{type(module).__name__} ({kind or 'runtime'})"
    return found


def from_exports(
    model: Skeleton,
    weights: Mapping[str, dict[str, Any]],
    tensors: Mapping[str, Any] | None = None,
    *,
    edits: list[dict[str, Any]] | None = None,
) -> nn.Module:
    """A runtime model from per-weight export dicts and raw tensors (eval mode, inference only).

    ``model`` is a skeleton module (best built on ``torch.device("meta")``) or ``(arch, kwargs)`` for the zoo;
    ``weights`` maps tensor names (``"fc1.weight"``) to export dicts (``codebook``, ``sparse``, ``fixedpoint``,
    ``ternary`` or ``{"kind": "dense", "array": ...}``); ``tensors`` holds everything else (biases, BN
    statistics). A compressed layer's bias is handed to its runtime module.
    """
    skeleton = _skeleton(model, edits)
    tensors = dict(tensors or {})
    weights = dict(weights)
    for tensor_name in [n for n in weights if n.rpartition(".")[2] != "weight"]:
        # shared / quantized biases are tiny: hand them to their layer as the float values they stand for
        tensors[tensor_name] = _dense_values(weights.pop(tensor_name), tensor_name)
    modules = dict(skeleton.named_modules())
    state: dict[str, Tensor] = {}
    for tensor_name, exported in weights.items():
        module_fqn, _, attr = tensor_name.rpartition(".")
        module = modules.get(module_fqn)
        if module is None or not hasattr(module, attr):
            raise FormatError(f"the file has a weight {tensor_name!r}, which the model does not have")
        kind = exported.get("kind") if isinstance(exported, dict) else None
        if kind == "dense":
            state[tensor_name] = _tensor(exported["array"])
            continue
        if attr != "weight":
            raise FormatError(f"{tensor_name!r} is stored as {kind!r}; the runtime compresses weights only")
        bias_name = f"{module_fqn}.bias" if module_fqn else "bias"
        bias = _tensor(tensors.pop(bias_name)) if bias_name in tensors else None
        wants_bias = isinstance(getattr(module, "bias", None), Tensor)
        if wants_bias != (bias is not None):
            missing = "lacks" if wants_bias else "has a stray"
            raise FormatError(f"the file {missing} tensor {bias_name!r} for layer {module_fqn!r}")
        replacement = builder_for(str(kind), tensor_name)(module, exported, bias, tensor_name)
        replacement.deepshrink_runtime_kind = str(kind)  # type: ignore[assignment]
        if module_fqn:
            set_submodule(skeleton, module_fqn, replacement)
        else:
            raise FormatError(f"{tensor_name!r}: the model itself is a single layer; wrap it in a container")
    state.update({name: _tensor(value) for name, value in tensors.items()})
    result = skeleton.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise FormatError(f"tensors {sorted(result.unexpected_keys)} do not belong to the model")
    unset = [n for n, t in (*skeleton.named_parameters(), *skeleton.named_buffers()) if t.is_meta]
    if unset:
        raise FormatError(f"the file lacks tensors {unset} that the model needs")
    for parameter in skeleton.parameters():
        parameter.requires_grad_(False)
    return skeleton.eval()


def _dense_values(entry: Any, name: str) -> np.ndarray:
    """The float32 values of a non-weight entry (full export form or the compact positions form)."""
    if not isinstance(entry, dict):
        raise FormatError(f"{name!r} is not a weight entry")
    if "positions" in entry:
        out = np.zeros(int(np.prod(entry["shape"])), dtype=np.float32)
        values = entry["values"] if entry["kind"] == "sparse" else np.asarray(entry["centroids"])[entry["codes"]]
        out[entry["positions"]] = values
        return out.reshape(entry["shape"])
    from ..codec import effective_weight

    return effective_weight(entry)


def exports_from_model(model: nn.Module) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor]]:
    """``(weights, tensors)`` of a model carrying compression state: what a ``.dsz`` file would hold.

    Weights with a value transform export its integer form; pruned-only weights become ``sparse``;
    everything else (unpruned weights, biases, buffers) goes to ``tensors`` as plain tensors.
    """
    weights: dict[str, dict[str, Any]] = {}
    for fqn, module, name, _ in iter_states(model):
        key = f"{fqn}.{name}" if fqn else name
        mask = get_mask(module, name)
        transform = get_value_transform(module, name)
        with torch.no_grad():
            latent = latent_weight(module, name).detach()
            masked = latent * mask.to(latent.dtype) if mask is not None else latent
            if transform is not None:
                weights[key] = transform.export(masked)
            elif mask is not None:
                weights[key] = {"kind": "sparse", "mask": mask.cpu().numpy(),
                                "values": masked[mask].cpu().numpy().astype(np.float32)}
    # not bake_(deepcopy(model)): a deep copy shares the parametrized class, and baking it would strip the
    # original's properties too
    state = {k: v for k, v in model.state_dict().items() if "parametrizations" not in k.split(".")}
    for fqn, module, name, _ in iter_states(model):
        key = f"{fqn}.{name}" if fqn else name
        if key not in weights:
            state[key] = getattr(module, name).detach()
    tensors = {k: v.detach().cpu() for k, v in state.items() if k not in weights}
    return weights, tensors


def from_model(model: nn.Module) -> nn.Module:
    """The runtime version of an in-memory compressed model (its compressed weights never go dense again)."""
    weights, tensors = exports_from_model(model)
    arch = arch_of(model)
    if arch is not None:
        skeleton: Skeleton = (arch[0], arch[1])
        from ..core.edits import recorded_edits

        return from_exports(skeleton, weights, tensors, edits=recorded_edits(model))
    skeleton_module = copy.deepcopy(model).to("meta")
    leftover = [f"{fqn}.{name}" for fqn, _, name, _ in iter_states(skeleton_module) if f"{fqn}.{name}" not in weights]
    if leftover:
        raise ConfigError(f"{leftover}: parametrized without a mask or value transform; bake_ the model first")
    return from_exports(skeleton_module, weights, tensors)


def load_with_meta(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """``(runtime model, meta)`` from a ``.dsz`` file written by :mod:`deepshrink.codec`."""
    from .reader import read_compact

    compressed = read_compact(path)
    header = dict(compressed.header)
    arch = header.get("arch")
    if not arch:
        raise FormatError(f"{path}: the file records no model arch; the runtime cannot rebuild it")
    model = from_exports((str(arch), header.get("kwargs") or {}), compressed.weights, compressed.tensors,
                         edits=header.get("edits") or [])
    meta = dict(getattr(compressed, "meta", {}) or {})
    meta.setdefault("arch", arch)
    meta.setdefault("kwargs", header.get("kwargs") or {})
    return model, meta


def load(path: str | os.PathLike[str]) -> nn.Module:
    """An ``nn.Module`` whose compressed layers execute from the compressed form of the ``.dsz`` file at ``path``."""
    return load_with_meta(path)[0]
