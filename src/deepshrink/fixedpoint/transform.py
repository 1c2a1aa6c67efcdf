"""The ``FixedPoint`` value transform: weights and the layer's activation formats, carried on the weight.

Buffers (all int64 scalars, so they survive ``state_dict``, ``deepcopy`` and checkpoints):
``bits``/``frac_len`` for the weight, ``act_in_bits``/``act_in_frac_len`` for the layer's input and
``act_out_bits``/``act_out_frac_len`` for its output (``*_bits == 0``: that tensor stays float).
The activation formats act through the forward hooks below (the pre-hook rounds the input to its format; the
post-hook replaces the float32 output by :func:`~deepshrink.fixedpoint.simulate.exact_output`, keeping the
float32 gradient: straight-through), installed by ``quantize_``, by :meth:`FixedPoint.attach` (``.dsz`` files)
and by :meth:`FixedPoint.on_attached` (checkpoints); :func:`install_all_hooks` re-adds them (idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.fixed_point import FixedPointFormat, fake_quantize, from_int, to_int
from ..core.kinds import stored_from_export
from ..core.kinds.fixedpoint import ACT_KEYS, formats
from ..core.state import ValueTransform, get_value_transform
from .simulate import exact_output


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
        weight = stored_from_export(exported)
        weight.value_kind.check(weight)
        fmt, act_in, act_out = formats(weight)
        return cls(fmt.bits, fmt.frac_len, act_in, act_out)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> FixedPoint:
        return cls(8, 0)  # shapes are scalars; values arrive with load_state_dict

    @classmethod
    def attach(cls, module: nn.Module, exported: dict[str, Any], name: str = "weight") -> None:
        """Restore weight, weight format and activation formats from a file entry; install the activation hooks."""
        super().attach(module, exported, name)
        install_hooks(module)

    def on_attached(self, module: nn.Module, name: str) -> None:
        """Checkpoint load: the activation formats arrive with the buffers; the hooks that apply them go on now."""
        install_hooks(module)

    def extra_repr(self) -> str:
        parts = [f"w={self.weight_format}"]
        if self.act_in is not None:
            parts.append(f"in={self.act_in}")
        if self.act_out is not None:
            parts.append(f"out={self.act_out}")
        return ", ".join(parts)


def fixed_point_of(module: nn.Module) -> FixedPoint | None:
    """The layer's :class:`FixedPoint` transform, or None."""
    transform = get_value_transform(module) if hasattr(module, "parametrizations") else None
    return transform if isinstance(transform, FixedPoint) else None


def _pre_hook(module: nn.Module, args: tuple) -> tuple | None:
    fp = fixed_point_of(module)
    if fp is None or fp.act_in is None or not args:
        return None
    fmt = fp.act_in
    return (fake_quantize(args[0], fmt.bits, fmt.frac_len), *args[1:])


def _post_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    fp = fixed_point_of(module)
    if fp is None or fp.act_in is None or not args:
        return None  # without an input format the float32 output is the simulation
    exact = exact_output(module, args[0], fp.weight_format, fp.act_in, fp.act_out, output.dtype)
    return exact + (output - output.detach())


def install_hooks(module: nn.Module) -> None:
    """Attach the activation hooks to one quantized layer (idempotent; survives ``deepcopy``)."""
    if _pre_hook not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_pre_hook)
    if _post_hook not in module._forward_hooks.values():
        module.register_forward_hook(_post_hook)


def install_all_hooks(model: nn.Module) -> int:
    """Attach activation hooks to every layer of ``model`` carrying a ``FixedPoint`` weight (e.g. after
    ``load_checkpoint``, which restores the formats but not hooks); returns how many layers."""
    count = 0
    for module in model.modules():
        if fixed_point_of(module) is not None:
            install_hooks(module)
            count += 1
    return count
