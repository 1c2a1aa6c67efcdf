"""Local datasets (never downloaded) and loaders."""

from .calibration import calibration_batches
from .datasets import FASHION_MNIST_DIR, INFO, SPLITS, DatasetInfo, dataset_info, load_dataset, make_loader
from .idx import parse_idx, read_idx
from .sources import DataOptions, DataSource, SentenceDataset, open_data

__all__ = [
    "FASHION_MNIST_DIR",
    "INFO",
    "SPLITS",
    "DataOptions",
    "DataSource",
    "DatasetInfo",
    "SentenceDataset",
    "calibration_batches",
    "dataset_info",
    "load_dataset",
    "make_loader",
    "open_data",
    "parse_idx",
    "read_idx",
]
