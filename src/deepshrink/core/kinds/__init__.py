"""Value kinds: every form a stored weight can take, declared once each.

A weight leaves its compression state as a :class:`StoredWeight`: the positions it keeps (all, or the
unpruned ones), one datum per kept position (an integer symbol, or a float value for the float kinds) and a
few parameters (a codebook, a fractional length, ternary scales). Its :class:`ValueKind` says what float values
those stand for and, where it can, gives them as a :class:`Palette` (a table of values and a code per kept
weight), the form every lookup-based consumer shares.

The codec, the runtime and the exporters look kinds up by name (:func:`kind_of`); none of them branches on a
kind's name. A new kind is one module that subclasses :class:`ValueKind` and calls :func:`register_kind`, plus
one handler per consumer that wants to treat it specially (docs/architecture.md has a worked example).
"""

from __future__ import annotations

from .base import (
    KINDS,
    Palette,
    StoredWeight,
    ValueKind,
    dequantize,
    kind_of,
    register_kind,
    stored_from_export,
)
from .codebook import CodebookKind
from .fixedpoint import FixedPointKind
from .floats import DenseKind, SparseKind
from .ternary import TernaryKind

__all__ = [
    "KINDS",
    "CodebookKind",
    "DenseKind",
    "FixedPointKind",
    "Palette",
    "SparseKind",
    "StoredWeight",
    "TernaryKind",
    "ValueKind",
    "dequantize",
    "kind_of",
    "register_kind",
    "stored_from_export",
]
