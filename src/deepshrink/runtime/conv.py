"""Direct sparse convolution: no im2col buffer, weights stationary, output channels blocked.

The input is copied once into a *phase-split* padded buffer: for stride ``(sh, sw)`` every channel becomes
``sh * sw`` planes ``xq[c, a, b] = xpad[c, a::sh, b::sw]`` of ``Hq x Wq`` (one plane, the padded image, at stride
1). In that buffer every filter tap ``(c, ki, kj)`` of a strided, dilated convolution is a stride-1 tap of one
plane at a fixed offset, and output position ``(i, j)`` reads ``xq`` at ``offset(tap) + i * Wq + j``. So an output
plane computed over *virtual* positions ``p = i * Wq + j`` (the row length of the buffer, ``Wq``, instead of the
output width; positions with ``j >= OW`` are computed and dropped) is a sparse row times a dense "matrix" whose
column for tap ``t`` is ``xq`` shifted by ``offset(t)``: the register tile of :mod:`.tiles` with ``offsets`` = the
taps' flat offsets (computed at load time per input size) and ``ld`` = 1. Each non-zero of a filter costs one
codebook gather, then per 16 output positions one load and one FMA; the sums stay in registers.

Tasks are (sample, block of :data:`CHANNEL_BLOCK` output channels); a task walks its output rows in bands of
about :data:`BAND_POSITIONS` virtual positions and runs every channel of its block over a band before the next,
so the band's input rows stay in L1/L2 while the block's filters pass over them; each band lands in a per-thread
scratch and is copied to the (N, O, OH, OW) output without its dropped columns. Grouped and depthwise
convolutions are the same kernel (a row's offsets start at its group's channels).

What it costs: ``Wq / OW`` extra positions (e.g. 28/24 on LeNet-5's conv1, 12/8 on conv2), one copy of the input,
one of the output; what it saves over im2col + product: the ``C * kh * kw``-fold patch buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import prange

from .kernels import PARALLEL_MIN_WORK, parallel_build
from .tiles import CHANNEL_TILE, LANES, channel_tile, row_tile

CHANNEL_BLOCK = 8
"""Output channels a task computes over one band of positions before the next band."""

BAND_POSITIONS = 512
"""Virtual output positions per band (whole output rows, at least one): 2 KiB of sums per channel."""

_OPTS: dict[str, Any] = {"cache": True, "nogil": True, "boundscheck": False}


@dataclass(frozen=True)
class Geometry:
    """Everything a call needs that depends on the input size only (computed once per size, cached)."""

    in_hw: tuple[int, int]
    pads: tuple[int, int, int, int]
    """(left, right, top, bottom) zero padding (already applied by the caller for non-zero padding modes)."""
    out_hw: tuple[int, int]
    plane_hw: tuple[int, int]
    """(Hq, Wq): the size of one phase plane."""
    offsets: np.ndarray
    """int32 or int64, one flat ``xq`` offset per weight entry."""
    image: int
    """Floats of one sample's phase-split buffer."""
    band_rows: int
    slack: int
    """Floats past the last sample that a tile may read (zeros)."""
    block_offsets: np.ndarray | None = None
    """The offsets of a :class:`ChannelBlocks` form's taps (groups=1), when the layer has one."""


