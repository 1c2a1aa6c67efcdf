"""Add/subtract runtime for ``ternary`` weights: ``y = Wp * sum_{+} x - Wn * sum_{-} x + b``.

A layer keeps its int8 codes (out, in) -- a quarter of the fp32 bytes -- and per-row scales. Inside a
layer the only arithmetic on inputs is addition: each code selects whether an input joins the positive
sum, the negative sum or neither (a SIMD blend, no multiply), and the two scale multiplications happen once
per output. Four output rows are accumulated per pass over the input so each loaded input serves eight
sums. Small Conv2d outputs run the same kernel over im2col rows (one "batch" row per output position, built by a
fused numba loop: ``F.unfold`` plus a transpose cost as much as the kernel itself); large ones
(>= 256 positions) a kernel vectorised over positions (on :func:`~deepshrink.runtime.kernels.im2col`'s patches),
where each non-zero code adds a whole input row. Scales may be per output row, which lets a following BatchNorm
fold in without leaving the ternary codes (``fold_scale``). Layers the kernel does not cover (grouped or
non-zero-padded convolutions, Conv1d, layer classes with their own ``forward``) go to the generic builder.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import UnsupportedLayerError
from ..core.kinds import StoredWeight
from ..core.kinds.ternary import scales
from ..core.layer_call import plain_type
from . import kernels
from .registry import ANY_LOOKUP, LAYER_BUILDERS, register_layer_builder

__all__ = ["TernaryConv2d", "TernaryLinear", "TernaryRows", "build_ternary", "ternary_matmul"]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _ternary_rows(x, code, wp, wn, bias, out):
    """out[b, o] = wp[o] * sum_{code[o,k] = 1} x[b, k] - wn[o] * sum_{code[o,k] = -1} x[b, k] + bias[o]."""
    rows, width = code.shape
    zero = np.float32(0.0)
    for b in range(x.shape[0]):
        xb = x[b]
        o = 0
        while o + 4 <= rows:
            r0, r1, r2, r3 = code[o], code[o + 1], code[o + 2], code[o + 3]
            p0 = p1 = p2 = p3 = n0 = n1 = n2 = n3 = zero
            for k in range(width):
                v = xb[k]
                p0 += v if r0[k] > 0 else zero
                n0 += v if r0[k] < 0 else zero
                p1 += v if r1[k] > 0 else zero
                n1 += v if r1[k] < 0 else zero
                p2 += v if r2[k] > 0 else zero
                n2 += v if r2[k] < 0 else zero
                p3 += v if r3[k] > 0 else zero
                n3 += v if r3[k] < 0 else zero
            out[b, o] = wp[o] * p0 - wn[o] * n0 + bias[o]
            out[b, o + 1] = wp[o + 1] * p1 - wn[o + 1] * n1 + bias[o + 1]
            out[b, o + 2] = wp[o + 2] * p2 - wn[o + 2] * n2 + bias[o + 2]
            out[b, o + 3] = wp[o + 3] * p3 - wn[o + 3] * n3 + bias[o + 3]
            o += 4
        while o < rows:
            r = code[o]
            sp = sn = zero
            for k in range(width):
                v = xb[k]
                sp += v if r[k] > 0 else zero
                sn += v if r[k] < 0 else zero
            out[b, o] = wp[o] * sp - wn[o] * sn + bias[o]
            o += 1


@numba.njit(cache=True, nogil=True)
def _im2row(xpad, kh, kw, sh, sw, dh, dw, out_h, out_w, out):
    """out[b * out_h * out_w + p, (c, i, j)] = xpad[b, c, ...] under the kernel at position p (input pre-padded)."""
    batch, channels = xpad.shape[0], xpad.shape[1]
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                row = out[(b * out_h + oy) * out_w + ox]
                k = 0
                for c in range(channels):
                    plane = xpad[b, c]
                    for i in range(kh):
                        line = plane[oy * sh + i * dh]
                        left = ox * sw
                        for j in range(kw):
                            row[k + j] = line[left + j * dw]
                        k += kw


@numba.njit(cache=True, nogil=True, fastmath=True)
def _ternary_columns(cols, code, wp, wn, bias, out):
    """out[o, p] = wp[o] * sum_{code[o,k] = 1} cols[k, p] - wn[o] * sum_{code[o,k] = -1} cols[k, p] + bias[o].

    Vectorised over positions p: each non-zero code adds (or subtracts) a whole input row at once.
    """
    rows, width = code.shape
    positions = cols.shape[1]
    acc_p = np.empty(positions, np.float32)
    acc_n = np.empty(positions, np.float32)
    for o in range(rows):
        acc_p[:] = 0.0
        acc_n[:] = 0.0
        r = code[o]
        for k in range(width):
            c = r[k]
            if c > 0:
                src = cols[k]
                for p in range(positions):
                    acc_p[p] += src[p]
            elif c < 0:
                src = cols[k]
                for p in range(positions):
                    acc_n[p] += src[p]
        a, b, z, dst = wp[o], wn[o], bias[o], out[o]
        for p in range(positions):
            dst[p] = a * acc_p[p] - b * acc_n[p] + z


COLUMN_KERNEL_MIN_POSITIONS = 256
"""Output positions from which the position-vectorised kernel beats the row kernel (measured on 2-core x86)."""


class TernaryRows:
    """A 2-D ternary matrix ``(out, in)``: int8 codes in {-1, 0, 1}, per-row scales ``wp``, ``wn`` and bias."""

    def __init__(self, code: np.ndarray, wp: Any, wn: Any, bias: np.ndarray | None = None) -> None:
        code = np.asarray(code)
        self.code = np.ascontiguousarray(code.reshape(code.shape[0], -1), dtype=np.int8)
        rows = self.code.shape[0]
        self.shape = self.code.shape
        self.wp = np.broadcast_to(np.asarray(wp, dtype=np.float32), (rows,)).copy()
        self.wn = np.broadcast_to(np.asarray(wn, dtype=np.float32), (rows,)).copy()
        self.bias = np.zeros(rows, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(rows).copy()

    @property
    def nonzeros(self) -> int:
        return int(np.count_nonzero(self.code))

    def fold_scale(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Absorb ``y -> scale * y + shift`` (a BatchNorm in eval mode) into the row scales and bias."""
        scale = np.asarray(scale, np.float32)
        self.wp, self.wn = self.wp * scale, self.wn * scale
        self.bias = self.bias * scale + np.asarray(shift, np.float32)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``x (batch, in) -> (batch, out)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self.shape[0]), dtype=np.float32)
        _ternary_rows(x, self.code, self.wp, self.wn, self.bias, out)
        return out


