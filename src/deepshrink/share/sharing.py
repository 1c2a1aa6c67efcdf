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

    ``centroids`` is one codebook ``(K,)`` (the paper) or one per group of output channels ``(G, K)``: the rows
    of the weight split into ``G`` equal contiguous groups, each indexing its own row of centroids. Because the
    input is ignored, the mask before this step cannot zero anything: this step keeps pruned positions at exactly
    zero itself (``torch.where``), whatever the optimizer does to the centroids.
    """

    kind: ClassVar[str] = "codebook"
    index: Tensor

    def __init__(self, centroids: Tensor, index: Tensor) -> None:
        super().__init__()
        centroids = centroids.detach().to(torch.float32).clone()
        if centroids.dim() == 2 and centroids.shape[0] == 1:
            centroids = centroids.reshape(-1)
        if centroids.dim() not in (1, 2) or centroids.numel() < 1:
            raise ConfigError(f"a codebook is a non-empty (K,) or (G, K) tensor, got shape {tuple(centroids.shape)}")
        index = index.detach().to(torch.int64).clone()
        groups = centroids.shape[0] if centroids.dim() == 2 else 1
        if index.dim() and (index.shape[0] % groups or groups > index.shape[0]):
            raise ConfigError(f"{groups} codebooks do not split {index.shape[0]} output channels evenly")
        if index.numel() and int(index.max()) >= centroids.shape[-1]:
            raise ConfigError(f"cluster index {int(index.max())} out of range for {centroids.shape[-1]} centroids")
        if index.numel() and int(index.min()) < -1:
            raise ConfigError("cluster indices must be >= -1 (-1 marks a pruned weight)")
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("index", index)

    @property
    def groups(self) -> int:
        return int(self.centroids.shape[0]) if self.centroids.dim() == 2 else 1

    def forward(self, weight: Tensor) -> Tensor:
        live = self.index >= 0
        if self.centroids.dim() == 1:
            values = self.centroids[self.index.clamp(min=0)]
        else:
            rows = self.index.reshape(self.index.shape[0], -1)
            group = torch.arange(rows.shape[0], device=rows.device) // (rows.shape[0] // self.groups)
            values = self.centroids[group[:, None], rows.clamp(min=0)].reshape(self.index.shape)
        return torch.where(live, values, torch.zeros((), dtype=values.dtype, device=values.device)).to(weight.dtype)

    @property
    def bits(self) -> float:
        return float(max(1, math.ceil(math.log2(self.centroids.shape[-1]))))

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
        if centroids is None or centroids.dim() not in (1, 2):
            raise FormatError("SharedWeights state needs a (K,) or (G, K) 'centroids' tensor")
        index = tensors.get("index")
        if index is not None and tuple(index.shape) != tuple(weight_shape):
            raise FormatError(f"SharedWeights index shape {tuple(index.shape)} does not match weight {tuple(weight_shape)}")
        return cls(torch.zeros_like(centroids, dtype=torch.float32), torch.full(weight_shape, -1, dtype=torch.int64))

    def extra_repr(self) -> str:
        live = int((self.index >= 0).sum())
        groups = f", codebooks={self.groups}" if self.groups > 1 else ""
        return f"clusters={self.centroids.shape[-1]}{groups}, bits={self.bits:g}, shared={live}/{self.index.numel()}"


BitsSpec = int | Mapping[str, int]


@dataclass(frozen=True)
class WeightSharing:
    """Hyperparameters of weight sharing.

    ``bits``: one int for every layer, or a dict keyed by layer family (``"conv"``, ``"fc"``) and/or layer name
    (exact fqn or glob; names win over families); families missing from the dict keep the paper's defaults
    (conv 8, fc 5). ``init``: linear (the paper's best before centroid fine-tuning) | density | random | optimal
    (the exact 1-D k-means: far better when no fine-tuning follows) | auto (the default: optimal; the recipe stage
    picks linear when a ``finetune`` stage follows). ``groups``: ``"layer"`` (one codebook per layer, the paper),
    ``"channel"`` (one per output channel) or an int ``G`` (one per group of ``out / G`` channels; a layer whose
    channel count ``G`` does not divide keeps one per layer); each codebook's bytes are stored in the file.
    ``bias_bits``: also share each selected layer's bias with that many bits (off by default, as in the paper);
    a bias with at most ``4 * 2^bias_bits`` elements stays float32, where a codebook would not pay for itself.
    """

    bits: BitsSpec = field(default_factory=lambda: {"conv": 8, "fc": 5})
    init: str = "auto"
    max_iter: int = 100
    seed: int = 0
    bias_bits: int | None = None
    groups: str | int = "layer"

    def __post_init__(self) -> None:
        if self.init not in (*INITS, "auto"):
            raise ConfigError(f"unknown init {self.init!r} for weight sharing (allowed: {', '.join(INITS)}, auto)")
        if not (self.groups in ("layer", "channel") or (isinstance(self.groups, int)
                                                         and not isinstance(self.groups, bool) and self.groups >= 1)):
            raise ConfigError(f"groups must be 'layer', 'channel' or a positive int, got {self.groups!r}")
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


def _group_count(config: WeightSharing, rows: int) -> int:
    if config.groups == "layer" or rows == 0:
        return 1
    if config.groups == "channel":
        return rows
    return int(config.groups) if rows % int(config.groups) == 0 else 1


def _cluster(values: np.ndarray, k_max: int, config: WeightSharing) -> tuple[np.ndarray, np.ndarray, float]:
    """``(k_max centroids, labels, inertia)`` of one group's values (never more clusters than distinct values:
    the unused centroids repeat the last one and are never indexed)."""
    if values.size == 0:
        return np.zeros(k_max, dtype=np.float32), np.zeros(0, dtype=np.int64), 0.0
    k = min(k_max, max(1, int(np.unique(values).size)))
    init = "optimal" if config.init == "auto" else config.init
    result = kmeans_1d(values, k, init, max_iter=config.max_iter, seed=config.seed)
    centroids = result.centroids
    if k < k_max:
        centroids = np.concatenate([centroids, np.full(k_max - k, centroids[-1], dtype=np.float32)])
    return centroids, result.labels, result.inertia


def share_layer_(module: nn.Module, bits: int, config: WeightSharing, name: str = "weight") -> dict[str, float]:
    """Cluster one layer's surviving weights (per group of output channels) and attach :class:`SharedWeights`
    (replacing any value transform).

    The weight clustered is the layer's current effective value (mask and any previous transform applied).
    """
    weight = getattr(module, name).detach()
    mask = get_mask(module, name)
    live = mask.to(torch.bool) if mask is not None else torch.ones_like(weight, dtype=torch.bool)
    rows = weight.shape[0] if weight.dim() > 1 else 1
    groups = _group_count(config, rows) if weight.dim() > 1 else 1
    flat_w = weight.cpu().double().reshape(groups, -1).numpy()
    flat_live = live.cpu().reshape(groups, -1).numpy()
    # never more shared values than distinct weights, nor than the largest group's live weights: a wider
    # codebook would only cost bytes (a depthwise conv's channel of 9 weights needs at most 9 entries)
    everything = flat_w[flat_live]
    k = min(2**bits, max(1, int(np.unique(everything).size)), max(1, int(flat_live.sum(axis=1).max())))
    index = np.full(flat_w.shape, -1, dtype=np.int64)
    centroids = np.zeros((groups, k), dtype=np.float32)
    inertia = 0.0
    for g in range(groups):
        centroids[g], labels, part = _cluster(flat_w[g][flat_live[g]], k, config)
        index[g][flat_live[g]] = labels
        inertia += part
    table = torch.from_numpy(centroids if groups > 1 else centroids[0])
    transform = SharedWeights(table, torch.from_numpy(index.reshape(weight.shape))).to(weight.device)
    set_value_transform(module, transform, name)
    count = int(flat_live.sum())
    return {"bits": transform.bits, "clusters": k, "codebooks": groups, "shared": count,
            "mse": inertia / count if count else 0.0}


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
