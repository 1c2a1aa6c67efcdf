"""Trained Ternary Quantization (Zhu, Han, Mao, Dally, ICLR 2017) as a value transform on the shared state.

As in the paper, the latent full-precision weights are normalised to [-1, 1]: ``ternarize_`` divides a
layer's latent by ``unit = max|w|`` once, and the transform multiplies back by that fixed per-layer
constant, so the model's function is unchanged and everything below lives in the paper's normalised units
(``Wp = Wn = 1.0`` means ternary weights of ``+-max|w|``). Forward, on the masked normalised latent ``u``::

    delta = t * max|u|                       # recomputed each step, no gradient (as the reference code)
    q     = +Wp  where u >  delta
            -Wn  where u < -delta
             0   otherwise
    weight = unit * q

Backward, exactly the paper's eqs. (7) and (8) (``q`` is the paper's ``w^t``)::

    dL/dWp = sum_{u > delta}  dL/dq
    dL/dWn = -sum_{u < -delta} dL/dq         # the sign the forward's -Wn implies
    dL/du  = Wp * dL/dq  |  1 * dL/dq  |  Wn * dL/dq     (the three regions)

Masked positions are exactly zero, never above the threshold, hence always ternary zero; their gradient is
zeroed by the mask before this step.

Why the normalisation matters here. The reference code (czhu95/ternarynet, ``tw_ternarize``) skips it and
starts ``Wp = Wn = 1.0`` on the raw latent; that is harmless in its ResNets, where every ternary conv feeds
a BatchNorm (scale-free), but for a layer without BN (LeNet-5's conv2/fc1) the scale gradient, a sum over
up to 10^5 weights, then moves Wp by more than its own size in one SGD step (the loss diverged to NaN at
lr 0.01 in our first LeNet-5 run). In normalised units that step shrinks by ``unit**2``.

Optimiser. The scale gradient is a sum over every weight of a region (up to 4 * 10^5 in LeNet-5's fc1),
so without BN the loss is stiff in Wp, Wn: fine-tuning LeNet-5 with SGD (momentum 0.9, one learning rate
for all parameters as in the paper) diverged to NaN at lr 0.01 and 0.002 even in normalised units, while
Adam at lr 1e-4 (per-parameter step sizes) trains stably; the CLI and benchmarks default to it.

Initial scales: ``init="mean"`` (default) starts from the least-squares fit (the mean normalised magnitude
in each region, so the first forward is the best ternary fit of the fp32 layer); ``init="paper"`` from the
paper's ``Wp = Wn = 1.0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.state import ValueTransform, latent_weight, set_value_transform

__all__ = ["INITS", "TTQ", "Ternary", "ternary_codes", "ttq_function"]

INITS = ("mean", "paper")


@dataclass(frozen=True)
class TTQ:
    """Hyperparameters of Trained Ternary Quantization.

    ``t``: threshold factor (Delta = t * max|w|, one value for all layers). ``keep_first_last``: leave the
    model's first and last weight layers in full precision, as the paper does. ``init``: see module doc.
    """

    t: float = 0.05
    keep_first_last: bool = True
    init: str = "mean"

    def __post_init__(self) -> None:
        if not 0.0 <= self.t < 1.0:
            raise ConfigError(f"TTQ threshold factor t must be in [0, 1), got {self.t}")
        if self.init not in INITS:
            raise ConfigError(f"TTQ init must be one of {INITS}, got {self.init!r}")


def ternary_codes(latent: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """Boolean ``(positive, negative)`` regions of ``latent`` for threshold factor ``t`` (t * max|latent|)."""
    delta = torch.as_tensor(t, dtype=latent.dtype, device=latent.device) * latent.detach().abs().max()
    return latent > delta, latent < -delta


class _TTQFunction(torch.autograd.Function):
    """Ternary forward with the paper's hand-written gradients for the latent, Wp and Wn."""

    @staticmethod
    def forward(ctx: Any, latent: Tensor, wp: Tensor, wn: Tensor, t: Tensor) -> Tensor:
        pos, neg = ternary_codes(latent, t)
        zero = torch.zeros((), dtype=latent.dtype, device=latent.device)
        wp_b, wn_b = _per_row(wp, latent), _per_row(wn, latent)
        out = torch.where(pos, wp_b.to(latent.dtype), torch.where(neg, -wn_b.to(latent.dtype), zero))
        ctx.save_for_backward(pos, neg, wp, wn)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        pos, neg, wp, wn = ctx.saved_tensors
        pos_f, neg_f = pos.to(grad.dtype), neg.to(grad.dtype)
        grad_wp = _region_sum(grad * pos_f, wp).to(wp.dtype)
        grad_wn = -_region_sum(grad * neg_f, wn).to(wn.dtype)
        one = torch.ones((), dtype=grad.dtype, device=grad.device)
        wp_b, wn_b = _per_row(wp, grad).to(grad.dtype), _per_row(wn, grad).to(grad.dtype)
        scale = torch.where(pos, wp_b, torch.where(neg, wn_b, one))
        return grad * scale, grad_wp.reshape(wp.shape), grad_wn.reshape(wn.shape), None


