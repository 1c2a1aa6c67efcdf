"""Trained weight sharing (Deep Compression): k-means codebooks per layer and centroid fine-tuning."""

from .finetune import finetune_centroids, finetune_parameters
from .kmeans import INITS, KMeansResult, init_centroids, kmeans_1d, lloyd, optimal_kmeans
from .sharing import (
    SharedWeights,
    SharingReport,
    WeightSharing,
    bits_for,
    centroid_parameters,
    share_weights_,
)
from .technique import TECHNIQUE

__all__ = [
    "INITS",
    "TECHNIQUE",
    "KMeansResult",
    "SharedWeights",
    "SharingReport",
    "WeightSharing",
    "bits_for",
    "centroid_parameters",
    "finetune_centroids",
    "finetune_parameters",
    "init_centroids",
    "kmeans_1d",
    "lloyd",
    "optimal_kmeans",
    "share_weights_",
]
