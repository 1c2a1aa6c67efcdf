"""Trained weight sharing (Deep Compression, Han et al. 2016, section 3): a per-layer codebook of 2^b values.

``share_weights_(model, WeightSharing(bits={"conv": 8, "fc": 5}, init="linear"))`` clusters each selected
layer's surviving (unpruned) weights with 1-D k-means and attaches a :class:`SharedWeights` step after the
layer's mask. The step holds the codebook as a trainable parameter and the cluster index as a buffer; its
output ``centroids[index]`` is differentiable in the centroids, so back-propagation gives each shared value the
sum of the gradients of its weights (the paper's eq. 3) and the common training loop fine-tunes them.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..core.errors import ConfigError, FormatError
from ..core.select import Selector, layer_kind, select_layers
from ..core.state import (
    ValueTransform,
    get_mask,
    set_value_transform,
)
from .kmeans import INITS, kmeans_1d

__all__ = ["SharedWeights", "SharingReport", "WeightSharing", "bits_for", "share_weights_"]

MAX_BITS = 16


class SharedWeights(ValueTransform):
    """``forward(w) = centroids[index]``, zero where ``index == -1`` (pruned); the input is ignored.

    Because the input is ignored, the mask before this step cannot zero anything: this step keeps pruned
    positions at exactly zero itself (``torch.where``), whatever the optimizer does to the centroids.
    """

    kind: ClassVar[str] = "codebook"
    index: Tensor

    def __init__(self, centroids: Tensor, index: Tensor) -> None:
        super().__init__()
        centroids = centroids.detach().to(torch.float32).reshape(-1).clone()
        if centroids.numel() < 1:
            raise ConfigError("a codebook needs at least one centroid")
        index = index.detach().to(torch.int64).clone()
        if index.numel() and int(index.max()) >= centroids.numel():
            raise ConfigError(f"cluster index {int(index.max())} out of range for {centroids.numel()} centroids")
        if index.numel() and int(index.min()) < -1:
            raise ConfigError("cluster indices must be >= -1 (-1 marks a pruned weight)")
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("index", index)

    def forward(self, weight: Tensor) -> Tensor:
        live = self.index >= 0
        values = self.centroids[self.index.clamp(min=0)]
        return torch.where(live, values, torch.zeros((), dtype=values.dtype, device=values.device)).to(weight.dtype)

    @property
    def bits(self) -> float:
        return float(max(1, math.ceil(math.log2(self.centroids.numel()))))

    def export(self, masked_latent: Tensor | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index.detach().cpu().numpy().astype(np.int64),
            "centroids": self.centroids.detach().cpu().numpy().astype(np.float32),
        }

    def on_mask_change(self, mask: Tensor) -> None:
        if mask.shape != self.index.shape:
            raise ConfigError(f"mask shape {tuple(mask.shape)} does not match codebook index {tuple(self.index.shape)}")
        with torch.no_grad():
            self.index.masked_fill_(~mask.to(device=self.index.device, dtype=torch.bool), -1)

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> SharedWeights:
        if exported.get("kind") != cls.kind:
            raise FormatError(f"expected a codebook export, got kind {exported.get('kind')!r}")
        index = torch.from_numpy(np.asarray(exported["index"], dtype=np.int64))
        centroids = torch.from_numpy(np.asarray(exported["centroids"], dtype=np.float32))
        try:
            return cls(centroids, index)
        except ConfigError as exc:
            raise FormatError(f"invalid codebook: {exc}") from exc

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> SharedWeights:
        centroids = tensors.get("centroids")
        if centroids is None or centroids.dim() != 1:
            raise FormatError("SharedWeights state needs a 1-D 'centroids' tensor")
        index = tensors.get("index")
        if index is not None and tuple(index.shape) != tuple(weight_shape):
            raise FormatError(f"SharedWeights index shape {tuple(index.shape)} does not match weight {tuple(weight_shape)}")
        return cls(torch.zeros_like(centroids, dtype=torch.float32), torch.full(weight_shape, -1, dtype=torch.int64))

    def extra_repr(self) -> str:
        live = int((self.index >= 0).sum())
        return f"clusters={self.centroids.numel()}, bits={self.bits:g}, shared={live}/{self.index.numel()}"


BitsSpec = int | Mapping[str, int]


@dataclass(frozen=True)
class WeightSharing:
    """Hyperparameters of weight sharing.

    ``bits``: one int for every layer, or a dict keyed by layer family (``"conv"``, ``"fc"``) and/or layer name
    (exact fqn or glob; names win over families); families missing from the dict keep the paper's defaults
    (conv 8, fc 5). ``init``: linear (paper's best) | density | random | optimal (exact 1-D k-means).
    ``bias_bits``: also share each selected layer's bias with that many bits (off by default, as in the paper);
    a bias with at most ``4 * 2^bias_bits`` elements stays float32, where a codebook would not pay for itself.
    """

    bits: BitsSpec = field(default_factory=lambda: {"conv": 8, "fc": 5})
    init: str = "linear"
    max_iter: int = 100
    seed: int = 0
    bias_bits: int | None = None

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r} for weight sharing (allowed: {', '.join(INITS)})")
        if self.max_iter < 0:
            raise ConfigError(f"max_iter must be >= 0, got {self.max_iter}")
        values = [self.bits] if isinstance(self.bits, int) else list(self.bits.values())
        if self.bias_bits is not None and (isinstance(self.bias_bits, bool) or not isinstance(self.bias_bits, int)
                                           or not 1 <= self.bias_bits <= MAX_BITS):
            raise ConfigError(f"bias_bits must be None or an integer in 1..{MAX_BITS}, got {self.bias_bits!r}")
        if not isinstance(self.bits, int | Mapping):
            raise ConfigError(f"bits must be an int or a dict of layer family/name -> int, got {self.bits!r}")
        for b in values:
            if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= MAX_BITS:
                raise ConfigError(f"bits must be integers in 1..{MAX_BITS}, got {b!r} in {self.bits!r}")
        if isinstance(self.bits, Mapping):
            object.__setattr__(self, "bits", dict(self.bits))


DEFAULT_BITS = {"conv": 8, "fc": 5}


def bits_for(config: WeightSharing, fqn: str, module: nn.Module) -> int:
    """Bits for layer ``fqn``: an exact name, then a matching glob, then its family, then the paper's default."""
    if isinstance(config.bits, int):
        return config.bits
    spec = config.bits
    if fqn in spec:
        return int(spec[fqn])
    for pattern, b in spec.items():
        if pattern not in DEFAULT_BITS and fnmatch.fnmatchcase(fqn, pattern):
            return int(b)
    kind = layer_kind(module)
    return int(spec.get(kind, DEFAULT_BITS[kind]))


@dataclass
class SharingReport:
    """Per layer: bits, clusters, shared weights and the clustering's mean squared error."""

    layers: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return dict(self.layers)


def share_layer_(module: nn.Module, bits: int, config: WeightSharing, name: str = "weight") -> dict[str, float]:
    """Cluster one layer's surviving weights and attach :class:`SharedWeights` (replacing any value transform).

    The weight clustered is the layer's current effective value (mask and any previous transform applied).
    """
    weight = getattr(module, name).detach()
    mask = get_mask(module, name)
    live = mask.to(torch.bool) if mask is not None else torch.ones_like(weight, dtype=torch.bool)
    values = weight[live].cpu().double().numpy()
    # never more shared values than distinct weights: a bigger codebook would only cost bytes
    k = min(2**bits, max(1, int(np.unique(values).size)))
    index = torch.full(weight.shape, -1, dtype=torch.int64)
    if values.size == 0:
        centroids = torch.zeros(k)
        mse = 0.0
    else:
        result = kmeans_1d(values, k, config.init, max_iter=config.max_iter, seed=config.seed)
        centroids = torch.from_numpy(result.centroids)
        index[live.cpu()] = torch.from_numpy(result.labels)
        mse = result.inertia / values.size
    transform = SharedWeights(centroids, index).to(weight.device)
    set_value_transform(module, transform, name)
    return {"bits": transform.bits, "clusters": k, "shared": int(values.size), "mse": mse}


def share_weights_(model: nn.Module, config: WeightSharing | None = None, select: Selector = None, *,
                   exclude: Selector = None) -> SharingReport:
    """Replace each selected layer's surviving weights by 2^b shared values (k-means per layer), in place.

    Pruned weights stay exactly zero and never join a cluster. The codebooks are trainable parameters: fine-tune
    them with :func:`deepshrink.share.finetune_centroids` (indices fixed, masks kept).
    """
    config = config or WeightSharing()
    report = SharingReport()
    selection = select_layers(model, select, exclude=exclude)
    if not selection.layers:
        raise ConfigError(f"no layer to share: the selector {select!r} matched no Linear/Conv layer")
    for fqn, module in selection:
        report.layers[fqn] = share_layer_(module, bits_for(config, fqn, module), config)
        bias = module.bias if parametrize.is_parametrized(module, "bias") else module._parameters.get("bias")
        if config.bias_bits is not None and isinstance(bias, Tensor) and bias.numel() > 4 * 2**config.bias_bits:
            report.layers[f"{fqn}.bias"] = share_layer_(module, config.bias_bits, config, name="bias")
    return report


def centroid_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every codebook (``SharedWeights.centroids``) in ``model``: what centroid fine-tuning trains."""
    return [m.centroids for m in model.modules() if isinstance(m, SharedWeights)]
