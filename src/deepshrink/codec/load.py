"""``load_compressed``: a ``.dsz`` file -> a model carrying the compression state it was written with.

Masks and value transforms are restored (so the model can be fine-tuned further) and its effective weights equal
the saved model's bit for bit. The model is rebuilt from the recorded arch only after a dry run on the meta
device has shown that its tensors have exactly the file's shapes, so a crafted header cannot make us allocate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.edits import replay_edits
from ..core.errors import ConfigError, DeepShrinkError, FormatError
from ..core.state import iter_states, set_mask
from ..core.techniques import restorer_for
from ..models.registry import build_model
from .decode import CompressedFile, read_compressed

__all__ = ["load_compressed", "load_compressed_with_meta"]


def _stated_shapes(cf: CompressedFile) -> dict[str, tuple[int, ...]]:
    shapes = {name: tuple(weight.shape) for name, weight in cf.weights.items()}
    shapes.update({name: tuple(array.shape) for name, array in cf.tensors.items()})
    return shapes


def _rebuild(cf: CompressedFile, path: str) -> nn.Module:
    """``arch(**kwargs)`` with the edits replayed, once a meta-device probe has matched the file's shapes."""
    arch, kwargs, edits = cf.header["arch"], cf.header.get("kwargs", {}), cf.header["edits"]
    try:
        with torch.device("meta"):
            probe = build_model(arch, **kwargs)
            replay_edits(probe, edits)
    except (ConfigError, FormatError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: cannot rebuild {arch!r} with {kwargs}: {exc}") from exc
    except Exception:  # a constructor that cannot run on the meta device: load_state_dict checks shapes later
        probe = None
    if probe is not None:
        expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
        stated = _stated_shapes(cf)
        if expected != stated:
            wrong = sorted(k for k in expected.keys() | stated.keys() if expected.get(k) != stated.get(k))
            raise FormatError(f"{path}: {arch}({kwargs}) does not match the stored tensors (differs at {wrong[:5]})")
    try:
        model = build_model(arch, **kwargs)
    except Exception as exc:  # arguments the file stated: whatever the constructor raises on them is theirs
        raise FormatError(f"{path}: cannot rebuild {arch!r} with {kwargs}: {exc}") from exc
    replay_edits(model, edits)
    return model


def load_compressed_with_meta(path: str | os.PathLike[str], model: nn.Module | None = None
                              ) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` from a ``.dsz`` file; the model is rebuilt from the recorded arch unless one is given."""
    cf = read_compressed(path)
    header = cf.header
    if model is None:
        if not header.get("arch"):
            raise ConfigError(f"{path}: the file records no arch; pass the model to load into")
        model = _rebuild(cf, str(path))
    else:
        replay_edits(model, header["edits"])
    if any(True for _ in iter_states(model)):
        raise FormatError(f"{path}: the model already carries compression state; load into a fresh model")
    effective = {fqn: weight.dense() for fqn, weight in cf.weights.items()}
    state = {k: torch.from_numpy(v) for k, v in cf.tensors.items()}
    state.update({k: torch.from_numpy(v) for k, v in effective.items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FormatError(f"{path}: the stored tensors do not fit {type(model).__name__}: {exc}") from exc
    for fqn, weight in cf.weights.items():
        module_fqn, _, tname = fqn.rpartition(".")
        module = model.get_submodule(module_fqn)
        mask = weight.mask()
        if mask is not None:
            set_mask(module, torch.from_numpy(mask), tname)
        restorer = restorer_for(weight.kind)
        if restorer is not None:
            restorer.attach(module, weight.export(), tname)
        got = getattr(module, tname).detach().cpu().to(torch.float32).numpy()
        if not np.array_equal(got, effective[fqn], equal_nan=True):  # NaN and Inf load as stored
            raise DeepShrinkError(f"{path}: restoring {fqn!r} ({weight.kind}) does not reproduce the stored weights; "
                                  "the value transform's attach()/from_export() is inconsistent with its export()")
    meta = cf.meta
    meta["arch"] = header.get("arch")
    meta["kwargs"] = header.get("kwargs", {})
    return model, meta


def load_compressed(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """The model stored in ``path`` (see :func:`load_compressed_with_meta`)."""
    return load_compressed_with_meta(Path(path), model)[0]
