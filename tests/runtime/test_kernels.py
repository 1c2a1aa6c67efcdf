"""The sparse kernels against dense torch references: random shapes/densities (hypothesis) and edge cases."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.runtime import SparseConv2d, SparseLinear, from_coo, kernels
from deepshrink.runtime.layout import SparseRows


def random_layout(rng: np.random.Generator, rows: int, cols: int, density: float, codebook: int | None) -> SparseRows:
    mask = rng.random((rows, cols)) < density
    r, c = np.nonzero(mask)
    if codebook is None:
        return from_coo((rows, cols), r, c, None, rng.standard_normal(r.size).astype(np.float32))
    table = rng.standard_normal(codebook).astype(np.float32)
    return from_coo((rows, cols), r, c, rng.integers(0, codebook, r.size), table)


@pytest.fixture(params=["serial", "parallel"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each kernel test once serial and once with the parallel kernels forced on every call."""
    if request.param == "parallel":
        monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    else:
        monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 1 << 62)
    return str(request.param)


def check_linear(layout: SparseRows, batch: int, bias: bool, rng: np.random.Generator) -> None:
    b = torch.from_numpy(rng.standard_normal(layout.shape[0]).astype(np.float32)) if bias else None
    layer = SparseLinear(layout, b)
    x = torch.from_numpy(rng.standard_normal((batch, layout.shape[1])).astype(np.float32))
    want = F.linear(x.double(), torch.from_numpy(layout.to_dense()).double(), None if b is None else b.double())
    got = layer(x)
    assert got.shape == (batch, layout.shape[0]) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 40), cols=st.integers(1, 120), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       batch=st.sampled_from([1, 2, 5, 64]), codebook=st.sampled_from([None, 1, 4, 32, 300]),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_matches_dense(mode: str, rows: int, cols: int, density: float, batch: int, codebook: int | None,
                              bias: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    check_linear(random_layout(rng, rows, cols, density, codebook), batch, bias, rng)


@pytest.mark.parametrize("batch", [1, 3, 64, 200])
def test_linear_edge_cases(mode: str, batch: int) -> None:
    rng = np.random.default_rng(1)
    # empty rows in the middle, at the start and at the end
    layout = random_layout(rng, 30, 50, 0.2, 16)
    keep = np.ones(30, dtype=bool)
    keep[[0, 7, 8, 29]] = False
    dense = layout.to_dense() * keep[:, None]
    r, c = np.nonzero(dense)
    with_empty = from_coo((30, 50), r, c, None, dense[r, c])
    check_linear(with_empty, batch, True, rng)
    assert (SparseLinear(with_empty)(torch.ones(batch, 50))[:, [0, 7, 8, 29]] == 0).all()
    # an all-zero layer returns exactly its bias
    zero = from_coo((6, 9), np.zeros(0), np.zeros(0), np.zeros(0), np.ones(3, np.float32))
    bias = torch.arange(6, dtype=torch.float32)
    assert torch.equal(SparseLinear(zero, bias)(torch.randn(batch, 9)), bias.expand(batch, 6))
    # 1x1 weights
    one = from_coo((1, 1), np.array([0]), np.array([0]), np.array([0]), np.array([2.5], np.float32))
    x = torch.randn(batch, 1)
    torch.testing.assert_close(SparseLinear(one)(x), 2.5 * x)


def test_wide_rows_use_int32_indices_and_lead_dims_are_kept() -> None:
    rng = np.random.default_rng(2)
    layout = random_layout(rng, 3, 70_000, 0.001, 8)
    assert layout.indices.dtype == np.int32
    check_linear(layout, 2, True, rng)
    narrow = random_layout(rng, 4, 300, 0.5, 8)
    assert narrow.indices.dtype == np.uint16 and narrow.codes.dtype == np.uint8
    x = torch.randn(2, 3, 300)
    torch.testing.assert_close(SparseLinear(narrow)(x), x @ torch.from_numpy(narrow.to_dense()).T, rtol=1e-5, atol=1e-5)


conv_configs = st.fixed_dictionaries({
    "groups": st.sampled_from([1, 2]),
    "cin_per_group": st.integers(1, 3),
    "out_per_group": st.integers(1, 3),
    "kernel": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "stride": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.sampled_from([0, 1, (2, 0), "valid"]),
    "padding_mode": st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
    "batch": st.sampled_from([1, 2, 5]),
    "size": st.tuples(st.integers(5, 9), st.integers(5, 9)),
    "density": st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    "codebook": st.sampled_from([None, 2, 32]),
    "bias": st.booleans(),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=conv_configs, seed=st.integers(0, 2**16))
def test_conv2d_matches_dense(mode: str, cfg: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = cfg["groups"]
    cin, cout = groups * cfg["cin_per_group"], groups * cfg["out_per_group"]
    kh, kw = cfg["kernel"]
    ref = torch.nn.Conv2d(cin, cout, (kh, kw), stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                          groups=groups, bias=cfg["bias"], padding_mode=cfg["padding_mode"])
    layout = random_layout(rng, cout, cfg["cin_per_group"] * kh * kw, cfg["density"], cfg["codebook"])
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layout.to_dense()).reshape(ref.weight.shape))
    fast = SparseConv2d(layout, (kh, kw), cin, stride=cfg["stride"], padding=cfg["padding"],
                        dilation=cfg["dilation"], groups=groups, padding_mode=cfg["padding_mode"],
                        bias=None if ref.bias is None else ref.bias.detach())
    x = torch.randn(cfg["batch"], cin, *cfg["size"], generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            want = ref(x)
    except RuntimeError:  # the reference rejects this combination (e.g. reflect pad wider than the input)
        return
    torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-5)


def test_conv2d_same_padding_and_unbatched_input() -> None:
    rng = np.random.default_rng(3)
    layout = random_layout(rng, 4, 3 * 3 * 5, 0.3, 16)
    ref = torch.nn.Conv2d(3, 4, (3, 5), padding="same", dilation=(2, 1), bias=False)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layout.to_dense()).reshape(ref.weight.shape))
    fast = SparseConv2d(layout, (3, 5), 3, padding="same", dilation=(2, 1))
    x = torch.randn(3, 11, 10)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x[None]), ref(x[None]), rtol=1e-5, atol=1e-5)


