"""Context-modelled mask coding: exact round trips and checked inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec.maskctx import decode_mask_ctx, encode_mask_ctx
from deepshrink.core import FormatError


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 30), min_size=1, max_size=3), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip(shape: list[int], density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density * rng.random(shape[0])[(...,) + (None,) * (len(shape) - 1)]
    coded = encode_mask_ctx(mask)
    if coded is None:
        assert not mask.any() or mask.size > 0
        return
    model, data, rows, pbar = coded
    np.testing.assert_array_equal(decode_mask_ctx(model, data, tuple(shape), rows, pbar), mask)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_decoding_a_few_rows_at_a_time_gives_the_same_mask(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepshrink.codec import maskctx

    monkeypatch.setattr(maskctx, "DECODE_CHUNK", chunk)  # 1: one row per step; 7: partial rows round up
    rng = np.random.default_rng(chunk)
    mask = rng.random((37, 23)) < np.outer(rng.random(37), rng.random(23))
    mask[5] = False  # an empty row and column are skipped by the model
    mask[:, 3] = False
    model, data, rows, pbar = encode_mask_ctx(mask)
    np.testing.assert_array_equal(decode_mask_ctx(model, data, mask.shape, rows, pbar), mask)


def test_structured_masks_cost_less_than_their_global_entropy() -> None:
    rng = np.random.default_rng(0)
    rates = np.outer(np.linspace(0.01, 0.5, 200), np.linspace(0.05, 1, 300))
    mask = rng.random(rates.shape) < rates
    model, data, _, _ = encode_mask_ctx(mask)
    p = mask.mean()
    global_bits = mask.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    assert 8 * (len(model) + len(data)) < 0.95 * global_bits  # model bytes included


def test_inconsistent_inputs_raise() -> None:
    mask = np.random.default_rng(1).random((6, 10)) < 0.3
    model, data, rows, pbar = encode_mask_ctx(mask)
    with pytest.raises(FormatError, match="model holds"):
        decode_mask_ctx(model[:-1], data, (6, 10), rows, pbar)
    with pytest.raises(FormatError, match="rows"):
        decode_mask_ctx(model, data, (6, 10), 7, pbar)
    with pytest.raises(FormatError):
        decode_mask_ctx(model, data[:-4] if len(data) > 4 else b"\x01\x00\x00", (6, 10), rows, pbar)
