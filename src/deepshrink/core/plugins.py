"""The one list of technique packages, imported on demand so their registrations exist.

Checkpoints and ``.dsz`` files name compression-state classes, value kinds and structural edits; the names are
resolved only against the registries (techniques, state classes, edits), which the technique packages fill when
imported. This fixed list is the only way a name from a file can cause an import.
"""

from __future__ import annotations

import importlib

TECHNIQUE_PACKAGES = ("deepshrink.prune", "deepshrink.share", "deepshrink.fixedpoint", "deepshrink.ternary",
                      "deepshrink.lowrank")

_loaded = False


def load_technique_plugins() -> None:
    """Import every technique package once (registers their techniques, state classes, stages and edits)."""
    global _loaded
    if _loaded:
        return
    for name in TECHNIQUE_PACKAGES:
        importlib.import_module(name)
    _loaded = True
