"""IDX parsing: valid files (raw and gzip), and clear errors for truncated or corrupt ones."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.core import DataError, FormatError
from deepshrink.data import FASHION_MNIST_DIR, load_dataset, parse_idx, read_idx


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@given(st.lists(st.integers(1, 5), min_size=1, max_size=3))
@settings(max_examples=30, deadline=None)
def test_round_trip_any_shape(shape: list[int]) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    assert np.array_equal(parse_idx(_idx_bytes(array)), array)


def test_read_gzip_and_raw(tmp_path) -> None:
    array = np.random.default_rng(0).integers(0, 255, (3, 4, 4)).astype(np.uint8)
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a"), array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


def test_truncated_file_is_a_clear_error(tmp_path) -> None:
    data = _idx_bytes(np.zeros((10, 28, 28), np.uint8))
    with pytest.raises(FormatError, match="truncated IDX file"):
        parse_idx(data[:-1], "x")
    with pytest.raises(FormatError, match="truncated IDX header"):
        parse_idx(data[:9], "x")
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(FormatError, match="gzip"):
        read_idx(path)


def test_corrupt_headers_are_refused_without_allocating() -> None:
    with pytest.raises(FormatError, match="not an IDX file"):
        parse_idx(b"PK\x03\x04" + bytes(20))
    huge = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 60000, 60000)
    with pytest.raises(FormatError, match="more than allowed"):
        parse_idx(huge)
    with pytest.raises(FormatError, match="trailing"):
        parse_idx(_idx_bytes(np.zeros(4, np.uint8)) + b"x")


def test_missing_file_names_path_and_remedy(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist", "train", data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST package not installed")
def test_fashion_mnist_splits_are_disjoint_and_sized() -> None:
    val = load_dataset("fashion-mnist", "val")
    test = load_dataset("fashion-mnist", "test", limit=100)
    assert len(val) == 5000 and len(test) == 100
    x, y = val[0]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10
    train = load_dataset("fashion-mnist", "train")
    assert len(train) == 55000
