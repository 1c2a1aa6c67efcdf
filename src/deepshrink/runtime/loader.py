"""Build runtime models: from stored weights, from a ``.dsz`` file, or from an in-memory compressed model.

The skeleton is constructed on the ``meta`` device, so no weight storage is allocated; compressed layers
are swapped for runtime modules built from their stored form (:mod:`.registry`), and the remaining raw tensors
(dense weights, biases, BatchNorm statistics) are assigned in place with ``load_state_dict(..., assign=True)``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..codec.decode import read_compressed
from ..core.edits import recorded_edits, replay_edits, set_submodule
from ..core.errors import ConfigError, FormatError
from ..core.fold import fold_batchnorm_
from ..core.kinds import StoredWeight, stored_from_export
from ..core.layer_call import plain_type
from ..core.state import get_mask, get_value_transform, iter_states, latent_weight, plain_copy
from ..models.registry import arch_of, build_model
from .builders import runs_dense_conv
from .registry import build_layer

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
        try:
            with torch.device("meta"):
                skeleton = build_model(model[0], **dict(model[1]))
        except ConfigError:
            raise
        except Exception as exc:  # arguments a file stated: whatever the constructor raises on them is theirs
            raise ConfigError(f"cannot build {model[0]!r} with {dict(model[1])}: {type(exc).__name__}: {exc}") from exc
    else:
        raise ConfigError(f"from_stored needs an nn.Module or (arch, kwargs), got {type(model).__name__}")
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


@dataclass
class RuntimeReport:
    """Which layers compute from their compressed form (``replaced``: fqn -> module (kind)) and which kept their own
    class, fed their decoded weights (``kept``: fqn -> why)."""

    replaced: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"replaced": dict(self.replaced), "kept": dict(self.kept)}


def from_stored(
    model: Skeleton,
    weights: Mapping[str, StoredWeight],
    tensors: Mapping[str, Any] | None = None,
    *,
    edits: list[dict[str, Any]] | None = None,
    buffers_from: nn.Module | None = None,
) -> nn.Module:
    """A runtime model from stored weights and raw tensors (eval mode, inference only).

    ``model`` is a skeleton module (best built on ``torch.device("meta")``) or ``(arch, kwargs)`` for the zoo;
    ``weights`` maps tensor names (``"fc1.weight"``) to :class:`~deepshrink.core.kinds.StoredWeight`;
    ``tensors`` holds everything else (biases, BN statistics). A compressed layer's bias is handed to its runtime
    module; a layer the runtime cannot reproduce keeps its class and its decoded weight. Non-persistent buffers
    (not in any state dict) come from ``buffers_from`` or, failing that, from a freshly constructed model.
    The result carries a :class:`RuntimeReport` as ``runtime_report``.
    """
    skeleton = _skeleton(model, edits)
    tensors = dict(tensors or {})
    weights = dict(weights)
    for tensor_name in [n for n in weights if n.rpartition(".")[2] != "weight"]:
        # shared / quantized biases are tiny: hand them to their layer as the float values they stand for
        tensors[tensor_name] = weights.pop(tensor_name).dense()
    modules = dict(skeleton.named_modules())
    for fqn, module in modules.items():  # small plain convs time the direct kernel too
        name = f"{fqn}.weight"
        if fqn and name in tensors and name not in weights and runs_dense_conv(module, module.weight.numel()):
            array = _tensor(tensors.pop(name)).to(torch.float32).numpy()
            weights[name] = stored_from_export({"kind": "dense", "array": array})
    state: dict[str, Tensor] = {}
    report = RuntimeReport()
    for tensor_name, weight in weights.items():
        module_fqn, _, attr = tensor_name.rpartition(".")
        module = modules.get(module_fqn)
        if module is None or not hasattr(module, attr):
            raise FormatError(f"the file has a weight {tensor_name!r}, which the model does not have")
        if not module_fqn:
            raise FormatError(f"{tensor_name!r}: the model itself is a single layer; wrap it in a container")
        expected = getattr(module, attr)
        if not isinstance(expected, Tensor) or tuple(expected.shape) != tuple(weight.shape):
            raise FormatError(f"the file's {tensor_name!r} has shape {list(weight.shape)}, the model's "
                              f"{list(expected.shape) if isinstance(expected, Tensor) else type(expected).__name__}")
        bias_name = f"{module_fqn}.bias"
        bias = _tensor(tensors[bias_name]) if bias_name in tensors else None
        wants_bias = isinstance(getattr(module, "bias", None), Tensor)
        if wants_bias != (bias is not None):
            missing = "lacks" if wants_bias else "has a stray"
            raise FormatError(f"the file {missing} tensor {bias_name!r} for layer {module_fqn!r}")
        if bias is not None and tuple(bias.shape) != tuple(module.bias.shape):
            raise FormatError(f"the file's {bias_name!r} has shape {list(bias.shape)}, the model's "
                              f"{list(module.bias.shape)}")
        replacement = build_layer(module, weight, bias, tensor_name)
        if replacement is None:
            state[tensor_name] = _tensor(weight.dense())
            if weight.kind != DENSE:
                report.kept[module_fqn] = _why_kept(module, weight)
            continue
        tensors.pop(bias_name, None)
        replacement.deepshrink_runtime_kind = weight.kind  # type: ignore[assignment]
        set_submodule(skeleton, module_fqn, replacement)
        report.replaced[module_fqn] = f"{type(replacement).__name__} ({weight.kind})"
    state.update({name: _tensor(value) for name, value in tensors.items()})
    try:
        result = skeleton.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # a tensor of another shape than the model's
        raise FormatError(f"the file's tensors do not fit the model: {str(exc).strip().splitlines()[-1]}") from exc
    if result.unexpected_keys:
        raise FormatError(f"tensors {sorted(result.unexpected_keys)} do not belong to the model")
    _fill_unsaved_buffers(skeleton, buffers_from, model)
    unset = [n for n, t in (*skeleton.named_parameters(), *skeleton.named_buffers()) if t.is_meta]
    if unset:
        raise FormatError(f"the file lacks tensors {unset} that the model needs")
    for parameter in skeleton.parameters():
        parameter.requires_grad_(False)
    skeleton.runtime_report = report  # type: ignore[assignment]
    return skeleton.eval()


DENSE = "dense"
"""The kind of weights stored without compression: kept in their layers, never reported."""


def _why_kept(module: nn.Module, weight: StoredWeight) -> str:
    if plain_type(module) is None and isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding):
        return f"{type(module).__name__} has a forward of its own: kept, fed its decoded {weight.kind} weight"
    return f"no {weight.kind} kernel for {type(module).__name__}: kept, fed its decoded weight"


def _fill_unsaved_buffers(skeleton: nn.Module, source: nn.Module | None, spec: Skeleton) -> None:
    """Non-persistent buffers (absent from every state dict) still on the meta device: copied from ``source``, or
    from a model constructed for real from the arch spec."""
    missing = [n for n, b in skeleton.named_buffers() if b.is_meta]
    if not missing:
        return
    if source is None and isinstance(spec, tuple):
        source = build_model(spec[0], **dict(spec[1]))
    if source is None:
        return
    available = dict(source.named_buffers())
    for name in missing:
        if name in available:
            owner, _, attr = name.rpartition(".")
            target = skeleton.get_submodule(owner) if owner else skeleton
            target._buffers[attr] = available[name].detach().clone()


def stored_from_model(model: nn.Module) -> tuple[dict[str, StoredWeight], dict[str, Tensor]]:
    """``(weights, tensors)`` of a model carrying compression state: what a ``.dsz`` file would hold.

    Weights with a value transform are stored in its export's kind; pruned-only weights as ``sparse``;
    everything else (unpruned weights, biases, buffers) goes to ``tensors`` as plain tensors.
    """
    weights: dict[str, StoredWeight] = {}
    for fqn, module, name, _ in iter_states(model):
        key = f"{fqn}.{name}" if fqn else name
        mask = get_mask(module, name)
        transform = get_value_transform(module, name)
        with torch.no_grad():
            latent = latent_weight(module, name).detach()
            masked = latent * mask.to(latent.dtype) if mask is not None else latent
            mask_np = None if mask is None else mask.cpu().numpy().astype(bool)
            if transform is not None:
                exported = {k: v.detach().cpu().numpy() if isinstance(v, Tensor) else v
                            for k, v in transform.export(masked).items()}
                weights[key] = stored_from_export(exported, mask_np)
            elif mask_np is not None:
                weights[key] = stored_from_export(
                    {"kind": "sparse", "mask": mask_np, "values": masked.cpu().numpy().astype(np.float32)})
    # not bake_(deepcopy(model)): a deep copy shares the parametrized class, and baking it would strip the
    # original's properties too
    state = {k: v for k, v in model.state_dict().items() if "parametrizations" not in k.split(".")}
    for fqn, module, name, _ in iter_states(model):
        key = f"{fqn}.{name}" if fqn else name
        if key not in weights:
            state[key] = getattr(module, name).detach()
    tensors = {k: v.detach().cpu() for k, v in state.items() if k not in weights}
    return weights, tensors


def from_model(model: nn.Module, example: Any = None) -> nn.Module:
    """The runtime version of an in-memory compressed model (its compressed weights never go dense again).

    With ``example`` (one input batch) BatchNorms are folded first, on a copy, into the layer before them where
    that layer can take them (plain weights, masks, ternary scales), so they cost nothing at run time.
    """
    if example is not None:
        model = copy.deepcopy(model)
        fold_batchnorm_(model, example, skip_unfoldable=True)
    weights, tensors = stored_from_model(model)
    arch = arch_of(model)
    if arch is not None:
        return from_stored((arch[0], arch[1]), weights, tensors, edits=recorded_edits(model), buffers_from=model)
    leftover = [f"{fqn}.{name}" for fqn, _, name, _ in iter_states(model) if f"{fqn}.{name}" not in weights]
    if leftover:
        raise ConfigError(f"{leftover}: parametrized without a mask or value transform; bake_ the model first")
    return from_stored(meta_skeleton(model), weights, tensors, buffers_from=model)


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s structure on the meta device, without compression state or forward hooks."""
    skeleton = plain_copy(model).to("meta")
    for module in skeleton.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return skeleton


