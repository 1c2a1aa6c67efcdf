"""The register-tile kernels (runtime/tiles.py) through their users against dense references: the batched
sparse x dense product with column chunks, the register transpose, and the direct sparse convolution (plain and
four-channel blocked), at shapes that are not multiples of the 16-lane vector or of the tiles."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.runtime import SparseConv2d, SparseLinear, batched, from_coo, kernels, policy
from deepshrink.runtime.layout import SparseRows

_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=["serial", "parallel"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once serial and once with the parallel kernels forced on every call (two threads)."""
    if request.param == "parallel":
        monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(batched, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr("deepshrink.runtime.conv.PARALLEL_MIN_WORK", 0)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    else:
        monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 1 << 62)
        monkeypatch.setattr(batched, "PARALLEL_MIN_WORK", 1 << 62)
        monkeypatch.setattr("deepshrink.runtime.conv.PARALLEL_MIN_WORK", 1 << 62)
    return str(request.param)


def _layout(rng: np.random.Generator, rows: int, cols: int, density: float, codebook: int | None) -> SparseRows:
    r, c = np.nonzero(rng.random((rows, cols)) < density)
    if codebook is None:
        return from_coo((rows, cols), r, c, None, rng.standard_normal(r.size).astype(np.float32))
    return from_coo((rows, cols), r, c, rng.integers(0, codebook, r.size), rng.standard_normal(codebook).astype(np.float32))


@_SETTINGS
@given(rows=st.integers(1, 50), cols=st.integers(1, 200), batch=st.integers(2, 150), chunk=st.sampled_from([8, 48, 1024]),
       density=st.sampled_from([0.0, 0.07, 0.4, 1.0]), codebook=st.sampled_from([None, 1, 32, 300]),
       seed=st.integers(0, 2**16))
def test_chunked_product_matches_dense(mode: str, rows: int, cols: int, batch: int, chunk: int, density: float,
                                       codebook: int | None, seed: int) -> None:
    """Batches of any size (partial 16-lane vectors, 1-3 vector tails), rows split into column chunks."""
    rng = np.random.default_rng(seed)
    w = _layout(rng, rows, cols, density, codebook)
    codes = np.arange(w.nnz, dtype=np.int32) if w.direct else w.codes
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    chunks = batched.row_chunks(w.indptr, w.indices, cols, chunk)
    got = batched.product(chunks, w.indices, codes, w.table, x, bias)
    assert got.shape == (batch, rows) and got.dtype == np.float32
    want = x.astype(np.float64) @ w.to_dense().astype(np.float64).T + bias
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@_SETTINGS
@given(batch=st.integers(1, 70), n_in=st.integers(1, 150), seed=st.integers(0, 2**16))
def test_transpose_pads_with_zeros(mode: str, batch: int, n_in: int, seed: int) -> None:
    """16 x 16 register transposes inside, scalar edges, zero columns up to the padded width."""
    x = np.random.default_rng(seed).standard_normal((batch, n_in)).astype(np.float32)
    xt, width = batched.transposed(x, 2 if mode == "parallel" else 1)
    assert width % 16 == 0 and width >= batch
    full = xt.reshape(n_in, width)
    np.testing.assert_array_equal(full[:, :batch], x.T)
    assert not full[:, batch:].any()


def test_batched_layers_chain_without_copies(mode: str) -> None:
    """A batched layer's output (a transposed C-contiguous array) is read in place by the next one."""
    rng = np.random.default_rng(0)
    a, b = _layout(rng, 40, 30, 0.3, 16), _layout(rng, 7, 40, 0.5, None)
    first, second = SparseLinear(a), SparseLinear(b)
    x = torch.from_numpy(rng.standard_normal((48, 30)).astype(np.float32))
    hidden = first(x)
    assert hidden.numpy().flags.f_contiguous
    want = x.double() @ torch.from_numpy(a.to_dense()).double().T @ torch.from_numpy(b.to_dense()).double().T
    torch.testing.assert_close(second(hidden).double(), want, rtol=1e-5, atol=1e-4)


conv_configs = st.fixed_dictionaries({
    "groups": st.sampled_from([1, 1, 3]),
    "cin_per_group": st.integers(1, 5),
    "out_per_group": st.integers(1, 11),
    "kernel": st.tuples(st.integers(1, 5), st.integers(1, 5)),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.sampled_from([0, 1, (2, 1), "same"]),
    "padding_mode": st.sampled_from(["zeros", "zeros", "reflect", "circular"]),
    "batch": st.integers(1, 3),
    "size": st.tuples(st.integers(5, 40), st.integers(5, 40)),
    "density": st.sampled_from([0.05, 0.3, 0.7, 1.0]),
    "codebook": st.sampled_from([None, 2, 32]),
    "blocked": st.booleans(),
})


