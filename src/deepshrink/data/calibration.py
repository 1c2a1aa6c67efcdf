"""Calibration batches: the few samples data-driven techniques look at (formats, Hessians, responses)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..core.errors import ConfigError
from .datasets import make_loader

__all__ = ["calibration_batches"]


def calibration_batches(data: Any, count: int | None = None, batch_size: int = 256) -> list[Any]:
    """Up to ``count`` samples of ``data`` as a list of batches (the first ones: a dataset split is already shuffled).

    ``data``: a Dataset (batches of ``(inputs, labels)``), a tensor (batches of inputs), a feature dict (one batch),
    or an iterable of ready batches (taken as they are, whole batches until ``count`` samples are reached).
    """
    if count is not None and count < 1:
        raise ConfigError(f"calibration needs at least one sample, got count={count}")
    if data is None:
        raise ConfigError("no calibration data: pass a dataset, a tensor or batches")
    if isinstance(data, dict):
        return [data]
    if isinstance(data, Tensor):
        data = data[:count] if count is not None else data
        return list(torch.split(data, batch_size))
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        size = len(data)
        if size == 0:
            raise ConfigError("the calibration dataset is empty")
        subset = Subset(data, range(min(size, count))) if count is not None else data
        return [tuple(batch) for batch in make_loader(subset, batch_size)]
    if isinstance(data, Iterable):
        batches, seen = [], 0
        for batch in data:
            batches.append(batch)
            first = batch[0] if isinstance(batch, tuple | list) else batch
            seen += len(first) if isinstance(first, Tensor) else 1
            if count is not None and seen >= count:
                break
        if batches:
            return batches
    raise ConfigError(f"cannot take calibration batches from {type(data).__name__}")
