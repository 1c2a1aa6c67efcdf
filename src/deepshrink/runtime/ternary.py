"""Runtime for ``ternary`` weights: ``y = Wp * sum_{+} x - Wn * sum_{-} x + b``.

A ternary weight is a codebook of two values per scale group, ``{-Wn, +Wp}``, plus zeros: the layers run on
the sparse codebook kernels (:class:`~deepshrink.runtime.modules.SparseLinear` /
:class:`~deepshrink.runtime.modules.SparseConv2d`: the zero codes are skipped, each non-zero gathers its
``+Wp`` or ``-Wn`` once per register tile; convolutions run the direct sparse kernel, no im2col). The scales may
be per output row, which lets a following BatchNorm fold in without leaving the ternary codes (``fold_scale``).
:class:`TernaryRows` keeps the dense int8 codes (a quarter of the fp32 bytes) and its add/subtract reference
kernel (:meth:`TernaryRows.matvec`: each code selects whether an input joins the positive sum, the negative sum
or neither, the two scales multiply once per output). Layers the kernels do not cover (grouped or
non-zero-padded convolutions, Conv1d, layer classes with their own ``forward``) go to the generic builder.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from torch import Tensor, nn

from ..core.errors import UnsupportedLayerError
from ..core.kinds import StoredWeight
from ..core.kinds.ternary import scales
from ..core.layer_call import plain_type
from .layout import SparseRows, from_coo
from .modules import SparseConv2d, SparseLinear
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
        self.version = 0
        """Bumped by every change of the scales or bias (the runtime modules rebuild their layout on it)."""

    @property
    def nonzeros(self) -> int:
        return int(np.count_nonzero(self.code))

    def fold_scale(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Absorb ``y -> scale * y + shift`` (a BatchNorm in eval mode) into the row scales and bias."""
        scale = np.asarray(scale, np.float32)
        self.wp, self.wn = self.wp * scale, self.wn * scale
        self.bias = self.bias * scale + np.asarray(shift, np.float32)
        self.version += 1

    def layout(self) -> SparseRows:
        """The weight as CSR rows of codes into ``{-wn, +wp}`` (one pair per row, or one for all rows when the
        scales are uniform: then the AVX-512 batch-1 kernel can hold the table in registers)."""
        r, c = np.nonzero(self.code)
        positive = (self.code[r, c] > 0).astype(np.int64)
        if np.all(self.wp == self.wp[0]) and np.all(self.wn == self.wn[0]):
            table, codes = np.array([-self.wn[0], self.wp[0]], np.float32), positive
        else:
            table, codes = np.stack([-self.wn, self.wp], axis=1).reshape(-1).astype(np.float32), 2 * r + positive
        return from_coo(self.shape, r, c, codes, table, "ternary")

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``x (batch, in) -> (batch, out)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self.shape[0]), dtype=np.float32)
        _ternary_rows(x, self.code, self.wp, self.wn, self.bias, out)
        return out


def ternary_matmul(code: np.ndarray, wp: float, wn: float, x: np.ndarray) -> np.ndarray:
    """One-shot helper: ``x (batch, in) @ ternary(code, wp, wn).T`` by additions and subtractions."""
    return TernaryRows(code, wp, wn).matvec(x)


class _Engine(nn.Module):
    """Holds the sparse module computing from :attr:`rows`, rebuilt when the rows' scales or bias change."""

    rows: TernaryRows

    def _engine(self) -> nn.Module:
        built = self.__dict__.get("_built")
        if built is None or built[0] != self.rows.version:
            built = self.__dict__["_built"] = (self.rows.version, self._build())
        return built[1]

    def _build(self) -> nn.Module:
        raise NotImplementedError

    @property
    def last_kernel(self) -> str:
        """The kernel the engine's last call ran ('' before the first call)."""
        built = self.__dict__.get("_built")
        return str(getattr(built[1], "last_kernel", "")) if built is not None else ""


class TernaryLinear(_Engine):
    """Inference-only Linear layer computing from ternary codes (the sparse codebook kernels)."""

    def __init__(self, rows: TernaryRows) -> None:
        super().__init__()
        self.rows = rows

    def _build(self) -> nn.Module:
        return SparseLinear(self.rows.layout(), self.rows.bias, "ternary")

    @classmethod
    def from_stored(cls, weight: StoredWeight, bias: Tensor | None = None) -> TernaryLinear:
        return cls(_rows(weight, bias))

    def forward(self, x: Tensor) -> Tensor:
        return self._engine()(x)

    def extra_repr(self) -> str:
        return f"in={self.rows.shape[1]}, out={self.rows.shape[0]}, nonzeros={self.rows.nonzeros}"


class TernaryConv2d(_Engine):
    """Inference-only Conv2d (groups=1) computing from ternary codes (the direct sparse convolution)."""

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

    def _build(self) -> nn.Module:
        (kh, kw), rows = self.kernel_size, self.rows
        return SparseConv2d(rows.layout(), self.kernel_size, rows.shape[1] // (kh * kw), stride=self.stride,
                            padding=self.padding, dilation=self.dilation, bias=rows.bias, name="ternary")

    def forward(self, x: Tensor) -> Tensor:
        return self._engine()(x)

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
