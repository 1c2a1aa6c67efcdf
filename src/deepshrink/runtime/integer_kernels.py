"""The integer engine's fast path: one fused numba pass per layer on the int8 dot-product kernels of :mod:`.int8`.

:class:`~deepshrink.runtime.integer.IntegerLayer` computes a layer as a chain of torch ops (round the input in
float64, int8 GEMM or an integer convolution, add the bias, widen to int64, rounding shift, saturate, scale back),
each a separate pass with its own temporaries. :class:`Int8Plan` does the same arithmetic in three numba passes
(input to bytes, the dot products, the epilogue) and gives the same integers bit for bit:

* input: a float32 tensor is rounded like ``to_int`` (``floor(x * 2**fl + 0.5)`` in float64, clamped); a
  :class:`~deepshrink.runtime.integer.QTensor` is requantized like ``requantize`` (rounding shift, clamp);
* products: int8 x int8 summed in int32 (exact: the engine chose int32 only where no sum can overflow);
  convolutions gather their patches from the byte image (im2col of bytes, a quarter of float patches);
* epilogue: ``+ bias``, then the output format's per-channel rounding shift and saturation, returned as
  int64 integers, or scaled to float32 (``acc / 2**frac`` in float64, then rounded to float32).

Every rounding is half up, or half to even for a layer quantized with ``rounding="half_even"`` (the ``even`` flag).

Covered: Linear, and Conv1d/Conv2d with ``groups=1`` and numeric zero padding, with weights and inputs of at most
8 bits, int32 accumulation and a static input format. Everything else stays on the torch path.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor, nn

from .int8 import CHANNELS, Int8Weight, gemm_vnni_serial, int8_matmul, pack

_OPTS: dict[str, Any] = {"cache": True, "nogil": True, "boundscheck": False}

PARALLEL_MIN_MACS = 2_000_000
"""Multiply-adds from which the products run on all threads."""


@numba.njit(inline="always", **_OPTS)
def _round(y, even):
    """``y`` (float64) to an integral float64: half up (``floor(y + 0.5)``), or half to even."""
    if not even:
        return math.floor(y + 0.5)
    f = math.floor(y)
    d = y - f  # exact
    if d > 0.5 or (d == 0.5 and f * 0.5 != math.floor(f * 0.5)):
        return f + 1.0
    return f


@numba.njit(inline="always", **_OPTS)
def _shift(t, right, left, half, even):
    """``t * 2**(left - right)`` (one of them 0), the right shift rounded half up or half to even."""
    if even and right > 0:
        q = t >> right
        r = t - (q << right)
        if r > half or (r == half and (q & 1) == 1):
            q += 1
        return q
    return ((t + half) >> right) << left


@numba.njit(**_OPTS)
def _bytes_from_float(x, scale, qmin, qmax, offset, even, out):
    """``out[m, k] = clamp(round(x[m, k] * scale)) + offset``; columns past ``x``'s hold ``offset``."""
    rows, width = x.shape
    for m in range(rows):
        src = x[m]
        dst = out[m]
        for k in range(width):
            v = _round(np.float64(src[k]) * scale, even)
            v = min(max(v, qmin), qmax)
            dst[k] = np.int64(v) + offset
        for k in range(width, dst.shape[0]):
            dst[k] = offset


@numba.njit(**_OPTS)
def _bytes_from_ints(x, shift, qmin, qmax, offset, even, out):
    """``out[m, k] = clamp(rounding_shift(x[m, k], shift)) + offset``; padding as above."""
    rows, width = x.shape
    right, left = max(shift, 0), max(-shift, 0)
    half = np.int64(1) << (right - 1) if right > 0 else np.int64(0)
    for m in range(rows):
        src = x[m]
        dst = out[m]
        for k in range(width):
            v = _shift(np.int64(src[k]), right, left, half, even)
            dst[k] = min(max(v, qmin), qmax) + offset
        for k in range(width, dst.shape[0]):
            dst[k] = offset