def ternary_matmul(code: np.ndarray, wp: float, wn: float, x: np.ndarray) -> np.ndarray:
    """One-shot helper: ``x (batch, in) @ ternary(code, wp, wn).T`` by additions and subtractions."""
    return TernaryRows(code, wp, wn).matvec(x)


class TernaryLinear(nn.Module):
    """Inference-only Linear layer computing from ternary codes with adds/subtracts."""

    def __init__(self, rows: TernaryRows) -> None:
        super().__init__()
        self.rows = rows

    @classmethod
    def from_stored(cls, weight: StoredWeight, bias: Tensor | None = None) -> TernaryLinear:
        return cls(_rows(weight, bias))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.detach().reshape(-1, x.shape[-1]).cpu().numpy()
        return torch.from_numpy(self.rows.matvec(flat)).reshape(*lead, self.rows.shape[0])

    def extra_repr(self) -> str:
        return f"in={self.rows.shape[1]}, out={self.rows.shape[0]}, nonzeros={self.rows.nonzeros}"


class TernaryConv2d(nn.Module):
    """Inference-only Conv2d (groups=1) computing from ternary codes on im2col columns."""

    def __init__(self, rows: TernaryRows, kernel_size: tuple[int, int], stride: Any, padding: Any, dilation: Any) -> None:
        super().__init__()
        self.rows = rows
        self.kernel_size = kernel_size
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))
        self.dilation = (int(dilation[0]), int(dilation[1]))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, weight: StoredWeight, bias: Tensor | None) -> TernaryConv2d:
        """Built from ``conv``'s hyperparameters (a skeleton: its own weight and bias are not read)."""
        if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"the ternary runtime handles Conv2d with groups=1 and numeric zero padding; got groups={conv.groups}, "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r} (keep this layer dense)")
        return cls(_rows(weight, bias), (int(conv.kernel_size[0]), int(conv.kernel_size[1])), conv.stride,
                   conv.padding, conv.dilation)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        image = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if ph or pw:
            image = np.pad(image, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        if out_h * out_w >= COLUMN_KERNEL_MIN_POSITIONS:
            rows = self.rows
            result = np.empty((batch, rows.shape[0], out_h * out_w), dtype=np.float32)
            for b in range(batch):
                cols = kernels.im2col(image[b:b + 1], (kh, kw), (sh, sw), (dh, dw), (out_h, out_w))
                _ternary_columns(cols, rows.code, rows.wp, rows.wn, rows.bias, result[b])
            return torch.from_numpy(result).reshape(batch, rows.shape[0], out_h, out_w)
        positions = np.empty((batch * out_h * out_w, channels * kh * kw), dtype=np.float32)
        _im2row(image, kh, kw, sh, sw, dh, dw, out_h, out_w, positions)
        out = torch.from_numpy(self.rows.matvec(positions)).reshape(batch, out_h * out_w, self.rows.shape[0])
        return out.transpose(1, 2).reshape(batch, self.rows.shape[0], out_h, out_w)

    def extra_repr(self) -> str:
        return f"out={self.rows.shape[0]}, kernel={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _rows(weight: StoredWeight, bias: Tensor | None) -> TernaryRows:
    """The codes as a dense int8 (out, in) matrix with per-row scales (scalar ``wp``/``wn`` broadcast)."""
    code = np.zeros(weight.numel, dtype=np.int8)
    code[weight.flat_positions()] = weight.data
    rows = weight.shape[0]
    wp, wn = (np.repeat(s, rows // s.size) if s.size > 1 else s.reshape(()) for s in scales(weight))
    b = None if bias is None else bias.detach().cpu().numpy()
    return TernaryRows(code.reshape(rows, -1), wp, wn, b)


@register_layer_builder("ternary")
def build_ternary(module: nn.Module, weight: StoredWeight, bias: Tensor | None, name: str) -> nn.Module | None:
    """``TernaryLinear`` / ``TernaryConv2d`` computing from the codes with additions and subtractions."""
    kind = plain_type(module)
    if kind is nn.Linear:
        return TernaryLinear.from_stored(weight, bias)
    conv: Any = module
    if kind is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return TernaryConv2d.from_conv(conv, weight, bias)
    return LAYER_BUILDERS[ANY_LOOKUP](module, weight, bias, name)
