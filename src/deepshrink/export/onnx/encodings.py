"""Compressed weights as standard ONNX ops that rebuild the exact tensor once, when ONNX Runtime folds constants.

One encoder per value kind (:data:`ENCODERS`, keyed by kind name; a kind without an entry goes through its
palette, or stays float32). Each encoder offers candidate encodings; the smallest in bytes wins, unless one is
asked for by name. Every candidate rebuilds the stored weight bit for bit (:func:`check_exact` runs them).

* ``codes``: one code per position (0 = zero, else 1 + the centroid's index), packed in 1/2/4/8/16 bits
  (``UINT4`` at opset >= 21, bit fields in ``uint8`` unpacked by ``BitShift``/``BitwiseAnd`` for 1 and 2 bits),
  ``Cast`` -> ``Gather`` of the centroid table (plus a group offset when there is one codebook per channel
  group) -> ``Reshape``.
* ``gaps``: the kept, non-zero positions as relative gaps (4 or 8 bits; a gap of 0 is a filler advancing
  ``2**bits - 1`` and writing a zero), ``CumSum`` to positions, their codes or values, and ``ScatterElements``
  into ``ConstantOfShape`` zeros: Deep Compression's relative index in ONNX ops.
* ``ints``: fixed-point integers in the narrowest signed container (``INT4``/``int8``/``int16``), ``Cast`` and
  ``Mul`` by ``2**-frac_len`` (per output channel where the weight has one per channel); exact in float32.
* ``float``: the float32 initializer as the exporter wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...core.errors import ConfigError
from ...core.kinds import FixedPointKind, StoredWeight
from ...core.kinds.fixedpoint import formats
from .graph import Added, Builder

INT4_OPSET = 21
"""``INT4``/``UINT4`` tensors (and int16 Q/DQ) need opset 21."""


@dataclass
class Candidate:
    """One way to write a weight: its name, the nodes and initializers that rebuild it (None: plain float32)."""

    encoding: str
    added: Added | None
    bytes: int


@dataclass
class Target:
    """What an encoder must produce: a tensor ``output`` of ``shape``; ``opset`` bounds the types it may use."""

    output: str
    shape: tuple[int, ...]
    opset: int
    float_bytes: int


Encoder = Callable[[StoredWeight, Target], list[Candidate]]
ENCODING_NAMES = {"auto", "codes", "gaps", "ints", "float"}
"""Names the ``encoding`` option accepts (an encoder registering new candidate names adds them here)."""
ENCODERS: dict[str, Encoder] = {}
"""Registry: value kind name -> encoder (its candidate encodings of a weight of that kind)."""


def register_encoder(*kinds: str) -> Callable[[Encoder], Encoder]:
    """Decorator: ``fn`` encodes weights of ``kinds``."""

    def wrap(fn: Encoder) -> Encoder:
        for kind in kinds:
            ENCODERS[kind] = fn
        return fn

    return wrap


def _size(added: Added) -> int:
    return added.bytes + sum(n.ByteSize() for n in added.nodes)


def candidate(name: str, build: Callable[[Builder], None], target: Target) -> Candidate:
    b = Builder(target.output)
    build(b)
    return Candidate(name, b.added, _size(b.added))


# ------------------------------------------------------------------------------------------- integer storage
def _unsigned_width(values: np.ndarray) -> int:
    top = int(values.max()) if values.size else 0
    return next(w for w in (1, 2, 4, 8, 16, 32) if top < (1 << w))


def _pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """``width``-bit fields (width 1, 2 or 4) packed into bytes, first value in the low bits."""
    per = 8 // width
    padded = np.zeros(-(-values.size // per) * per, dtype=np.uint8)
    padded[: values.size] = values
    fields = padded.reshape(-1, per).astype(np.uint16) << (np.arange(per, dtype=np.uint16) * width)
    return fields.sum(axis=1).astype(np.uint8)


def store_unsigned(b: Builder, values: np.ndarray, opset: int, width: int | None = None) -> tuple[str, int]:
    """Non-negative integers stored in ``width`` bits (default: the fewest of 1/2/4/8/16/32 that hold them);
    returns ``(name of an int64 tensor of the values, width)``."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    width = width or _unsigned_width(values)
    if width == 4 and opset >= INT4_OPSET:
        import ml_dtypes

        return b.op("Cast", [b.const(values.astype(ml_dtypes.uint4), "u4_")], to=TensorProto.INT64), width
    if width <= 4:
        packed = b.const(_pack_bits(values, width), f"u{width}x")
        per = 8 // width
        wide = b.op("Unsqueeze", [packed, b.i64([1])])
        shifts = b.const((np.arange(per) * width).astype(np.uint8), "shift")
        fields = b.op("BitwiseAnd", [b.op("BitShift", [wide, shifts], direction="RIGHT"),
                                     b.const(np.uint8((1 << width) - 1), "mask")])
        flat = b.op("Slice", [b.op("Reshape", [fields, b.i64([-1])]), b.i64([0]), b.i64([values.size])])
        return b.op("Cast", [flat], to=TensorProto.INT64), width
    dtype = {8: np.uint8, 16: np.uint16, 32: np.int32}[width]
    return b.op("Cast", [b.const(values.astype(dtype), f"u{width}_")], to=TensorProto.INT64), width


