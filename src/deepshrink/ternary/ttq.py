"""Trained Ternary Quantization (Zhu, Han, Mao, Dally, ICLR 2017) as a value transform on the shared state.

Forward (per layer, on the masked latent ``w``)::

    delta = t * max|w|                      # threshold on the weights normalised to [-1, 1]
    w_t   = +Wp  where w >  delta
            -Wn  where w < -delta
             0   otherwise

Backward, exactly the paper's eqs. (7) and (8)::

    dL/dWp = sum_{w > delta}  dL/dw_t
    dL/dWn = -sum_{w < -delta} dL/dw_t       # the sign the forward's -Wn implies
    dL/dw  = Wp * dL/dw_t  |  1 * dL/dw_t  |  Wn * dL/dw_t     (the three regions)

The latent keeps the layer's own scale (dividing by ``max|w|`` only sets the threshold, which is
scale-free), so the transform composes with a pruning mask before it: masked positions are exactly zero,
never above the threshold, hence always ternary zero, and their gradient is zeroed by the mask.

Initial scales. The paper states ``Wp = Wn = 1.0``; the reference code (czhu95/ternarynet,
``tw_ternarize``) applies that to the *un-normalised* latent, which is harmless there because every
ternary conv feeds a BatchNorm (scale-free). On a layer without BN (LeNet-5's conv2/fc1) it would scale
the layer output by ~1/mean|w|. ``init="mean"`` (default) starts from the least-squares scales (the mean
latent magnitude in each region, so the first forward is the best ternary fit of the fp32 weights);
``init="paper"`` reproduces the literal 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.state import ValueTransform, latent_weight, register_state_class, set_value_transform

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
        out = torch.where(pos, wp.to(latent.dtype), torch.where(neg, -wn.to(latent.dtype), zero))
        ctx.save_for_backward(pos, neg, wp, wn)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        pos, neg, wp, wn = ctx.saved_tensors
        pos_f, neg_f = pos.to(grad.dtype), neg.to(grad.dtype)
        grad_wp = (grad * pos_f).sum().to(wp.dtype)
        grad_wn = -(grad * neg_f).sum().to(wn.dtype)
        one = torch.ones((), dtype=grad.dtype, device=grad.device)
        scale = torch.where(pos, wp.to(grad.dtype), torch.where(neg, wn.to(grad.dtype), one))
        return grad * scale, grad_wp.reshape(wp.shape), grad_wn.reshape(wn.shape), None


def ttq_function(latent: Tensor, wp: Tensor, wn: Tensor, t: Tensor | float) -> Tensor:
    """Functional TTQ: ternary weights of ``latent`` with the paper's gradients (see module doc)."""
    t_tensor = torch.as_tensor(t, dtype=latent.dtype, device=latent.device)
    out: Tensor = _TTQFunction.apply(latent, wp, wn, t_tensor)
    return out


@register_state_class
class Ternary(ValueTransform):
    """TTQ value transform: parameters ``wp``, ``wn`` (trained scalars), buffer ``t`` (threshold factor).

    Its output is always in ``{-wn, 0, +wp}``; ``export`` gives ``{"kind": "ternary", "code": int8,
    "wp", "wn"}`` whose dequantized values equal ``forward`` bit for bit.
    """

    kind = "ternary"

    t: Tensor

    def __init__(self, t: float = 0.05, wp: float = 1.0, wn: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= float(t) < 1.0:
            raise ConfigError(f"ternary threshold factor t must be in [0, 1), got {t}")
        self.wp = nn.Parameter(torch.tensor(float(wp), dtype=torch.float32))
        self.wn = nn.Parameter(torch.tensor(float(wn), dtype=torch.float32))
        self.register_buffer("t", torch.tensor(float(t), dtype=torch.float32))

    def forward(self, weight: Tensor) -> Tensor:
        return ttq_function(weight, self.wp, self.wn, self.t)

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
        return {"kind": "ternary", "code": code, "wp": float(self.wp.detach()), "wn": float(self.wn.detach())}

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> Ternary:
        return cls(wp=float(np.float32(exported["wp"])), wn=float(np.float32(exported["wn"])))

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> Ternary:
        t = float(tensors["t"]) if "t" in tensors else 0.05
        return cls(t=t)

    @classmethod
    def attach(cls, module: nn.Module, exported: dict[str, Any], name: str = "weight") -> None:
        """Restore from a file: latent := code * s (s > 0), so the codes reproduce whatever Wp, Wn are.

        (Writing the dequantized values as the latent, the base behaviour, would flip codes when a scale
        is negative or when Wp and Wn differ by more than 1/t.)
        """
        transform = cls.from_export(exported)
        scale = max(abs(float(transform.wp.detach())), abs(float(transform.wn.detach()))) or 1.0
        code = torch.from_numpy(np.asarray(exported["code"], dtype=np.float32))
        with torch.no_grad():
            latent = latent_weight(module, name)
            latent.copy_((code * scale).reshape(latent.shape))
        set_value_transform(module, transform, name)

    def extra_repr(self) -> str:
        return f"t={float(self.t):g}, wp={float(self.wp.detach()):.4g}, wn={float(self.wn.detach()):.4g}"


def initial_scales(latent: Tensor, t: float, init: str) -> tuple[float, float]:
    """``(wp, wn)`` to start from: the least-squares fit (``"mean"``) or the paper's literal 1.0."""
    if init == "paper":
        return 1.0, 1.0
    pos, neg = ternary_codes(latent.detach(), t)
    magnitude = latent.detach().abs()
    fallback = float(magnitude.max()) or 1.0
    wp = float(magnitude[pos].mean()) if pos.any() else fallback
    wn = float(magnitude[neg].mean()) if neg.any() else fallback
    return wp, wn
