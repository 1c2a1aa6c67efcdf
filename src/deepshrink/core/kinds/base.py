"""The kind registry, :class:`StoredWeight` (a weight in its stored form) and :class:`Palette`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import FormatError

KINDS: dict[str, ValueKind] = {}
"""Registry: kind name -> its :class:`ValueKind` (filled by the kind modules at import)."""


@dataclass(frozen=True, eq=False)
class StoredWeight:
    """A weight as the codec stores it and every consumer reads it.

    ``positions``: the kept flat (C-order) positions, strictly increasing, or None for every position.
    ``data``: one entry per kept position, an int64 symbol (value kinds) or a float32 value (float kinds).
    ``params``: the kind's other parameters (numpy arrays and JSON values, e.g. ``centroids``, ``frac_len``).
    Positions outside the kept set hold zero.
    """

    kind: str
    shape: tuple[int, ...]
    data: np.ndarray
    positions: np.ndarray | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def kept(self) -> int:
        return int(self.data.shape[0])

    def flat_positions(self) -> np.ndarray:
        """The kept positions (every position for a weight stored without a mask)."""
        return np.arange(self.numel, dtype=np.int64) if self.positions is None else self.positions

    def mask(self) -> np.ndarray | None:
        """Boolean keep-mask of the weight's shape, or None when every position is stored."""
        if self.positions is None:
            return None
        out = np.zeros(self.numel, dtype=bool)
        out[self.positions] = True
        return out.reshape(self.shape)

    @property
    def value_kind(self) -> ValueKind:
        return kind_of(self.kind)

    def values(self) -> np.ndarray:
        """float32 value of every kept entry, exactly what the compressed model computes with."""
        return self.value_kind.values(self)

    def dense(self) -> np.ndarray:
        """The float32 weight of ``shape`` (zero outside the kept positions)."""
        return self.value_kind.dense(self)

    def palette(self) -> Palette | None:
        """Table + codes view of the weight, for kinds that are lookups (None for float kinds)."""
        return self.value_kind.palette(self)

    def export(self) -> dict[str, Any]:
        """The weight-shaped export dict a value transform restores itself from (no ``mask`` key)."""
        return self.value_kind.to_export(self)


@dataclass(frozen=True, eq=False)
class Palette:
    """Values as a lookup: kept weight ``i`` is ``table[group(i), codes[i]]``; ``codes[i] == -1`` means exactly 0.

    ``table`` is ``(groups, K)`` float32; the groups split the output channels (rows of the weight) into
    ``groups`` equal, contiguous blocks (1: one table for the layer; ``shape[0]``: one per channel).
    """

    table: np.ndarray
    codes: np.ndarray

    @property
    def groups(self) -> int:
        return int(self.table.shape[0])

    def flat(self, weight: StoredWeight) -> tuple[np.ndarray, np.ndarray]:
        """``(codes into one flat table, flat table)``: group ``g``'s code ``c`` becomes ``g * K + c``."""
        table = np.ascontiguousarray(self.table, dtype=np.float32)
        if self.groups == 1:
            return self.codes, table.reshape(-1)
        per_group = weight.numel // self.groups
        group = weight.flat_positions() // max(per_group, 1)
        codes = np.where(self.codes >= 0, self.codes + group * table.shape[1], -1)
        return codes, table.reshape(-1)


class ValueKind:
    """One stored form. Subclasses set the class attributes and implement :meth:`values` (and :meth:`check`,
    :meth:`palette` where they apply); the generic conversions below then serve every consumer.

    ``symbol_key``: the export-dict key of the integer symbols (None for the float kinds); ``filler``: the symbol
    a position outside the kept set holds in the weight-shaped export; ``symbol_dtype``: that array's dtype.
    """

    name: ClassVar[str]
    symbol_key: ClassVar[str | None] = None
    filler: ClassVar[int] = 0
    symbol_dtype: ClassVar[type] = np.int64
    doc: ClassVar[str] = ""

    def check(self, weight: StoredWeight) -> None:
        """Raise :class:`FormatError` (naming the problem) when ``weight``'s data or params are inconsistent."""

    def values(self, weight: StoredWeight) -> np.ndarray:
        """float32 value per kept entry."""
        raise NotImplementedError

    def palette(self, weight: StoredWeight) -> Palette | None:
        return None

    def dense(self, weight: StoredWeight) -> np.ndarray:
        values = self.values(weight)
        if weight.positions is None:
            return values.reshape(weight.shape)
        out = np.zeros(weight.numel, dtype=np.float32)
        out[weight.positions] = values
        return out.reshape(weight.shape)

    def from_export(self, exported: Mapping[str, Any], mask: np.ndarray | None = None) -> StoredWeight:
        """The stored form of a value transform's export dict (kept positions from ``mask`` when given)."""
        if self.symbol_key is None or self.symbol_key not in exported:
            raise FormatError(f"a {self.name!r} export needs an integer array {self.symbol_key!r}")
        ints = np.asarray(exported[self.symbol_key])
        if not np.issubdtype(ints.dtype, np.integer):
            raise FormatError(f"{self.name!r} export: {self.symbol_key!r} must be an integer array, got {ints.dtype}")
        mask = exported.get("mask", mask)
        flat = ints.reshape(-1).astype(np.int64)
        positions = None
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != ints.shape:
                raise FormatError(f"{self.name!r} export: mask {mask.shape} does not match {ints.shape}")
            positions = np.flatnonzero(mask)
            flat = flat[positions]
        params = {k: v for k, v in exported.items() if k not in ("kind", "mask", self.symbol_key)}
        return StoredWeight(self.name, tuple(int(d) for d in ints.shape), flat, positions, params)

    def to_export(self, weight: StoredWeight) -> dict[str, Any]:
        assert self.symbol_key is not None
        full = np.full(weight.numel, self.filler, dtype=np.int64)
        full[weight.flat_positions()] = weight.data
        return {"kind": self.name, **weight.params, self.symbol_key: full.reshape(weight.shape).astype(self.symbol_dtype)}


def register_kind(kind: ValueKind) -> ValueKind:
    """Make ``kind`` known to every consumer under ``kind.name``."""
    KINDS[kind.name] = kind
    return kind


def kind_of(name: Any) -> ValueKind:
    """The registered kind called ``name`` (a :class:`FormatError` lists the known ones)."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise FormatError(f"unknown weight kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return kind


def stored_from_export(exported: Mapping[str, Any], mask: np.ndarray | None = None) -> StoredWeight:
    """:meth:`ValueKind.from_export` of the kind the export names."""
    return kind_of(exported.get("kind")).from_export(exported, mask)


def dequantize(exported: Mapping[str, Any]) -> np.ndarray:
    """float32 weights of an export dict; equal bit for bit to the transform's forward output."""
    weight = stored_from_export(exported)
    weight.value_kind.check(weight)
    return weight.dense()
