"""The ``FixedPoint`` value transform: weights and the layer's activation formats, carried on the weight.

Buffers (all int64 scalars, so they survive ``state_dict``, ``deepcopy`` and checkpoints):
``bits``/``frac_len`` for the weight, ``act_in_bits``/``act_in_frac_len`` for the layer's input and
``act_out_bits``/``act_out_frac_len`` for its output (``*_bits == 0``: that tensor stays float); the optional
``act_in_unsigned``/``act_out_unsigned`` (present only when 1) make that activation's integers unsigned.
The activation formats act through the forward hooks below (the pre-hook rounds the input to its format; the
post-hook replaces the float32 output by :func:`~deepshrink.fixedpoint.simulate.exact_output`, keeping the
float32 gradient: straight-through), installed by ``quantize_``, by :meth:`FixedPoint.attach` (``.dsz`` files)
and by :meth:`FixedPoint.on_attached` (checkpoints); :func:`install_all_hooks` re-adds them (idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..core.fixed_point import (
    FixedPointFormat,
    check_rounding,
    fake_quantize,
    from_int,
    round_scaled,
    row_frac_lens,
    to_int,
)
from ..core.kinds import stored_from_export
from ..core.kinds.fixedpoint import ACT_KEYS, UNSIGNED_KEYS, formats
from ..core.state import ValueTransform, get_value_transform
from .simulate import exact_output


class FixedPoint(ValueTransform):
    """Dynamic fixed-point weight: ``round_half_up(w * 2**fl)`` saturated to ``bits``, straight-through gradient.

    ``frac_len`` is one fractional length for the layer (the paper) or one per output channel (a vector buffer);
    ``dynamic_input`` chooses the input's fractional length per row (token) at run time instead of a calibrated one;
    ``rounding="half_even"`` rounds weights, biases and activations half to even (ONNX's rule) instead of half up.
    """

    kind: ClassVar[str] = "fixedpoint"

    bits_buf: Tensor
    frac_len: Tensor
    act_in_bits: Tensor
    act_in_frac_len: Tensor
    act_out_bits: Tensor
    act_out_frac_len: Tensor

    def __init__(self, bits: int, frac_len: int | Tensor, act_in: FixedPointFormat | None = None,
                 act_out: FixedPointFormat | None = None, dynamic_input: bool = False,
                 rounding: str = "half_up") -> None:
        super().__init__()
        fl = torch.as_tensor(frac_len, dtype=torch.int64).clone()
        for value in fl.reshape(-1).tolist():
            FixedPointFormat(int(bits), int(value))  # validates
        self.register_buffer("bits_buf", torch.tensor(int(bits), dtype=torch.int64))
        self.register_buffer("frac_len", fl)
        for key in ACT_KEYS:
            self.register_buffer(key, torch.tensor(0, dtype=torch.int64))
        if dynamic_input:
            self.register_buffer("act_in_dynamic", torch.tensor(1, dtype=torch.int64))
        if check_rounding(rounding) == "half_even":
            self.register_buffer("round_half_even", torch.tensor(1, dtype=torch.int64))
        self.set_act_in(act_in)
        self.set_act_out(act_out)

    # formats --------------------------------------------------------------------------------------------
    @property
    def per_channel(self) -> bool:
        return self.frac_len.dim() > 0

    @property
    def dynamic_input(self) -> bool:
        return "act_in_dynamic" in self._buffers

    @property
    def rounding(self) -> str:
        return "half_even" if "round_half_even" in self._buffers else "half_up"

    @property
    def weight_frac_len(self) -> int | Tensor:
        """The weight's fractional length: an int, or an int64 tensor of one per output channel."""
        return self.frac_len.clone() if self.per_channel else int(self.frac_len)

    @property
    def weight_format(self) -> FixedPointFormat:
        """The weight format of a per-layer weight; for a per-channel one, its coarsest (smallest) fractional length."""
        return FixedPointFormat(int(self.bits_buf), int(self.frac_len.min()))

    @property
    def act_in(self) -> FixedPointFormat | None:
        bits = int(self.act_in_bits)
        signed = "act_in_unsigned" not in self._buffers
        return FixedPointFormat(bits, int(self.act_in_frac_len), signed) if bits else None

    @property
    def act_out(self) -> FixedPointFormat | None:
        bits = int(self.act_out_bits)
        signed = "act_out_unsigned" not in self._buffers
        return FixedPointFormat(bits, int(self.act_out_frac_len), signed) if bits else None

    def _set_unsigned(self, key: str, unsigned: bool) -> None:
        """Add or drop the optional flag buffer ``key`` (present only for an unsigned format)."""
        if unsigned and key not in self._buffers:
            self.register_buffer(key, torch.tensor(1, dtype=torch.int64, device=self.bits_buf.device))
        elif not unsigned:
            self._buffers.pop(key, None)

    def set_weight_format(self, fmt: FixedPointFormat) -> None:
        self.bits_buf.fill_(fmt.bits)
        self.frac_len.fill_(fmt.frac_len)

    def set_weight_frac_len(self, bits: int, frac_len: int | Tensor) -> None:
        """Set the width and the fractional length(s): one for the layer or one per output channel."""
        self.bits_buf.fill_(int(bits))
        self.frac_len = torch.as_tensor(frac_len, dtype=torch.int64).clone().to(self.frac_len.device)

    def set_act_in(self, fmt: FixedPointFormat | None) -> None:
        self.act_in_bits.fill_(fmt.bits if fmt else 0)
        self.act_in_frac_len.fill_(fmt.frac_len if fmt else 0)
        self._set_unsigned("act_in_unsigned", fmt is not None and not fmt.signed)

    def set_act_out(self, fmt: FixedPointFormat | None) -> None:
        self.act_out_bits.fill_(fmt.bits if fmt else 0)
        self.act_out_frac_len.fill_(fmt.frac_len if fmt else 0)
        self._set_unsigned("act_out_unsigned", fmt is not None and not fmt.signed)

    # ValueTransform -------------------------------------------------------------------------------------
    def forward(self, weight: Tensor) -> Tensor:
        bits, fl = int(self.bits_buf), self.weight_frac_len
        q = from_int(to_int(weight, bits, fl, rounding=self.rounding), fl, weight.dtype)
        return q + (weight - weight.detach())  # value exactly q (adds 0.0), gradient straight through

    @property
    def bits(self) -> float:
        return float(self.bits_buf)

    def integers(self, masked_latent: Tensor) -> Tensor:
        """The stored integers (int64) of the weight."""
        return to_int(masked_latent, int(self.bits_buf), self.weight_frac_len, rounding=self.rounding).to(torch.int64)

    def export(self, masked_latent: Tensor) -> dict[str, Any]:
        fl = self.weight_frac_len
        out: dict[str, Any] = {"kind": self.kind, "int": self.integers(masked_latent).cpu().numpy(),
                               "bits": int(self.bits_buf),
                               "frac_len": fl.cpu().numpy().astype(np.int64) if isinstance(fl, Tensor) else fl}
        for key in ACT_KEYS:
            out[key] = int(getattr(self, key))
        for key in UNSIGNED_KEYS:
            if key in self._buffers:
                out[key] = 1
        if self.dynamic_input:
            out["act_in_dynamic"] = 1
        if self.rounding == "half_even":
            out["round_half_even"] = 1
        return out

    @classmethod
    def from_export(cls, exported: dict[str, Any]) -> FixedPoint:
        weight = stored_from_export(exported)
        weight.value_kind.check(weight)
        fmt = formats(weight)
        frac: int | Tensor = torch.from_numpy(fmt.frac_lens) if fmt.per_channel else int(fmt.frac_lens[0])
        return cls(fmt.bits, frac, fmt.act_in, fmt.act_out, fmt.dynamic_input, fmt.rounding)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], weight_shape: torch.Size) -> FixedPoint:
        frac = tensors.get("frac_len")
        shape = tuple(frac.shape) if frac is not None else ()
        # values arrive with load_state_dict; the shapes (per channel or not) and the optional buffers must be right
        made = cls(8, torch.zeros(shape, dtype=torch.int64), dynamic_input="act_in_dynamic" in tensors,
                   rounding="half_even" if "round_half_even" in tensors else "half_up")
        for key in UNSIGNED_KEYS:
            made._set_unsigned(key, key in tensors)
        return made

    @classmethod
    def attach(cls, module: nn.Module, exported: dict[str, Any], name: str = "weight") -> None:
        """Restore weight, weight format and activation formats from a file entry; install the activation hooks."""
        super().attach(module, exported, name)
        install_hooks(module)

    def on_attached(self, module: nn.Module, name: str) -> None:
        """Checkpoint load: the activation formats arrive with the buffers; the hooks that apply them go on now."""
        install_hooks(module)

    def extra_repr(self) -> str:
        weight = f"Q{int(self.bits_buf)}.[{int(self.frac_len.min())}..{int(self.frac_len.max())}]" \
            if self.per_channel else str(FixedPointFormat(int(self.bits_buf), int(self.frac_len)))
        parts = [f"w={weight}"]
        if self.act_in is not None:
            parts.append(f"in={'per-token ' if self.dynamic_input else ''}{self.act_in}")
        if self.act_out is not None:
            parts.append(f"out={self.act_out}")
        if self.rounding != "half_up":
            parts.append(f"rounding={self.rounding}")
        return ", ".join(parts)


