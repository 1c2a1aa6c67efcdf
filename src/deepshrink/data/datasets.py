"""Datasets from local files only (never downloaded): Fashion-MNIST, MNIST, CIFAR-10 binary, sklearn digits.

Each dataset yields float tensors normalised per channel and integer labels. A fixed validation split is
carved from the training set (last ``VAL_SIZE`` samples of a seeded permutation) for sensitivity analysis
and calibration, so the test set stays untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..core.errors import ConfigError, DataError, FormatError
from .idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "val", "test", "train_full")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLIT_SEED = 20240601


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: input shape, classes, normalisation, validation size."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_size: int


INFO = {
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), 5000),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), 5000),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 5000),
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (4.88 / 16,), (6.02 / 16,), 297),
}


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"missing {stem}(.gz) in {root}. "
        + (
            "Install the Debian package: apt-get install dataset-fashion-mnist"
            if root == FASHION_MNIST_DIR
            else "Point --data-dir at a folder holding the four IDX files."
        )
    )


def _load_idx_pair(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = _IDX_FILES[part]
    images = read_idx(_find(root, images_stem))
    labels = read_idx(_find(root, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise FormatError(f"{root}: {part} images {images.shape} and labels {labels.shape} do not match")
    return images[:, None, :, :], labels.astype(np.int64)


def _load_cifar10(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if part == "train" else ["test_batch.bin"]
    record = 1 + 3 * 32 * 32
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataError(f"missing CIFAR-10 binary batch {path}: point --data-dir at the 'cifar-10-batches-bin' folder")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % record:
            raise FormatError(f"{path}: size {raw.size} is not a whole number of {record}-byte CIFAR records")
        rows = raw.reshape(-1, record)
        labels.append(rows[:, 0].astype(np.int64))
        images.append(rows[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def _load_digits(part: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = len(labels) - 360
    chosen = order[:cut] if part == "train" else order[cut:]
    return images[chosen], labels[chosen]


def _raw(name: str, part: str, root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if name == "fashion-mnist":
        return _load_idx_pair(root or FASHION_MNIST_DIR, part)
    if name == "mnist":
        if root is None:
            raise DataError("MNIST needs --data-dir: a folder holding the four MNIST IDX files (nothing is downloaded)")
        return _load_idx_pair(root, part)
    if name == "cifar10":
        if root is None:
            raise DataError("CIFAR-10 needs --data-dir: the folder of binary batches (data_batch_1.bin ... test_batch.bin)")
        return _load_cifar10(root, part)
    if name == "digits":
        return _load_digits(part)
    raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(INFO)})")


def load_dataset(
    name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None, limit: int | None = None,
    val_split: float | int | None = None,
) -> TensorDataset:
    """Load ``split`` (train / val / test / train_full) of ``name`` as a normalised ``TensorDataset``.

    ``train`` excludes the validation split (the set's fixed size, or ``val_split``: a fraction in (0, 1) or a
    count); ``train_full`` includes it. ``limit`` keeps the first N samples. A split left empty is a DataError.
    """
    if name not in INFO:
        raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(INFO)})")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    info = INFO[name]
    root = Path(data_dir) if data_dir is not None else None
    images, labels = _raw(name, "test" if split == "test" else "train", root)
    if split in ("train", "val"):
        total = len(labels)
        val_size = info.val_size if val_split is None else (
            int(val_split) if isinstance(val_split, int) else max(1, round(float(val_split) * total)))
        if not 0 < val_size < total:
            raise DataError(f"{name}: a validation split of {val_size} samples leaves {max(total - val_size, 0)} of "
                            f"the {total} training samples; pass --val-split with a fraction (e.g. 0.1) or a smaller "
                            "count")
        order = np.random.default_rng(_SPLIT_SEED).permutation(total)
        chosen = order[-val_size:] if split == "val" else np.sort(order[:-val_size])
        images, labels = images[chosen], labels[chosen]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if len(labels) == 0:
        raise DataError(f"{name}: the {split} split is empty")
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    if images.dtype == np.uint8:
        x /= 255.0
    mean = torch.tensor(info.mean).reshape(1, -1, 1, 1)
    std = torch.tensor(info.std).reshape(1, -1, 1, 1)
    return TensorDataset((x - mean) / std, torch.from_numpy(labels))


def make_loader(
    dataset: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0, sampler: object | None = None
) -> DataLoader:
    """A ``DataLoader`` with a seeded generator (in-memory tensors: no worker processes needed)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        generator=generator,
        sampler=sampler,  # type: ignore[arg-type]
    )


def dataset_info(name: str) -> DatasetInfo:
    """Shape, classes and normalisation of a known dataset."""
    if name not in INFO:
        raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(INFO)})")
    return INFO[name]
