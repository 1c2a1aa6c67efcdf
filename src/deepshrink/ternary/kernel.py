"""Add/subtract runtime for ternary layers: ``y = Wp * sum_{+} x - Wn * sum_{-} x + b``.

Each output row keeps two index lists (CSR): where its code is +1 and where it is -1. Inside a layer the
inner loops only add and subtract inputs; the two scale multiplications happen once per output. Conv2d
runs on im2col columns (``torch.nn.functional.unfold``), where one add accumulates a whole row of output
positions at a time (SIMD-friendly). Scales may be per output row, which lets a following BatchNorm fold in
without leaving the ternary codes (``fold_scale``).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import UnsupportedLayerError

__all__ = ["TernaryConv2d", "TernaryLinear", "TernaryRows", "ternary_matmul"]


@numba.njit(cache=True, nogil=True)
def _rows_times_vectors(x, pos_ptr, pos_idx, neg_ptr, neg_idx, wp, wn, bias, out):
    """out[b, o] = wp[o] * sum_{k in P_o} x[b, k] - wn[o] * sum_{k in N_o} x[b, k] + bias[o]."""
    for b in range(x.shape[0]):
        for o in range(pos_ptr.shape[0] - 1):
            sp = np.float32(0.0)
            for j in range(pos_ptr[o], pos_ptr[o + 1]):
                sp += x[b, pos_idx[j]]
            sn = np.float32(0.0)
            for j in range(neg_ptr[o], neg_ptr[o + 1]):
                sn += x[b, neg_idx[j]]
            out[b, o] = wp[o] * sp - wn[o] * sn + bias[o]


@numba.njit(cache=True, nogil=True)
def _rows_times_columns(cols, pos_ptr, pos_idx, neg_ptr, neg_idx, wp, wn, bias, out):
    """out[o, p] = wp[o] * sum_{k in P_o} cols[k, p] - wn[o] * sum_{k in N_o} cols[k, p] + bias[o]."""
    positions = cols.shape[1]
    acc_p = np.empty(positions, dtype=np.float32)
    acc_n = np.empty(positions, dtype=np.float32)
    for o in range(pos_ptr.shape[0] - 1):
        acc_p[:] = 0.0
        acc_n[:] = 0.0
        for j in range(pos_ptr[o], pos_ptr[o + 1]):
            row = cols[pos_idx[j]]
            for p in range(positions):
                acc_p[p] += row[p]
        for j in range(neg_ptr[o], neg_ptr[o + 1]):
            row = cols[neg_idx[j]]
            for p in range(positions):
                acc_n[p] += row[p]
        for p in range(positions):
            out[o, p] = wp[o] * acc_p[p] - wn[o] * acc_n[p] + bias[o]


def _csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = mask.sum(axis=1)
    ptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr, np.nonzero(mask)[1].astype(np.int32)


class TernaryRows:
    """A 2-D ternary matrix ``(out, in)`` as +1/-1 index lists per row, with per-row scales and bias."""

    def __init__(self, code: np.ndarray, wp: Any, wn: Any, bias: np.ndarray | None = None) -> None:
        code = np.asarray(code).reshape(code.shape[0], -1)
        rows = code.shape[0]
        self.shape = code.shape
        self.pos_ptr, self.pos_idx = _csr(code > 0)
        self.neg_ptr, self.neg_idx = _csr(code < 0)
        self.wp = np.broadcast_to(np.asarray(wp, dtype=np.float32), (rows,)).copy()
        self.wn = np.broadcast_to(np.asarray(wn, dtype=np.float32), (rows,)).copy()
        self.bias = np.zeros(rows, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(rows).copy()

    def fold_scale(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Absorb ``y -> scale * y + shift`` (a BatchNorm in eval mode) into the row scales and bias."""
        scale = np.asarray(scale, np.float32)
        self.wp, self.wn = self.wp * scale, self.wn * scale
        self.bias = self.bias * scale + np.asarray(shift, np.float32)

    def _args(self) -> tuple[np.ndarray, ...]:
        return (self.pos_ptr, self.pos_idx, self.neg_ptr, self.neg_idx, self.wp, self.wn, self.bias)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``x (batch, in) -> (batch, out)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self.shape[0]), dtype=np.float32)
        _rows_times_vectors(x, *self._args(), out)  # type: ignore[call-arg]
        return out

    def matcols(self, cols: np.ndarray) -> np.ndarray:
        """``cols (in, positions) -> (out, positions)``."""
        cols = np.ascontiguousarray(cols, dtype=np.float32)
        out = np.empty((self.shape[0], cols.shape[1]), dtype=np.float32)
        _rows_times_columns(cols, *self._args(), out)  # type: ignore[call-arg]
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
    def from_export(cls, exported: dict[str, Any], bias: Tensor | None = None) -> TernaryLinear:
        b = None if bias is None else bias.detach().cpu().numpy()
        return cls(TernaryRows(np.asarray(exported["code"]), exported["wp"], exported["wn"], b))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.detach().reshape(-1, x.shape[-1]).cpu().numpy()
        return torch.from_numpy(self.rows.matvec(flat)).reshape(*lead, self.rows.shape[0])

    def extra_repr(self) -> str:
        return f"in={self.rows.shape[1]}, out={self.rows.shape[0]}, nonzeros={len(self.rows.pos_idx) + len(self.rows.neg_idx)}"


class TernaryConv2d(nn.Module):
    """Inference-only Conv2d (groups=1) computing from ternary codes on im2col columns."""

    def __init__(self, rows: TernaryRows, kernel_size: tuple[int, int], stride: Any, padding: Any, dilation: Any) -> None:
        super().__init__()
        self.rows = rows
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, exported: dict[str, Any], bias: Tensor | str | None = "conv") -> TernaryConv2d:
        """Built from ``conv``'s hyperparameters; ``bias`` defaults to ``conv.bias`` (pass one for meta skeletons)."""
        if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"the ternary runtime handles Conv2d with groups=1 and numeric zero padding; got groups={conv.groups}, "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r} (keep this layer dense)")
        chosen = conv.bias if isinstance(bias, str) else bias
        b = None if chosen is None else chosen.detach().cpu().numpy()
        rows = TernaryRows(np.asarray(exported["code"]), exported["wp"], exported["wn"], b)
        return cls(rows, (int(conv.kernel_size[0]), int(conv.kernel_size[1])), conv.stride, conv.padding, conv.dilation)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        cols = F.unfold(x.detach(), self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        out_h = (height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        outs = [torch.from_numpy(self.rows.matcols(cols[b].numpy())) for b in range(batch)]
        return torch.stack(outs).reshape(batch, self.rows.shape[0], out_h, out_w)

    def extra_repr(self) -> str:
        return f"out={self.rows.shape[0]}, kernel={self.kernel_size}, stride={self.stride}, padding={self.padding}"
