"""The AVX-512 sliced-window kernel against dense references (skipped on hosts without AVX-512)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.runtime import SparseLinear, from_coo, policy, simd
from deepshrink.runtime.layout import SparseRows

needs_avx512 = pytest.mark.skipif(not simd.available(), reason="the host has no AVX-512 (scalar kernels run there)")


def codebook_layout(rng: np.random.Generator, rows: int, cols: int, density: float, codebook: int) -> SparseRows:
    r, c = np.nonzero(rng.random((rows, cols)) < density)
    return from_coo((rows, cols), r, c, rng.integers(0, codebook, r.size), rng.standard_normal(codebook).astype(np.float32))


@needs_avx512
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 80), cols=st.integers(1, 200), density=st.sampled_from([0.0, 0.02, 0.25, 1.0]),
       codebook=st.sampled_from([1, 2, 17, 32]), parallel=st.booleans(), seed=st.integers(0, 2**16))
def test_sliced_windows_hold_the_weight_and_match_dense(rows: int, cols: int, density: float, codebook: int,
                                                        parallel: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layout = codebook_layout(rng, rows, cols, density, codebook)
    sliced = simd.sliced_windows(layout)
    assert sliced is not None and sliced.n_real == layout.nnz
    np.testing.assert_array_equal(sliced.to_dense(), layout.to_dense())
    x = rng.standard_normal(cols).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    got = sliced.forward(x, bias, parallel)
    assert got.shape == (1, rows) and got.dtype == np.float32
    want = layout.to_dense().astype(np.float64) @ x + bias
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)


@needs_avx512
def test_linear_layer_runs_batch1_through_the_simd_form(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    assert SparseLinear(codebook_layout(rng, 50, 300, 0.1, 32)).simd_layout is None  # small: row kernel
    monkeypatch.setattr(policy, "SIMD_FORM_MIN_NNZ", 0)
    layout = codebook_layout(rng, 50, 300, 0.1, 32)
    layer = SparseLinear(layout, torch.randn(50))
    assert layer.simd_layout is not None and layer.column_layout is None and layer.batch1_form == "simd"
    assert "batch-1 kernel=simd" in repr(layer)
    assert layer.nbytes > SparseLinear(layout, simd=False).nbytes
    x = torch.randn(1, 300)
    want = x.double() @ torch.from_numpy(layout.to_dense()).double().T + torch.from_numpy(layer.bias_array).double()
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[0]).double(), want[0], rtol=1e-5, atol=1e-5)  # unbatched input
    batch = torch.randn(policy.SIMD_MAX_BATCH, 300)  # small batches: one sample at a time through the same kernel
    want = batch.double() @ torch.from_numpy(layout.to_dense()).double().T + torch.from_numpy(layer.bias_array).double()
    torch.testing.assert_close(layer(batch).double(), want, rtol=1e-5, atol=1e-5)
    assert layer(torch.zeros(0, 300)).shape == (0, 50)  # an empty batch


def test_layouts_and_hosts_without_the_simd_form(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    direct = from_coo((4, 9), np.array([0, 3]), np.array([2, 8]), None, np.ones(2, np.float32))
    assert simd.sliced_windows(direct) is None
    assert simd.sliced_windows(codebook_layout(rng, 6, 40, 0.5, 33)) is None  # > 32 centroids
    unsorted = SparseRows((1, 64), np.array([0, 2]), np.array([40, 3], np.uint16), np.array([0, 1], np.uint8),
                          np.ones(2, np.float32), False)
    assert simd.sliced_windows(unsorted) is None  # columns must increase within a row
    monkeypatch.setattr(simd, "available", lambda: False)
    layout = codebook_layout(rng, 6, 40, 0.5, 8)
    assert simd.sliced_windows(layout) is None


def test_environment_switch_turns_the_simd_kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSHRINK_RUNTIME_SIMD", "0")
    simd.available.cache_clear()
    try:
        assert not simd.available()
        layout = codebook_layout(np.random.default_rng(4), 6, 40, 0.5, 8)
        assert simd.sliced_windows(layout) is None
    finally:
        monkeypatch.delenv("DEEPSHRINK_RUNTIME_SIMD")
        simd.available.cache_clear()
