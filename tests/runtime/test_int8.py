"""The int8 dot-product kernels (runtime/int8.py) and the integer engine's fused fast path
(runtime/integer_kernels.py): exact against int64 numpy and bit-exact against the torch path, on the VNNI kernel
(where the host has it) and the portable one, at sizes off the 4-byte quads, 64-channel blocks and 4-row tiles."""

from __future__ import annotations

import copy

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from deepshrink.fixedpoint import DynamicFixedPoint, quantize_
from deepshrink.runtime import IntegerLayer, int8, integer, integer_kernels, swap_integer_layers_

PATHS = ["vnni", "portable"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once per kernel; the VNNI one is skipped on hosts without it (or with DEEPSHRINK_RUNTIME_SIMD=0)."""
    if request.param == "vnni" and not int8.vnni_available():
        pytest.skip("no AVX-512 VNNI on this host")
    monkeypatch.setattr(int8, "vnni_available", lambda: request.param == "vnni")
    return str(request.param)


def _product(weight: np.ndarray, x: np.ndarray, vnni: bool, parallel: bool) -> np.ndarray:
    packed = int8.pack(weight, vnni=vnni)
    assert (packed.packed is not None) == vnni
    rows = np.zeros((x.shape[0], packed.quads * 4), dtype=np.uint8 if vnni else np.int8)
    if vnni:
        rows[:] = 128
        rows[:, : x.shape[1]] = (x.astype(np.int16) + 128).astype(np.uint8)
    else:
        rows[:, : x.shape[1]] = x
    out = int8.int8_matmul(packed, rows, parallel)[:, : weight.shape[0]].astype(np.int64)
    return out - 128 * packed.colsum[: weight.shape[0]].astype(np.int64) if vnni else out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 13), n=st.integers(1, 200), k=st.integers(1, 150), parallel=st.booleans(),
       extreme=st.booleans(), seed=st.integers(0, 2**16))
def test_int8_matmul_is_exact(path: str, m: int, n: int, k: int, parallel: bool, extreme: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    low, high = (-128, -127) if extreme else (-128, 128)  # all -128: the largest sums, the unsigned offset's edge
    w = rng.integers(low, high, (n, k)).astype(np.int8)
    x = rng.integers(low, high, (m, k)).astype(np.int8)
    if parallel:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    got = _product(w, x, path == "vnni", parallel)
    np.testing.assert_array_equal(got, x.astype(np.int64) @ w.astype(np.int64).T)


class _Conv1dNet(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride=stride, padding=pad, dilation=dilation)
        self.fc = nn.Linear(cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(-1))


layer_configs = st.fixed_dictionaries({
    "kind": st.sampled_from(["linear", "conv2d", "conv1d"]),
    "cin": st.integers(1, 7),
    "cout": st.integers(1, 70),
    "kernel": st.integers(1, 4),
    "stride": st.integers(1, 2),
    "pad": st.integers(0, 2),
    "dilation": st.integers(1, 2),
    "bits": st.sampled_from([4, 6, 8]),
    "outputs": st.booleans(),
    "granularity": st.sampled_from(["layer", "channel"]),
    "batch": st.integers(1, 6),
    "scale": st.floats(0.05, 20.0),
    "rounding": st.sampled_from(["half_up", "half_even"]),
})


def _model(cfg: dict) -> tuple[nn.Module, tuple[int, ...]]:
    k, s, p, d = cfg["kernel"], cfg["stride"], cfg["pad"], cfg["dilation"]
    if cfg["kind"] == "linear":
        return nn.Sequential(nn.Linear(cfg["cin"] * 9, cfg["cout"]), nn.ReLU(), nn.Linear(cfg["cout"], 5)), (
            cfg["cin"] * 9,)
    if cfg["kind"] == "conv1d":
        return _Conv1dNet(cfg["cin"], cfg["cout"], k, s, p, d), (cfg["cin"], 11)
    return nn.Sequential(nn.Conv2d(cfg["cin"], cfg["cout"], k, stride=s, padding=p, dilation=d), nn.ReLU(),
                         nn.Conv2d(cfg["cout"], 3, (1, 2))), (cfg["cin"], 9, 10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=layer_configs, seed=st.integers(0, 10_000))
def test_fused_plan_is_bit_exact(path: str, monkeypatch: pytest.MonkeyPatch, cfg: dict, seed: int) -> None:
    """Int8Plan (fast path on) equals the torch integer path (fast path off) and the simulation bit for bit, for
    Linear / Conv1d / Conv2d layers, float and QTensor inputs (the second layer reads the first's integers)."""
    torch.manual_seed(seed)
    model, shape = _model(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    scale = cfg["scale"]
    quantize_(model, DynamicFixedPoint(bits=cfg["bits"], quantize_outputs=cfg["outputs"],
                                       granularity=cfg["granularity"], rounding=cfg["rounding"]),
              calib=torch.randn(8, *shape, generator=gen) * scale)
    x = torch.randn(cfg["batch"], *shape, generator=gen) * scale * 3  # wider than calibration: saturation
    simulated = model(x).detach()
    fast = swap_integer_layers_(copy.deepcopy(model))
    layers = [m for m in fast.modules() if isinstance(m, IntegerLayer)]
    with torch.no_grad():
        got = fast(x)
    assert any(isinstance(m.__dict__.get("_plan"), integer_kernels.Int8Plan) for m in layers)
    with monkeypatch.context() as patch:  # undone per example: hypothesis runs them all in one test call
        patch.setattr(integer, "FAST_PATH", False)
        slow = swap_integer_layers_(copy.deepcopy(model))
        try:
            with torch.no_grad():
                reference = slow(x)
        except NotImplementedError:  # torch has no integer dilated convolution: the simulation is the reference
            reference = simulated
    assert all(m.__dict__.get("_plan", None) is None for m in slow.modules() if isinstance(m, IntegerLayer))
    assert torch.equal(got, reference)
    assert torch.equal(got, simulated)