@numba.njit(**_OPTS)
def _conv_patches(image, is_float, scale, shift, qmin, qmax, offset, even, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow,
                  padded, out):
    """Convolution patches as bytes: the (N, C, H, W) input (float32, or int64 when ``is_float`` is False: then
    ``image`` is its int64 view) rounded like :func:`_bytes_from_float` / :func:`_bytes_from_ints` into the
    zero-padded byte image ``padded`` (N, C, H + 2 ph, W + 2 pw), then gathered into ``out`` (N * oh * ow, K4):
    row (n, i, j), column (c, ki, kj); columns past ``C * kh * kw`` hold ``offset`` (zero)."""
    n_batch, channels, height, width = image.shape
    right, left = max(shift, 0), max(-shift, 0)
    half = np.int64(1) << (right - 1) if right > 0 else np.int64(0)
    for n in range(n_batch):
        for c in range(channels):
            plane = padded[n, c]
            for i in range(plane.shape[0]):
                for j in range(plane.shape[1]):
                    plane[i, j] = offset
            for i in range(height):
                dst = plane[i + ph]
                src = image[n, c, i]
                for j in range(width):
                    if is_float:
                        v = min(max(_round(np.float64(src[j]) * scale, even), qmin), qmax)
                        dst[j + pw] = np.int64(v) + offset
                    else:
                        t = _shift(np.int64(src[j]), right, left, half, even)
                        dst[j + pw] = min(max(t, qmin), qmax) + offset
    taps = channels * kh * kw
    for n in range(n_batch):
        for i in range(oh):
            for j in range(ow):
                row = out[(n * oh + i) * ow + j]
                k = 0
                for c in range(channels):
                    plane = padded[n, c]
                    for a in range(kh):
                        line = plane[i * sh + a * dh]
                        for b in range(kw):
                            row[k] = line[j * sw + b * dw]
                            k += 1
                for q in range(taps, row.shape[0]):
                    row[q] = offset


@numba.njit(**_OPTS)
def _epilogue(acc, colsum, offset, bias, half, right, left, qmin, qmax, scale, mode, even, positions, out_int,
              out_float):
    """Per output ``t = acc[m, n] - offset * colsum[n] + bias[n]`` (int32), then by ``mode``:
    0: ``clamp(((t + half[n]) >> right[n]) << left[n])`` (the rounding shift; half to even with ``even``) into
    ``out_int``;
    1: the same times ``scale[n]`` into ``out_float``; 2: ``t * scale[n]`` into ``out_float`` (``scale`` = exact
    inverse powers of two: multiplying by one equals the torch path's division in float64). The outputs are flat
    (samples, n, positions): row ``m`` of ``acc`` is (sample, position). With one position per row (Linear) the
    float outputs of a row are contiguous, and that loop is written so that LLVM vectorises it."""
    rows = acc.shape[0]
    n_out = bias.shape[0]
    base = np.empty(n_out, np.int64)
    for n in range(n_out):
        base[n] = np.int64(bias[n]) - offset * np.int64(colsum[n])
    for m in range(rows):
        a = acc[m]
        at = (m // positions) * n_out * positions + m % positions
        if mode == 2 and positions == 1:
            dst = out_float[at:at + n_out]
            for n in range(n_out):
                dst[n] = np.float32(np.float64(np.int64(a[n]) + base[n]) * scale[n])
        elif mode == 2:
            for n in range(n_out):
                t = np.int64(a[n]) + base[n]
                out_float[at + n * positions] = np.float32(np.float64(t) * scale[n])
        else:
            for n in range(n_out):
                t = np.int64(a[n]) + base[n]
                t = min(max(_shift(t, right[n], left[n], half[n], even), qmin), qmax)
                if mode == 0:
                    out_int[at + n * positions] = t
                else:
                    out_float[at + n * positions] = np.float32(np.float64(t) * scale[n])


@numba.njit(**_OPTS)
def _linear_vnni(x, scale_in, qmin, qmax, offset, even, quads, packed, blocks, colsum, bias, half, right, left,
                 out_qmin, out_qmax, scale, mode, out_float):
    """A float-in, float-out Linear (modes 1 and 2) on the serial VNNI kernel in one call: the three passes of
    :class:`Int8Plan` without two more numba dispatches and three allocations from Python (1.5-3.5 us a call on
    MiniLM's Linears at 29 tokens, against 21-57 us per layer)."""
    rows = x.shape[0]
    data = np.empty((rows, quads * 4), np.uint8)
    _bytes_from_float(x, scale_in, qmin, qmax, offset, even, data)
    acc = np.empty((rows, blocks * CHANNELS), np.int32)
    gemm_vnni_serial(data.reshape(-1).view(np.int32), rows, quads, packed, blocks, acc.reshape(-1))
    _epilogue(acc, colsum, offset, bias, half, right, left, out_qmin, out_qmax, scale, mode, even, 1,
              np.empty(1, np.int64), out_float)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[-1])) if isinstance(value, tuple | list) else (int(value), int(value))


