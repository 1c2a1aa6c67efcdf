"""Formats: the one rounding rule, saturation at the edges, range analysis, straight-through gradient."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.core import ConfigError
from deepshrink.core.fixed_point import from_int, int_range, to_int
from deepshrink.fixedpoint import (
    FixedPointFormat,
    fake_quantize,
    overflow_free_frac_len,
    requantize,
    rounding_shift,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20), st.integers(-8, 30))
def test_rounding_shift_is_round_half_up(values: list[int], shift: int) -> None:
    acc = torch.tensor(values, dtype=torch.int64)
    expected = [math.floor(v / 2**shift + 0.5) for v in values] if shift > 0 else [v * 2 ** (-shift) for v in values]
    assert rounding_shift(acc, shift).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20), st.integers(-8, 30), st.booleans())
def test_rounding_shift_half_even_is_pythons_round(values: list[int], shift: int, per_channel: bool) -> None:
    acc = torch.tensor(values, dtype=torch.int64)
    expected = [round(v / 2**shift) if shift > 0 else v * 2 ** (-shift) for v in values]  # exact: |v| < 2**41
    by = torch.full((len(values),), shift) if per_channel else shift
    assert rounding_shift(acc, by, "half_even").tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=20), st.integers(-4, 20),
       st.integers(2, 16), st.integers(-4, 20), st.sampled_from(["half_up", "half_even"]))
def test_requantize_matches_float_rounding(values: list[int], frac_from: int, bits: int, frac_to: int,
                                           rounding: str) -> None:
    """Integer requantization == rounding the exact float value: the basis of bit-exactness."""
    ints = torch.tensor(values, dtype=torch.int64)
    via_float = to_int(from_int(ints, frac_from, torch.float64), bits, frac_to, rounding=rounding).to(torch.int64)
    assert torch.equal(requantize(ints, frac_from, bits, frac_to, rounding), via_float)


@pytest.mark.parametrize("bits", [4, 6, 8, 16])
def test_saturation_at_format_edges(bits: int) -> None:
    fmt = FixedPointFormat(bits, 3)
    qmin, qmax = int_range(bits)
    step = fmt.step
    x = torch.tensor([fmt.max_value, fmt.max_value + step / 2, fmt.max_value + 1e6,
                      fmt.min_value, fmt.min_value - step / 2, -1e6, -step / 2, step / 2])
    q = to_int(x, bits, 3).tolist()
    assert q[:3] == [qmax, qmax, qmax]
    assert q[3:6] == [qmin, qmin, qmin]
    assert q[6:] == [0, 1]  # half rounds up, also for negatives
    assert fmt.max_value == qmax * step and fmt.min_value == qmin * step
    big = torch.tensor([10**12, -(10**12)], dtype=torch.int64)
    assert requantize(big, 0, bits, 0).tolist() == [qmax, qmin]


@settings(max_examples=80, deadline=None)
@given(st.floats(1e-6, 1e6), st.integers(2, 16))
def test_overflow_free_frac_len_is_tight(max_abs: float, bits: int) -> None:
    fl = overflow_free_frac_len(max_abs, bits)
    qmax = int_range(bits)[1]
    assert math.floor(math.ldexp(max_abs, fl) + 0.5) <= qmax
    assert math.floor(math.ldexp(max_abs, fl + 1) + 0.5) > qmax


def test_fake_quantize_values_and_straight_through_gradient() -> None:
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    q = fake_quantize(x, 6, 3)
    assert torch.equal(q.detach(), from_int(to_int(x, 6, 3), 3))
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("bad", [1, 17, 8.0, True])
def test_format_validation(bad: object) -> None:
    with pytest.raises(ConfigError):
        FixedPointFormat(bad, 0)  # type: ignore[arg-type]
