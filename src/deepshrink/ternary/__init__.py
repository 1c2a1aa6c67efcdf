"""Trained Ternary Quantization (Zhu et al. 2017) and the symmetric TWN-style baseline.

``ternarize_(model, TTQ(t=0.05))`` puts a :class:`Ternary` value transform (trained ``wp``/``wn``, the
paper's gradients) on every Linear/Conv weight but the first and last; train it with
:func:`deepshrink.train.fit` (``params=ternary_param_groups(model)``) or the ``ternarize`` recipe stage;
:mod:`deepshrink.runtime.ternary` runs the result with additions and subtractions only.
"""

from .api import TernaryLayer, masked_latent, ternarize_, ternary_layers, ternary_param_groups
from .technique import TECHNIQUE
from .ttq import TTQ, Ternary, ternary_codes, ttq_function
from .twn import TWN, SymmetricTernary, twn_scale

__all__ = [
    "TECHNIQUE",
    "TTQ",
    "TWN",
    "SymmetricTernary",
    "Ternary",
    "TernaryLayer",
    "masked_latent",
    "ternarize_",
    "ternary_codes",
    "ternary_layers",
    "ternary_param_groups",
    "ttq_function",
    "twn_scale",
]
