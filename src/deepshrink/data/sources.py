"""Data sources named by a spec: the built-in sets, a folder of images of your own, a text file of sentences.

* ``fashion-mnist``, ``mnist``, ``cifar10``, ``digits``: :func:`~deepshrink.data.load_dataset` (their fixed
  validation split, so every published figure stays comparable, unless ``val_split`` says otherwise).
* ``imagefolder:DIR``: one sub-folder per class (labelled) or a flat folder (unlabelled: calibration and
  agreement with the uncompressed model only); with ``DIR/train`` and ``DIR/val`` (or ``DIR/test``) those are the
  splits, else a seeded ``val_split`` of the folder is held out (and serves as the test split too). Images are
  decoded with Pillow, resized (shorter side), centre-cropped and normalised.
* ``textfile:FILE``: one sentence per line (unlabelled), for models whose ``forward`` takes a list of strings.

Every split is checked: an empty split, or a validation split that leaves no training data, is a
:class:`~deepshrink.core.DataError` naming the sizes and the option to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..core.errors import ConfigError, DataError
from .datasets import INFO, load_dataset

__all__ = ["IMAGE_EXTENSIONS", "NORMS", "DataOptions", "DataSource", "SentenceDataset", "open_data"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
NORMS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "pm1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
         "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
"""Normalisations by name: ImageNet's mean/std, ``pm1`` (to [-1, 1], TF's EfficientNet-Lite), ``none`` ([0, 1])."""


@dataclass(frozen=True)
class DataOptions:
    """How to read a data source. ``val_split``: a fraction in (0, 1) or a sample count held out for validation
    (None: the built-in sets' fixed split, 10% of a folder or file). ``image_size``: the centre crop's side;
    ``resize``: the shorter side before cropping (default: ``image_size``); ``mean``/``std`` or ``norm``."""

    data_dir: str | None = None
    val_split: float | int | None = None
    image_size: int = 224
    resize: int | None = None
    norm: str = "imagenet"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    skip_bad_images: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give --mean and --std together")
        if self.image_size < 1 or (self.resize is not None and self.resize < 1):
            raise ConfigError("image size and resize must be positive")
        if self.val_split is not None and (self.val_split <= 0 or (isinstance(self.val_split, float)
                                                                   and self.val_split >= 1)):
            raise ConfigError(f"--val-split is a fraction in (0, 1) or a positive count, got {self.val_split}")


class SentenceDataset(Dataset):
    """Sentences (one sample each); a loader's batch is a list of strings."""

    def __init__(self, sentences: list[str]) -> None:
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> str:
        return self.sentences[index]


@dataclass
class DataSource:
    """An opened spec: its splits (``train``, ``val``, ``test``), whether it has labels, its sample shape."""

    name: str
    splits: dict[str, Dataset]
    labelled: bool
    input_shape: tuple[int, ...] | None
    num_classes: int | None

    def split(self, split: str, limit: int | None = None) -> Dataset:
        if split not in self.splits:
            raise ConfigError(f"{self.name} has no {split!r} split (has: {', '.join(self.splits)})")
        data = self.splits[split]
        if limit is not None and limit < len(data):  # type: ignore[arg-type]
            data = torch.utils.data.Subset(data, range(limit))
        return data


def _held_out(total: int, val_split: float | int | None, default: float, what: str) -> int:
    count = round(total * (default if val_split is None else val_split)) if not isinstance(val_split, int) \
        else int(val_split)
    count = max(1, count)
    if count >= total:
        raise DataError(f"{what}: a validation split of {count} leaves no training data of {total} samples; "
                        "pass a smaller --val-split (a fraction like 0.1 or a count)")
    return count


def _split_pool(items: list[Any], val_split: float | int | None, seed: int, what: str) -> tuple[list[Any], list[Any]]:
    order = np.random.default_rng(seed).permutation(len(items))
    held = _held_out(len(items), val_split, 0.1, what)
    return [items[i] for i in np.sort(order[held:])], [items[i] for i in order[:held]]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _labelled_files(folder: Path) -> tuple[list[tuple[Path, int]], list[str]] | None:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and _image_files(d))
    if not classes:
        return None
    return [(f, k) for k, c in enumerate(classes) for f in _image_files(folder / c)], classes