def fixed_point_of(module: nn.Module) -> FixedPoint | None:
    """The layer's :class:`FixedPoint` transform, or None."""
    transform = get_value_transform(module) if hasattr(module, "parametrizations") else None
    return transform if isinstance(transform, FixedPoint) else None


def input_frac_len(fp: FixedPoint, x: Tensor) -> int | Tensor:
    """The input's fractional length: the calibrated one, or per row (token) from the row's own range."""
    assert fp.act_in is not None
    if fp.dynamic_input:
        return row_frac_lens(x, fp.act_in.bits).unsqueeze(-1)
    return fp.act_in.frac_len


def _pre_hook(module: nn.Module, args: tuple) -> tuple | None:
    fp = fixed_point_of(module)
    if fp is None or fp.act_in is None or not args:
        return None
    x = args[0]
    frac = input_frac_len(fp, x)
    if isinstance(frac, Tensor):  # per row: scale each row by its own power of two
        scale = torch.pow(2.0, frac.double())
        ints = round_scaled(x.detach().double() * scale, fp.rounding).clamp_(*fp.act_in.range)
        q = (ints / scale).to(x.dtype)
        return (q + (x - x.detach()), *args[1:])
    return (fake_quantize(x, fp.act_in.bits, frac, rounding=fp.rounding, signed=fp.act_in.signed), *args[1:])


def _post_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    fp = fixed_point_of(module)
    if fp is None or fp.act_in is None or not args:
        return None  # without an input format the float32 output is the simulation
    exact = exact_output(module, args[0], int(fp.bits_buf), fp.weight_frac_len, input_frac_len(fp, args[0]),
                         fp.act_out, output.dtype, fp.rounding)
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
