"""Weight sharing as a registered technique: config, handler, state, restored kind and stages in one place."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.select import Selector
from ..core.techniques import Technique, register_technique
from .sharing import SharedWeights, SharingReport, WeightSharing, share_weights_
from .stage import FINETUNE_KEYS, SHARE_KEYS, SOFT_SHARE_KEYS, build_finetune, build_share, build_soft_share


def apply(model: nn.Module, config: WeightSharing, *, select: Selector = None, exclude: Selector = None,
          calib: Any = None) -> SharingReport:
    """``compress_`` handler: :func:`share_weights_` (data-free)."""
    return share_weights_(model, config, select, exclude=exclude)


TECHNIQUE = register_technique(Technique(
    "share", (WeightSharing,), apply, states=(SharedWeights,), restores={"codebook": SharedWeights},
    stages={"share": (SHARE_KEYS, build_share), "finetune": (FINETUNE_KEYS, build_finetune),
            "soft_share": (SOFT_SHARE_KEYS, build_soft_share)},
    doc="trained weight sharing: k-means codebooks + centroid fine-tuning (Han, Mao, Dally 2016); soft weight-sharing "
        "with a learned Gaussian-mixture prior (Ullrich, Meeds, Welling 2017)"))
