"""Checkpoints: arch + kwargs, structural edits, compression state and weights, written atomically.

Read as untrusted input (:func:`deepshrink.core.torchfile.load_torch_file`: ``torch.load(weights_only=True)`` of a
checked zip archive): a checkpoint holds tensors, numbers, strings, lists and dicts, never code, and its structure
is checked before use, so a damaged one is a :class:`FormatError` naming the file. Models carrying compression
state (masks, codebooks, ...) round-trip with their state.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.atomic import atomic_write_bytes
from ..core.edits import recorded_edits, replay_edits
from ..core.errors import ConfigError, FormatError
from ..core.select import SUPPORTED_LAYERS
from ..core.state import compression_spec, prepare_for_state_dict
from ..core.torchfile import load_torch_file, state_dict_from
from ..models.registry import arch_of, build_model

FORMAT = "deepshrink-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any] | None = None,
                    train_state: dict[str, Any] | None = None) -> None:
    """Write ``model`` (and optional JSON-able ``meta`` and resumable ``train_state``) to ``path`` atomically."""
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    arch = arch_of(module)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch[0] if arch else None,
        "kwargs": arch[1] if arch else {},
        "edits": recorded_edits(module),
        "compression": compression_spec(module),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "meta": meta or {},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "state_dict": dict, "compression": dict, "edits": list, "meta": dict, "kwargs": dict, "arch": (str, type(None)),
    "train_state": dict}


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict, loaded without unpickling code and checked field by field."""
    path = Path(path)
    payload = load_torch_file(path, "deepshrink checkpoint")
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str) or payload["format"] != FORMAT:
        raise FormatError(f"{path}: not a deepshrink checkpoint (no '{FORMAT}' marker)")
    if not isinstance(payload.get("version"), int) or payload["version"] != VERSION:
        raise FormatError(f"{path}: checkpoint version {repr(payload.get('version'))[:40]} is not supported (expected {VERSION})")
    for key, kind in _FIELDS.items():
        if key in payload and not isinstance(payload[key], kind):
            raise FormatError(f"{path}: checkpoint field {key!r} has type {type(payload[key]).__name__}")
    if "state_dict" not in payload:
        raise FormatError(f"{path}: checkpoint has no 'state_dict'")
    payload["state_dict"] = state_dict_from(payload["state_dict"], f"{path}: checkpoint 'state_dict'")
    if not all(isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v)
               for k, v in payload.get("compression", {}).items()):
        raise FormatError(f"{path}: checkpoint 'compression' must map tensor names to lists of class names")
    if not all(isinstance(k, str) for k in payload.get("kwargs", {})):
        raise FormatError(f"{path}: checkpoint 'kwargs' must have string keys")
    return payload


def _add_biases(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """A zero bias on each Linear/Conv layer built without one whose bias the checkpoint holds (bias correction
    gives such layers one), so that the checkpoint's tensors fit."""
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        fqn, _, name = key.rpartition(".")
        module = modules.get(fqn)
        if (name == "bias" and isinstance(module, SUPPORTED_LAYERS) and getattr(module, "bias", 0) is None
                and isinstance(module.weight, torch.Tensor) and value.dim() == 1
                and value.shape[0] == module.weight.shape[0]):
            module.bias = nn.Parameter(torch.zeros(value.shape, dtype=value.dtype))


def load_into(model: nn.Module, payload: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Load a checkpoint payload into ``model``: replay edits, rebuild compression state, load weights
    (FormatError naming ``source`` when the payload does not fit the model)."""
    try:
        replay_edits(model, payload.get("edits", []))
        state_dict = payload["state_dict"]
        _add_biases(model, state_dict)
        prepare_for_state_dict(model, payload.get("compression", {}), state_dict)
        model.load_state_dict(state_dict)
    except FormatError as exc:
        raise FormatError(f"{source}: {exc}") from exc
    except (RuntimeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"{source}: the checkpoint's weights do not fit the model ({message})") from exc
    return model


def _probe(payload: dict[str, Any], source: str) -> None:
    """Build the recorded arch on the meta device (no memory) with its edits and check that its tensors have the
    shapes of the checkpoint's tensors, so that crafted kwargs cannot make the real build allocate a huge model."""
    arch, kwargs = payload["arch"], payload.get("kwargs", {})
    try:
        with torch.device("meta"):
            probe = build_model(arch, **kwargs)
            replay_edits(probe, payload.get("edits", []))
    except (ConfigError, FormatError, TypeError, ValueError) as exc:
        raise FormatError(f"{source}: cannot rebuild {arch!r} with {kwargs}: {exc}") from exc
    except Exception:  # a constructor that cannot run on the meta device: load_state_dict checks shapes later
        return
    stored = {(f".{k}".replace(".parametrizations.", ".")[1:].removesuffix(".original") if k.endswith(".original")
               else k): tuple(v.shape) for k, v in payload["state_dict"].items()}
    wrong = sorted(k for k, v in probe.state_dict().items() if stored.get(k) != tuple(v.shape))
    if wrong:
        raise FormatError(f"{source}: {arch}({kwargs}) does not match the stored tensors (differs at {wrong[:5]})")


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` from ``path``; the model is rebuilt from the recorded arch unless one is given."""
    payload = read_checkpoint(path)
    if model is None:
        if not payload.get("arch"):
            raise ConfigError(f"{path}: the checkpoint records no arch; pass the model to load into")
        _probe(payload, str(path))
        try:
            model = build_model(payload["arch"], **payload.get("kwargs", {}))
        except Exception as exc:  # arguments the file stated: whatever the constructor raises on them is theirs
            raise FormatError(f"{path}: cannot rebuild {payload['arch']!r} with {payload.get('kwargs', {})}: {exc}") from exc
    load_into(model, payload, str(path))
    meta = dict(payload.get("meta", {}))
    meta["arch"] = payload.get("arch")
    meta["kwargs"] = payload.get("kwargs", {})
    return model, meta
