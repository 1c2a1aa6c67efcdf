"""Runtime modules for sparse weights: ``SparseLinear`` and ``SparseConv2d`` over :class:`SparseRows`.

They hold only the CSR layout (narrow column indices + codebook codes + centroids, or per-non-zero values)
and the bias, and call the numba kernels; they are inference-only (no autograd through them). Which extra
execution forms a layer keeps (AVX-512 sliced windows, column blocks) is decided in :mod:`.policy`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import ConfigError, FormatError, UnsupportedLayerError
from . import batched, columns, kernels, policy
from .columns import ColumnBlocks
from .conv import ChannelBlocks, Geometry, blocked_conv, channel_blocks, direct_conv, geometry
from .layout import SparseRows, group_rows
from .simd import SlicedWindows

_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _as_input(x: Tensor, transposed_ok: bool = False) -> np.ndarray:
    """A float32, C-contiguous numpy view (copy only when needed) of an inference input; with ``transposed_ok``
    also the transpose of a C-contiguous 2-D array (what a batched layer returns and reads in place)."""
    if x.device.type != "cpu":
        raise UnsupportedLayerError(f"the runtime kernels run on CPU; got an input on {x.device}")
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    if x.requires_grad:
        x = x.detach()
    array = x.numpy()
    if array.flags.c_contiguous or (transposed_ok and array.ndim == 2 and array.flags.f_contiguous):
        return array
    return np.ascontiguousarray(array)


def _bias_array(bias: Tensor | np.ndarray | None, n_out: int, name: str) -> np.ndarray:
    if bias is None:
        return np.zeros(n_out, dtype=np.float32)
    array = np.ascontiguousarray(bias.detach().cpu().numpy() if isinstance(bias, Tensor) else bias, dtype=np.float32)
    if array.shape != (n_out,):
        raise FormatError(f"{name}: bias of shape {array.shape} for {n_out} outputs")
    return array


class _SparseLayer(nn.Module):
    """Common state: the layout, the bias and whether the file had a bias (for repr and export)."""

    def __init__(self, weight: SparseRows, bias: Tensor | np.ndarray | None, name: str) -> None:
        super().__init__()
        self.weight_layout = weight
        self.has_bias = bias is not None
        self.bias_array = _bias_array(bias, weight.shape[0], name)
        # the register-tile kernels read every weight as codes into a table: per-non-zero values get codes 0..nnz-1
        self._codes = weight.codes if not weight.direct else np.arange(weight.nnz, dtype=np.int32)
        self.dense_fallback = True
        """Whether calls that :func:`~.policy.runs_dense` picks run the dense torch op (False: always sparse)."""
        self.last_kernel = ""  # calls write it through __dict__: nn.Module.__setattr__ costs ~1 us a call
        """The kernel the last call ran (``dense``, ``simd``, ``rows``, ``columns``, ``batched``, ``direct``,
        ``blocked``): what :mod:`.policy` chose for that call's batch."""
        self._dense_weight: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Resident bytes: layout + bias (+ the decoded dense weight once a dense-fallback call has built it)."""
        extra = self._codes.nbytes if self.weight_layout.direct else 0
        dense = self._dense_weight.numel() * 4 if self._dense_weight is not None else 0
        return self.weight_layout.nbytes + int(self.bias_array.nbytes) + int(extra) + dense

    def _dense(self, shape: tuple[int, ...]) -> Tensor:
        """The decoded dense weight (built on the first call that runs dense; not a parameter or buffer)."""
        if self._dense_weight is None:
            self._dense_weight = torch.from_numpy(self.weight_layout.to_dense()).reshape(shape)
        return self._dense_weight

    def _runs_dense(self, kind: str, density: float, batch: int) -> bool:
        shape = self.weight_layout.shape
        return self.dense_fallback and policy.runs_dense(kind, density, batch, shape[0] * shape[1])

    def _run_linear(self, x2: np.ndarray) -> np.ndarray:
        w = self.weight_layout
        self.__dict__["last_kernel"] = "batched" if x2.shape[0] > 1 else "rows"
        if x2.shape[0] > 1:  # register-blocked, column-chunked sparse x dense (runtime/batched.py)
            if self._chunks is None:
                self._chunks = batched.row_chunks(w.indptr, w.indices, w.shape[1])
            return batched.product(self._chunks, w.indices, self._codes, w.table, x2, self.bias_array)
        return kernels.linear_forward(w.indptr, w.indices, w.codes, w.table, w.direct, x2, self.bias_array, w.group)

    _chunks: np.ndarray | None = None
    """Per-row entry pointers at every :data:`~.batched.CHUNK_COLUMNS` columns (built on the first batch)."""

    def _describe(self) -> str:
        w = self.weight_layout
        form = "values" if w.direct else f"codebook={w.table.shape[0] - (w.group > 1)}"  # minus the padding 0.0
        return f"nnz={w.nnz} ({100 * w.density:.1f}%), {form}, bias={self.has_bias}, {self.nbytes} bytes"


class SparseLinear(_SparseLayer):
    """``nn.Linear`` computed from a CSR (+codebook) weight: ``x @ W.T + b`` without a dense ``W``.

    A codebook weight is held row-grouped (:func:`~deepshrink.runtime.layout.group_rows`, rows padded to
    whole groups of 8 entries); batches run it through the register-blocked kernel (:mod:`.batched`), batch 1
    through the row kernel unless a faster form exists:

    * on an AVX-512 host (at most 32 centroids, at least :data:`~.policy.SIMD_FORM_MIN_NNZ` non-zeros) the weight is also
      held as sliced windows (:mod:`.simd`: inputs and centroids permuted in registers, 16 rows per instruction),
      which run batch 1 and batches of up to :data:`~.policy.SIMD_MAX_BATCH` (one sample at a time);
    * elsewhere, with ``skip_zero_inputs`` and at least :data:`~.policy.COLUMN_FORM_MIN_NNZ` non-zeros, it is also held
      by column (:mod:`.columns`, 2 bytes per non-zero), and a batch-1 input with at most
      :data:`~.policy.SKIP_ZERO_INPUTS_BELOW` non-zeros runs the column kernel, which skips the zero inputs.
    """

    def __init__(self, weight: SparseRows, bias: Tensor | np.ndarray | None = None, name: str = "weight", *,
                 skip_zero_inputs: bool = True, simd: bool = True, dense_fallback: bool = True) -> None:
        super().__init__(group_rows(weight, name), bias, name)
        self.dense_fallback = dense_fallback
        self.density = weight.density
        self.out_features, self.in_features = weight.shape
        self.simd_layout: SlicedWindows | None = policy.simd_form(weight, simd)
        self.column_layout: ColumnBlocks | None = policy.column_form(weight, self.weight_layout, skip_zero_inputs,
                                                                     self.simd_layout is not None)
        self._batch1 = self._batch1_arguments()

    @property
    def nbytes(self) -> int:
        """Resident bytes: the row layout (batches) + the batch-1 form (SIMD or columns, if any) + bias."""
        extra = sum(f.nbytes for f in (self.column_layout, self.simd_layout) if f is not None)
        return super().nbytes + extra

    def _batch1_arguments(self) -> tuple[int, tuple[Any, ...]] | None:
        """``max_nonzero`` and the layouts as :func:`~deepshrink.runtime.columns.batch1` takes them, when both exist."""
        rows, cols = self.weight_layout, self.column_layout
        if cols is None or rows.group != 8:
            return None
        return (int(policy.SKIP_ZERO_INPUTS_BELOW * self.in_features),
                (rows.indptr, rows.indices.view(np.uint64), rows.codes.view(np.uint64), rows.table, cols.runptr,
                 cols.n_blocks, cols.entries.view(np.uint64), cols.table, cols.block_rows, cols.code_bits))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ConfigError(f"SparseLinear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        batch = x.numel() // max(self.in_features, 1)
        if self._runs_dense("linear", self.density, batch):
            self.__dict__["last_kernel"] = "dense"
            xf = x.detach().to(torch.float32)
            return F.linear(xf, self._dense((self.out_features, self.in_features)), torch.from_numpy(self.bias_array))
        array = _as_input(x, transposed_ok=x.dim() == 2).reshape(-1, self.in_features)
        if policy.runs_simd(array.shape[0], self.simd_layout is not None) and self.simd_layout is not None:
            self.__dict__["last_kernel"] = "simd"
            parallel = self.weight_layout.nnz >= kernels.PARALLEL_MIN_WORK and numba.get_num_threads() > 1
            rows = [self.simd_layout.forward(sample, self.bias_array, parallel) for sample in array]
            out = rows[0] if len(rows) == 1 else np.concatenate(rows)
        elif array.shape[0] == 1 and self._batch1 is not None:
            self.__dict__["last_kernel"] = "columns"
            out = np.empty((1, self.out_features), dtype=np.float32)
            rows_work = columns_work = 1 << 62  # serial; numba's thread count is asked only for big layers
            if self.weight_layout.nnz >= kernels.PARALLEL_MIN_WORK and numba.get_num_threads() > 1:
                rows_work = kernels.PARALLEL_MIN_WORK
                columns_work = max(columns.COLUMN_PARALLEL_MIN_WORK, rows_work)
            max_nonzero, layouts = self._batch1
            columns.batch1(array[0], self.bias_array, out[0], np.empty(self.in_features, dtype=np.int64), max_nonzero,
                           rows_work, columns_work, *layouts)
        else:
            out = self._run_linear(array)
        return torch.from_numpy(out) if x.dim() == 2 else torch.from_numpy(out).reshape(*x.shape[:-1], self.out_features)

    @property
    def batch1_form(self) -> str:
        """Which kernel runs a batch-1 call: ``simd`` (AVX-512 sliced windows), ``columns`` (zero-input skipping
        when the input is mostly zero, else rows) or ``rows``."""
        return "simd" if self.simd_layout is not None else "columns" if self.column_layout is not None else "rows"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self._describe()}, "
                f"batch-1 kernel={self.batch1_form}")


def _single(value: Any) -> int:
    return int(value[0]) if isinstance(value, tuple | list) else int(value)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, tuple | list) else (int(value), int(value))


class SparseConv2d(_SparseLayer):
    """``nn.Conv2d`` (stride, padding incl. 'same'/modes, dilation, groups) computed from the sparse filter.

    The direct sparse convolution of :mod:`.conv` (no im2col buffer: each non-zero tap reads the phase-split,
    padded input at a fixed offset; output channels blocked, sums in registers). A layer whose measured density
    makes a dense convolution faster for a call's batch (:data:`~.policy.DENSE_FROM`) runs ``F.conv2d`` on its
    decoded filter (built on the first such call), so a pruned layer is never slower than its dense self. At
    small batches a dense-enough layer times both on its first call per input shape and keeps the faster
    (:data:`~.policy.MEASURED_MAX_BATCH`).
    """

    def __init__(
        self, weight: SparseRows, kernel_size: tuple[int, int], in_channels: int, *, stride: Any = 1,
        padding: Any = 0, dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
        bias: Tensor | np.ndarray | None = None, name: str = "weight", dense_fallback: bool = True,
    ) -> None:
        super().__init__(weight, bias, name)
        self.out_channels = weight.shape[0]
        self.in_channels = int(in_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        self.groups = int(groups)
        if padding_mode not in _PAD_MODES:
            raise UnsupportedLayerError(f"{name}: padding mode {padding_mode!r} (known: {sorted(_PAD_MODES)})")
        self.padding_mode = padding_mode
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        expected = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        if weight.shape[1] != expected or self.in_channels % self.groups or self.out_channels % self.groups:
            raise FormatError(f"{name}: weight of {weight.shape[1]} columns does not fit this Conv2d's shape")
        self._geometry: dict[tuple[int, int], Geometry] = {}
        self._choice: dict[tuple, str] = {}
        """Per (batch, height, width, threads, dense_fallback): ``"dense"`` or ``"sparse"`` (:meth:`_choose`)."""
        self.blocks: ChannelBlocks | None = None
        if self.groups == 1 and weight.nnz and policy.channel_blocked(weight.indptr, weight.indices):
            values = weight.table if weight.direct else weight.table[weight.codes]
            self.blocks = channel_blocks(weight.indptr, weight.indices, values, self.bias_array)
        self.dense_fallback = dense_fallback

    @property
    def nbytes(self) -> int:
        """Resident bytes: the sparse layout (+ the channel-blocked form, + the dense filter once built) + bias."""
        return super().nbytes + (self.blocks.nbytes if self.blocks is not None else 0)

    def _pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) as ``F.pad`` takes them."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            return (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
        ph, pw = _pair(self.padding)
        return (pw, pw, ph, ph)

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"SparseConv2d expects (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        x = x.detach()
        pads = self._pads()
        key = (int(x.shape[0]), int(x.shape[2]), int(x.shape[3]), torch.get_num_threads(), self.dense_fallback)
        kernel = self._choice.get(key)
        if kernel is None:
            kernel, out = self._choose(x, pads, key)
        elif kernel == "dense":
            out = self._run_dense(x, pads)
        else:
            out = self._run_sparse(x, pads)
        return out.squeeze(0) if unbatched else out

    def _choose(self, x: Tensor, pads: tuple[int, int, int, int], key: tuple) -> tuple[str, Tensor]:
        """The kernel for calls like ``x`` (the policy's rule, or the faster of the two when it measures), cached
        per batch size, input size and thread count, with this call's output."""
        batch, height, width = key[:3]
        if any(pads) and self.padding_mode != "zeros":  # the sparse kernels see the input padded beforehand
            geo = self._geometry_at((height + pads[2] + pads[3], width + pads[0] + pads[1]), (0, 0, 0, 0))
        else:
            geo = self._geometry_at((height, width), pads)
        density = self.weight_layout.density * geo.plane_hw[1] / max(geo.out_hw[1], 1)  # effective density
        out: Tensor | None = None
        if not self.dense_fallback:
            kernel = "sparse"
        elif policy.measures("conv", density, batch):
            kernel, out = policy.fastest({"sparse": lambda: self._run_sparse(x, pads),
                                          "dense": lambda: self._run_dense(x, pads)})
            if kernel == "sparse":
                self._dense_weight = None  # not kept for calls that never use it
        else:
            kernel = "dense" if self._runs_dense("conv", density, batch) else "sparse"
        if len(self._choice) >= 16:
            self._choice.pop(next(iter(self._choice)))
        self._choice[key] = kernel
        if out is None:
            out = self._run_dense(x, pads) if kernel == "dense" else self._run_sparse(x, pads)
        else:  # the timing ran both: name the one whose output this is
            self.__dict__["last_kernel"] = ("dense" if kernel == "dense" else
                                            "blocked" if self.blocks is not None else "direct")
        return kernel, out

    def _run_sparse(self, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        if any(pads) and self.padding_mode != "zeros":
            x, pads = F.pad(x, pads, mode=_PAD_MODES[self.padding_mode]), (0, 0, 0, 0)
        geo = self._geometry_at((int(x.shape[2]), int(x.shape[3])), pads)
        if self.blocks is not None:
            self.__dict__["last_kernel"] = "blocked"
            return torch.from_numpy(blocked_conv(self.blocks, _as_input(x), geo, self.stride, self.out_channels))
        self.__dict__["last_kernel"] = "direct"
        w = self.weight_layout
        return torch.from_numpy(direct_conv(w.indptr, self._codes, w.table, _as_input(x), self.bias_array, geo,
                                            self.stride, self.out_channels))

    def _geometry_at(self, hw: tuple[int, int], pads: tuple[int, int, int, int]) -> Geometry:
        geo = self._geometry.get(hw)
        return geo if geo is not None else self._geometry_for(hw, pads)

    def _geometry_for(self, hw: tuple[int, int], pads: tuple[int, int, int, int]) -> Geometry:
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        if hw[0] + pads[2] + pads[3] < dh * (kh - 1) + 1 or hw[1] + pads[0] + pads[1] < dw * (kw - 1) + 1:
            raise ConfigError(f"input of {hw[0]}x{hw[1]} is smaller than the {kh}x{kw} kernel")
        w = self.weight_layout
        geo = geometry(w.indptr, w.indices, self.in_channels, self.groups, self.kernel_size, self.stride,
                       self.dilation, pads, hw, None if self.blocks is None else self.blocks.columns)
        if len(self._geometry) >= 8:  # a few input sizes at most stay cached
            self._geometry.pop(next(iter(self._geometry)))
        self._geometry[hw] = geo
        return geo

    def _run_dense(self, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        self.__dict__["last_kernel"] = "dense"
        weight = self._dense((self.out_channels, self.in_channels // self.groups, *self.kernel_size))
        left, right, top, bottom = pads
        padding = (0, 0)
        if self.padding_mode == "zeros" and left == right and top == bottom:
            padding = (top, left)  # oneDNN pads on the fly: no padded copy of a batch-64 input
        elif any(pads):
            x = F.pad(x, pads, mode=_PAD_MODES[self.padding_mode])
        return F.conv2d(x, weight, torch.from_numpy(self.bias_array), self.stride, padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, {self._describe()}")


class SparseConv1d(SparseConv2d):
    """``nn.Conv1d`` as a height-1 :class:`SparseConv2d` (the weight's column layout is the same)."""

    def __init__(self, weight: SparseRows, kernel_size: int, in_channels: int, *, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
                 bias: Tensor | np.ndarray | None = None, name: str = "weight") -> None:
        pad = padding if isinstance(padding, str) else (0, _single(padding))
        super().__init__(weight, (1, _single(kernel_size)), in_channels, stride=(1, _single(stride)), padding=pad,
                         dilation=(1, _single(dilation)), groups=groups, padding_mode=padding_mode, bias=bias,
                         name=name)

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 2
        out = super().forward((x.unsqueeze(0) if unbatched else x).unsqueeze(2)).squeeze(2)
        return out.squeeze(0) if unbatched else out


class SparseEmbedding(_SparseLayer):
    """``nn.Embedding`` looked up straight from the compressed rows: each id's row is scattered from its kept
    entries (codes into the codebook, or float values); no dense table exists."""

    def __init__(self, weight: SparseRows, name: str = "weight") -> None:
        super().__init__(weight, None, name)
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.detach().reshape(-1).to("cpu", torch.int64).numpy()
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"embedding ids must lie in [0, {self.num_embeddings}), got {int(flat.min())}.."
                             f"{int(flat.max())}")
        w = self.weight_layout
        out = kernels.gather_rows(w.indptr, w.indices, w.codes, w.table, w.direct, np.ascontiguousarray(flat),
                                  self.embedding_dim)
        return torch.from_numpy(out).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._describe()}"
