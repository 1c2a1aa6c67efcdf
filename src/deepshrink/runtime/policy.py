"""Which execution forms a runtime layer keeps and when each runs: every kernel-choice threshold in one place.

A sparse Linear always holds the row layout (batches: the register-blocked kernel of :mod:`.batched`; batch 1:
the row kernel). On top of it, chosen at load time from the layer and the host: the AVX-512 sliced-window form
(:mod:`.simd`) or, without AVX-512, the column form (:mod:`.columns`) that skips zero inputs. Chosen at call time
from the input: batch size and the share of zero inputs. Kernel tuning churns this file, not the modules.
"""

from __future__ import annotations

import numpy as np

from .columns import ColumnBlocks, column_blocks
from .layout import SparseRows
from .simd import SlicedWindows, sliced_windows

COLUMN_FORM_MIN_NNZ = 20_000
"""Non-zeros from which a SparseLinear also keeps the column form: below, skipping zero inputs saves less than the
extra call overhead (measured: 300x784 at 8% no gain, 500x800 at 7% 14% faster with half the inputs zero)."""

SIMD_FORM_MIN_NNZ = 20_000
"""Non-zeros from which a SparseLinear also keeps the AVX-512 sliced-window form. Measured on the trained LeNets
(1 thread, batch 1): LeNet-5 fc1 (28k) 16.0 vs 20.8 us with the row kernel for +115 KB; LeNet-300-100 fc1 (18.8k)
14.6 vs 15.7 us for +92 KB, not worth its bytes."""

SIMD_MAX_BATCH = 4
"""Batches up to this size run the AVX-512 batch-1 kernel once per sample: measured (1 thread, AlexNet FC6 / FC8
shapes) 1.7 / 0.23 ms at batch 2 and 3.6 / 0.46 ms at batch 4 against 4.7 / 1.3 and 4.4 / 0.84 ms for the blocked
batch kernel, which pads every batch to 16 columns; from batch 8 the blocked kernel wins."""

SKIP_ZERO_INPUTS_BELOW = 0.6
"""Input density (non-zero fraction) under which a batch-1 SparseLinear runs the column-blocked kernel that skips
zero inputs: measured break-even against the row kernel on AlexNet FC6-8 shapes is 0.64-0.73 (BENCHMARKS.md)."""


DENSE_CONV_ALWAYS = 0.9
"""Density from which a pruned Conv2d always runs as a dense convolution (``F.conv2d`` on its decoded filter)."""

DENSE_CONV_BATCHED = 0.25
"""Density (times the direct kernel's extra positions, ``Wq / OW``) from which a Conv2d runs dense for batches of
:data:`DENSE_CONV_MIN_BATCH` or more. Rough measurement on the shared 2-core Zen 5 VM (1 thread, ResNet-20 / VGG /
LeNet-5 conv shapes, random masks): at batch 1 the direct sparse kernel beat oneDNN at every density up to 0.9
(1.0-9x: oneDNN's batch-1 convolutions are far from peak); from batch 8 oneDNN wins from about 0.3 (0.4-0.9x
there, 0.15-0.5x at 0.6-0.9), and the strided layers lose earlier (their phase split costs as much as the
products). To be re-measured on a quiet machine (``benchmarks/bench_runtime_conv.py``)."""

DENSE_CONV_MIN_BATCH = 4
"""Batch size from which :data:`DENSE_CONV_BATCHED` applies."""


def keeps_dense_conv(density: float) -> bool:
    """Whether a sparse Conv2d also holds its decoded dense filter (for the calls :func:`dense_conv` sends there)."""
    return density >= DENSE_CONV_BATCHED


def dense_conv(density: float, batch: int, waste: float) -> bool:
    """Whether a call of ``batch`` samples runs the dense convolution; ``waste`` = ``Wq / OW`` of the direct kernel
    (>= 1: the positions it computes and drops)."""
    if density >= DENSE_CONV_ALWAYS:
        return True
    return batch >= DENSE_CONV_MIN_BATCH and density * waste >= DENSE_CONV_BATCHED


CHANNEL_BLOCK_FILL = 0.5
"""Share of non-zeros in a conv's four-channel blocks (over the union of their taps) from which it runs the
channel-blocked direct kernel: one tap's input loads then serve four channels, at the cost of the zeros filled in."""


def channel_blocked(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Whether a (groups=1) conv weight runs the four-channel blocked direct kernel (:data:`CHANNEL_BLOCK_FILL`)."""
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    union = np.unique((rows // 4) * (int(indices.max()) + 1) + indices.astype(np.int64)).size
    return indices.size >= CHANNEL_BLOCK_FILL * 4 * union


def simd_form(weight: SparseRows, allowed: bool = True) -> SlicedWindows | None:
    """The AVX-512 sliced-window form of a Linear weight, when the host has it and the layer is big enough."""
    return sliced_windows(weight) if allowed and weight.nnz >= SIMD_FORM_MIN_NNZ else None


def column_form(weight: SparseRows, grouped: SparseRows, skip_zero_inputs: bool,
                has_simd: bool) -> ColumnBlocks | None:
    """The column form (zero-input skipping at batch 1) where no SIMD form runs batch 1.

    The fused batch-1 entry pairs it with the row-grouped layout; without the latter (pruned-only values,
    > 65,536 inputs, > 255 centroids) there is none, nor for small layers (:data:`COLUMN_FORM_MIN_NNZ`).
    """
    wanted = skip_zero_inputs and not has_simd and grouped.group == 8 and weight.nnz >= COLUMN_FORM_MIN_NNZ
    return column_blocks(weight) if wanted else None


def runs_simd(batch: int, has_simd: bool) -> bool:
    """Whether a call of ``batch`` samples runs the SIMD form (one sample at a time)."""
    return has_simd and 0 < batch <= SIMD_MAX_BATCH