def test_layout_rejects_out_of_range_positions_and_codes() -> None:
    from deepshrink.core.errors import FormatError

    with pytest.raises(FormatError, match="outside"):
        from_coo((2, 3), np.array([0]), np.array([3]), np.array([0]), np.ones(1, np.float32))
    with pytest.raises(FormatError, match="codebook index"):
        from_coo((2, 3), np.array([0]), np.array([1]), np.array([4]), np.ones(2, np.float32))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 300), density=st.sampled_from([0.0, 0.02, 0.3, 1.0]),
       codebook=st.sampled_from([1, 2, 32, 255]), seed=st.integers(0, 2**16))
def test_row_grouped_layout_is_the_same_weight_and_kernel_matches(rows: int, cols: int, density: float,
                                                                 codebook: int, seed: int) -> None:
    from deepshrink.runtime.layout import ROW_GROUP, group_rows

    rng = np.random.default_rng(seed)
    layout = random_layout(rng, rows, cols, density, codebook)
    grouped = group_rows(layout)
    assert grouped.group == ROW_GROUP and not np.any(grouped.indptr % ROW_GROUP)
    assert grouped.nnz == layout.nnz and grouped.n_pad == grouped.indices.size - layout.nnz
    assert np.all(np.diff(grouped.indptr) - np.diff(layout.indptr) < ROW_GROUP)
    np.testing.assert_array_equal(grouped.to_dense(), layout.to_dense())
    x = rng.standard_normal((1, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    plain = kernels.linear_forward(layout.indptr, layout.indices, layout.codes, layout.table, False, x, bias)
    fast = kernels.linear_forward(grouped.indptr, grouped.indices, grouped.codes, grouped.table, False, x, bias,
                                  grouped.group)
    if not np.any(np.diff(layout.indptr) % 4):  # same additions in the same order
        np.testing.assert_array_equal(fast, plain)
    want = x.astype(np.float64) @ layout.to_dense().T.astype(np.float64) + bias
    np.testing.assert_allclose(fast, want, rtol=1e-5, atol=1e-5)


def test_row_grouping_skips_layouts_the_grouped_kernel_cannot_read() -> None:
    from deepshrink.runtime.layout import group_rows

    rng = np.random.default_rng(4)
    for layout in (random_layout(rng, 5, 40, 0.3, None), random_layout(rng, 5, 40, 0.3, 256),
                   random_layout(rng, 2, 70_000, 0.001, 8)):
        assert group_rows(layout) is layout
        check_linear(layout, 1, True, rng)
    grouped = group_rows(random_layout(rng, 5, 40, 0.3, 8))
    assert group_rows(grouped) is grouped
    assert SparseLinear(random_layout(rng, 5, 40, 0.3, 8)).weight_layout.group == 8


def test_parallel_and_serial_builds_have_their_own_cache_entries() -> None:
    """numba's cache files a build under its function's qualified name, not its flags: a shared name would let the
    serial build serve the parallel one (or back) from the cache."""
    from deepshrink.runtime import columns, simd

    pairs = [(m, n[: -len("_parallel")]) for m in (kernels, columns, simd) for n in dir(m)
             if n.endswith("_parallel") and not n.startswith("_")]
    assert {"spmv", "spmv_grouped", "spmv_columns", "spmm", "conv2d", "im2col", "sliced"} <= {n for _, n in pairs}
    for module, name in pairs:
        parallel, serial = getattr(module, f"{name}_parallel"), getattr(module, f"{name}_serial")
        assert parallel.targetoptions.get("parallel") and not serial.targetoptions.get("parallel", False)
        assert parallel.py_func.__qualname__ != serial.py_func.__qualname__
