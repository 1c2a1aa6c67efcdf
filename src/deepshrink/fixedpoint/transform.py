"""The ``FixedPoint`` value transform: weights and the layer's activation formats, carried on the weight.

Buffers (all int64 scalars, so they survive ``state_dict``, ``deepcopy`` and checkpoints):
``bits``/``frac_len`` for the weight, ``act_in_bits``/``act_in_frac_len`` for the layer's input and
``act_out_bits``/``act_out_frac_len`` for its output (``*_bits == 0``: that tensor stays float).
The activation formats act through forward hooks (:mod:`deepshrink.fixedpoint.simulate`), installed by
``quantize_``, by :meth:`FixedPoint.attach` (``.dsz`` files) and by :meth:`FixedPoint.on_attached`
(checkpoints); :func:`~deepshrink.fixedpoint.install_all_hooks` re-adds them by hand (idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import FormatError
from ..core.state import ValueTransform, register_state_class
from .formats import FixedPointFormat, check_bits, from_int, to_int

ACT_KEYS = ("act_in_bits", "act_in_frac_len", "act_out_bits", "act_out_frac_len")


@register_state_class
class FixedPoint(ValueTransform):
    """Dynamic fixed-point weight: ``round_half_up(w * 2**fl)`` saturated to ``bits``, straight-through gradient."""

    kind: ClassVar[str] = "fixedpoint"

    bits_buf: Tensor
    frac_len: Tensor
    act_in_bits: Tensor
    act_in_frac_len: Tensor
    act_out_bits: Tensor
    act_out_frac_len: Tensor

    def __init__(self, bits: int, frac_len: int, act_in: FixedPointFormat | None = None,
                 act_out: FixedPointFormat | None = None) -> None:
        super().__init__()
        fmt = FixedPointFormat(int(bits), int(frac_len))
        self.register_buffer("bits_buf", torch.tensor(fmt.bits, dtype=torch.int64))
        self.register_buffer("frac_len", torch.tensor(fmt.frac_len, dtype=torch.int64))
        for key in ACT_KEYS:
            self.register_buffer(key, torch.tensor(0, dtype=torch.int64))
        self.set_act_in(act_in)
        self.set_act_out(act_out)

    # formats --------------------------------------------------------------------------------------------
    @property
    def weight_format(self) -> FixedPointFormat:
        return FixedPointFormat(int(self.bits_buf), int(self.frac_len))

    @property
    def act_in(self) -> FixedPointFormat | None:
        bits = int(self.act_in_bits)
        return FixedPointFormat(bits, int(self.act_in_frac_len)) if bits else None

    @property
    def act_out(self) -> FixedPointFormat | None:
        bits = int(self.act_out_bits)
        return FixedPointFormat(bits, int(self.act_out_frac_len)) if bits else None

    def set_weight_format(self, fmt: FixedPointFormat) -> None:
        self.bits_buf.fill_(fmt.bits)
        self.frac_len.fill_(fmt.frac_len)

    def set_act_in(self, fmt: FixedPointFormat | None) -> None:
        self.act_in_bits.fill_(fmt.bits if fmt else 0)
        self.act_in_frac_len.fill_(fmt.frac_len if fmt else 0)

    def set_act_out(self, fmt: FixedPointFormat | None) -> None:
        self.act_out_bits.fill_(fmt.bits if fmt else 0)
        self.act_out_frac_len.fill_(fmt.frac_len if fmt else 0)

    # ValueTransform -------------------------------------------------------------------------------------
    def forward(self, weight: Tensor) -> Tensor:
        fmt = self.weight_format
        q = from_int(to_int(weight, fmt.bits, fmt.frac_len), fmt.frac_len, weight.dtype)
        return q + (weight - weight.detach())  # value exactly q (adds 0.0), gradient straight through

    @property
    def bits(self) -> float:
        return float(self.bits_buf)

    def integers(self, masked_latent: Tensor) -> Tensor:
        """The stored integers (int64) of the weight."""
        fmt = self.weight_format
        return to_int(masked_latent, fmt.bits, fmt.frac_len).to(torch.int64)

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        fmt = self.weight_format
        out: dict[str, Any] = {"kind": self.kind, "int": self.integers(masked_latent).cpu().numpy(),
                               "bits": fmt.bits, "frac_len": fmt.frac_len}
        for key in ACT_KEYS:
            out[key] = int(getattr(self, key))
        return out

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> FixedPoint:
        try:
            bits, frac_len = int(exported["bits"]), int(exported["frac_len"])
            acts = [int(exported.get(key, 0)) for key in ACT_KEYS]
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"fixedpoint entry lacks a valid bits/frac_len/act_* field: {exc}") from exc
        ints = np.asarray(exported.get("int", np.zeros(0, dtype=np.int64)))
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if ints.size and (int(ints.min()) < lo or int(ints.max()) > hi):
            raise FormatError(f"fixedpoint integers out of the {bits}-bit range [{lo}, {hi}]")
        act_in = FixedPointFormat(check_bits(acts[0], "act_in_bits"), acts[1]) if acts[0] else None
        act_out = FixedPointFormat(check_bits(acts[2], "act_out_bits"), acts[3]) if acts[2] else None
        return cls(bits, frac_len, act_in, act_out)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> FixedPoint:
        return cls(8, 0)  # shapes are scalars; values arrive with load_state_dict

    @classmethod
    def attach(cls, module: nn.Module, exported: dict[str, Any], name: str = "weight") -> None:
        """Restore weight, weight format and activation formats from a file entry; install the activation hooks."""
        super().attach(module, exported, name)
        from .simulate import install_hooks

        install_hooks(module)

    def on_attached(self, module: nn.Module, name: str) -> None:
        """Checkpoint load: the activation formats arrive with the buffers; the hooks that apply them go on now."""
        from .simulate import install_hooks

        install_hooks(module)

    def extra_repr(self) -> str:
        parts = [f"w={self.weight_format}"]
        if self.act_in is not None:
            parts.append(f"in={self.act_in}")
        if self.act_out is not None:
            parts.append(f"out={self.act_out}")
        return ", ".join(parts)
