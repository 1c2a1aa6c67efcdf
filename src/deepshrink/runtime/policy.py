"""Which execution forms a runtime layer keeps and when each runs: every kernel-choice threshold in one place.

A sparse Linear always holds the row layout (batches: the register-blocked kernel of :mod:`.batched`; batch 1:
the row kernel). On top of it, chosen at load time from the layer and the host: the AVX-512 sliced-window form
(:mod:`.simd`) or, without AVX-512, the column form (:mod:`.columns`) that skips zero inputs. Chosen at call time
from the input: batch size and the share of zero inputs. Sparse Linear and Conv2d layers that are dense enough
run the dense torch op instead (:data:`DENSE_FROM`), so a pruned layer is never run slower than its dense self;
at small batches a conv layer times both and keeps the faster (:data:`MEASURED_MAX_BATCH`).
Kernel tuning churns this file, not the modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

from .columns import ColumnBlocks, column_blocks
from .layout import SparseRows
from .simd import SlicedWindows, sliced_windows

T = TypeVar("T")

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


DENSE_FROM: dict[str, tuple[tuple[int, float], ...]] = {
    "linear": ((1, 0.7), (2, 0.4), (32, 0.6)),
    "conv": ((1, 0.9), (4, 0.25)),
}
"""Per layer kind, ``(from batch, density)`` steps: a call of ``batch`` samples runs the dense torch op on the
layer's decoded weight (``F.linear`` / ``F.conv2d``, built on the first such call) when the layer's *effective
density* reaches the density of the last step whose batch is ``<= batch``. Effective density: the non-zero share,
times ``Wq / OW`` for a convolution (the positions the direct kernel computes and drops). Below it the sparse
kernels run. Rough measurements on a shared, loaded 2-core Zen 5 VM (1 thread, 5-bit codebooks, random masks; to
be re-measured on a quiet machine with ``benchmarks/bench_runtime_policy.py``):

* Linear 1024x2048 / 300x784, dense / sparse time: batch 1 at density 0.7: 1.6 / 0.84, at 1.0: 1.15 / 0.98;
  batch 8 at 0.3: 1.17 / 1.19, at 0.5: 0.72 / 0.82; batch 64 at 0.5: 3.9 / 1.1, at 0.7: 1.8 / 0.88, at 1.0:
  0.44 / 0.71.
* Conv (ResNet-20 / VGG / LeNet-5 shapes): at batch 1 the direct kernel beat oneDNN at every density up to 0.9
  (oneDNN's batch-1 convolutions are far from peak); from batch 8 oneDNN wins from about 0.3, and strided layers
  lose earlier (their phase split costs as much as the products). Up to :data:`MEASURED_MAX_BATCH` samples the
  conv entries only decide layers sparser than :data:`MEASURED_FROM_DENSITY`; denser ones are timed.
"""


DENSE_MAX_WEIGHTS: dict[str, int] = {"linear": 16_384, "conv": 0}
"""Per layer kind, the dense weight count up to which a layer always runs its dense op: the sparse path's fixed
cost per call (~8-10 us: input checks, the numba dispatch, the output wrap) exceeds a tiny dense GEMV's whole
time. Measured (thread CPU time, 1 thread, batch 1, densities 0.1 / 0.3): 10x500 12-13 us sparse vs 4-5 us
dense, 84x120 14-16 vs 5.5, 120x400 10-13 vs 5-6, 300x784 12-15 (AVX-512 kernel) vs 14.6. Conv layers are
left out: LeNet-5's conv1 (500 weights) ran 28 us direct vs 59 us with ``F.conv2d``."""


MEASURED_MAX_BATCH = 4
"""Calls of up to this many samples on a conv layer of effective density at least :data:`MEASURED_FROM_DENSITY`
choose between the direct kernel and ``F.conv2d`` by timing both, once per layer, input shape and thread count
(:func:`fastest`). At these batches the winner depends on the layer's shape, not its density. Measured
2026-12-03 with ``benchmarks/bench_runtime_policy.py`` (1 thread, quiet machine, random masks at densities
0.7-1.0, batch 1): the direct kernel ran 1.2-2.1x faster than oneDNN on ResNet-20 and LeNet-5 shapes at every
density, 0.87x on a 64x64 3x3 conv at 28x28, 1.0x at 128x128 / 14x14 and 2.3x at 256x256 / 7x7. Its time hardly
falls from density 1.0 to 0.7, because the channel-blocked form fills each 4-channel block's taps. A density
threshold therefore ran the TTQ models' convs (>= 90% non-zero) dense, at 0.94-1.08x of dense fp32 for the whole
model, where the direct kernel gives 1.7x."""

MEASURED_FROM_DENSITY = 0.25
"""Below this effective density the direct kernel wins at every batch up to :data:`MEASURED_MAX_BATCH` (the
table of :data:`DENSE_FROM`), so sparser layers skip the measurement and never build their dense filter."""

MEASURE_REPEATS = 3
"""Timed calls per candidate in :func:`fastest` (after one untimed call each); the best of them counts."""


DIRECT_CONV_MAX_WEIGHTS = 4_096
"""Uncompressed Conv2d layers with up to this many weights also become runtime layers (full density), so they
time the direct kernel against ``F.conv2d`` at small batches like compressed ones. They are the layers methods
keep in full precision (TTQ and Deep Compression keep the first), with few input channels, where oneDNN's
batch-1 convolution is furthest from peak: LeNet-5's conv1 (500 weights) ran 28 us direct vs 59 us ``F.conv2d``."""


def measures(kind: str, density: float, batch: int) -> bool:
    """Whether a ``kind`` layer of effective ``density`` chooses its kernel for ``batch`` samples by timing."""
    return kind == "conv" and batch <= MEASURED_MAX_BATCH and density >= MEASURED_FROM_DENSITY


def fastest(candidates: Mapping[str, Callable[[], T]]) -> tuple[str, T]:
    """The name of the fastest candidate (best of :data:`MEASURE_REPEATS` timed calls after an untimed one, in
    rotating order) and the output of its last call."""
    best = {name: float("inf") for name in candidates}
    outputs: dict[str, T] = {name: call() for name, call in candidates.items()}
    names = list(candidates)
    for round_ in range(MEASURE_REPEATS):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            started = time.perf_counter()
            outputs[name] = candidates[name]()
            best[name] = min(best[name], time.perf_counter() - started)
    winner = min(names, key=best.__getitem__)
    return winner, outputs[winner]


def dense_from(kind: str, batch: int) -> float:
    """The effective density from which a ``kind`` layer runs dense for ``batch`` samples (:data:`DENSE_FROM`)."""
    threshold = float("inf")
    for first, density in DENSE_FROM[kind]:
        if batch >= first:
            threshold = density
    return threshold


def runs_dense(kind: str, density: float, batch: int, weights: int | None = None) -> bool:
    """Whether a ``kind`` layer of effective ``density`` (and ``weights`` dense weights, when given) runs its
    dense op for a call of ``batch`` samples (:data:`DENSE_FROM`, :data:`DENSE_MAX_WEIGHTS`)."""
    tiny = weights is not None and weights <= DENSE_MAX_WEIGHTS[kind]
    return tiny or density >= dense_from(kind, batch)


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
