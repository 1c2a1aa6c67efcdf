"""Local datasets (never downloaded) and loaders."""

from .calibration import calibration_batches
from .datasets import FASHION_MNIST_DIR, INFO, SPLITS, DatasetInfo, dataset_info, load_dataset, make_loader
from .idx import parse_idx, read_idx

__all__ = [
    "FASHION_MNIST_DIR",
    "INFO",
    "SPLITS",
    "DatasetInfo",
    "calibration_batches",
    "dataset_info",
    "load_dataset",
    "make_loader",
    "parse_idx",
    "read_idx",
]
