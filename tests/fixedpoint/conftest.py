"""Tiny fixed-point fixtures: random LeNet-like models and calibration batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """conv -> maxpool -> relu -> grouped conv -> flatten -> linear -> relu -> linear (LeNet-shaped, 8x8 input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, groups=2)
        self.fc1 = nn.Linear(6 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.max_pool2d(self.conv2(x), 1)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class TinyMLP(nn.Module):
    """Linear -> ReLU -> Linear -> tanh (a float op the integer engine must hand over) -> Linear (no bias)."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 3, bias=False)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x.view(x.shape[0], -1)))
        return self.fc3(torch.tanh(self.fc2(x)))


def randomize_(model: nn.Module, seed: int, scale: float) -> nn.Module:
    """Random weights with a layer-dependent scale, so the dynamic ranges differ across layers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * scale * (2.0 ** (i % 3 - 1)))
    return model