def load_with_meta(path: str | os.PathLike[str], model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(runtime model, meta)`` from a ``.dsz`` file written by :mod:`deepshrink.codec`.

    The model is rebuilt from the file's recorded arch (zoo names and allow-listed specs), or from ``model`` (an
    instance of the architecture, uncompressed; its weights are not read, only its structure and its buffers).
    """
    compressed = read_compressed(path)
    header = dict(compressed.header)
    arch = header.get("arch")
    edits = header.get("edits") or []
    if model is not None:
        skeleton: Skeleton = meta_skeleton(model)
    elif arch:
        skeleton = (str(arch), header.get("kwargs") or {})
    else:
        raise ConfigError(f"{path}: the file records no model arch; pass the model (runtime.load(path, model=...)) "
                          "or --model")
    try:
        rebuilt = from_stored(skeleton, compressed.weights, compressed.tensors, edits=edits, buffers_from=model)
    except (ConfigError, FormatError) as exc:  # name the file
        raise FormatError(f"{path}: {exc}") from exc
    meta = dict(compressed.meta)
    meta.setdefault("arch", arch)
    meta.setdefault("kwargs", header.get("kwargs") or {})
    return rebuilt, meta


def load(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """An ``nn.Module`` whose compressed layers execute from the compressed form of the ``.dsz`` file at ``path``
    (see :func:`load_with_meta` for ``model``)."""
    return load_with_meta(path, model)[0]
