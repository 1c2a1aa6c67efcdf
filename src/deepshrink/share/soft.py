"""Soft weight-sharing (Ullrich, Meeds, Welling 2017): a Gaussian-mixture prior learned during retraining.

Each selected layer gets a mixture of ``J`` Gaussians over its (live) weights, measured in units of the layer's
weight std so one set of hyperparameters fits layers of any scale. Component 0 is pinned at zero with a fixed,
large mixing proportion ``pi_zero`` and a Gamma hyperprior holding its precision high; the other ``J - 1`` means,
all precisions and the other mixing proportions are learned with the weights. Retraining minimises
``cross-entropy + tau / N * (-log p(w) - log p(precisions))`` (``N`` training samples), which pulls the weights into
tight clusters, most of them at zero. :func:`snap_` then merges components closer than ``merge`` (KL divergence),
assigns each weight to its most responsible component and writes the result as the state every other technique
reads: a narrowed :class:`~deepshrink.core.state.Mask` (the zero component's weights) and a
:class:`~deepshrink.share.sharing.SharedWeights` codebook (the other components' means) -- so the codec, the
loader and the runtime take it unchanged, and centroid fine-tuning can follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.select import Selector, select_layers
from ..core.state import get_mask, get_value_transform, latent_weight, set_mask, set_value_transform
from ..train import History, TrainConfig, fit
from ..train.loop import LossFn
from .sharing import SharedWeights

__all__ = ["GaussianMixturePrior", "SoftSharing", "SoftSharingReport", "snap_", "soft_share_"]


@dataclass(frozen=True)
class SoftSharing:
    """Hyperparameters of soft weight-sharing (defaults after the paper, stds in units of each layer's weight std).

    ``components``: ``J``, the zero component included (17 in the paper). ``tau``: weight of the prior's negative
    log likelihood against the data term (per training sample). ``pi_zero``: the zero component's fixed mixing
    proportion. ``zero_std`` / ``zero_strength``: the mode and shape ``alpha`` of the Gamma hyperprior on the zero
    component's precision (``beta = (alpha - 1) * zero_std^2``); ``std`` / ``strength`` the same for the others, and
    ``init_std`` their initial std. ``lr_means`` / ``lr_precisions`` / ``lr_mixing``: learning rates of the
    mixture's parameters as multiples of the weights' lr. ``merge``: components whose KL divergence is below this
    are merged before the weights are snapped.
    """

    components: int = 17
    tau: float = 5e-3
    pi_zero: float = 0.99
    zero_std: float = 0.05
    zero_strength: float = 5000.0
    std: float = 0.05
    strength: float = 250.0
    init_std: float = 0.25
    lr_means: float = 0.2
    lr_precisions: float = 6.0
    lr_mixing: float = 6.0
    merge: float = 1e-2

    def __post_init__(self) -> None:
        if not 2 <= self.components <= 1 << 12:
            raise ConfigError(f"components must be in 2..4096 (the zero component included), got {self.components}")
        if not 0.0 < self.pi_zero < 1.0:
            raise ConfigError(f"pi_zero must be in (0, 1), got {self.pi_zero}")
        for name in ("tau", "zero_std", "std", "init_std", "lr_means", "lr_precisions", "lr_mixing"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("zero_strength", "strength"):
            if not float(getattr(self, name)) >= 1:
                raise ConfigError(f"{name} (a Gamma shape) must be >= 1, got {getattr(self, name)}")
        if not self.merge >= 0:
            raise ConfigError(f"merge must be >= 0, got {self.merge}")


def _weight(module: nn.Module) -> Tensor:
    """``module.weight`` (the effective weight, masks applied), typed."""
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor")
    return weight


class GaussianMixturePrior(nn.Module):
    """One mixture per layer over its live weights divided by ``scale`` (the layer's weight std at the start).

    ``means[l]`` (``J - 1``), ``log_precisions[l]`` (``J``: component 0 is the zero one) and ``logits[l]``
    (``J - 1``: the non-zero components share ``1 - pi_zero``) are trainable.
    """

    scale: Tensor

    def __init__(self, layers: list[tuple[str, nn.Module]], config: SoftSharing) -> None:
        super().__init__()
        self.config = config
        self.names = [name for name, _ in layers]
        self.modules_ = [module for _, module in layers]
        j = config.components
        scales, means = [], []
        for _, module in layers:
            weight = _weight(module).detach().cpu().double()
            mask = get_mask(module)
            live = weight[mask.cpu()] if mask is not None else weight.reshape(-1)
            scale = float(live.std()) if live.numel() > 1 and float(live.std()) > 0 else 1.0
            scales.append(scale)
            top = float(live.abs().max()) / scale if live.numel() else 1.0
            means.append(np.linspace(-top, top, j - 1))
        self.register_buffer("scale", torch.tensor(scales, dtype=torch.float32))
        self.means = nn.Parameter(torch.tensor(np.array(means), dtype=torch.float32))
        self.log_precisions = nn.Parameter(torch.full((len(layers), j), -2 * math.log(config.init_std)))
        with torch.no_grad():
            self.log_precisions[:, 0] = -2 * math.log(config.zero_std)
        self.logits = nn.Parameter(torch.zeros(len(layers), j - 1))

    def components(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(means, log precisions, log mixing proportions)`` of one layer, component 0 first (normalised units)."""
        zero = torch.zeros(1, dtype=self.means.dtype, device=self.means.device)
        means = torch.cat([zero, self.means[layer]])
        log_pi = torch.cat([zero + math.log(self.config.pi_zero),
                            math.log(1 - self.config.pi_zero) + torch.log_softmax(self.logits[layer], dim=0)])
        return means, self.log_precisions[layer], log_pi

    def weights(self, layer: int) -> Tensor:
        """The live weights of one layer in normalised units (differentiable)."""
        module = self.modules_[layer]
        weight = _weight(module)
        mask = get_mask(module)
        live = weight[mask] if mask is not None else weight.reshape(-1)
        return live / self.scale[layer]

    def nll(self) -> Tensor:
        """``-log p(w) - log p(precisions)`` over every layer (the hyperprior's constants left out)."""
        total = torch.zeros((), device=self.means.device)
        c = self.config
        for layer in range(len(self.modules_)):
            means, log_prec, log_pi = self.components(layer)
            w = self.weights(layer)
            log_norm = log_pi + 0.5 * (log_prec - math.log(2 * math.pi))
            quad = -0.5 * (w[:, None] - means[None, :]) ** 2 * torch.exp(log_prec)[None, :]
            total = total - torch.logsumexp(quad + log_norm[None, :], dim=1).sum()
            prec = torch.exp(log_prec)
            total = total - (c.zero_strength - 1) * log_prec[0] + (c.zero_strength - 1) * c.zero_std**2 * prec[0]
            total = total + ((1 - c.strength) * log_prec[1:] + (c.strength - 1) * c.std**2 * prec[1:]).sum()
        return total

    def param_groups(self) -> list[dict[str, Any]]:
        """The mixture's parameters as optimizer groups, their lr as multiples of the weights' (``lr_scale``)."""
        c = self.config
        return [{"params": [self.means], "lr_scale": c.lr_means, "weight_decay": 0.0},
                {"params": [self.log_precisions], "lr_scale": c.lr_precisions, "weight_decay": 0.0},
                {"params": [self.logits], "lr_scale": c.lr_mixing, "weight_decay": 0.0}]


class MixtureLoss:
    """``base(logits, labels, inputs) + tau / N * prior.nll()``: the soft weight-sharing objective as a ``loss_fn``."""

    def __init__(self, prior: GaussianMixturePrior, samples: int, base: LossFn | None = None) -> None:
        self.prior, self.weight, self.base = prior, prior.config.tau / max(samples, 1), base

    def __call__(self, logits: Tensor, labels: Tensor | None, inputs: Any) -> Tensor:
        if self.base is not None:
            data = self.base(logits, labels, inputs)
        elif labels is None:
            raise ConfigError("soft weight-sharing needs labels or a distillation loss")
        else:
            data = nn.functional.cross_entropy(logits, labels)
        return data + self.weight * self.prior.nll()


@dataclass
class SoftSharingReport:
    """Per layer after snapping: kept weights, clusters, and the mixture's components (means in weight units)."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": dict(self.layers), "history": list(self.history)}


def _kl(mu: np.ndarray, log_prec: np.ndarray, i: int, j: int) -> float:
    """KL(N_i || N_j) of two one-dimensional Gaussians given by mean and log precision."""
    return float(0.5 * (log_prec[i] - log_prec[j]) + 0.5 * np.exp(log_prec[j])
                 * (np.exp(-log_prec[i]) + (mu[i] - mu[j]) ** 2) - 0.5)


def merged_components(means: np.ndarray, log_prec: np.ndarray, log_pi: np.ndarray, threshold: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge components whose KL divergence (either way) is below ``threshold`` (transitively; mixing-weighted
    means and precisions, summed proportions). Component 0 stays first and keeps mean 0."""
    count = means.size
    parent = list(range(count))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in range(count):
        for j in range(i + 1, count):
            if min(_kl(means, log_prec, i, j), _kl(means, log_prec, j, i)) < threshold:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(find(i), []).append(i)
    new_means, new_prec, new_pi = [], [], []
    for root in sorted(groups):
        members = np.array(groups[root])
        w = np.exp(log_pi[members] - log_pi[members].max())
        new_pi.append(float(log_pi[members].max() + np.log(w.sum())))
        new_means.append(0.0 if root == 0 else float((means[members] * w).sum() / w.sum()))
        new_prec.append(float(np.log((np.exp(log_prec[members]) * w).sum() / w.sum())))
    return np.array(new_means), np.array(new_prec), np.array(new_pi)


def snap_(prior: GaussianMixturePrior, merge: float | None = None) -> dict[str, dict[str, Any]]:
    """Quantize every layer of ``prior`` to its mixture: each live weight goes to its most responsible component;
    the zero component's weights are pruned (mask narrowed), the others share their component's mean
    (:class:`SharedWeights`, one codebook per layer, unused components dropped)."""
    threshold = prior.config.merge if merge is None else merge
    report: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for layer, (name, module) in enumerate(zip(prior.names, prior.modules_, strict=True)):
            means_t, log_prec_t, log_pi_t = prior.components(layer)
            means, log_prec, log_pi = merged_components(means_t.cpu().double().numpy(),
                                                        log_prec_t.cpu().double().numpy(),
                                                        log_pi_t.cpu().double().numpy(), threshold)
            weight = _weight(module).detach().cpu().double()
            mask = get_mask(module)
            live = mask.cpu() if mask is not None else torch.ones_like(weight, dtype=torch.bool)
            scale = float(prior.scale[layer])
            w = (weight[live] / scale).numpy()
            log_resp = (log_pi + 0.5 * log_prec)[None, :] - 0.5 * (w[:, None] - means[None, :]) ** 2 * np.exp(log_prec)
            owner = log_resp.argmax(axis=1)
            used = np.unique(owner[owner > 0])
            keep = torch.zeros_like(live)
            keep[live] = torch.from_numpy(owner > 0)
            index = torch.full(weight.shape, -1, dtype=torch.int64)
            remap = np.full(means.size, -1, dtype=np.int64)
            order = used[np.argsort(means[used])] if used.size else used
            remap[order] = np.arange(order.size)
            index[live] = torch.from_numpy(remap[owner])
            centroids = (means[order] * scale).astype(np.float32) if order.size else np.zeros(1, np.float32)
            set_mask(module, keep)
            set_value_transform(module, SharedWeights(torch.from_numpy(centroids), index).to(weight_device(module)))
            kept = int(keep.sum())
            report[name] = {"kept": kept, "kept_fraction": kept / weight.numel(), "clusters": int(order.size),
                            "components": int(means.size), "pruned_by_prior": int(live.sum()) - kept,
                            "means": [round(float(m), 6) for m in centroids]}
    return report


def weight_device(module: nn.Module) -> torch.device:
    return latent_weight(module).device


def soft_share_(
    model: nn.Module,
    train_data: Any,
    config: SoftSharing,
    train: TrainConfig,
    *,
    select: Selector = None,
    exclude: Selector = None,
    val_data: Any = None,
    quiet: bool = False,
    loss_fn: LossFn | None = None,
    snap: bool = True,
) -> SoftSharingReport:
    """Retrain ``model`` with a Gaussian-mixture prior on the selected layers' weights, then (``snap``) prune and
    quantize them to it, in place. ``train``'s ``weight_decay`` applies to nothing the prior covers (the prior is
    their regulariser). ``loss_fn`` replaces cross-entropy as the data term (e.g. distillation)."""
    layers = select_layers(model, select, exclude=exclude).layers
    if not layers:
        raise ConfigError(f"no layer for soft weight-sharing: the selector {select!r} matched no Linear/Conv layer")
    for name, module in layers:
        if get_value_transform(module) is not None:
            raise ConfigError(f"{name} already carries a value transform; soft weight-sharing starts from float "
                              "weights (pruned or not)")
    device = latent_weight(layers[0][1]).device
    prior = GaussianMixturePrior(layers, config).to(device)
    covered = {id(latent_weight(module)) for _, module in layers}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) in covered]
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
    groups: list[dict[str, Any]] = [{"params": weights, "weight_decay": 0.0}]
    if others:
        groups.append({"params": others})
    groups += prior.param_groups()
    samples = len(train_data)
    history: History = fit(model, train_data, train, val_data=val_data, params=groups, quiet=quiet,
                           loss_fn=MixtureLoss(prior, samples, loss_fn))
    report = SoftSharingReport(history=history.epochs)
    if snap:
        report.layers = snap_(prior)
    return report