def _per_row(scale: Tensor, like: Tensor) -> Tensor:
    """A scalar scale as it is; a per-output-channel one shaped to broadcast over ``like``'s rows."""
    return scale.reshape((-1,) + (1,) * (like.dim() - 1)) if scale.dim() else scale


def _region_sum(masked_grad: Tensor, scale: Tensor) -> Tensor:
    """The scale's gradient: the sum over its region, per output channel for a per-channel scale."""
    return masked_grad.reshape(masked_grad.shape[0], -1).sum(1) if scale.dim() else masked_grad.sum()


def ttq_function(latent: Tensor, wp: Tensor, wn: Tensor, t: Tensor | float) -> Tensor:
    """Functional TTQ: ternary weights of ``latent`` with the paper's gradients (see module doc)."""
    t_tensor = torch.as_tensor(t, dtype=latent.dtype, device=latent.device)
    out: Tensor = _TTQFunction.apply(latent, wp, wn, t_tensor)
    return out


class Ternary(ValueTransform):
    """TTQ value transform: parameters ``wp``, ``wn`` (trained, normalised units), buffers ``t`` (threshold
    factor) and ``unit`` (the layer's weight unit, fixed at ternarization).

    Its output is always in ``{-unit*wn, 0, +unit*wp}``; ``export`` gives ``{"kind": "ternary", "code": int8,
    "wp": unit*wp, "wn": unit*wn}`` whose dequantized values equal ``forward`` bit for bit. ``wp`` and ``wn`` are
    one value per layer (the paper) or, once a BatchNorm is folded in (:meth:`scale_channels_`) or a per-channel
    file is loaded, one per output channel; they export as arrays then.
    """

    kind = "ternary"

    t: Tensor
    unit: Tensor

    def __init__(self, t: float = 0.05, wp: Any = 1.0, wn: Any = 1.0, unit: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= float(t) < 1.0:
            raise ConfigError(f"ternary threshold factor t must be in [0, 1), got {t}")
        self.wp = nn.Parameter(torch.as_tensor(np.asarray(wp, dtype=np.float32)).clone())
        self.wn = nn.Parameter(torch.as_tensor(np.asarray(wn, dtype=np.float32)).clone())
        if not float(unit) > 0.0:
            raise ConfigError(f"ternary weight unit must be > 0, got {unit}")
        self.register_buffer("t", torch.tensor(float(t), dtype=torch.float32))
        self.register_buffer("unit", torch.tensor(float(unit), dtype=torch.float32))

    def forward(self, weight: Tensor) -> Tensor:
        return self.unit * ttq_function(weight, self.wp, self.wn, self.t)

    def scales(self) -> tuple[Any, Any]:
        """``(Wp, Wn)`` in the layer's own units (``unit * wp``, ``unit * wn``), exactly as ``forward`` uses them:
        floats, or float32 arrays (one per output channel)."""
        with torch.no_grad():
            wp, wn = (self.unit * self.wp).cpu().numpy(), (self.unit * self.wn).cpu().numpy()
        return (float(wp), float(wn)) if wp.ndim == 0 else (wp.astype(np.float32), wn.astype(np.float32))

    def scale_channels_(self, scale: Tensor) -> None:
        """Absorb a per-output-channel factor (a folded BatchNorm): the codes stay, Wp and Wn become per channel."""
        with torch.no_grad():
            factor = scale.detach().to(self.wp.dtype).reshape(-1)
            self.wp = nn.Parameter(self.wp.detach() * factor)
            self.wn = nn.Parameter(self.wn.detach() * factor)

    @property
    def bits(self) -> float:
        return 2.0

    def codes(self, masked_latent: Tensor) -> Tensor:
        """int8 codes in {-1, 0, 1} of ``masked_latent`` (the regions ``forward`` uses)."""
        pos, neg = ternary_codes(masked_latent.detach(), self.t)
        return pos.to(torch.int8) - neg.to(torch.int8)

    def sparsity(self, masked_latent: Tensor) -> float:
        """Fraction of ternary zeros."""
        return float((self.codes(masked_latent) == 0).float().mean())

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        code = self.codes(masked_latent).cpu().numpy().astype(np.int8)
        wp, wn = self.scales()
        return {"kind": "ternary", "code": code, "wp": wp, "wn": wn}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> Ternary:
        return cls(wp=np.asarray(exported["wp"], dtype=np.float32), wn=np.asarray(exported["wn"], dtype=np.float32))

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> Ternary:
        t = float(tensors["t"]) if "t" in tensors else 0.05
        shape = tuple(tensors["wp"].shape) if "wp" in tensors else ()
        return cls(t=t, wp=np.ones(shape, np.float32), wn=np.ones(shape, np.float32))  # values: load_state_dict

    @classmethod
    def attach(cls, module: nn.Module, exported: dict[str, Any], name: str = "weight") -> None:
        """Restore from a file: latent := code * s (s > 0), so the codes reproduce whatever Wp, Wn are.

        (Writing the dequantized values as the latent, the base behaviour, would flip codes when a scale
        is negative or when Wp and Wn differ by more than 1/t.)
        """
        transform = cls.from_export(exported)
        scale = max(float(transform.wp.detach().abs().max()), float(transform.wn.detach().abs().max())) or 1.0
        code = torch.from_numpy(np.asarray(exported["code"], dtype=np.float32))
        with torch.no_grad():
            latent = latent_weight(module, name)
            latent.copy_((code * scale).reshape(latent.shape))
        set_value_transform(module, transform, name)

    def extra_repr(self) -> str:
        if self.wp.dim():
            return f"t={float(self.t):g}, per-channel wp/wn ({self.wp.numel()}), unit={float(self.unit):.4g}"
        return f"t={float(self.t):g}, wp={float(self.wp.detach()):.4g}, wn={float(self.wn.detach()):.4g}, unit={float(self.unit):.4g}"


def initial_scales(latent: Tensor, t: float, init: str) -> tuple[float, float, float]:
    """``(wp, wn, unit)`` to start from: ``unit = max|w|``; wp, wn (normalised) from ``init`` (module doc)."""
    magnitude = latent.detach().abs()
    unit = float(magnitude.max()) or 1.0
    if init == "paper":
        return 1.0, 1.0, unit
    normalised = latent.detach() / unit
    pos, neg = ternary_codes(normalised, t)
    wp = float(normalised[pos].mean()) if pos.any() else 1.0
    wn = float(-normalised[neg].mean()) if neg.any() else 1.0
    return wp, wn, unit