@_SETTINGS
@given(cfg=conv_configs, seed=st.integers(0, 2**16))
def test_direct_conv_matches_dense(mode: str, monkeypatch: pytest.MonkeyPatch, cfg: dict, seed: int) -> None:
    """The direct kernel (phase-split input, virtual positions, bands) with the dense fallback off, plain or
    channel-blocked, for strided / dilated / grouped / padded convolutions and channel counts off the blocks."""
    rng = np.random.default_rng(seed)
    groups = cfg["groups"]
    cin, cout = groups * cfg["cin_per_group"], groups * cfg["out_per_group"]
    kh, kw = cfg["kernel"]
    stride = (1, 1) if cfg["padding"] == "same" else cfg["stride"]
    ref = torch.nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=cfg["padding"], dilation=cfg["dilation"],
                          groups=groups, bias=True, padding_mode=cfg["padding_mode"])
    layout = _layout(rng, cout, cfg["cin_per_group"] * kh * kw, cfg["density"], cfg["codebook"])
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layout.to_dense()).reshape(ref.weight.shape))
    monkeypatch.setattr(policy, "channel_blocked", lambda indptr, indices: cfg["blocked"])
    fast = SparseConv2d(layout, (kh, kw), cin, stride=stride, padding=cfg["padding"], dilation=cfg["dilation"],
                        groups=groups, padding_mode=cfg["padding_mode"], bias=ref.bias.detach(), dense_fallback=False)
    assert (fast.blocks is not None) == (cfg["blocked"] and groups == 1 and layout.nnz > 0)
    x = torch.randn(cfg["batch"], cin, *cfg["size"], generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            want = ref(x)
    except RuntimeError:  # the reference rejects this combination (a kernel wider than the input, a wide pad)
        with pytest.raises((RuntimeError, ValueError)):
            fast(x)
        return
    torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-4)
    assert fast.last_kernel == ("blocked" if fast.blocks is not None else "direct")
    torch.testing.assert_close(fast(x[:1]), want[:1], rtol=1e-5, atol=1e-4)  # a second size: cached geometry


@pytest.mark.parametrize(("density", "batch", "dense"), [(0.05, 64, False), (0.1, 1, False), (0.5, 64, True),
                                                         (0.95, 8, True)])
def test_conv_dense_fallback_follows_the_policy(density: float, batch: int, dense: bool) -> None:
    rng = np.random.default_rng(1)
    layout = _layout(rng, 6, 4 * 9, density, 32)
    conv = SparseConv2d(layout, (3, 3), 4, padding=1)
    x = torch.randn(batch, 4, 9, 9)
    ref = F.conv2d(x, torch.from_numpy(layout.to_dense()).reshape(6, 4, 3, 3), padding=1)
    before = conv.nbytes
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-4)
    assert (conv.last_kernel == "dense") == dense
    assert (conv.nbytes > before) == dense  # the dense filter exists only once a call needed it


@pytest.mark.parametrize("winner", ["sparse", "dense"])
def test_small_batch_convs_keep_the_kernel_they_measured_faster(winner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[list[str]] = []

    def fastest(candidates: dict) -> tuple:  # a stand-in timer: the test says which one was faster
        timed.append(sorted(candidates))
        outputs = {name: call() for name, call in candidates.items()}
        return winner, outputs[winner]

    monkeypatch.setattr(policy, "fastest", fastest)
    layout = _layout(np.random.default_rng(4), 8, 4 * 9, 0.95, 32)
    conv = SparseConv2d(layout, (3, 3), 4, padding=1, padding_mode="reflect")
    dense = torch.from_numpy(layout.to_dense()).reshape(8, 4, 3, 3)
    for batch in (1, 1, 2, 1):
        x = torch.randn(batch, 4, 7, 7)
        torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), dense),
                                   rtol=1e-5, atol=1e-4)
        assert (conv.last_kernel == "dense") == (winner == "dense")
    assert timed == [["dense", "sparse"], ["dense", "sparse"]]  # once per batch size, then the cached choice
    assert (conv._dense_weight is not None) == (winner == "dense")  # a losing dense filter is not kept
    conv(torch.randn(64, 4, 7, 7))  # from batch 8 the density table decides, without timing
    assert len(timed) == 2 and conv.last_kernel == "dense"
    sparse_only = SparseConv2d(layout, (3, 3), 4, padding=1, dense_fallback=False)
    sparse_only(torch.randn(1, 4, 7, 7))
    assert len(timed) == 2 and sparse_only.last_kernel == "blocked"


@pytest.mark.parametrize(("density", "batch"), [(0.1, 1), (0.1, 8), (0.1, 64), (0.5, 1), (0.5, 8), (0.5, 64),
                                                (0.8, 1), (0.8, 64), (1.0, 3)])
def test_linear_dense_fallback_follows_the_policy(density: float, batch: int) -> None:
    rng = np.random.default_rng(2)
    layout = _layout(rng, 40, 70, density, 32)
    layer = SparseLinear(layout, torch.ones(40))
    x = torch.randn(batch, 70)
    want = x.double() @ torch.from_numpy(layout.to_dense()).double().T + 1
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-4)
    assert (layer.last_kernel == "dense") == policy.runs_dense("linear", layout.density, batch)
    assert policy.runs_dense("linear", 1.0, batch) and not policy.runs_dense("linear", 0.1, batch)
    off = SparseLinear(layout, torch.ones(40), dense_fallback=False)
    torch.testing.assert_close(off(x).double(), want, rtol=1e-5, atol=1e-4)
    assert off.last_kernel != "dense"


def test_tiny_linear_layers_run_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "DENSE_MAX_WEIGHTS", {"linear": 16_384, "conv": 0})
    rng = np.random.default_rng(3)
    small, large = _layout(rng, 10, 500, 0.1, 32), _layout(rng, 200, 300, 0.1, 32)
    for layout, dense in ((small, True), (large, False)):
        layer = SparseLinear(layout)
        x = torch.randn(1, layout.shape[1])
        torch.testing.assert_close(layer(x), x @ torch.from_numpy(layout.to_dense()).T, rtol=1e-5, atol=1e-4)
        assert (layer.last_kernel == "dense") == dense
