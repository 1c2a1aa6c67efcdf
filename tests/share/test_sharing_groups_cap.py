"""Per-channel codebooks are never wider than a channel's weights (a depthwise conv's 9 weights need 9 entries)."""

from __future__ import annotations

import torch
from torch import nn

from deepshrink.share import WeightSharing, share_weights_
from deepshrink.share.sharing import SharedWeights


def test_channel_codebooks_hold_at_most_a_channels_weights() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, groups=8)  # depthwise: 9 weights per output channel
    model = nn.Sequential(conv)
    before = conv.weight.detach().clone()
    share_weights_(model, WeightSharing(bits=8, init="optimal", groups="channel"))
    transform = next(m for m in model.modules() if isinstance(m, SharedWeights))
    assert tuple(transform.centroids.shape) == (8, 9)
    # nine distinct weights per channel and nine centroids each: lossless
    torch.testing.assert_close(conv.weight.detach(), before)