_DUMMY = (np.empty(1, dtype=np.int64), np.empty(1, dtype=np.float32))
"""The epilogue's unused output (it writes either integers or floats)."""


class Int8Plan:
    """The fused int8 form of one :class:`~deepshrink.runtime.integer.IntegerLayer` (see the module docstring);
    :meth:`build` returns None for a layer it does not cover."""

    def __init__(self, weight: Int8Weight, bias: np.ndarray, act_in: Any, acc_frac: np.ndarray, act_out: Any,
                 float_io: bool, conv: tuple[tuple[int, int], ...] | None, conv1d: bool, even: bool = False) -> None:
        self.weight = weight
        self.even = even
        self.bias = bias
        self.in_frac = int(act_in.frac_len)
        self.in_range = act_in.range
        self.scale_in = math.ldexp(1.0, self.in_frac)
        self.float_io = float_io
        self.conv = conv  # (kernel, stride, padding, dilation) or None for Linear
        self.conv1d = conv1d
        # bytes = input + offset: the VNNI kernel reads unsigned bytes, the portable one signed bytes; a signed
        # input enters the VNNI kernel shifted up by 128, an unsigned one the portable kernel shifted down by 128
        # (the epilogue takes ``offset * colsum`` back off)
        self.unsigned_bytes = weight.packed is not None
        self.offset = (128 if self.unsigned_bytes else 0) - (0 if act_in.signed else 128)
        self.act_out = act_out
        if act_out is None:
            self.mode = 2
            shift = np.zeros(weight.n_out, dtype=np.int64)
            self.scale = np.array([math.ldexp(1.0, -int(f)) for f in acc_frac], dtype=np.float64)
            self.qmin, self.qmax = 0, 0
        else:
            self.mode = 1 if float_io else 0
            shift = (acc_frac - int(act_out.frac_len)).astype(np.int64)
            self.scale = np.full(weight.n_out, math.ldexp(1.0, -int(act_out.frac_len)), dtype=np.float64)
            self.qmin, self.qmax = act_out.range
        self.right, self.left = np.maximum(shift, 0), np.maximum(-shift, 0)
        self.half = np.where(self.right > 0, np.left_shift(1, np.maximum(self.right - 1, 0)), 0).astype(np.int64)

    @classmethod
    def build(cls, layer: Any, template: nn.Module) -> Int8Plan | None:
        """The plan of an IntegerLayer, or None (wider formats, int64 sums, per-token inputs, other layers)."""
        if layer.dynamic_input or layer.bits > 8 or layer.act_in.bits > 8 or 256 * layer.weight_row_sum >= 2**31:
            return None  # the products' int32 sums (of bytes: up to 255 per input) must not overflow
        t: Any = template
        conv: tuple[tuple[int, int], ...] | None = None
        conv1d = False
        if type(template) is nn.Linear:
            pass
        elif type(template) in (nn.Conv1d, nn.Conv2d):
            if t.groups != 1 or t.padding_mode != "zeros" or isinstance(t.padding, str):
                return None
            conv1d = type(template) is nn.Conv1d
            size = tuple(layer.weight_int.shape[2:])
            kernel = (1, int(size[0])) if conv1d else (int(size[0]), int(size[1]))
            if conv1d:
                conv = (kernel, (1, int(t.stride[0])), (0, int(t.padding[0])), (1, int(t.dilation[0])))
            else:
                conv = (kernel, _pair(t.stride), _pair(t.padding), _pair(t.dilation))
        else:
            return None
        w = layer.weight_int.reshape(layer.weight_int.shape[0], -1).numpy()
        bias = (layer.bias_int.numpy().astype(np.int64) if layer.bias_int is not None
                else np.zeros(w.shape[0], dtype=np.int64))
        w_frac = layer.w_frac.numpy() if isinstance(layer.w_frac, Tensor) else np.array([layer.w_frac])
        acc_frac = np.broadcast_to(np.asarray(w_frac, dtype=np.int64) + int(layer.act_in.frac_len), (w.shape[0],))
        return cls(pack(w.astype(np.int8)), bias, layer.act_in, acc_frac.copy(), layer.act_out, layer.float_io, conv,
                   conv1d, layer.rounding == "half_even")

    def __call__(self, x: Any, qtensor: type) -> Any:
        """The layer's output for ``x`` (float32 tensor or QTensor), or None when the torch path must run."""
        is_q = isinstance(x, qtensor)
        data = x.data if is_q else x
        if data.dtype != (torch.int64 if is_q else torch.float32) or data.device.type != "cpu":
            return None
        array = (data.detach() if data.requires_grad else data).numpy()
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        if self.conv is None:
            lead = tuple(data.shape[:-1])
            flat = array.reshape(-1, array.shape[-1])
            if flat.shape[1] != self.weight.n_in:
                return None
            w = self.weight
            if (self.mode and not is_q and w.packed is not None
                    and (flat.shape[0] * w.quads * 4 * w.blocks * CHANNELS < PARALLEL_MIN_MACS
                         or numba.get_num_threads() == 1)):
                result = torch.empty(flat.shape[0], w.n_out, dtype=torch.float32)
                _linear_vnni(flat, self.scale_in, *self.in_range, self.offset, self.even, w.quads, w.packed, w.blocks,
                             w.colsum, self.bias, self.half, self.right, self.left, self.qmin, self.qmax, self.scale,
                             self.mode, result.numpy().reshape(-1))
                return result.reshape(*lead, w.n_out)
            rows = self._rows(flat, x.frac_len if is_q else None)
            positions, samples = 0, flat.shape[0]
        else:
            if self.conv1d:
                array = array[:, :, None, :]
            rows, samples, positions, out_hw = self._patches(array, x.frac_len if is_q else None)
        macs = rows.shape[0] * rows.shape[1] * self.weight.blocks * CHANNELS
        parallel = macs >= PARALLEL_MIN_MACS and numba.get_num_threads() > 1
        acc = int8_matmul(self.weight, rows, parallel)
        n = self.weight.n_out
        shape = (samples, n, max(positions, 1))
        # the output allocated by torch, like its own ops' outputs (64-byte aligned)
        result = torch.empty(shape, dtype=torch.int64 if self.mode == 0 else torch.float32)
        dummy_int, dummy_float = _DUMMY
        out_int = result.numpy() if self.mode == 0 else dummy_int
        out_float = result.numpy() if self.mode else dummy_float
        _epilogue(acc, self.weight.colsum, self.offset, self.bias, self.half, self.right, self.left, self.qmin,
                  self.qmax, self.scale, self.mode, self.even, max(positions, 1), out_int.reshape(-1),
                  out_float.reshape(-1))
        if positions:
            result = result.reshape(samples, n, *out_hw)
            if self.conv1d:
                result = result.squeeze(2)
        else:
            result = result.reshape(*lead, n)
        if self.mode == 0:
            return qtensor(result, int(self.act_out.frac_len))
        return result

    def _rows(self, flat: np.ndarray, frac: int | None) -> np.ndarray:
        qmin, qmax = self.in_range
        out = np.empty((flat.shape[0], self.weight.quads * 4), dtype=np.uint8 if self.unsigned_bytes else np.int8)
        if frac is not None:
            _bytes_from_ints(flat, int(frac) - self.in_frac, qmin, qmax, self.offset, self.even, out)
        else:
            _bytes_from_float(flat, self.scale_in, qmin, qmax, self.offset, self.even, out)
        return out

    def _patches(self, image: np.ndarray, frac: int | None) -> tuple[np.ndarray, int, int, tuple[int, int]]:
        """(patch rows, samples, positions, (OH, OW)) of an (N, C, H, W) input: its bytes, zero-padded, then
        gathered per output position."""
        assert self.conv is not None
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.conv
        n, c, h, w = image.shape
        hp, wp = h + 2 * ph, w + 2 * pw
        oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        dtype = np.uint8 if self.unsigned_bytes else np.int8
        padded = np.empty((n, c, hp, wp), dtype=dtype)
        rows = np.empty((n * oh * ow, self.weight.quads * 4), dtype=dtype)
        qmin, qmax = self.in_range
        shift = 0 if frac is None else int(frac) - self.in_frac
        _conv_patches(image, frac is None, self.scale_in, shift, qmin, qmax, self.offset, self.even, kh, kw, sh, sw, dh,
                      dw, ph, pw, oh, ow, padded, rows)
        return rows, n, oh * ow, (oh, ow)


__all__ = ["Int8Plan"]