def geometry(indptr: np.ndarray, indices: np.ndarray, in_channels: int, groups: int, kernel: tuple[int, int],
             stride: tuple[int, int], dilation: tuple[int, int], pads: tuple[int, int, int, int],
             in_hw: tuple[int, int], block_columns: np.ndarray | None = None) -> Geometry:
    """The call geometry of a conv weight in CSR form (row = output channel, column = (c, ki, kj) of its group),
    and of its channel-blocked taps ``block_columns`` (groups=1) when given."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    left, right, top, bottom = pads
    hp, wp = in_hw[0] + top + bottom, in_hw[1] + left + right
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    hq, wq = -(-hp // sh), -(-wp // sw)
    n_out = indptr.shape[0] - 1
    cin_g = in_channels // groups
    rows = np.repeat(np.arange(n_out), np.diff(indptr))

    def offsets_of(col: np.ndarray, base: np.ndarray | int) -> np.ndarray:
        c_local, rem = np.divmod(col.astype(np.int64), kh * kw)
        ki, kj = np.divmod(rem, kw)
        a, qi = (ki * dh) % sh, (ki * dh) // sh
        b, qj = (kj * dw) % sw, (kj * dw) // sw
        return ((((base + c_local) * sh + a) * sw + b) * hq + qi) * wq + qj

    offsets = offsets_of(indices, (rows // max(n_out // groups, 1)) * cin_g)
    image = in_channels * sh * sw * hq * wq
    dtype = np.int32 if image < 1 << 31 else np.int64
    blocked = None if block_columns is None else offsets_of(block_columns, 0).astype(dtype)
    band_rows = max(1, min(oh, BAND_POSITIONS // max(wq, 1)))
    # a tile reads up to 15 positions past a band's last used one, plus the largest tap offset
    reach = (int(offsets.max()) if offsets.size else 0) + (oh - 1) * wq + ow + LANES
    return Geometry(in_hw, pads, (oh, ow), (hq, wq), offsets.astype(dtype), image, band_rows,
                    max(reach - image, 0), blocked)


def _phase_split(x, top, left, sh, sw, hq, wq, xq, image):
    """``xq[n * image + ((c * sh + a) * sw + b) * hq * wq + i * wq + j] = xpad[n, c, i * sh + a, j * sw + b]``
    with ``xpad`` = ``x`` zero-padded by ``top``/``left`` (and by whatever the planes hold beyond ``x``)."""
    n_batch, channels, height, width = x.shape
    plane = hq * wq
    for task in prange(n_batch * channels):
        n = task // channels
        c = task % channels
        src = x[n, c]
        if sh == 1 and sw == 1 and top == 0 and left == 0 and hq == height and wq == width:
            base = n * image + c * plane  # the plane is the input channel itself: one contiguous copy
            flat = src.reshape(plane)
            for k in range(plane):
                xq[base + k] = flat[k]
            continue
        for a in range(sh):
            for b in range(sw):
                base = n * image + ((c * sh + a) * sw + b) * plane
                # input columns j * sw + b - left for j in [j0, j1) lie inside the row
                j0 = min(max(0, (left - b + sw - 1) // sw), wq)
                j1 = max(min(wq, (width + left - b + sw - 1) // sw), j0)
                for i in range(hq):
                    row = base + i * wq
                    yy = i * sh + a - top
                    if yy < 0 or yy >= height:
                        for j in range(wq):
                            xq[row + j] = 0.0
                        continue
                    line = src[yy]
                    for j in range(j0):
                        xq[row + j] = 0.0
                    for j in range(j1, wq):
                        xq[row + j] = 0.0
                    if sw == 1:
                        shift = b - left
                        for j in range(j0, j1):
                            xq[row + j] = line[j + shift]
                    else:
                        for j in range(j0, j1):
                            xq[row + j] = line[j * sw + b - left]


phase_split_serial = numba.njit(**_OPTS)(_phase_split)
phase_split_parallel = parallel_build(_phase_split, _OPTS)


@numba.njit(inline="always", **_OPTS)
def _store_band(y, s, n, o0, o1, i0, i1, band, wq, ow):
    """Copy output rows ``i0:i1`` of channels ``o0:o1`` from the band scratch (rows ``wq`` long, ``ow`` kept)."""
    for o in range(o0, o1):
        plane = y[n, o]
        for i in range(i0, i1):
            src = (o - o0) * band + (i - i0) * wq
            dst = plane[i]
            for j in range(ow):
                dst[j] = s[src + j]


def _conv(indptr, offsets, codes, table, xq, image, bias, y, wq, band_rows, block, scratch):
    """Every (sample, channel block) task: bands of output rows, each channel's tiles into this thread's
    scratch, then the band's used columns into ``y`` (N, O, OH, OW)."""
    n_batch, n_out, oh, ow = y.shape
    n_blocks = (n_out + block - 1) // block
    band = scratch.shape[1] // block
    for task in prange(n_batch * n_blocks):
        s = scratch[numba.get_thread_id()]
        n = task // n_blocks
        o0 = (task % n_blocks) * block
        o1 = min(o0 + block, n_out)
        for i0 in range(0, oh, band_rows):
            i1 = min(i0 + band_rows, oh)
            used = ((i1 - i0 - 1) * wq + ow + 15) // 16 * 16
            x_at = n * image + i0 * wq
            for o in range(o0, o1):
                a = indptr[o]
                b = indptr[o + 1]
                out = (o - o0) * band
                p = 0
                while p + 64 <= used:
                    row_tile(s, out + p, 4, a, b, 1, 0, offsets, codes, table, xq, x_at + p, 1, bias[o])
                    p += 64
                left = (used - p) // 16
                if left == 3:
                    row_tile(s, out + p, 3, a, b, 1, 0, offsets, codes, table, xq, x_at + p, 1, bias[o])
                elif left == 2:
                    row_tile(s, out + p, 2, a, b, 1, 0, offsets, codes, table, xq, x_at + p, 1, bias[o])
                elif left == 1:
                    row_tile(s, out + p, 1, a, b, 1, 0, offsets, codes, table, xq, x_at + p, 1, bias[o])
            _store_band(y, s, n, o0, o1, i0, i1, band, wq, ow)


