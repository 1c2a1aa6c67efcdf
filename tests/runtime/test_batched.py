"""The register-blocked sparse x dense kernel against dense references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.runtime import from_coo, kernels
from deepshrink.runtime.batched import columns_product
from deepshrink.runtime.layout import group_rows


@pytest.fixture(params=["serial", "parallel"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0 if request.param == "parallel" else 1 << 62)
    return str(request.param)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 60), cols=st.integers(1, 150), width=st.integers(1, 150),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), codebook=st.sampled_from([1, 16, 255, 300]),
       grouped=st.booleans(), seed=st.integers(0, 2**16))
def test_blocked_product_matches_dense(mode: str, rows: int, cols: int, width: int, density: float, codebook: int,
                                       grouped: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    r, c = np.nonzero(rng.random((rows, cols)) < density)
    layout = from_coo((rows, cols), r, c, rng.integers(0, codebook, r.size),
                      rng.standard_normal(codebook).astype(np.float32))
    if grouped:
        layout = group_rows(layout)  # padding entries: the appended 0.0 centroid
    xt = rng.standard_normal((cols, width)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    got = columns_product(layout.indptr, layout.indices, layout.codes, layout.table, xt, bias)
    assert got.shape == (rows, width) and got.flags.c_contiguous and got.dtype == np.float32
    want = layout.to_dense().astype(np.float64) @ xt + bias[:, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_wide_inputs_use_int32_columns(mode: str) -> None:
    rng = np.random.default_rng(3)
    layout = from_coo((3, 70_000), np.array([0, 0, 2]), np.array([5, 69_999, 40_000]), np.array([0, 1, 1]),
                      np.array([0.5, -2.0], np.float32))
    assert layout.indices.dtype == np.int32
    xt = rng.standard_normal((70_000, 20)).astype(np.float32)
    got = columns_product(layout.indptr, layout.indices, layout.codes, layout.table, xt, np.zeros(3, np.float32))
    np.testing.assert_allclose(got, layout.to_dense().astype(np.float64) @ xt, rtol=1e-5, atol=1e-5)
