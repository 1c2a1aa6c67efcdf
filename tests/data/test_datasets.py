"""Offline datasets: digits for tests, CIFAR-10 binary reader, unknown names."""

from __future__ import annotations

import numpy as np
import pytest

from deepshrink.core import ConfigError, FormatError
from deepshrink.data import dataset_info, load_dataset


def test_digits_splits() -> None:
    train, val, test = (load_dataset("digits", s) for s in ("train", "val", "test"))
    assert len(test) == 360 and len(val) == dataset_info("digits").val_size
    assert len(train) + len(val) + len(test) == 1797
    assert train[0][0].shape == (1, 8, 8)


def test_cifar10_binary_batches(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], axis=1)
        records.astype(np.uint8).tofile(tmp_path / name)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert len(test) == 4 and test[0][0].shape == (3, 32, 32)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError, match="CIFAR"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="unknown split"):
        load_dataset("digits", "dev")
