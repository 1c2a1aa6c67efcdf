"""Import the technique packages on demand, so their state classes and edits are registered.

Checkpoints and ``.dsz`` files name compression-state classes and structural edits; the names are resolved
only against the registries (:data:`~deepshrink.core.state.STATE_CLASSES`, :data:`~deepshrink.core.edits.EDITS`),
which the technique packages fill when imported. This fixed list is the only way a name from a file can cause
an import.
"""

from __future__ import annotations

import importlib

TECHNIQUE_PACKAGES = ("deepshrink.share", "deepshrink.fixedpoint", "deepshrink.ternary", "deepshrink.lowrank")

_loaded = False


def load_technique_plugins() -> None:
    """Import every technique package once (registers their state classes and structural edits)."""
    global _loaded
    if _loaded:
        return
    for name in TECHNIQUE_PACKAGES:
        importlib.import_module(name)
    _loaded = True
