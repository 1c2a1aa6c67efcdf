"""Relative index with fillers (Deep Compression Fig. 2): exact for any shape, density and index width."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec import decode_positions, encode_positions, filler_code, mask_from_positions
from deepshrink.core import FormatError


@settings(max_examples=80, deadline=None)
@given(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    density=st.floats(0.0, 1.0),
    bits=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_any_shape_density_and_width(shape: list[int], density: float, bits: int, seed: int) -> None:
    mask = np.random.default_rng(seed).random(shape) < density
    codes = encode_positions(mask, bits)
    assert codes.size == 0 or (codes.min() >= 0 and codes.max() <= filler_code(bits))
    positions = decode_positions(codes, bits, mask.size)
    np.testing.assert_array_equal(positions, np.flatnonzero(mask))
    np.testing.assert_array_equal(mask_from_positions(positions, tuple(shape)), mask)
    kept = int(mask.sum())
    fillers = int((codes == filler_code(bits)).sum())
    assert codes.size == kept + fillers
    gaps = np.diff(np.flatnonzero(mask), prepend=-1)
    if gaps.size and gaps.max() > filler_code(bits):
        assert fillers > 0  # a gap longer than the index range needs fillers


def test_long_gaps_use_fillers_like_figure_2() -> None:
    mask = np.zeros(24, dtype=bool)
    mask[[1, 4, 20]] = True
    codes = encode_positions(mask, 3)  # differences up to 7; 7 is the filler
    assert codes.tolist() == [1, 2, 7, 7, 1]  # +2, +3, filler +7, filler +7, +2
    np.testing.assert_array_equal(decode_positions(codes, 3, 24), [1, 4, 20])


def test_trailing_fillers_cover_the_tensor() -> None:
    mask = np.zeros(100, dtype=bool)
    mask[2] = True
    codes = encode_positions(mask, 3)
    assert codes.tolist() == [2] + [7] * 13  # the index runs on to within 7 positions of the end
    assert encode_positions(np.zeros(5, dtype=bool), 3).size == 0


def test_malformed_index_raises() -> None:
    with pytest.raises(FormatError, match="reaches position"):
        decode_positions(np.array([6, 6, 6]), 3, 10)
    with pytest.raises(FormatError, match=r"cannot cover|short of"):
        decode_positions(np.array([0]), 3, 1000)
    with pytest.raises(FormatError, match="outside"):
        decode_positions(np.array([9]), 3, 12)
