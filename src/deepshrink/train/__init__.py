"""Training, evaluation, checkpoints and DDP plumbing shared by every technique."""

from .checkpoint import load_checkpoint, load_into, read_checkpoint, save_checkpoint
from .distill import DistillationLoss
from .distributed import init_distributed, is_main_process, shutdown
from .evaluate import agreement, evaluate
from .loop import Callback, History, TrainConfig, fit, make_optimizer
from .recovery import bias_correction_, correct_biases_, recalibrate_batchnorm_

__all__ = [
    "Callback",
    "DistillationLoss",
    "History",
    "TrainConfig",
    "agreement",
    "bias_correction_",
    "correct_biases_",
    "evaluate",
    "fit",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_into",
    "make_optimizer",
    "read_checkpoint",
    "recalibrate_batchnorm_",
    "save_checkpoint",
    "shutdown",
]
