"""A layer's weights as C arrays in their compressed form, the smallest of a few layouts, chosen by bytes.

A weight reaches C as an :class:`EntryForm`: its kept non-zero entries (flat C-order positions of the
``(rows, cols)`` matrix, rows = output channels) and one number each, a float (float models) or an integer (fixed
point). Which numbers a kind stands for is looked up in :data:`VALUE_FORMS`, keyed by kind name and filled below
(any other kind with a palette goes through the generic lookup form, any other through its float values); the
kinds themselves are read through :mod:`deepshrink.core.kinds`, lookup kinds through the runtime's CSR layout
(:func:`deepshrink.runtime.layout.sparse_rows`).

:func:`encode_matrix` then stores the entries in the cheapest of:

* positions: ``dense`` (every position of the matrix, pruned ones as zeros) or ``sparse``: Deep Compression's
  relative index over the flattened matrix, ``b``-bit gaps with filler entries for longer runs
  (:func:`deepshrink.codec.sparse.encode_positions`), crossing row ends, so no per-row pointers;
* values: ``direct`` (one ``float``/``int8_t``/``int16_t``/... each) or ``codes``: bit-packed indices
  (:func:`deepshrink.codec.bits.pack_fixed`, MSB first) into a small table per group of output channels (the
  distinct values used: a codebook's centroids, ternary ``{-wn, +wp}``, the few integers of a fixed-point weight).

Bit-packed streams carry two zero bytes of padding so the kernels' 3-byte read never leaves the array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...codec.bits import pack_fixed
from ...codec.sparse import encode_positions, filler_code
from ...core.errors import ConfigError
from ...core.kinds import StoredWeight
from ...runtime.layout import sparse_rows

CTYPE_BYTES = {"float": 4, "int8_t": 1, "int16_t": 2, "int32_t": 4, "int64_t": 8, "uint8_t": 1, "uint16_t": 2}
STREAM_PAD = 2
MAX_GAP_BITS = 12
MAX_CODE_BITS = 12


def int_ctype(lo: int, hi: int) -> str:
    """The narrowest signed C type holding every integer in ``[lo, hi]``."""
    for bits, name in ((8, "int8_t"), (16, "int16_t"), (32, "int32_t"), (64, "int64_t")):
        if -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1)):
            return name
    raise ConfigError(f"integers in [{lo}, {hi}] do not fit 64 bits")


@dataclass(frozen=True, eq=False)
class CArray:
    """One ``static const`` array of ``model.c``."""

    name: str
    ctype: str
    values: np.ndarray
    comment: str = ""

    @property
    def nbytes(self) -> int:
        return int(self.values.size) * CTYPE_BYTES[self.ctype]


@dataclass(frozen=True, eq=False)
class EntryForm:
    """A weight's kept non-zero entries as C computes with them: ``positions`` (flat, increasing, into the
    ``(rows, cols)`` matrix), one value each (float32, or int64 for integer layers), and how many equal groups of
    rows may share a value table (a per-channel-group codebook or ternary scale; 1 otherwise)."""

    rows: int
    cols: int
    positions: np.ndarray
    values: np.ndarray
    groups: int = 1
    source: str = ""

    @property
    def integer(self) -> bool:
        return bool(np.issubdtype(self.values.dtype, np.integer))

    @property
    def numel(self) -> int:
        return self.rows * self.cols


ValueForm = Callable[[StoredWeight, bool], EntryForm]
VALUE_FORMS: dict[str, ValueForm] = {}
"""Kind name -> the :class:`EntryForm` of a stored weight of that kind (``integer``: an integer layer's weight)."""


def register_value_form(kind: str) -> Callable[[ValueForm], ValueForm]:
    """Decorator: ``fn(weight, integer) -> EntryForm`` gives C the numbers of weights of ``kind``."""

    def wrap(fn: ValueForm) -> ValueForm:
        VALUE_FORMS[kind] = fn
        return fn

    return wrap


def _matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = int(shape[0]) if shape else 1
    return rows, int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1


def _float_only(weight: StoredWeight, integer: bool) -> None:
    if integer:
        raise ConfigError(f"a {weight.kind!r} weight has no integer form; quantize the layer to fixed point")


@register_value_form("dense")
@register_value_form("sparse")
def _float_values(weight: StoredWeight, integer: bool) -> EntryForm:
    """Plain float weights: every kept non-zero value as it is."""
    _float_only(weight, integer)
    rows, cols = _matrix(weight.shape)
    values = weight.values().astype(np.float32)
    keep = values != 0
    return EntryForm(rows, cols, weight.flat_positions()[keep], values[keep], 1, weight.kind)


def _lookup_form(weight: StoredWeight, integer: bool) -> EntryForm:
    """A lookup kind (codebook, ternary, any kind with a palette): the runtime's CSR layout of codes into the
    palette, read back as positions and values; the palette's row groups become the value-table groups."""
    _float_only(weight, integer)
    palette = weight.palette()
    assert palette is not None
    rows, cols = _matrix(weight.shape)
    layout = sparse_rows(weight if len(weight.shape) > 1 else _as_column(weight))
    row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(layout.indptr))
    positions = row_of * cols + layout.indices.astype(np.int64)
    values = layout.table[layout.codes.astype(np.int64)].astype(np.float32)
    keep = values != 0
    groups = palette.groups if rows % max(palette.groups, 1) == 0 else 1
    what = f"{weight.kind}, {palette.table.shape[1]} values" + (f" x {palette.groups} groups" if groups > 1 else "")
    return EntryForm(rows, cols, positions[keep], values[keep], groups, what)