def _decode(files: list[tuple[Path, int]], options: DataOptions) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images as a normalised float tensor (N, 3, S, S), their labels, and how many bad files were skipped."""
    from PIL import Image, UnidentifiedImageError

    mean, std = (options.mean, options.std) if options.mean is not None else NORMS[options.norm]
    size, resize = options.image_size, options.resize or options.image_size
    images, labels, bad = [], [], 0
    for path, label in files:
        try:
            with Image.open(path) as opened:
                rgb = opened.convert("RGB")
            scale = resize / min(rgb.size)
            rgb = rgb.resize((max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))),
                             Image.Resampling.BICUBIC)
            left, top = (rgb.width - size) // 2, (rgb.height - size) // 2
            array = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            if not options.skip_bad_images:
                raise DataError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); remove it or pass "
                                "--skip-bad-images") from exc
            bad += 1
            continue
        images.append((array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
        labels.append(label)
    if not images:
        raise DataError(f"no decodable image among {len(files)} files")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), bad


def _image_dataset(files: list[tuple[Path, int]], options: DataOptions, labelled: bool) -> Dataset:
    x, y, _ = _decode(files, options)
    return TensorDataset(x, y) if labelled else TensorDataset(x)


def _image_folder(spec: str, folder: Path, options: DataOptions) -> DataSource:
    if not folder.is_dir():
        raise DataError(f"{spec}: {folder} is not a folder")
    named = {name: folder / name for name in ("train", "val", "test") if (folder / name).is_dir()}
    if "train" in named and ("val" in named or "test" in named):
        parts = {name: _labelled_files(path) for name, path in named.items()}
        labelled = all(p is not None for p in parts.values())
        files = {name: (p[0] if p is not None else [(f, -1) for f in _image_files(named[name])])
                 for name, p in parts.items()}
        classes = next((p[1] for p in parts.values() if p is not None), None)
        splits = {name: _image_dataset(f, options, labelled) for name, f in files.items()}
        splits.setdefault("val", splits.get("test"))  # type: ignore[arg-type]
        splits.setdefault("test", splits["val"])
    else:
        found = _labelled_files(folder)
        labelled = found is not None
        pool = found[0] if found is not None else [(f, -1) for f in _image_files(folder)]
        classes = found[1] if found is not None else None
        if not pool:
            raise DataError(f"{spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        train, val = _split_pool(pool, options.val_split, options.seed, spec)
        splits = {"train": _image_dataset(train, options, labelled), "val": _image_dataset(val, options, labelled)}
        splits["test"] = splits["val"]
    splits["train_full"] = splits["train"]
    for name, data in splits.items():
        if len(data) == 0:  # type: ignore[arg-type]
            raise DataError(f"{spec}: the {name} split is empty")
    return DataSource(spec, splits, labelled, (3, options.image_size, options.image_size),
                      len(classes) if classes else None)


def _text_file(spec: str, path: Path, options: DataOptions) -> DataSource:
    if not path.is_file():
        raise DataError(f"{spec}: {path} is not a file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    sentences = [line for line in lines if line]
    if len(sentences) < 2:
        raise DataError(f"{spec}: {len(sentences)} sentence(s); at least two (one per line) are needed")
    train, val = _split_pool(sentences, options.val_split, options.seed, spec)
    splits: dict[str, Dataset] = {"train": SentenceDataset(train), "val": SentenceDataset(val)}
    splits["test"], splits["train_full"] = splits["val"], SentenceDataset(sentences)
    return DataSource(spec, splits, False, None, None)


class _BuiltinSplits(dict):
    """The built-in set's splits, loaded on first use."""

    def __init__(self, name: str, options: DataOptions) -> None:
        super().__init__()
        self.name, self.options = name, options

    def __missing__(self, split: str) -> Dataset:
        data = load_dataset(self.name, split, self.options.data_dir, val_split=self.options.val_split)
        self[split] = data
        return data

    def __contains__(self, split: object) -> bool:
        return split in ("train", "val", "test", "train_full")


def open_data(spec: str, options: DataOptions | None = None) -> DataSource:
    """The data source ``spec`` names (see the module doc)."""
    options = options or DataOptions()
    kind, sep, rest = spec.partition(":")
    if sep and kind == "imagefolder":
        return _image_folder(spec, Path(rest).expanduser(), options)
    if sep and kind == "textfile":
        return _text_file(spec, Path(rest).expanduser(), options)
    if spec in INFO:
        info = INFO[spec]
        return DataSource(spec, _BuiltinSplits(spec, options), True, info.input_shape, info.num_classes)
    raise ConfigError(f"unknown dataset {spec!r} (known: {', '.join(INFO)}, imagefolder:DIR, textfile:FILE)")