SIGNED = ((4, TensorProto.INT4), (8, TensorProto.INT8), (16, TensorProto.INT16), (32, TensorProto.INT32))


def store_signed(b: Builder, values: np.ndarray, opset: int) -> tuple[str, int, int]:
    """Signed integers in the narrowest of ``INT4`` (opset >= 21), int8, int16, int32, shaped as given; returns
    ``(initializer name, its ONNX type, width)`` (no ``Cast``: the caller casts to what it needs)."""
    values = np.asarray(values, dtype=np.int64)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for width, onnx_type in SIGNED:
        if width == 4 and opset < INT4_OPSET:
            continue
        if -(1 << (width - 1)) <= lo and hi < (1 << (width - 1)):
            if width == 4:
                import ml_dtypes

                return b.const(values.astype(ml_dtypes.int4), "i4_"), onnx_type, width
            return b.const(values.astype(helper.tensor_dtype_to_np_dtype(onnx_type)), f"i{width}_"), onnx_type, width
    raise ConfigError(f"integers beyond int32 ({lo}..{hi}) cannot be stored")


def gap_stream(positions: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """Relative index of strictly increasing ``positions``: gaps of ``1 .. 2**width - 1``, a ``0`` meaning "advance
    ``2**width - 1`` without writing" where a gap is longer; returns ``(gaps, number of fillers)``."""
    step = (1 << width) - 1
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, dtype=np.int64)]))
    fillers = (gaps - 1) // step
    out = np.zeros(int(gaps.size + fillers.sum()), dtype=np.int64)
    ends = np.cumsum(fillers + 1) - 1  # where each real gap lands, after its fillers
    out[ends] = gaps - fillers * step
    return out, int(fillers.sum())


@dataclass
class Gaps:
    """Decoded gap stream: ``positions`` (int64, one per entry, fillers included) and the filler mask."""

    positions: str
    rank: str | None  # per entry, the index of its kept weight (None: no fillers, entry i is weight i)
    keep: str | None  # per entry, True unless it is a filler

    def spread(self, b: Builder, values: str, zero: Any) -> str:
        """Per-kept-weight ``values`` laid out one per entry; fillers get ``zero`` (and land on a pruned position)."""
        if self.rank is None or self.keep is None:
            return values
        return b.op("Where", [self.keep, b.op("Gather", [values, self.rank], axis=0), b.const(zero, "zero")])


def gap_positions(b: Builder, positions: np.ndarray, opset: int) -> Gaps:
    """Nodes giving the int64 ``positions`` back from 4- or 8-bit gaps (whichever is smaller).

    Every node has a static output shape, so ONNX Runtime folds them all (it does not fold ``Compress`` or
    ``NonZero``): a filler keeps its slot and writes a zero at the pruned position it lands on.
    """
    best = min((gap_stream(positions, w)[0].size * w, w) for w in (4, 8))[1]
    gaps, fillers = gap_stream(positions, best)
    g, _ = store_unsigned(b, gaps, opset, best)
    if not fillers:
        return Gaps(b.op("Sub", [b.op("CumSum", [g, b.i64(0)]), b.i64(1)]), None, None)
    is_filler = b.op("Equal", [g, b.i64(0)])
    steps = b.op("Where", [is_filler, b.i64((1 << best) - 1), g])
    keep = b.op("Not", [is_filler])
    kept_so_far = b.op("CumSum", [b.op("Cast", [keep], to=TensorProto.INT64), b.i64(0)])
    rank = b.op("Max", [b.op("Sub", [kept_so_far, b.i64(1)]), b.i64(0)])
    return Gaps(b.op("Sub", [b.op("CumSum", [steps, b.i64(0)]), b.i64(1)]), rank, keep)