def _as_column(weight: StoredWeight) -> StoredWeight:
    """A 1-D weight (a shared bias) as an ``(n, 1)`` matrix for the CSR layout."""
    return StoredWeight(weight.kind, (*weight.shape, 1), weight.data, weight.positions, weight.params)


register_value_form("codebook")(_lookup_form)
register_value_form("ternary")(_lookup_form)


@register_value_form("fixedpoint")
def _fixed_point(weight: StoredWeight, integer: bool) -> EntryForm:
    """Fixed point: the stored integers for an integer layer (their fractional lengths become the layer's output
    shift), else the exact float values they stand for."""
    rows, cols = _matrix(weight.shape)
    positions = weight.flat_positions()
    if integer:
        ints = np.asarray(weight.data, dtype=np.int64)
        keep = ints != 0
        return EntryForm(rows, cols, positions[keep], ints[keep], 1, "fixed point")
    values = weight.values().astype(np.float32)
    keep = values != 0
    return EntryForm(rows, cols, positions[keep], values[keep], 1, "fixed point as float")


def entry_form(weight: StoredWeight, integer: bool) -> EntryForm:
    """The :class:`EntryForm` of ``weight`` through :data:`VALUE_FORMS` (unlisted kinds: palette or float values)."""
    form = VALUE_FORMS.get(weight.kind)
    if form is not None:
        return form(weight, integer)
    if weight.palette() is not None:
        return _lookup_form(weight, integer)
    return _float_values(weight, integer)


def vector_form(values: np.ndarray) -> EntryForm:
    """A bias (or any per-channel vector) as a one-column matrix; zeros are kept (a bias is stored dense)."""
    flat = np.asarray(values).reshape(-1)
    return EntryForm(flat.size, 1, np.arange(flat.size, dtype=np.int64), flat, 1, "vector")


@dataclass(eq=False)
class EncodedWeight:
    """A weight stored for C: its arrays and the C expressions a kernel reads it with."""

    name: str
    form: EntryForm
    layout: str  # "dense" | "sparse"
    storage: str  # "direct" | "codes"
    elem: str  # C type of one value
    arrays: list[CArray] = field(default_factory=list)
    gap_bits: int = 0
    entries: int = 0  # index entries, fillers included
    fillers: int = 0
    code_bits: int = 0
    table_k: int = 0
    groups: int = 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    @property
    def filler(self) -> int:
        return filler_code(self.gap_bits) if self.gap_bits else 0

    @property
    def rows_per_group(self) -> int:
        return self.form.rows // self.groups

    def describe(self) -> str:
        """One line for the comment above the arrays and the kernel."""
        f = self.form
        where = (f"all {f.numel} positions" if self.layout == "dense" else
                 f"{f.positions.size} of {f.numel} kept, relative index {self.gap_bits}-bit gaps "
                 f"({self.entries} entries, {self.fillers} fillers)")
        what = (f"{self.elem} values" if self.storage == "direct" else
                f"{self.code_bits}-bit codes into {self.table_k} {self.elem} values"
                + (f" per group of {self.rows_per_group} rows" if self.groups > 1 else ""))
        return f"{where}; {what} [{f.source}]; {self.nbytes} bytes"

    def decl(self, indent: str = "    ") -> str:
        """Declarations a kernel needs before its row loop (the group table pointer)."""
        if self.storage == "codes" and self.groups > 1:
            return f"{indent}const {self.elem} *tbl;\n"
        return ""

    def row_setup(self, row: str, indent: str = "    ") -> str:
        """Statements at the start of output row ``row`` (point at its group's table)."""
        if self.storage == "codes" and self.groups > 1:
            return f"{indent}tbl = {self.name}_table + ({row} / {self.rows_per_group}u) * {self.table_k}u;\n"
        return ""

    def value(self, index: str) -> str:
        """C expression of stored value number ``index`` (a flat position when dense, an entry count when sparse)."""
        if self.storage == "direct":
            return f"{self.name}[{index}]"
        table = "tbl" if self.groups > 1 else f"{self.name}_table"
        return f"{table}[{code_expr(f'{self.name}_codes', index, self.code_bits)}]"

    @property
    def needs_unpack(self) -> bool:
        """Whether reading this weight calls ``ds_unpack`` (gaps, or codes of a width that splits bytes)."""
        return ((self.layout == "sparse" and self.gap_bits not in BYTE_WIDTHS)
                or (self.storage == "codes" and self.code_bits not in BYTE_WIDTHS))


