"""Structural edits (BN folding, low-rank factorisation, ...) recorded on a model so files can replay them.

A checkpoint or ``.dsz`` file stores ``arch`` + kwargs and the list of edits; the loader rebuilds the zoo
model, replays each edit by name from the :data:`EDITS` allow-list (shapes only), then loads the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .errors import FormatError

EditFn = Callable[[nn.Module, dict[str, Any]], None]
EDITS: dict[str, EditFn] = {}
"""Allow-list: edit name -> function that re-applies the edit's structure to a freshly built model."""

_ATTR = "deepshrink_edits"


def register_edit(name: str) -> Callable[[EditFn], EditFn]:
    """Decorator: make a structural edit replayable by ``name`` (params must be JSON-able)."""

    def wrap(fn: EditFn) -> EditFn:
        EDITS[name] = fn
        return fn

    return wrap


def record_edit(model: nn.Module, name: str, **params: Any) -> None:
    """Note on ``model`` that edit ``name`` was applied with ``params`` (after applying it)."""
    if name not in EDITS:
        raise KeyError(f"edit {name!r} is not registered")
    edits = list(getattr(model, _ATTR, []))
    edits.append({"op": name, **params})
    object.__setattr__(model, _ATTR, edits)


def recorded_edits(model: nn.Module) -> list[dict[str, Any]]:
    """The edits applied to ``model`` so far, in order."""
    return list(getattr(model, _ATTR, []))


def replay_edits(model: nn.Module, edits: list[dict[str, Any]]) -> None:
    """Re-apply recorded ``edits`` to a fresh model (structure only; weights come from the state dict)."""
    if any(isinstance(edit, dict) and edit.get("op") not in EDITS for edit in edits):
        from .plugins import load_technique_plugins

        load_technique_plugins()
    for edit in edits:
        if not isinstance(edit, dict) or edit.get("op") not in EDITS:
            raise FormatError(f"unknown structural edit {edit!r} (known: {sorted(EDITS)})")
        params = {k: v for k, v in edit.items() if k != "op"}
        try:
            EDITS[edit["op"]](model, params)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"cannot replay edit {edit!r} on {type(model).__name__}: {exc}") from exc
    object.__setattr__(model, _ATTR, list(edits))


def set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule at ``fqn`` by ``new``."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
