"""Model factories named by ``--model tests.real.factories:NAME`` in the CLI tests (a user's own architectures)."""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from .messy import Conv2dSame


class TinyCNN(nn.Module):
    """An image classifier with a "same"-padding conv subclass, BatchNorm and a depthwise conv."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 6, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.dw(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def tiny_cnn() -> TinyCNN:
    return TinyCNN()


class TinyText(nn.Module):
    """A sentence embedder taking a list of strings (words hashed into an embedding table) or a dict of ids."""

    def __init__(self, vocab: int = 64, dim: int = 8) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def tokenize(self, sentences: list[str]) -> dict[str, Tensor]:
        words = [[zlib.crc32(w.encode()) % self.vocab for w in s.lower().split()] or [0] for s in sentences]
        width = max(len(w) for w in words)
        ids = torch.zeros(len(words), width, dtype=torch.int64)
        mask = torch.zeros(len(words), width)
        for i, w in enumerate(words):
            ids[i, : len(w)] = torch.tensor(w)
            mask[i, : len(w)] = 1.0
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, batch: list[str] | dict[str, Tensor]) -> Tensor:
        features = self.tokenize(batch) if isinstance(batch, list) else batch
        mask = features["attention_mask"].unsqueeze(-1)
        pooled = (self.embed(features["input_ids"]) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(self.proj(pooled), dim=-1)


def tiny_text() -> TinyText:
    torch.manual_seed(0)
    return TinyText()
