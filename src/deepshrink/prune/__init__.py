"""Pruning: magnitude (Han et al. 2015), Optimal Brain Damage (LeCun et al. 1989), layer-wise Optimal Brain Surgeon
(Hassibi & Stork 1993, one shot as in SparseGPT), sensitivity, schedules.

``prune_(model, MagnitudePrune(quality=1.5))`` narrows each layer's mask in the shared compression state;
``iterative_prune_`` alternates pruning and retraining; ``sensitivity_sweep`` + ``choose_thresholds`` pick
per-layer sparsities from one-layer-at-a-time accuracy curves.
"""

from .base import LayerReport, PruneReport, clear_pruned_optimizer_state_, model_sparsity, prune_
from .magnitude import MagnitudePrune, RandomPrune
from .obd import HESSIANS, OBDPrune, hessian_diagonal, saliency
from .obs import OBSPrune, layer_hessians, obs_prune_matrix
from .schedule import (
    PRUNE_METHODS,
    DropoutAdjuster,
    iterative_prune_,
    method_config,
    quality_schedule,
    rising_schedule,
    rising_sparsities,
)
from .sensitivity import (
    DEFAULT_SPARSITIES,
    Sensitivity,
    Thresholds,
    choose_thresholds,
    plot_sensitivity,
    sensitivity_sweep,
    write_sensitivity,
)
from .technique import TECHNIQUE

__all__ = [
    "DEFAULT_SPARSITIES",
    "HESSIANS",
    "PRUNE_METHODS",
    "TECHNIQUE",
    "DropoutAdjuster",
    "LayerReport",
    "MagnitudePrune",
    "OBDPrune",
    "OBSPrune",
    "PruneReport",
    "RandomPrune",
    "Sensitivity",
    "Thresholds",
    "choose_thresholds",
    "clear_pruned_optimizer_state_",
    "hessian_diagonal",
    "iterative_prune_",
    "layer_hessians",
    "method_config",
    "model_sparsity",
    "obs_prune_matrix",
    "plot_sensitivity",
    "prune_",
    "quality_schedule",
    "rising_schedule",
    "rising_sparsities",
    "saliency",
    "sensitivity_sweep",
    "write_sensitivity",
]
