"""Checkpoints: arch + kwargs, structural edits, compression state and weights, written atomically.

Loaded with ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings, lists and dicts,
never code. Models carrying compression state (masks, codebooks, ...) round-trip with their state.
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
from ..core.state import compression_spec, prepare_for_state_dict
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


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dict (validated), loaded without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FormatError(f"{path}: not a readable deepshrink checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FormatError(f"{path}: not a deepshrink checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise FormatError(f"{path}: checkpoint version {payload.get('version')!r} is not supported (expected {VERSION})")
    return payload


def load_into(model: nn.Module, payload: dict[str, Any]) -> nn.Module:
    """Load a checkpoint payload into ``model``: replay edits, rebuild compression state, load weights."""
    replay_edits(model, payload.get("edits", []))
    state_dict = payload["state_dict"]
    prepare_for_state_dict(model, payload.get("compression", {}), state_dict)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise FormatError(f"checkpoint weights do not fit the model: {exc}") from exc
    return model


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` from ``path``; the model is rebuilt from the recorded arch unless one is given."""
    payload = read_checkpoint(path)
    if model is None:
        if not payload.get("arch"):
            raise ConfigError(f"{path}: the checkpoint records no arch; pass the model to load into")
        try:
            model = build_model(payload["arch"], **payload.get("kwargs", {}))
        except ConfigError as exc:
            raise FormatError(f"{path}: {exc}") from exc
    load_into(model, payload)
    meta = dict(payload.get("meta", {}))
    meta["arch"] = payload.get("arch")
    meta["kwargs"] = payload.get("kwargs", {})
    return model, meta
