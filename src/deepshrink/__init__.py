"""deepshrink: make trained PyTorch models small and fast enough for phones and boards.

Five techniques, each faithful to its paper and composable on any ``nn.Module`` through one shared
per-weight compression state (:mod:`deepshrink.core`).
"""

from .core import (
    ConfigError,
    DataError,
    DeepShrinkError,
    FormatError,
    UnsupportedLayerError,
    bake_,
    fold_batchnorm_,
    select_layers,
    summary,
)
from .core.version import __version__
from .data import load_dataset
from .io import load_model
from .models import build_model
from .train import TrainConfig, evaluate, fit, load_checkpoint, save_checkpoint

# Technique and codec entry points load lazily: importing the codec or runtime pulls in numba and constriction
# (about a second per process), which ``import deepshrink`` alone should not pay.
_LAZY = {
    "prune_": "deepshrink.prune",
    "MagnitudePrune": "deepshrink.prune",
    "OBDPrune": "deepshrink.prune",
    "iterative_prune_": "deepshrink.prune",
    "sensitivity_sweep": "deepshrink.prune",
    "share_weights_": "deepshrink.share",
    "WeightSharing": "deepshrink.share",
    "finetune_centroids": "deepshrink.share",
    "quantize_": "deepshrink.fixedpoint",
    "DynamicFixedPoint": "deepshrink.fixedpoint",
    "lowrank_conv_": "deepshrink.lowrank",
    "ZhangLowRank": "deepshrink.lowrank",
    "svd_linear_": "deepshrink.lowrank",
    "SVDLinear": "deepshrink.lowrank",
    "ternarize_": "deepshrink.ternary",
    "TTQ": "deepshrink.ternary",
    "save_compressed": "deepshrink.codec",
    "load_compressed": "deepshrink.codec",
    "read_compressed": "deepshrink.codec",
}


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'deepshrink' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

__all__ = [
    "ConfigError",
    "DataError",
    "DeepShrinkError",
    "FormatError",
    "TrainConfig",
    "UnsupportedLayerError",
    "__version__",
    "bake_",
    "build_model",
    "evaluate",
    "fit",
    "fold_batchnorm_",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "save_checkpoint",
    "select_layers",
    "summary",
    *_LAZY,
]
