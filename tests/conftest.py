"""Shared fixtures: tiny models and the offline digits set keep the suite fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


class TinyMixed(nn.Module):
    """A model with supported (Embedding, Linear, Conv1d/2d, grouped, depthwise) and unsupported (LayerNorm) layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.conv1d = nn.Conv1d(4, 4, 1)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.grouped(self.conv(x)))
        x = x.mean(dim=(2, 3))[:, :, None]
        x = self.conv1d(x)[:, :, 0]
        return self.head(self.norm(x))


@pytest.fixture
def tiny_mixed() -> TinyMixed:
    return TinyMixed()
