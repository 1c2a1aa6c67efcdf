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
from .data import load_dataset
from .io import load_model
from .models import build_model
from .train import TrainConfig, evaluate, fit, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

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
]
