"""Column blocks and the batch-1 kernel that skips zero inputs, against dense references."""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.core.errors import FormatError
from deepshrink.runtime import SparseLinear, columns, from_coo, kernels, policy
from deepshrink.runtime.columns import RUN, ColumnBlocks, column_blocks
from deepshrink.runtime.layout import SparseRows


@pytest.fixture(autouse=True)
def column_form_for_small_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests use small layers; by default only layers of COLUMN_FORM_MIN_NNZ non-zeros get the column form,
    and on AVX-512 hosts none does (the SIMD form runs batch 1): both off here, as on other hosts."""
    monkeypatch.setattr(policy, "COLUMN_FORM_MIN_NNZ", 0)
    monkeypatch.setattr(policy, "sliced_windows", lambda layout: None)


@pytest.fixture(params=["serial", "parallel"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "parallel":
        monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(columns, "COLUMN_PARALLEL_MIN_WORK", 0)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    else:
        monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 1 << 62)
    return str(request.param)


def codebook_layout(rng: np.random.Generator, rows: int, cols: int, density: float, codebook: int) -> SparseRows:
    r, c = np.nonzero(rng.random((rows, cols)) < density)
    table = rng.standard_normal(codebook).astype(np.float32)
    return from_coo((rows, cols), r, c, rng.integers(0, codebook, r.size), table)


def sparse_input(rng: np.random.Generator, cols: int, density: float) -> np.ndarray:
    x = np.abs(rng.standard_normal((1, cols))).astype(np.float32)
    return np.where(rng.random((1, cols)) < density, x, np.float32(0)).astype(np.float32)


def reference(layout: SparseRows, x: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ layout.to_dense().T.astype(np.float64) + bias


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 300), cols=st.integers(1, 150), density=st.sampled_from([0.0, 0.03, 0.3, 1.0]),
       codebook=st.sampled_from([1, 3, 32, 255, 256]), input_density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
       seed=st.integers(0, 2**16))
def test_column_blocks_hold_the_weight_and_the_layer_matches_dense(
    mode: str, rows: int, cols: int, density: float, codebook: int, input_density: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    layout = codebook_layout(rng, rows, cols, density, codebook)
    blocks = column_blocks(layout)
    assert blocks is not None and blocks.nnz == layout.nnz
    blocks.validate("fc")
    assert blocks.entries.size % RUN == 0 and not np.any(blocks.runptr % RUN)
    assert blocks.block_rows <= 1 << (16 - blocks.code_bits)
    np.testing.assert_array_equal(blocks.to_dense(), layout.to_dense())
    bias = rng.standard_normal(rows).astype(np.float32)
    layer = SparseLinear(layout, bias)
    x = sparse_input(rng, cols, input_density)
    np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), reference(layout, x, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_columns", [True, False])
def test_batch1_entry_runs_either_layout_to_the_same_result(mode: str, use_columns: bool) -> None:
    """max_nonzero decides the path (in_features: the column kernel, -1: the row kernel), the work bounds the
    build (0: parallel, huge: serial)."""
    rng = np.random.default_rng(3)
    layout = codebook_layout(rng, 2100, 70, 0.2, 32)  # 3 row blocks of at most 1024 rows (6 code bits)
    layer = SparseLinear(layout, rng.standard_normal(2100).astype(np.float32))
    assert layer.column_layout is not None and layer.column_layout.n_blocks >= 3 and layer._batch1 is not None
    x = sparse_input(rng, 70, 0.4)
    for min_work in (0, 1 << 62):  # parallel / serial builds
        out = np.full(2100, np.nan, dtype=np.float32)
        columns.batch1(x[0], layer.bias_array, out, np.empty(70, dtype=np.int64), 70 if use_columns else -1,
                       min_work, min_work, *layer._batch1[1])
        np.testing.assert_allclose(out, reference(layout, x, layer.bias_array)[0], rtol=1e-5, atol=1e-5)


def test_zero_and_non_finite_inputs(mode: str) -> None:
    rng = np.random.default_rng(5)
    layout = codebook_layout(rng, 50, 30, 0.2, 16)
    bias = rng.standard_normal(50).astype(np.float32)
    layer = SparseLinear(layout, bias)
    np.testing.assert_array_equal(layer(torch.zeros(1, 30)).numpy()[0], bias)  # every column skipped
    x = torch.zeros(1, 30)
    column = int(layout.indices[0])
    x[0, column] = float("nan")
    got = layer(x).numpy()[0]
    touched = np.flatnonzero(layout.to_dense()[:, column] != 0)
    assert np.all(np.isnan(got[touched])) and not np.any(np.isnan(np.delete(got, touched)))


def test_layouts_without_a_column_form_keep_the_row_kernel() -> None:
    rng = np.random.default_rng(6)
    direct = from_coo((4, 9), np.array([0, 3]), np.array([2, 8]), None, np.ones(2, np.float32))
    wide_codebook = codebook_layout(rng, 6, 9, 0.5, 600)
    wide_input = codebook_layout(rng, 2, 70_000, 0.001, 8)  # int32 columns: no row-grouped form
    assert column_blocks(wide_input) is not None and SparseLinear(wide_input).column_layout is None
    for layout in (direct, wide_codebook):
        assert column_blocks(layout) is None
        layer = SparseLinear(layout)
        assert layer.column_layout is None and layer._batch1 is None
        x = sparse_input(rng, 9, 0.3)
        np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), reference(layout, x, np.zeros(layout.shape[0])),
                                   rtol=1e-5, atol=1e-5)
    small = codebook_layout(rng, 6, 9, 0.5, 8)
    plain = SparseLinear(small, skip_zero_inputs=False)
    assert plain.column_layout is None and plain.nbytes < SparseLinear(small).nbytes


def test_validate_rejects_inconsistent_column_blocks() -> None:
    rng = np.random.default_rng(7)
    blocks = column_blocks(codebook_layout(rng, 40, 12, 0.5, 8))
    assert isinstance(blocks, ColumnBlocks)
    bad_pointer = blocks.runptr.copy()
    bad_pointer[-1] += RUN
    bad_entries = blocks.entries.copy()
    bad_entries[0] = np.uint16(0xFFFF)  # row far outside the block
    for broken in (dataclasses.replace(blocks, runptr=bad_pointer), dataclasses.replace(blocks, entries=bad_entries),
                   dataclasses.replace(blocks, runptr=blocks.runptr[:-1]),
                   dataclasses.replace(blocks, block_rows=1 << 14)):
        with pytest.raises(FormatError):
            broken.validate("fc")


def test_small_layers_keep_only_the_row_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "COLUMN_FORM_MIN_NNZ", 100)
    rng = np.random.default_rng(8)
    small, large = codebook_layout(rng, 10, 20, 0.4, 8), codebook_layout(rng, 20, 20, 0.5, 8)
    assert small.nnz < 100 <= large.nnz
    assert SparseLinear(small).column_layout is None and SparseLinear(large).column_layout is not None
