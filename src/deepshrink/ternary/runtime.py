"""Turn a model carrying ternary state into an inference model whose ternary layers run by adds/subtracts."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.edits import set_submodule
from ..core.errors import UnsupportedLayerError
from ..core.fold import find_bn_pairs
from ..core.select import select_layers
from ..core.state import get_value_transform
from .api import masked_latent
from .kernel import TernaryConv2d, TernaryLinear
from .ttq import Ternary
from .twn import SymmetricTernary

__all__ = ["to_runtime"]


@torch.no_grad()
def to_runtime(model: nn.Module, fold_bn: bool = True) -> nn.Module:
    """An eval-mode copy of ``model``: ternary Linear/Conv2d layers become add/subtract modules.

    With ``fold_bn`` a BatchNorm that reads only a ternary layer's output is folded into that layer's
    per-channel Wp/Wn and bias (the codes stay ternary). Other compression state stays as it is (it still
    computes the right weights). Nothing is baked: removing a parametrization from a deep copy would also
    strip the property from the class the original shares with it (a torch.nn.utils.parametrize trap).
    """
    model = copy.deepcopy(model).eval()
    pairs: dict[str, str] = {}
    if fold_bn:
        try:
            pairs = dict(find_bn_pairs(model))
        except UnsupportedLayerError:
            pairs = {}
    replaced: dict[str, TernaryLinear | TernaryConv2d] = {}
    for name, module in select_layers(model).layers:
        transform = get_value_transform(module)
        if not isinstance(transform, Ternary | SymmetricTernary):
            continue
        exported = transform.export(masked_latent(module))
        runtime: TernaryLinear | TernaryConv2d
        if isinstance(module, nn.Linear):
            runtime = TernaryLinear.from_export(exported, module.bias)
        elif isinstance(module, nn.Conv2d):
            runtime = TernaryConv2d.from_conv(module, exported)
        else:
            continue  # Conv1d stays dense (baked below)
        bn_name = pairs.get(name)
        if bn_name is not None:
            bn = model.get_submodule(bn_name)
            assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
            assert bn.running_var is not None and bn.running_mean is not None
            inv = 1.0 / torch.sqrt(bn.running_var + bn.eps)
            scale = bn.weight * inv if bn.affine else inv
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            runtime.rows.fold_scale(scale.cpu().numpy(), shift.cpu().numpy())
            set_submodule(model, bn_name, nn.Identity())
        replaced[name] = runtime
    for name, runtime in replaced.items():
        set_submodule(model, name, runtime)
    return model
