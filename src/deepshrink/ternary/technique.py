"""Ternary quantization as a registered technique: configs, handler, states, restored kind and stage in one place."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.select import Selector
from ..core.techniques import Technique, register_technique
from .api import ternarize_
from .stage import TERNARIZE_KEYS, build_ternarize
from .ttq import TTQ, Ternary
from .twn import TWN, SymmetricTernary


def apply(model: nn.Module, config: TTQ | TWN, *, select: Selector = None, exclude: Selector = None,
          calib: Any = None) -> list[str]:
    """``compress_`` handler: :func:`ternarize_` (train afterwards with ``ternary_param_groups``)."""
    return ternarize_(model, config, select, exclude=exclude)


TECHNIQUE = register_technique(Technique(
    "ternary", (TTQ, TWN), apply, states=(Ternary, SymmetricTernary), restores={"ternary": Ternary},
    stages={"ternarize": (TERNARIZE_KEYS, build_ternarize)},
    doc="Trained Ternary Quantization (Zhu, Han, Mao, Dally 2017) and the TWN baseline"))
