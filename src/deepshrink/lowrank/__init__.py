"""Low-rank approximation: truncated SVD of Linear layers and Zhang et al.'s response-fitted conv factorisation.

Importing this package registers the ``lowrank_conv`` / ``lowrank_linear`` structural edits, so checkpoints of
factorised models load with :func:`deepshrink.load_checkpoint`.
"""

from .api import lowrank_
from .fit import Factors, linear_fit, nonlinear_fit, pca_fit, response_eigenvalues, z_step
from .modules import empty_conv_pair, empty_linear_pair, replace_conv_, replace_linear_
from .ranks import LayerCost, select_ranks
from .svd import SVDLinear, SVDReport, energy_rank, svd_conv_, svd_conv_factors, svd_linear_, truncated_svd
from .technique import TECHNIQUE
from .zhang import (
    METHODS,
    LowRankReport,
    ZhangLowRank,
    calibration_images,
    collect_responses,
    conv_macs,
    lowrank_conv_,
    probe_convs,
    relu_followed,
)

__all__ = [
    "METHODS",
    "TECHNIQUE",
    "Factors",
    "LayerCost",
    "LowRankReport",
    "SVDLinear",
    "SVDReport",
    "ZhangLowRank",
    "calibration_images",
    "collect_responses",
    "conv_macs",
    "empty_conv_pair",
    "empty_linear_pair",
    "energy_rank",
    "linear_fit",
    "lowrank_",
    "lowrank_conv_",
    "nonlinear_fit",
    "pca_fit",
    "probe_convs",
    "relu_followed",
    "replace_conv_",
    "replace_linear_",
    "response_eigenvalues",
    "select_ranks",
    "svd_conv_",
    "svd_conv_factors",
    "svd_linear_",
    "truncated_svd",
    "z_step",
]
