"""Trained weight sharing (Deep Compression): k-means codebooks per layer and centroid fine-tuning; bits per layer
from a sensitivity sweep under a byte budget; soft weight-sharing (Ullrich et al. 2017)."""

from .allocate import (
    DEFAULT_SWEEP_BITS,
    BitChoice,
    BitSensitivity,
    bits_sweep,
    choose_bits,
    write_bits_sensitivity,
)
from .finetune import finetune_centroids, finetune_parameters
from .kmeans import INITS, KMeansResult, init_centroids, kmeans_1d, lloyd, optimal_kmeans
from .precision import round_biases_, round_codebooks_
from .sharing import (
    SharedWeights,
    SharingReport,
    WeightSharing,
    bits_for,
    centroid_parameters,
    share_weights_,
)
from .soft import GaussianMixturePrior, SoftSharing, SoftSharingReport, snap_, soft_share_
from .technique import TECHNIQUE

__all__ = [
    "DEFAULT_SWEEP_BITS",
    "INITS",
    "TECHNIQUE",
    "BitChoice",
    "BitSensitivity",
    "GaussianMixturePrior",
    "KMeansResult",
    "SharedWeights",
    "SharingReport",
    "SoftSharing",
    "SoftSharingReport",
    "WeightSharing",
    "bits_for",
    "bits_sweep",
    "centroid_parameters",
    "choose_bits",
    "finetune_centroids",
    "finetune_parameters",
    "init_centroids",
    "kmeans_1d",
    "lloyd",
    "optimal_kmeans",
    "round_biases_",
    "round_codebooks_",
    "share_weights_",
    "snap_",
    "soft_share_",
    "write_bits_sensitivity",
]
