"""Truncated SVD of weights: Linear layers into two Linears, and the plain weight-SVD baseline for convs.

``W = U S V^T`` (conv weights reshaped to ``d x ckk``); the first factor keeps ``S_r V_r^T`` and the second
``U_r``, so the product is the best rank-``r`` approximation of ``W`` in Frobenius norm (Eckart-Young). The rank
comes from an energy threshold (fraction of ``sum sigma^2`` kept), a fixed rank, or a parameter budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.select import Selector, select_layers
from .modules import check_conv, replace_conv_, replace_linear_


@dataclass(frozen=True)
class SVDLinear:
    """Truncated SVD of Linear layers. Give exactly one of ``energy``, ``rank`` or ``param_ratio``.

    * ``energy``: keep the smallest rank whose singular values hold this fraction of ``sum sigma^2``.
    * ``rank``: the same rank for every layer (capped at ``min(in, out)``).
    * ``param_ratio``: per layer, the largest rank whose two factors hold at most this fraction of the
      layer's weights (the budget form).

    Layers where the factorised form would not have fewer weights are left untouched unless ``force``.
    """

    energy: float | None = None
    rank: int | None = None
    param_ratio: float | None = None
    force: bool = False

    def __post_init__(self) -> None:
        given = [k for k in ("energy", "rank", "param_ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"SVDLinear needs exactly one of energy, rank, param_ratio (got {given or 'none'})")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"energy must be in (0, 1], got {self.energy}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if self.param_ratio is not None and not 0.0 < self.param_ratio <= 1.0:
            raise ConfigError(f"param_ratio must be in (0, 1], got {self.param_ratio}")


@dataclass
class SVDReport:
    """Per-layer ranks and kept energy, layers left alone (with why), weights before and after."""

    ranks: dict[str, int] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """Smallest rank ``r`` with ``sum_{a<=r} sigma_a^2 >= energy * sum sigma^2`` (at least 1)."""
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 1
    cumulative = torch.cumsum(power, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype))) + 1


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(A, B)`` with ``B @ A`` the best rank-``rank`` approximation of ``matrix`` (``A``: r x n, ``B``: m x r)."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    rank = min(rank, s.numel())
    first = s[:rank, None] * vh[:rank]
    second = u[:, :rank]
    return first.to(matrix.dtype), second.to(matrix.dtype)


def _choose_rank(config: SVDLinear, s: Tensor, rows: int, cols: int) -> int:
    full = s.numel()
    if config.energy is not None:
        return min(energy_rank(s, config.energy), full)
    if config.rank is not None:
        return min(config.rank, full)
    assert config.param_ratio is not None
    return max(1, min(full, int(config.param_ratio * rows * cols // (rows + cols))))


class _Moments:
    """Running sums of a layer's outputs (rows of the last dimension): exact covariance at constant memory."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Tensor | None = None
        self.outer: Tensor | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        rows = output.detach().reshape(-1, output.shape[-1]).double()
        if self.total is None or self.outer is None:
            self.total, self.outer = rows.sum(0), rows.T @ rows
        else:
            self.total += rows.sum(0)
            self.outer += rows.T @ rows
        self.count += rows.shape[0]


def _response_moments(model: nn.Module, names: list[str], calib: Callable[[nn.Module], Any]) -> dict[str, _Moments]:
    moments = {n: _Moments() for n in names}
    hooks = [model.get_submodule(n).register_forward_hook(moments[n]) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            calib(model)
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return moments


@torch.no_grad()
def svd_linear_(
    model: nn.Module, config: SVDLinear, select: Selector = nn.Linear, calib: Callable[[nn.Module], Any] | None = None
) -> SVDReport:
    """Replace each selected ``nn.Linear`` by two Linears of rank ``r``, in place.

    Without ``calib``: the truncated SVD of the weight (data-free). With ``calib`` (a function that runs the
    model on calibration data): Zhang et al.'s linear response reconstruction applied to the Linear layer — PCA
    of its outputs ``y = W x + b`` gives ``U`` (``out x r``), and the layer becomes ``U (U^T W) x + b'`` with
    ``b' = mean(y) - U U^T (mean(y) - b)``; the rank rule then reads the response eigenvalues instead of ``sigma^2``.
    """
    report = SVDReport()
    layers = select_layers(model, select, supported=(nn.Linear,)).layers
    if not layers:
        raise ConfigError(f"no Linear layer to factorise: the selector {select!r} matched none")
    moments = _response_moments(model, [n for n, _ in layers], calib) if calib is not None else {}
    for fqn, layer in layers:
        assert isinstance(layer, nn.Linear)
        weight = layer.weight.detach()
        rows, cols = weight.shape
        report.params_before += weight.numel()
        stats = moments.get(fqn)
        if stats is not None and stats.count == 0:
            report.skipped[fqn] = "not run by the calibration function"
            report.params_after += weight.numel()
            continue
        if stats is not None:
            assert stats.total is not None and stats.outer is not None
            mean = stats.total / stats.count if layer.bias is not None else torch.zeros_like(stats.total)
            cov = stats.outer / stats.count - torch.outer(mean, mean)
            evals, evecs = torch.linalg.eigh(cov)
            evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
            s = evals.sqrt()
        else:
            s = torch.linalg.svdvals(weight.double())
        rank = _choose_rank(config, s, rows, cols)
        if rank * (rows + cols) >= rows * cols and not config.force:
            report.skipped[fqn] = f"rank {rank} would not reduce the {rows}x{cols} weights"
            report.params_after += weight.numel()
            continue
        if stats is not None:
            u = evecs[:, :rank]
            first, second = (u.T @ weight.double()).to(weight.dtype), u.to(weight.dtype)
            bias = None
            if layer.bias is not None:
                bias = (mean - u @ (u.T @ (mean - layer.bias.detach().double()))).to(weight.dtype)
            replace_linear_(model, fqn, first, second, bias)
        else:
            first, second = truncated_svd(weight, rank)
            replace_linear_(model, fqn, first, second)
        report.ranks[fqn] = rank
        report.energy[fqn] = float((s[:rank] ** 2).sum() / (s**2).sum().clamp_min(1e-300))
        report.params_after += rank * (rows + cols)
    return report


@torch.no_grad()
def svd_conv_factors(conv: nn.Conv2d, rank: int, fqn: str = "conv") -> tuple[Tensor, Tensor, Tensor]:
    """``(first, second, bias)`` of the weight-SVD factorisation of ``conv`` at ``rank`` (data-free baseline)."""
    conv = check_conv(conv, fqn)
    weight = conv.weight.detach()
    first, second = truncated_svd(weight.reshape(weight.shape[0], -1), rank)
    bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    return first.reshape(first.shape[0], *weight.shape[1:]), second, bias


def svd_conv_(model: nn.Module, fqn: str, rank: int) -> nn.Sequential:
    """Replace the conv at ``fqn`` by its rank-``rank`` weight SVD (two convs), in place."""
    first, second, bias = svd_conv_factors(model.get_submodule(fqn), rank, fqn)  # type: ignore[arg-type]
    return replace_conv_(model, fqn, first, second, bias)