BYTE_WIDTHS = (1, 2, 4, 8)
"""Code widths that never straddle a byte: read with one load, a shift and a mask instead of ``ds_unpack``."""


def code_expr(stream: str, index: str, bits: int) -> str:
    """C expression of code number ``index`` of a ``bits``-bit stream packed MSB first."""
    if bits == 8:
        return f"{stream}[{index}]"
    if bits in BYTE_WIDTHS:
        per = 8 // bits
        return (f"(({stream}[({index}) >> {per.bit_length() - 1}u] >> (({per - 1}u - (({index}) & {per - 1}u)) * "
                f"{bits}u)) & {(1 << bits) - 1}u)")
    return f"ds_unpack({stream}, {index}, {bits}u)"


def _bits_for(count: int) -> int:
    return max(1, int(count - 1).bit_length())


def _packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8 + STREAM_PAD


def _stream(symbols: np.ndarray, bits: int) -> np.ndarray:
    data = np.frombuffer(pack_fixed(np.asarray(symbols, dtype=np.int64), bits), dtype=np.uint8)
    return np.concatenate([data, np.zeros(STREAM_PAD, dtype=np.uint8)])


def _gaps(form: EntryForm, bits: int) -> np.ndarray:
    """Relative-index codes of the kept positions (trailing fillers dropped: the entry count is a constant)."""
    mask = np.zeros(form.numel, dtype=bool)
    mask[form.positions] = True
    codes = encode_positions(mask, bits)
    filler = filler_code(bits)
    end = codes.size
    while end and codes[end - 1] == filler:
        end -= 1
    return codes[:end]