def scatter(b: Builder, numel: int, positions: str, values: str, onnx_type: int, shape: tuple[int, ...],
            output: str) -> None:
    """``output`` = zeros of ``shape`` with ``values`` at the flat ``positions``."""
    zero = helper.make_tensor("zero", onnx_type, [1], [0])
    zeros = b.op("ConstantOfShape", [b.i64([numel])], value=zero)
    flat = b.op("ScatterElements", [zeros, positions, values], axis=0)
    b.op("Reshape", [flat, b.i64(list(shape))], output)


def zeros(b: Builder, shape: tuple[int, ...], onnx_type: int, output: str) -> None:
    b.op("ConstantOfShape", [b.i64(list(shape))], output, value=helper.make_tensor("zero", onnx_type, [1], [0]))


# --------------------------------------------------------------------------------------------------- palettes
@register_encoder("codebook", "ternary")
def palette_candidates(weight: StoredWeight, target: Target) -> list[Candidate]:
    """Lookup kinds (k-means codebooks, ternary ``{-wn, 0, +wp}`` per layer or per channel group)."""
    pal = weight.palette()
    if pal is None:
        return []
    table = np.ascontiguousarray(pal.table, dtype=np.float32)
    groups, k = table.shape
    numel, shape = weight.numel, tuple(weight.shape)
    per_group = max(numel // groups, 1)
    positions = weight.flat_positions()
    codes = np.asarray(pal.codes, dtype=np.int64)
    group_of = positions // per_group if groups > 1 else np.zeros_like(positions)
    value = np.where(codes >= 0, table[group_of, np.maximum(codes, 0)], np.float32(0))
    live = value != 0

    def offset(b: Builder, idx: str, flat_positions: str, stride: int) -> str:
        if groups == 1:
            return idx
        group = b.op("Div", [flat_positions, b.i64(per_group)])
        return b.op("Add", [idx, b.op("Mul", [group, b.i64(stride)])])

    def dense_codes(b: Builder) -> None:
        # code 0 stands for zero when some position holds none of the centroids (pruned, or code -1)
        shift = int(positions.size < numel or bool((codes < 0).any()))
        full = np.zeros(numel, dtype=np.int64)
        full[positions] = np.where(codes >= 0, codes + shift, 0)
        lookup = np.concatenate([np.zeros((groups, shift), np.float32), table], axis=1).reshape(-1)
        idx, _ = store_unsigned(b, full, target.opset)
        if groups > 1:
            idx = offset(b, idx, b.op("Range", [b.i64(0), b.i64(numel), b.i64(1)]), k + shift)
        flat = b.op("Gather", [b.const(lookup, "table"), idx], axis=0)
        b.op("Reshape", [flat, b.i64(list(shape))], target.output)

    def gaps(b: Builder) -> None:
        if not live.any():
            return zeros(b, shape, TensorProto.FLOAT, target.output)
        stream = gap_positions(b, positions[live], target.opset)
        idx, _ = store_unsigned(b, codes[live], target.opset)
        idx = offset(b, stream.spread(b, idx, np.int64(0)), stream.positions, k)
        values = b.op("Gather", [b.const(table.reshape(-1), "table"), idx], axis=0)
        if stream.keep is not None:
            values = b.op("Where", [stream.keep, values, b.const(np.float32(0), "zero")])
        scatter(b, numel, stream.positions, values, TensorProto.FLOAT, shape, target.output)

    return [candidate("codes", dense_codes, target), candidate("gaps", gaps, target)]


# ------------------------------------------------------------------------------------------------ float kinds
@register_encoder("sparse")
def sparse_candidates(weight: StoredWeight, target: Target) -> list[Candidate]:
    """Pruned float32 weights: kept values at gap-coded positions (ONNX sparse initializers fail
    ``check_model(full_check=True)`` and ORT densifies them anyway)."""
    values = weight.values()
    live = values != 0
    positions = weight.flat_positions()[live]

    def gaps(b: Builder) -> None:
        if not live.any():
            return zeros(b, tuple(weight.shape), TensorProto.FLOAT, target.output)
        stream = gap_positions(b, positions, target.opset)
        kept = stream.spread(b, b.const(values[live].astype(np.float32), "values"), np.float32(0))
        scatter(b, weight.numel, stream.positions, kept, TensorProto.FLOAT, tuple(weight.shape), target.output)

    return [candidate("gaps", gaps, target)]


# ------------------------------------------------------------------------------------------------ fixed point
def full_ints(weight: StoredWeight) -> np.ndarray:
    """The stored integers of a ``fixedpoint`` weight as a weight-shaped int64 array (zero where pruned)."""
    out = np.zeros(weight.numel, dtype=np.int64)
    out[weight.flat_positions()] = np.asarray(weight.data, dtype=np.int64)
    return out.reshape(weight.shape)


def int_candidates(ints: np.ndarray, target: Target, to: int) -> list[tuple[str, Callable[[Builder], str]]]:
    """Ways to rebuild the integer array ``ints`` as an ONNX tensor of type ``to``; each returns the tensor name."""
    shape = tuple(ints.shape)
    flat = ints.reshape(-1)
    live = np.flatnonzero(flat)

    def cast(b: Builder, name: str, have: int) -> str:
        return name if have == to else b.op("Cast", [name], to=to)

    def dense(b: Builder) -> str:
        name, onnx_type, _ = store_signed(b, ints, target.opset)
        return cast(b, name, onnx_type)

    def gaps(b: Builder) -> str:
        out = b.name("ints")
        if not live.size:
            zeros(b, shape, to, out)
            return out
        stream = gap_positions(b, live, target.opset)
        name, onnx_type, _ = store_signed(b, flat[live], target.opset)
        values = stream.spread(b, cast(b, name, onnx_type), helper.tensor_dtype_to_np_dtype(to).type(0))
        scatter(b, flat.size, stream.positions, values, to, shape, out)
        return out

    return [("ints", dense), ("gaps", gaps)]


def channel_steps(weight: StoredWeight, ndim: int, axis: int = 0) -> Any:
    """``2**-frac_len`` as a float32 scalar, or one per output channel shaped to broadcast along ``axis``."""
    steps = FixedPointKind.steps(formats(weight).frac_lens)
    if steps.size == 1:
        return np.float32(steps[0])
    shape = [1] * ndim
    shape[axis] = -1
    return steps.reshape(shape)


@register_encoder("fixedpoint")
def fixedpoint_candidates(weight: StoredWeight, target: Target) -> list[Candidate]:
    """Weight-only fixed point: integers, ``Cast`` to float, ``Mul`` by the power-of-two step (exact in float32;
    not ``DequantizeLinear``, which ORT rewrites into a lossy ``MatMulNBits`` before a ``MatMul``)."""
    ints = full_ints(weight)
    steps = channel_steps(weight, ints.ndim)
    out = []
    for name, make in int_candidates(ints, target, TensorProto.FLOAT):
        def build(b: Builder, make: Callable[[Builder], str] = make) -> None:
            b.op("Mul", [make(b), b.const(steps, "step")], target.output)

        out.append(candidate(name, build, target))
    return out


def _generic(weight: StoredWeight, target: Target) -> list[Candidate]:
    """A kind without an encoder of its own: through its palette where it has one."""
    return palette_candidates(weight, target) if weight.palette() is not None else []


# ------------------------------------------------------------------------------------------------- choosing
def encode(weight: StoredWeight, target: Target, want: str = "auto") -> Candidate:
    """The encoding of ``weight`` to use: the smallest candidate (or the one named ``want``); ``float`` when no
    candidate beats the float32 initializer."""
    found = ENCODERS.get(weight.kind, _generic)(weight, target)
    plain = Candidate("float", None, target.float_bytes)
    if want != "auto":
        chosen = next((c for c in [*found, plain] if c.encoding == want), None)
        if chosen is None:
            known = ", ".join(c.encoding for c in [*found, plain])
            raise ConfigError(f"encoding {want!r} does not apply to the {weight.kind} weight {target.output!r} "
                              f"(available: {known})")
        return chosen
    return min([*found, plain], key=lambda c: c.bytes)


def check_exact(added: Added, output: str, expected: np.ndarray, what: str, opset: int) -> None:
    """Run the decode nodes alone (ONNX Runtime, no graph optimisation) and require ``expected`` bit for bit."""
    import onnxruntime as ort

    graph = helper.make_graph(list(added.nodes), "decode", [], [helper.make_tensor_value_info(
        output, helper.np_dtype_to_tensor_dtype(expected.dtype), list(expected.shape))], list(added.initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    got = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {})[0]
    if got.shape != expected.shape or not np.array_equal(got.view(np.uint8), np.ascontiguousarray(expected).view(
            np.uint8)):
        raise ConfigError(f"internal error: the ONNX encoding of {what} does not rebuild it bit for bit")


def describe(chosen: Candidate, weight: StoredWeight, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report entry of one weight."""
    return {"kind": weight.kind, "encoding": chosen.encoding, "bytes": chosen.bytes, "fp32_bytes": weight.numel * 4,
            "shape": list(weight.shape), **(extra or {})}


def onnx_type_name(onnx_type: int) -> str:
    return onnx.helper.tensor_dtype_to_string(onnx_type).removeprefix("TensorProto.").lower()
