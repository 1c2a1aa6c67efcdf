from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from .prune_helpers import TinyMLP


@pytest.fixture
def tiny_mlp() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP()


@pytest.fixture
def tiny_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=generator)
    y = torch.randint(0, 3, (40,), generator=generator)
    return TensorDataset(x, y)


@pytest.fixture(scope="session")
def digits():
    from deepshrink.data import load_dataset

    return load_dataset("digits", "train", limit=600), load_dataset("digits", "val")