conv_serial = numba.njit(**_OPTS)(_conv)
conv_parallel = parallel_build(_conv, _OPTS)


@dataclass(frozen=True)
class ChannelBlocks:
    """A conv weight (groups=1) as blocks of four output channels over the union of their taps: ``columns[j]``
    (the tap, a column of the CSR weight) and ``weights[4 j : 4 j + 4]`` (its value in each channel, 0 where the
    channel lacks it) for ``j`` in ``ptr[b] .. ptr[b + 1]``; ``bias`` is padded to whole blocks."""

    ptr: np.ndarray
    columns: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.ptr.nbytes + self.columns.nbytes + self.weights.nbytes + self.bias.nbytes)


def channel_blocks(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, bias: np.ndarray) -> ChannelBlocks:
    """The four-channel blocked form of a CSR weight whose entries have float ``values``."""
    n_out = indptr.shape[0] - 1
    n_blocks = -(-n_out // CHANNEL_TILE)
    rows = np.repeat(np.arange(n_out), np.diff(indptr))
    block, lane = np.divmod(rows, CHANNEL_TILE)
    key = block * (int(indices.max()) + 1 if indices.size else 1) + indices.astype(np.int64)
    unique, slot = np.unique(key, return_inverse=True)
    columns = unique % (int(indices.max()) + 1 if indices.size else 1)
    weights = np.zeros((unique.size, CHANNEL_TILE), dtype=np.float32)
    weights[slot, lane] = values
    ptr = np.searchsorted(unique // (int(indices.max()) + 1 if indices.size else 1), np.arange(n_blocks + 1))
    padded = np.zeros(n_blocks * CHANNEL_TILE, dtype=np.float32)
    padded[:n_out] = bias
    return ChannelBlocks(ptr.astype(np.int64), columns.astype(np.int64), weights.reshape(-1), padded)


def _conv_blocked(ptr, offsets, weights, xq, image, bias, y, wq, band_rows, scratch):
    """:func:`_conv` on :class:`ChannelBlocks`: tasks are (sample, block of four channels)."""
    n_batch, n_out, oh, ow = y.shape
    n_blocks = ptr.shape[0] - 1
    band = scratch.shape[1] // 4
    for task in prange(n_batch * n_blocks):
        s = scratch[numba.get_thread_id()]
        n = task // n_blocks
        blk = task % n_blocks
        a = ptr[blk]
        b = ptr[blk + 1]
        o0 = blk * 4
        for i0 in range(0, oh, band_rows):
            i1 = min(i0 + band_rows, oh)
            used = ((i1 - i0 - 1) * wq + ow + 15) // 16 * 16
            x_at = n * image + i0 * wq
            p = 0
            while p + 64 <= used:
                channel_tile(s, p, band, 4, a, b, offsets, weights, xq, x_at + p, bias, o0)
                p += 64
            left = (used - p) // 16
            if left == 3:
                channel_tile(s, p, band, 3, a, b, offsets, weights, xq, x_at + p, bias, o0)
            elif left == 2:
                channel_tile(s, p, band, 2, a, b, offsets, weights, xq, x_at + p, bias, o0)
            elif left == 1:
                channel_tile(s, p, band, 1, a, b, offsets, weights, xq, x_at + p, bias, o0)
            _store_band(y, s, n, o0, min(o0 + 4, n_out), i0, i1, band, wq, ow)


conv_blocked_serial = numba.njit(**_OPTS)(_conv_blocked)
conv_blocked_parallel = parallel_build(_conv_blocked, _OPTS)


def _prepare(x: np.ndarray, geo: Geometry, stride: tuple[int, int], parallel: bool) -> np.ndarray:
    """The phase-split, padded input buffer of ``x`` (with the zero slack the tiles may read past its end)."""
    n_batch = x.shape[0]
    (hq, wq), (sh, sw) = geo.plane_hw, stride
    xq = np.empty(n_batch * geo.image + geo.slack, dtype=np.float32)
    xq[n_batch * geo.image:] = 0.0
    left, _, top, _ = geo.pads
    split = phase_split_parallel if parallel and x.size >= 1 << 15 else phase_split_serial
    split(x, top, left, sh, sw, hq, wq, xq, geo.image)
    return xq


def _scratch(parallel: bool, channels: int, geo: Geometry) -> np.ndarray:
    band = (geo.band_rows * geo.plane_hw[1] + LANES - 1) // LANES * LANES + LANES
    threads = int(numba.config.NUMBA_NUM_THREADS) if parallel else 1  # type: ignore[attr-defined]
    return np.empty((threads, channels * band), dtype=np.float32)


def blocked_conv(blocks: ChannelBlocks, x: np.ndarray, geo: Geometry, stride: tuple[int, int],
                 n_out: int) -> np.ndarray:
    """:func:`direct_conv` on the four-channel blocked form (``geo`` computed with its columns)."""
    assert geo.block_offsets is not None
    n_batch = x.shape[0]
    (oh, ow), wq = geo.out_hw, geo.plane_hw[1]
    work = int(blocks.columns.shape[0]) * 4 * n_batch * oh * wq
    parallel = numba.get_num_threads() > 1 and work >= PARALLEL_MIN_WORK
    xq = _prepare(x, geo, stride, parallel)
    y = np.empty((n_batch, n_out, oh, ow), dtype=np.float32)
    kernel = conv_blocked_parallel if parallel else conv_blocked_serial
    kernel(blocks.ptr, geo.block_offsets, blocks.weights, xq, geo.image, blocks.bias, y, wq, geo.band_rows,
           _scratch(parallel, CHANNEL_TILE, geo))
    return y


def direct_conv(indptr: np.ndarray, codes: np.ndarray, table: np.ndarray, x: np.ndarray, bias: np.ndarray,
                geo: Geometry, stride: tuple[int, int], n_out: int) -> np.ndarray:
    """(N, O, OH, OW) float32 of a C-contiguous float32 (N, C, H, W) input; ``codes`` index ``table`` per entry."""
    n_batch = x.shape[0]
    (oh, ow), wq = geo.out_hw, geo.plane_hw[1]
    work = int(codes.shape[0]) * n_batch * oh * wq
    parallel = numba.get_num_threads() > 1 and work >= PARALLEL_MIN_WORK
    xq = _prepare(x, geo, stride, parallel)
    y = np.empty((n_batch, n_out, oh, ow), dtype=np.float32)
    block = min(CHANNEL_BLOCK, max(n_out, 1))
    kernel = conv_parallel if parallel else conv_serial
    kernel(indptr, geo.offsets, codes, table, xq, geo.image, bias, y, wq, geo.band_rows, block,
           _scratch(parallel, block, geo))
    return y


__all__ = ["BAND_POSITIONS", "CHANNEL_BLOCK", "ChannelBlocks", "Geometry", "blocked_conv", "channel_blocks", "direct_conv",
           "geometry"]
