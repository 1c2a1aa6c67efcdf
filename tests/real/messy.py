"""A small model with what real models have and the zoo lacks: a conv subclass computing TF-"same" padding in its
own ``forward`` (timm's ``Conv2dSame``), depthwise convs, BatchNorm, ReLU6, a residual add and data-dependent
Python control flow in ``forward`` (which ``torch.fx.symbolic_trace`` cannot follow)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv2dSame(nn.Conv2d):
    """TF "same" padding computed from the input size at every call, as timm's ``Conv2dSame`` does."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        pad_h = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pad_w = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class Messy(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self.bn0(self.stem(x)))
        y = F.relu6(self.bn1(self.dw(x)))
        y = self.bn2(self.pw(y))
        if y.abs().mean() > 0:  # data-dependent control flow
            x = x + y  # residual add
        x = torch.relu(self.head(x))
        return self.fc(x.mean((2, 3)))


def messy(seed: int = 0) -> Messy:
    """A ``Messy`` model in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = Messy()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 15, 13))
    return model.eval()
