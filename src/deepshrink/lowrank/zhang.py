"""Zhang, Zou, He, Sun (CVPR 2015 / TPAMI 2016): conv layers fitted to their responses on calibration data.

``lowrank_conv_(model, ZhangLowRank(speedup=3, method="asymmetric"), calib=val_set)`` replaces each selected
``nn.Conv2d`` (``d`` filters of ``k x k x c``) by ``d'`` filters of ``k x k x c`` followed by a 1x1 conv ``P``
with bias, in network order. Methods:

* ``svd``: plain truncated SVD of the weights (data-free baseline; ranks still from the response energy);
* ``linear``: PCA of each layer's responses (sec. 3.1);
* ``nonlinear``: ReLU-aware reconstruction by the auxiliary-variable alternation (sec. 3.2);
* ``asymmetric``: nonlinear, with inputs taken from the already-approximated network and targets from the
  original one, so errors do not accumulate (sec. 3.3; the paper's best);
* ``linear-asymmetric``: the asymmetric target with the linear solver (an ablation).

``decomposition="3d"`` (the TPAMI version's 3-D decomposition): each ``k x k`` conv is first split spatially into
``k x 1`` and ``1 x k`` convs (:mod:`.spatial`), then the ``1 x k`` conv is channel-decomposed by the method above,
its responses reconstructed from the approximated network's input (so the fit also absorbs the spatial error).

Ranks come from a whole-model conv-FLOP ``speedup`` by the paper's greedy rule (:mod:`.ranks`), or are given.
Fold BatchNorm first (:func:`deepshrink.fold_batchnorm_`) so each conv's output is the pre-ReLU response.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..core.edits import set_submodule
from ..core.errors import ConfigError, UnsupportedLayerError
from ..core.graph import is_relu, trace_calls
from ..core.select import Selector, select_layers
from .fit import linear_fit, nonlinear_fit, response_eigenvalues
from .modules import check_conv, replace_conv3d_, replace_conv_
from .ranks import LayerCost, SpatialCost, select_ranks_3d
from .sensitivity import select_ranks_by_sensitivity, sensitivity_losses
from .spatial import (
    column_moments,
    empty_spatial_pair,
    spatial_factors,
    spatial_singular_values,
    spatial_supported,
)
from .svd import svd_conv_

METHODS = ("svd", "linear", "nonlinear", "asymmetric", "linear-asymmetric")
SENSITIVITY_IMAGES = 500
"""Calibration images whose outputs the sensitivity rule compares."""


@dataclass(frozen=True)
class ZhangLowRank:
    """Hyperparameters of the response-based conv factorisation (defaults: the paper's)."""

    speedup: float | None = 3.0
    """Whole-model conv MAC reduction the greedy rank selection aims for (ignored when ``ranks`` is given)."""
    method: str = "asymmetric"
    ranks: Mapping[str, int] | None = None
    """Explicit rank per layer fqn (layers not listed stay as they are)."""
    images: int = 3000
    positions: int = 10
    """Response vectors sampled per image and layer (random spatial positions)."""
    schedule: tuple[tuple[float, int], ...] = ((0.01, 25), (1.0, 25))
    """``(lambda, iterations)`` stages of the nonlinear solver."""
    batch_size: int = 100
    seed: int = 0
    decomposition: str = "channel"
    """``"channel"`` (CVPR: ``k x k`` with ``d'`` filters, then 1x1) or ``"3d"`` (TPAMI: ``k x 1``, ``1 x k``, 1x1;
    layers without a spatial extent stay channel-decomposed). With ``ranks``, a 3-D layer's rank is its channel
    rank and ``spatial_ranks`` gives its spatial rank."""
    spatial_ranks: Mapping[str, int] | None = None
    rank_rule: str = "energy"
    """How ranks follow from ``speedup``: ``"energy"`` (the paper's greedy on kept PCA energy) or ``"sensitivity"``
    (each layer factorised alone on a grid of ranks, the network output's change measured; :mod:`.sensitivity`;
    channel decomposition only)."""

    def __post_init__(self) -> None:
        if self.rank_rule not in ("energy", "sensitivity"):
            raise ConfigError(f"rank_rule must be 'energy' or 'sensitivity', got {self.rank_rule!r}")
        if self.rank_rule == "sensitivity" and self.decomposition != "channel":
            raise ConfigError("rank_rule='sensitivity' measures channel decompositions: use decomposition='channel'")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.decomposition not in ("channel", "3d"):
            raise ConfigError(f"decomposition must be 'channel' or '3d', got {self.decomposition!r}")
        if self.decomposition == "3d" and self.method == "svd":
            raise ConfigError("decomposition='3d' fits the channel step to responses: use a response method, not svd")
        if (self.spatial_ranks is not None) != (self.decomposition == "3d" and self.ranks is not None):
            raise ConfigError("spatial_ranks go with decomposition='3d' and explicit ranks, and only then")
        if self.spatial_ranks is not None and any(int(r) < 1 for r in self.spatial_ranks.values()):
            raise ConfigError(f"every spatial rank must be >= 1, got {dict(self.spatial_ranks)}")
        if self.ranks is None and (self.speedup is None or not self.speedup >= 1.0):
            raise ConfigError(f"speedup must be >= 1 (or give ranks), got {self.speedup}")
        if self.ranks is not None and any(int(r) < 1 for r in self.ranks.values()):
            raise ConfigError(f"every rank must be >= 1, got {dict(self.ranks)}")
        if self.images < 1 or self.positions < 1 or self.batch_size < 1:
            raise ConfigError("images, positions and batch_size must be >= 1")
        if not self.schedule or any(lam <= 0 or its < 0 for lam, its in self.schedule):
            raise ConfigError(f"schedule must be (lambda > 0, iterations >= 0) pairs, got {self.schedule}")

    @property
    def nonlinear(self) -> bool:
        return self.method in ("nonlinear", "asymmetric")

    @property
    def asymmetric(self) -> bool:
        return self.method in ("asymmetric", "linear-asymmetric")


@dataclass
class LowRankReport:
    """What :func:`lowrank_conv_` did: ranks (``None``: kept), PCA energy kept, conv MACs, per-layer errors."""

    method: str
    ranks: dict[str, int | None] = field(default_factory=dict)
    spatial_ranks: dict[str, int] = field(default_factory=dict)
    """3-D layers: the number of ``k x 1`` filters (their channel rank is in ``ranks``)."""
    energy: dict[str, float] = field(default_factory=dict)
    macs_before: int = 0
    macs_after: int = 0
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "ranks": self.ranks, "spatial_ranks": self.spatial_ranks,
                "energy": self.energy, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "speedup": round(self.speedup, 4), "errors": self.errors, "skipped": self.skipped}


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the last needed response is captured."""


def calibration_images(calib: Dataset | Tensor, count: int, seed: int = 0) -> Tensor:
    """Up to ``count`` inputs drawn without replacement (seeded) from a dataset of ``(x, y)`` or a tensor."""
    total = len(calib)  # type: ignore[arg-type]
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[: min(count, total)]
    if isinstance(calib, Tensor):
        return calib[chosen]
    tensors = getattr(calib, "tensors", None)
    if tensors is not None:
        return tensors[0][chosen]
    return torch.stack([calib[int(i)][0] for i in chosen])


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def probe_convs(model: nn.Module, example: Tensor) -> dict[str, tuple[tuple[int, ...], int]]:
    """``{fqn: (output shape, MACs)}`` of every ``nn.Conv2d`` for one input, in execution order."""
    found: dict[str, tuple[tuple[int, ...], int]] = {}
    hooks = []
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            def hook(mod: nn.Module, inputs: Any, output: Tensor, fqn: str = fqn) -> None:
                weight = mod.weight
                assert isinstance(weight, Tensor)
                found.setdefault(fqn, (tuple(output.shape[1:]), int(weight[0].numel() * output[0].numel())))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example[:1].to(_device(model)))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return found


def conv_macs(model: nn.Module, example: Tensor) -> int:
    """Total conv MACs of ``model`` for one input like ``example`` (factorised pairs counted as two convs)."""
    return sum(macs for _, macs in probe_convs(model, example).values())


def relu_followed(model: nn.Module, example: Tensor) -> set[str]:
    """Fqns of convs whose output goes (through Identity/Dropout only) straight into a ReLU, seen on ``example``."""
    graph = trace_calls(model, example)
    found = set()
    for call in graph.module_calls(nn.Conv2d):
        reader = graph.sole_reader(call, passthrough=(nn.Identity, nn.Dropout))
        if reader is not None and is_relu(reader):
            found.add(call.name)
    return found


@torch.no_grad()
def collect_responses(
    model: nn.Module, names: list[str], images: Tensor, positions: Mapping[str, Tensor], batch_size: int = 100
) -> dict[str, Tensor]:
    """Outputs of the modules ``names`` at the sampled ``positions[name]`` (``N x P`` flat spatial indices).

    Returns ``{name: (N * P) x d}``. The forward pass stops once the last of ``names`` has run.
    """
    chunks: dict[str, list[Tensor]] = {n: [] for n in names}
    pending: set[str] = set()
    start = 0

    def make_hook(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def hook(mod: nn.Module, inputs: Any, output: Tensor) -> None:
            idx = positions[name][start : start + output.shape[0]].to(output.device)
            flat = output.flatten(2)
            picked = torch.gather(flat, 2, idx[:, None, :].expand(-1, flat.shape[1], -1))
            chunks[name].append(picked.transpose(1, 2).reshape(-1, flat.shape[1]).cpu())
            pending.discard(name)
            if not pending:
                raise _Stop

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        for start in range(0, images.shape[0], batch_size):
            pending.update(names)
            with contextlib.suppress(_Stop):
                model(images[start : start + batch_size].to(device))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return {n: torch.cat(c) for n, c in chunks.items()}


@torch.no_grad()
def _spatial_pair(conv: nn.Conv2d, vertical: Tensor, horizontal: Tensor) -> nn.Sequential:
    """The spatial split alone (the original's bias on the ``1 x k`` conv): what the channel fit reads."""
    pair = empty_spatial_pair(conv, vertical.shape[0])
    first, last = pair[0], pair[1]
    assert isinstance(first, nn.Conv2d) and isinstance(last, nn.Conv2d)
    first.weight.copy_(vertical)
    last.weight.copy_(horizontal)
    if conv.bias is not None:
        last.bias = nn.Parameter(conv.bias.detach().clone())
    return pair.train(conv.training)


def _layer_cost(conv: nn.Conv2d, probe: tuple[tuple[int, ...], int], spatial: bool) -> LayerCost | SpatialCost:
    """The conv's MACs per input, unfactorised and as a function of its rank(s)."""
    (d, height, width), macs = probe
    if not spatial:
        return LayerCost(d, macs, (conv.weight[0].numel() + d) * height * width)
    c, (kh, kw), (sw, dw, pw) = conv.in_channels, conv.kernel_size, (conv.stride[1], conv.dilation[1], conv.padding[1])
    vertical_width = (width - 1) * sw + dw * (kw - 1) + 1 - 2 * int(pw)  # the k x 1 conv runs on every input column
    return SpatialCost(d, min(c * kh, d * kw), macs, c * kh * height * vertical_width, kw * height * width,
                       d * height * width)


def _choose_ranks(config: ZhangLowRank, order: list[str], costs: dict[str, LayerCost | SpatialCost],
                  eigen: dict[str, Tensor], moments: dict[str, Tensor], convs: dict[str, nn.Conv2d],
                  macs_before: int, sensitivity: dict[str, dict[int, float]] | None = None,
                  ) -> tuple[dict[str, int | None], dict[str, int]]:
    """``(channel rank or None per layer, spatial rank per 3-D layer)``, given or by the greedy rule."""
    spatial = set(moments)
    if config.ranks is not None:
        ranks: dict[str, int | None] = {n: (min(int(config.ranks[n]), costs[n].filters) if n in config.ranks else None)
                                        for n in order}
        given = config.spatial_ranks or {}
        unknown = set(given) - (spatial & {n for n in order if ranks[n] is not None})
        if unknown:
            raise ConfigError(f"spatial_ranks name layers without a rank or a spatial extent: {sorted(unknown)}")
        missing = {n for n in spatial if ranks[n] is not None} - set(given)
        if missing:
            raise ConfigError(f"decomposition='3d' needs a spatial rank for {sorted(missing)}")
        return ranks, {n: min(int(r), cast(SpatialCost, costs[n]).spatial_max) for n, r in given.items()}
    assert config.speedup is not None
    fixed = macs_before - sum(c.original for c in costs.values())
    if sensitivity is not None:
        return select_ranks_by_sensitivity(sensitivity, cast(dict[str, LayerCost], costs),
                                           int(macs_before / config.speedup), fixed), {}
    energies = {n: spatial_singular_values(convs[n], moments[n]) for n in spatial}
    chosen = select_ranks_3d(eigen, costs, energies, int(macs_before / config.speedup), fixed)
    spatial_ranks = {n: r[0] for n, r in chosen.items() if n in spatial and r is not None}
    return {n: (r[1] if isinstance(r, tuple) else r) for n, r in chosen.items()}, spatial_ranks


def lowrank_conv_(
    model: nn.Module, config: ZhangLowRank, calib: Dataset | Tensor, select: Selector = nn.Conv2d,
    *, cache: dict[str, Any] | None = None,
) -> LowRankReport:
    """Factorise the selected convs of ``model`` in place, in network order; returns a :class:`LowRankReport`.

    ``cache``: a dict that keeps the original network's sampled responses between calls, for comparing methods
    or speedups on copies of the *same* model with the same calibration settings (the key checks the settings).
    """
    report = LowRankReport(config.method)
    images = calibration_images(calib, config.images, config.seed)
    probe = probe_convs(model, images)
    candidates = []
    for fqn, module in select_layers(model, select, supported=(nn.Conv2d,)).layers:
        try:
            check_conv(module, fqn)
        except UnsupportedLayerError as exc:
            report.skipped[fqn] = str(exc)
            continue
        if fqn not in probe:
            report.skipped[fqn] = "not run by the model's forward pass"
            continue
        candidates.append(fqn)
    if not candidates:
        raise ConfigError(f"no selected layer can be factorised ({report.skipped or 'no nn.Conv2d selected'})")
    if config.ranks is not None:
        unknown = set(config.ranks) - set(candidates)
        if unknown:
            raise ConfigError(f"ranks name layers that are not selectable convs: {sorted(unknown)}")
    order = [n for n in probe if n in candidates]  # execution order
    report.macs_before = sum(m for _, m in probe.values())
    gen = torch.Generator().manual_seed(config.seed + 1)
    positions = {n: torch.randint(0, probe[n][0][1] * probe[n][0][2], (images.shape[0], config.positions),
                                  generator=gen) for n in order}
    key = (tuple(order), config.images, config.positions, config.seed, tuple(images.shape))
    if cache is not None and cache.get("key") == key:
        targets, eigen = cache["targets"], cache["eigen"]
    else:
        targets = collect_responses(copy.deepcopy(model), order, images, positions, config.batch_size)
        eigen = {n: response_eigenvalues(targets[n]) for n in order}
        if cache is not None:
            cache.update(key=key, targets=targets, eigen=eigen)
    convs = {n: cast(nn.Conv2d, model.get_submodule(n)) for n in order}
    spatial = {n for n, c in convs.items() if config.decomposition == "3d" and spatial_supported(c)}
    costs = {n: _layer_cost(c, probe[n], n in spatial) for n, c in convs.items()}
    moments = column_moments(copy.deepcopy(model), [n for n in order if n in spatial], images, config.positions,
                             config.batch_size, config.seed + 2) if spatial else {}
    sensitivity = (sensitivity_losses(model, order, cast(dict[str, LayerCost], costs), targets,
                                      images[:SENSITIVITY_IMAGES], batch_size=config.batch_size)
                   if config.rank_rule == "sensitivity" and config.ranks is None else None)
    ranks, spatial_ranks = _choose_ranks(config, order, costs, eigen, moments, convs, report.macs_before, sensitivity)
    relu = relu_followed(model, images[:1].to(_device(model))) if config.nonlinear else set()
    for n in order:
        rank = ranks[n]
        report.ranks[n] = rank
        total = float(eigen[n].sum())
        report.energy[n] = float(eigen[n][:rank].sum()) / total if rank is not None and total > 0 else 1.0
        if rank is None:
            continue
        conv = convs[n]
        assert isinstance(conv, nn.Conv2d)
        if config.method == "svd":
            svd_conv_(model, n, rank)
            continue
        vertical = None
        if n in spatial_ranks:  # 3-D: the spatial split first, so the channel fit sees (and absorbs) its error
            report.spatial_ranks[n] = spatial_ranks[n]
            vertical, horizontal = spatial_factors(conv, spatial_ranks[n], moments[n])
            set_submodule(model, n, _spatial_pair(conv, vertical, horizontal))
        y = targets[n]
        yhat = collect_responses(model, [n], images, positions, config.batch_size)[n] if config.asymmetric else y
        if config.nonlinear and n in relu:
            fac = nonlinear_fit(y, yhat, rank, config.schedule, asymmetric=config.asymmetric)
        else:
            if config.nonlinear:
                report.skipped[n] = "no ReLU follows: fitted linearly"
            fac = linear_fit(y, yhat, rank, asymmetric=config.asymmetric)
        norm = float((torch.relu(y) if config.nonlinear and n in relu else y).double().pow(2).sum(1).mean())
        report.errors[n] = {"initial": fac.initial_error / max(norm, 1e-300), "final": fac.error / max(norm, 1e-300)}
        if vertical is None:
            replace_conv_(model, n, *fac.conv_weights(conv.weight, conv.bias))
        else:
            set_submodule(model, n, conv)
            replace_conv3d_(model, n, conv, vertical, *fac.conv_weights(horizontal, conv.bias))
    report.macs_after = conv_macs(model, images)
    return report