def _tables(form: EntryForm, groups: int, with_zero: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(table (groups, K), code per kept entry, code of 0 per group)``: each group's distinct values (plus 0 for
    pruned positions when ``with_zero``; the zero code is then valid)."""
    per = form.rows // groups
    group_of = (form.positions // form.cols) // per
    uniques = []
    for g in range(groups):
        vals = form.values[group_of == g]
        if with_zero:
            vals = np.concatenate([vals, np.zeros(1, dtype=form.values.dtype)])
        uniques.append(np.unique(vals))
    k = max(1, max(u.size for u in uniques))
    table = np.zeros((groups, k), dtype=form.values.dtype)
    codes = np.zeros(form.values.size, dtype=np.int64)
    zeros = np.zeros(groups, dtype=np.int64)
    for g, u in enumerate(uniques):
        table[g, : u.size] = u
        sel = group_of == g
        codes[sel] = np.searchsorted(u, form.values[sel])
        zeros[g] = int(np.searchsorted(u, 0))
    return table, codes, zeros


def _elem_type(values: np.ndarray, integer: bool) -> str:
    if not integer:
        return "float"
    if values.size == 0:
        return "int8_t"
    return int_ctype(int(values.min()), int(values.max()))


def _candidates(form: EntryForm, layouts: tuple[str, ...]) -> list[tuple[int, str, str, int]]:
    """``(bytes, layout, storage, gap_bits)`` of every admissible combination (estimates exact to the byte)."""
    kept = form.positions.size
    elem = _elem_type(form.values, form.integer)
    size = CTYPE_BYTES[elem]
    out: list[tuple[int, str, str, int]] = []
    pruned = kept < form.numel
    for layout in layouts:
        if layout == "dense":
            out.append((form.numel * size, "dense", "direct", 0))
            table, _, _ = _tables(form, form.groups, pruned)
            bits = _bits_for(table.shape[1])
            if bits <= MAX_CODE_BITS:
                out.append((_packed_bytes(form.numel, bits) + table.size * size, "dense", "codes", 0))
        elif kept:
            gap_bits, gap_bytes = min(((b, _packed_bytes(_gaps(form, b).size, b)) for b in range(1, MAX_GAP_BITS + 1)),
                                      key=lambda t: (t[1], t[0]))
            out.append((gap_bytes + kept * size, "sparse", "direct", gap_bits))
            table, _, _ = _tables(form, form.groups, False)
            bits = _bits_for(table.shape[1])
            if bits <= MAX_CODE_BITS:
                out.append((gap_bytes + _packed_bytes(kept, bits) + table.size * size, "sparse", "codes", gap_bits))
    return out


LAYOUTS = {"auto": ("dense", "sparse"), "dense": ("dense",), "sparse": ("sparse",)}
"""The ``layout`` option: which position layouts the chooser may pick (``dense``: every weight stored, as
TensorFlow Lite Micro stores int8 models; ``sparse`` falls back to dense only for an all-zero weight)."""


def encode_matrix(name: str, form: EntryForm, layout: str = "auto", storage: str = "auto",
                  sparse_ram: int = 0) -> EncodedWeight:
    """The cheapest admissible encoding of ``form`` as C arrays named ``name``, ``name_gaps``, ``name_codes``,
    ``name_table`` (ties go to the simpler, faster layout: dense before sparse, direct before codes).
    ``sparse_ram``: bytes of RAM the sparse layout's kernel needs besides (a sparse conv's accumulator plane),
    counted against it: on a microcontroller a byte of RAM is dearer than one of flash."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if storage not in ("auto", "direct", "codes"):
        raise ConfigError(f"storage must be 'auto', 'direct' or 'codes', got {storage!r}")
    if not form.integer and form.values.size and not np.all(np.isfinite(form.values)):
        raise ConfigError(f"{name}: a weight holds inf or NaN")
    options = [(c[0] + (sparse_ram if c[1] == "sparse" else 0), *c[1:]) for c in _candidates(form, LAYOUTS[layout])
               if storage in ("auto", c[2])]
    if not options:
        options = _candidates(form, ("dense",))
    rank = {("dense", "direct"): 0, ("dense", "codes"): 1, ("sparse", "direct"): 2, ("sparse", "codes"): 3}
    _, lay, store, gap_bits = min(options, key=lambda c: (c[0], rank[(c[1], c[2])]))
    elem = _elem_type(form.values, form.integer)
    enc = EncodedWeight(name, form, lay, store, elem, gap_bits=gap_bits)
    if lay == "sparse":
        gaps = _gaps(form, gap_bits)
        enc.entries, enc.fillers = int(gaps.size), int(np.sum(gaps == filler_code(gap_bits)))
        enc.arrays.append(CArray(f"{name}_gaps", "uint8_t", _stream(gaps, gap_bits),
                                 f"{gap_bits}-bit gaps, {enc.entries} entries"))
    if store == "direct":
        if lay == "dense":
            full = np.zeros(form.numel, dtype=form.values.dtype)
            full[form.positions] = form.values
            enc.arrays.append(CArray(name, elem, full, f"{form.rows} x {form.cols}"))
        else:
            enc.arrays.append(CArray(name, elem, form.values, f"{form.values.size} kept values"))
        return enc
    table, codes, zero_codes = _tables(form, form.groups, lay == "dense" and form.positions.size < form.numel)
    enc.code_bits, enc.table_k, enc.groups = _bits_for(table.shape[1]), int(table.shape[1]), int(table.shape[0])
    if lay == "dense":
        per = form.rows // enc.groups
        full = np.repeat(zero_codes, per * form.cols)
        full[form.positions] = codes
        codes = full
    enc.arrays.append(CArray(f"{name}_codes", "uint8_t", _stream(codes, enc.code_bits),
                             f"{codes.size} x {enc.code_bits}-bit codes"))
    enc.arrays.append(CArray(f"{name}_table", elem, table.reshape(-1),
                             f"{enc.groups} x {enc.table_k} values" if enc.groups > 1 else f"{enc.table_k} values"))
    return enc
