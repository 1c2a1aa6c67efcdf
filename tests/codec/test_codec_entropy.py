"""Huffman, ANS and fixed-width streams: exact round trips, code-length limits, closeness to the entropy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec import (
    AnsTable,
    HuffmanTable,
    ans_decode,
    ans_encode,
    decode_stream,
    encode_stream,
    huffman_decode,
    huffman_encode,
    huffman_lengths,
)
from deepshrink.codec.bits import pack_fixed, unpack_fixed, width_for
from deepshrink.core import FormatError


def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@st.composite
def symbol_streams(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    alphabet = draw(st.integers(1, 300))
    n = draw(st.integers(0, 2000))
    seed = draw(st.integers(0, 2**32 - 1))
    skew = draw(st.floats(0.05, 3.0))
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, skew))
    return rng.choice(alphabet, size=n, p=p).astype(np.int64), alphabet


@settings(max_examples=60, deadline=None)
@given(symbol_streams(), st.sampled_from(["raw", "huffman", "ans"]))
def test_stream_round_trip_exact(stream: tuple[np.ndarray, int], coding: str) -> None:
    symbols, alphabet = stream
    coded = encode_stream(symbols, alphabet, width_for(alphabet), coding)
    assert coded.coding in ("raw", coding) or (coding == "ans" and coded.coding == "huffman")
    assert coded.nbytes <= (symbols.size * width_for(alphabet) + 7) // 8  # never worse than fixed width
    back = decode_stream(coded.coding, coded.count, coded.alphabet, coded.raw_bits, coded.table, coded.data)
    np.testing.assert_array_equal(back, symbols)


@settings(max_examples=40, deadline=None)
@given(symbol_streams())
def test_huffman_round_trip_and_optimality(stream: tuple[np.ndarray, int]) -> None:
    symbols, alphabet = stream
    if symbols.size == 0:
        return
    table = HuffmanTable.from_counts(np.bincount(symbols, minlength=alphabet))
    data = huffman_encode(symbols, table)
    parsed = HuffmanTable.from_bytes(table.to_bytes(), alphabet)
    np.testing.assert_array_equal(parsed.lengths, table.lengths)
    np.testing.assert_array_equal(huffman_decode(data, symbols.size, parsed), symbols)
    mean_len = float(table.lengths[symbols].mean())
    h = entropy_bits(symbols)
    assert h - 1e-9 <= mean_len < h + 1 or (np.unique(symbols).size == 1 and mean_len == 1)


def test_length_limit_keeps_a_prefix_code() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib, dtype=np.int64)
    assert huffman_lengths(counts, max_len=64).max() > 15  # unlimited Huffman would need long codes
    lengths = huffman_lengths(counts)
    assert lengths.max() <= 15 and lengths.min() >= 1
    assert np.sum(2.0 ** -lengths) <= 1.0
    symbols = np.repeat(np.arange(40), np.minimum(counts, 50))
    table = HuffmanTable(lengths)
    np.testing.assert_array_equal(huffman_decode(huffman_encode(symbols, table), symbols.size, table), symbols)


def test_table_is_compact() -> None:
    counts = np.zeros(256, dtype=np.int64)
    counts[[3, 90, 200]] = [10, 5, 1]
    table = HuffmanTable.from_counts(counts)
    assert len(table.to_bytes()) == 7  # sparse form: mode, count, 3 one-byte gaps, 2 bytes of nibbles
    dense = HuffmanTable.from_counts(np.arange(1, 33))
    assert len(dense.to_bytes()) == 1 + 16  # dense form: one nibble per symbol


def test_ans_beats_huffman_on_skewed_streams() -> None:
    rng = np.random.default_rng(0)
    symbols = rng.choice(4, size=50_000, p=[0.9, 0.06, 0.03, 0.01])
    h = entropy_bits(symbols)
    huff = encode_stream(symbols, 4, 2, "huffman")
    ans = encode_stream(symbols, 4, 2, "ans")
    assert ans.coding == "ans" and huff.coding == "huffman"
    assert 8 * ans.nbytes / symbols.size < 8 * huff.nbytes / symbols.size
    assert 8 * ans.nbytes / symbols.size < h * 1.01  # within 1% of the empirical entropy, table included


def test_ans_table_round_trip() -> None:
    counts = np.array([0, 5000, 3, 0, 70000], dtype=np.int64)
    table = AnsTable.from_counts(counts)
    assert table.counts.max() <= 4095 and table.counts[2] >= 1 and table.counts[0] == 0
    again = AnsTable.from_bytes(table.to_bytes(), 5)
    np.testing.assert_array_equal(again.counts, table.counts)
    symbols = np.array([1, 4, 4, 2, 4], dtype=np.int64)
    np.testing.assert_array_equal(ans_decode(ans_encode(symbols, table), 5, again), symbols)


def test_corrupt_streams_raise_format_error() -> None:
    table = HuffmanTable(np.array([1, 2, 0, 0], dtype=np.int64))  # codes 0, 10; 11 is no code
    with pytest.raises(FormatError, match="no code"):
        huffman_decode(b"\xff", 2, table)
    with pytest.raises(FormatError):
        huffman_decode(b"\x00", 9, table)  # 9 one-bit symbols cannot fit in 8 bits
    with pytest.raises(FormatError, match="over-subscribed"):
        HuffmanTable.from_bytes(b"\x00\x11\x10", 3)  # three 1-bit codes
    with pytest.raises(FormatError):
        unpack_fixed(b"\x00", 3, 5)
    with pytest.raises(FormatError):
        ans_decode(b"\x00\x00\x00\x00", 3, AnsTable(np.array([1, 1])))


def test_fixed_width_packing() -> None:
    values = np.array([0, 31, 7, 16, 1])
    data = pack_fixed(values, 5)
    assert len(data) == 4
    np.testing.assert_array_equal(unpack_fixed(data, 5, 5), values)
